package e2e

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

// streamResult is what one talker's packets left tsn0 with, for the
// per-class summary `make demo` prints (and `make e2e` prints at the end).
type streamResult struct {
	phase  string // "without the driver" or "with the driver"
	pod    string
	claim  string // what the pod claimed ("-" for nothing)
	sent   uint32 // the socket priority the talker set
	txtime bool   // the talker set SO_TXTIME launch times
	r      observe.Result
}

// results collects the streams in the order the scenario ran them.
var results []streamResult

func recordResult(phase, pod, claim string, sent uint32, txtime bool, r observe.Result) {
	results = append(results, streamResult{phase: phase, pod: pod, claim: claim, sent: sent, txtime: txtime, r: r})
}

// writeSummary prints, per talker, the priority it set and what its packets
// left the NIC with: the demo's answer to "what does the driver change".
func writeSummary(w io.Writer) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintln(w, "=== What left tsn0 (the TSN NIC), per talker pod ===")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "phase\tpod\tclaims\tsets priority\tleft tsn0 with priority\tlaunch times kept")
	for _, s := range results {
		var by []string
		prios := make([]uint32, 0, len(s.r.ByGot))
		for p := range s.r.ByGot {
			prios = append(prios, p)
		}
		slices.Sort(prios)
		for _, p := range prios {
			by = append(by, fmt.Sprintf("%d: %d/%d", p, s.r.ByGot[p], s.r.Total))
		}
		lt := "-"
		if s.txtime {
			lt = fmt.Sprintf("%d/%d", s.r.TxTimeRight, s.r.Total)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", s.phase, s.pod, s.claim, s.sent, strings.Join(by, ", "), lt)
	}
	tw.Flush()
	fmt.Fprintln(w, "=== end ===")
}
