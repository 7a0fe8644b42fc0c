package main

import (
	"regexp"
	"strings"
)

type relResult struct {
	name, status, took string
	log                []string
}

// relTests says what each reliability test asserts (kept next to the runner so the report can
// say it; the tests' doc comments say it at length).
var relTests = []struct{ name, asserts string }{
	{"TestDaemonRestartUnderTraffic", "10 daemon restarts (data path, driver from its checkpoint, NIC setup resumed, NRI plugin re-synchronized) while a pod with a prepared claim sends without pause: every packet restored right (remap included), nothing attached twice, an unclaimed pod never gets foreign metadata"},
	{"TestChurn500", "500 pod sandboxes with claims through driver Prepare, NIC setup, NRI Run/Stop/Remove and Unprepare (every fifth netns gone before StopPodSandbox): no link, netns, pin, map entry, saver, qdisc change, schedule or checkpoint entry left"},
	{"TestFloodAndFarFutureDoNotDisturb", "100,000 packets to local destinations with launch times an hour ahead from one pod, 20,000 TSN packets from another: the other's all restored, none missed; the flooder within its quota and expired"},
	{"TestNICRemovedWhileClaimed", "the TSN NIC disappears while claimed: release succeeds, no restorer pin left; it comes back and the next claim restores again"},
	{"TestHostileClaimParameters", "23 hostile claim parameter sets and allocations: a clear error naming the field, nothing checkpointed, no data-path hook, no pod policy"},
	{"TestConcurrentPrepare", "100 claims prepared 4 times each concurrently, then unprepared concurrently: state and checkpoint consistent"},
	{"TestCheckpointCorrupted", "a damaged checkpoint (truncated, flipped byte, zeroed, empty) is detected, reported and rebuilt from the API server"},
	{"TestAPIServerUnreachableAtStart", "API server unreachable at start: no fatal error, registration socket served, claims prepared and checkpointed, prompt shutdown"},
}

func benchReliability(r *report) error {
	outp, _ := goTest(nil, "-v", "-timeout", "10m", "./test/reliability/")
	re := regexp.MustCompile(`(?m)^--- (PASS|FAIL|SKIP): (Test\w+) \(([0-9.]+s)\)`)
	for _, m := range re.FindAllStringSubmatch(outp, -1) {
		res := relResult{name: m[2], status: m[1], took: m[3]}
		// The failure messages of the test (lines of its own files), for the report.
		for _, l := range strings.Split(outp, "\n") {
			l = strings.TrimSpace(l)
			if strings.Contains(l, "_test.go:") && !strings.Contains(l, "] ") && m[1] == "FAIL" && strings.Contains(l, "BUG") {
				res.log = append(res.log, l)
			}
		}
		r.rel = append(r.rel, res)
	}
	return nil
}
