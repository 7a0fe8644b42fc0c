package datapath_test

import (
	"testing"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// TestExpiryKeepsLiveEntries runs expiry back to back (every millisecond)
// while a pod sends: however often it runs, it must never free an entry whose
// packet is still on its way (well within the TTL), with the kernel timer and
// with the manager's sweep. (TestExpiryAge pins down the rule behind it.)
func TestExpiryKeepsLiveEntries(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, tc := range []struct {
		name  string
		timer bool
	}{{"timer", true}, {"sweep", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			n := datapathtest.NewNode(t, netemu.Routed, 1)
			if tc.timer {
				// Features.Timer is known once a manager has tried to arm it.
				probe := openManager(t, n, datapathtest.PinDir(t, pinPrefix))
				has := probe.Features().Timer
				if err := probe.Uninstall(ctx); err != nil {
					t.Fatal(err)
				}
				if !has {
					t.Skip("the kernel refuses bpf_timer (PREEMPT_RT): expiry runs as the manager's sweep, tested by the sweep subtest")
				}
			}
			m := openManager(t, n, datapathtest.PinDir(t, pinPrefix), datapath.WithGCInterval(time.Millisecond), datapath.WithKernelTimer(tc.timer))
			obs, s := restoreOnePod(t, ctx, n, m)
			const count = 20000
			start := time.Now()
			withMeta := sendMix(t, s, obs, 1, count)
			r := datapathtest.WaitTotal(t, obs, 1, count, waitLimit)
			c, err := m.Counters("pod-a")
			if err != nil {
				t.Fatal(err)
			}
			tot := c.Total()
			t.Logf("%d packets in %v: observer total %d right %d missed %d wrong %d; counters %+v",
				count, time.Since(start).Round(time.Millisecond), r.Total, r.Right, r.Missed, r.Wrong, tot)
			if r.Total != count || r.Right != count || r.Wrong != 0 {
				t.Errorf("want %d packets all right, got total %d right %d missed %d wrong %d", count, r.Total, r.Right, r.Missed, r.Wrong)
			}
			if tot.Expired != 0 || tot.Missed != 0 || tot.Restored < uint64(withMeta) {
				t.Errorf("want %d restored, nothing missed or expired; got %+v", withMeta, tot)
			}
		})
	}
}
