package main

import (
	"fmt"
	"regexp"
	"strings"
)

func numCPU() int { return runtimeNumCPU() }

// benchDatapath runs pkg/tsn/datapath's BenchmarkDatapath (the same as make bench-datapath).
func benchDatapath(r *report) error {
	n := "40000x"
	if *quick {
		n = "8000x"
	}
	outp, err := goTest(nil, "-run", "^$", "-bench", "^BenchmarkDatapath$", "-benchtime", n, "./pkg/tsn/datapath/")
	if err != nil {
		return err
	}
	m, err := benchMetrics(outp, "BenchmarkDatapath")
	if err != nil {
		return err
	}
	r.dp = m
	return nil
}

// benchPrepare runs pkg/driver's kubelet-side test and takes its Prepare latency log.
func benchPrepare(r *report) error {
	outp, err := goTest(nil, "-run", "^TestKubeletSide$", "-v", "./pkg/driver/")
	if err != nil {
		return err
	}
	re := regexp.MustCompile(`round (\d+): NodePrepareResources latency over (\d+) claims.*p50=(\S+) p99=(\S+) max=(\S+)`)
	ms := re.FindAllStringSubmatch(outp, -1)
	if len(ms) == 0 {
		return fmt.Errorf("no latency line in TestKubeletSide's output:\n%s", tail(outp, 2000))
	}
	last := ms[len(ms)-1]
	r.prepP50, r.prepP99, r.prepMax = parseDur(last[3]), parseDur(last[4]), parseDur(last[5])
	var rounds []string
	for _, m := range ms {
		rounds = append(rounds, fmt.Sprintf("round %s p99 %s", m[1], m[4]))
	}
	r.prepRounds = fmt.Sprintf("%d claims per round, the test repeats a round whose p99 misses 50 ms (up to 3): %s", atoi(last[2]), strings.Join(rounds, ", "))
	return nil
}

// benchNRI runs pkg/driver/nrihooks' TestHookLatency and takes its log.
func benchNRI(r *report) error {
	outp, err := goTest(nil, "-run", "^TestHookLatency$", "-v", "./pkg/driver/nrihooks/")
	if err != nil {
		return err
	}
	// The CreateContainer part came with the barrier at CreateContainer
	// (docs/pod-lifecycle.md); older lines lack it.
	re := regexp.MustCompile(`saver attach (\w+): RunPodSandbox over NRI n=(\d+) p50=(\S+) p99=(\S+); StopPodSandbox p50=(\S+) p99=(\S+)` +
		`(?: \| CreateContainer \(waits for a late attach\) p50=(\S+) p99=(\S+) max=(\S+); attaches past RunPodSandbox's budget (\d+), containers that waited (\d+))?`)
	ms := re.FindAllStringSubmatch(outp, -1)
	if len(ms) == 0 {
		return fmt.Errorf("no latency lines in TestHookLatency's output:\n%s", tail(outp, 2000))
	}
	for _, m := range ms {
		r.nri = append(r.nri, nriResult{mode: m[1], n: m[2], runP50: parseDur(m[3]), runP99: parseDur(m[4]), stopP50: parseDur(m[5]), stopP99: parseDur(m[6]),
			createP50: parseDur(m[7]), createP99: parseDur(m[8]), createMax: parseDur(m[9]), late: atoi(m[10]), waited: atoi(m[11]), hasCreate: m[7] != ""})
		if m[1] == "tc" { // the daemon's default (--saver-attach=tc)
			r.runP50, r.runP99, r.stopP50, r.stopP99 = parseDur(m[3]), parseDur(m[4]), parseDur(m[5]), parseDur(m[6])
			r.nriN = fmt.Sprintf("n=%s per hook (10 pods x 10 rounds)", m[2])
		}
	}
	return nil
}

func atoi(s string) int {
	var v int
	fmt.Sscanf(s, "%d", &v)
	return v
}
