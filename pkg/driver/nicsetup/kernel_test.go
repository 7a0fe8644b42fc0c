package nicsetup

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc/qdisctest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

// Wide gate windows: under qemu's TCG, narrow ones leave packets queued.
const kernelSchedule = `{
  "numTrafficClasses": 3,
  "priorityMap": [0, 1, 2],
  "queues": ["1@0", "1@1", "2@2"],
  "gateControlList": [
    {"gateMask": 1, "interval": "400us"},
    {"gateMask": 2, "interval": "300us"},
    {"gateMask": 4, "interval": "300us"}
  ],
  "baseTime": {"policy": "now", "margin": "10ms"},
  "clock": "CLOCK_TAI",
  "mode": "software"
}`

// kernelNIC makes a 4-queue veth in a new network namespace with an fq_codel root
// (the "previous" qdisc) and returns a qdisc client for that namespace.
func kernelNIC(t *testing.T) *qdisc.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace and qdiscs")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's netns: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close(); orig.Close() })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tsn0", NumTxQueues: 4, NumRxQueues: 4}, PeerName: "wire0"}); err != nil {
		t.Fatalf("veth: %v", err)
	}
	l, err := h.LinkByName("tsn0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := qdisc.NewClient(qdisc.WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if ok, err := c.HasKind(l.Attrs().Index, "taprio"); err != nil || !ok {
		t.Skipf("the kernel has no taprio (%v): runs in `make vmtest`", err)
	}
	prev := netlink.NewFqCodel(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0x10, 0), Parent: netlink.HANDLE_ROOT})
	if err := h.QdiscReplace(prev); err != nil {
		t.Fatalf("fq_codel root: %v", err)
	}
	return c
}

func rootOf(t *testing.T, c *qdisc.Client) *qdisc.Installed {
	t.Helper()
	l, err := c.Link("tsn0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Snapshot(l)
	if err != nil {
		t.Fatal(err)
	}
	return s.Root
}

func TestKernelScheduleKeptAcrossClaimsAndRemoved(t *testing.T) {
	c := kernelNIC(t)
	var sched schedule.Schedule
	if err := json.Unmarshal([]byte(kernelSchedule), &sched); err != nil {
		t.Fatal(err)
	}
	cfg := config.NIC{Name: "tsn0", Schedule: sched, OnLastRelease: config.ReleaseRemove}
	qs := NewQdiscSchedules(c, func(n string) (config.NIC, bool) { return cfg, n == "tsn0" })
	nic := NIC{Name: "tsn0", Interface: "tsn0", ApplySchedule: true, RemoveOnLastRelease: true}
	ctx := context.Background()

	if err := qs.Apply(ctx, nic); err != nil {
		t.Fatalf("apply: %v", err)
	}
	first := rootOf(t, c)
	tp, ok := first.Qdisc.(*qdisc.Taprio)
	if !ok {
		t.Fatalf("root after apply = %v, want taprio", first)
	}
	// A second claim on the NIC: the running schedule, base time included,
	// stays (a new base time would restart every other claim's gate cycle).
	if err := qs.Apply(ctx, nic); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	second := rootOf(t, c)
	tp2, ok := second.Qdisc.(*qdisc.Taprio)
	if !ok || second.Handle != first.Handle || tp2.BaseTime != tp.BaseTime {
		t.Fatalf("second apply changed the schedule: %v base %d -> %v base %d", first, tp.BaseTime, second, tp2.BaseTime)
	}

	if err := qs.Remove(ctx, nic); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if r := rootOf(t, c); r == nil || r.Kind != "fq_codel" || r.Handle != qdisc.MakeHandle(0x10, 0) {
		t.Fatalf("root after remove = %v, want the fq_codel 10: that was there before", r)
	}
}

// probeSchedule is qdisctest.ProbeTaprio as a node-config schedule: classes
// 0 and 1 open 300 us each per 600 us cycle, class 2 never.
const probeSchedule = `{
  "numTrafficClasses": 3,
  "priorityMap": [0, 1, 2],
  "queues": ["1@0", "1@1", "1@2"],
  "gateControlList": [
    {"gateMask": 1, "interval": "300us"},
    {"gateMask": 2, "interval": "300us"}
  ],
  "baseTime": {"policy": "now", "margin": "20ms"},
  "clock": "CLOCK_TAI",
  "mode": "software"
}`

func probe(t *testing.T, n *qdisctest.NIC) qdisctest.Traffic {
	t.Helper()
	return n.Send(t, qdisctest.ProbePrios, 30, time.Millisecond, 50*time.Millisecond)
}

// The driver's schedule on a NIC, stopped by an event (another process's
// clsact, a link flap, the carrier lost): without the guard it stays
// stopped; with it, the schedule is built anew with its base time and
// traffic goes through the gates again. (A qdisc grafted under the driver's
// taprio stops it too, but makes the tree someone else's: the guard leaves
// it, and the next claim's Acquire rebuilds it.)
func TestKernelGuardRepairsStoppedSchedule(t *testing.T) {
	events := []struct {
		name  string
		event string
		do    func(t *testing.T, n *qdisctest.NIC, c *qdisc.Client)
		undo  func(t *testing.T, n *qdisctest.NIC)
	}{
		{"clsact added", eventQdisc, func(t *testing.T, n *qdisctest.NIC, _ *qdisc.Client) { n.AddClsact(t) },
			func(t *testing.T, n *qdisctest.NIC) { n.DeleteClsact(t) }},
		{"tsn0 down and up", eventLinkDown, func(t *testing.T, n *qdisctest.NIC, _ *qdisc.Client) {
			n.SetUp(t, qdisctest.Name, false)
			n.SetUp(t, qdisctest.Name, true)
		}, nil},
		{"carrier lost and back", eventCarrier, func(t *testing.T, n *qdisctest.NIC, _ *qdisc.Client) {
			n.SetUp(t, qdisctest.Peer, false)
			time.Sleep(100 * time.Millisecond)
			n.SetUp(t, qdisctest.Peer, true)
		}, nil},
	}
	for _, ev := range events {
		t.Run(ev.name, func(t *testing.T) {
			n := qdisctest.NewNIC(t, 4)
			n.RequireKinds(t, "taprio")
			_, ctx := ktesting.NewTestContext(t)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var sched schedule.Schedule
			if err := json.Unmarshal([]byte(probeSchedule), &sched); err != nil {
				t.Fatal(err)
			}
			cfg := config.NIC{Name: "nic0", Schedule: sched}
			qs := NewQdiscSchedules(n.Client, func(name string) (config.NIC, bool) { return cfg, name == "nic0" })
			s := New(noRestorers{}, qs)
			if err := s.Acquire(ctx, guarded, "c1"); err != nil {
				t.Fatal(err)
			}
			first := rootOf(t, n.Client)
			tp := first.Qdisc.(*qdisc.Taprio)
			qdisctest.WaitStarted(t, tp)
			if tr := probe(t, n); tr.ProbeGates() != qdisctest.GatesRunning {
				t.Fatalf("after Acquire the schedule is %s: %s", tr.ProbeGates(), tr)
			}

			// Without the guard: stopped, and it stays so.
			ev.do(t, n, n.Client)
			n.WaitRunning(t)
			tr := probe(t, n)
			t.Logf("%s, no guard: gates %s: %s", ev.name, tr.ProbeGates(), tr)
			if tr.ProbeGates() != qdisctest.GatesStopped {
				t.Fatalf("without the guard the schedule is %s after %s, want stopped", tr.ProbeGates(), ev.name)
			}
			if ev.undo != nil {
				ev.undo(t, n)
			}
			// A claim's Acquire does not notice: the schedule dumps as applied.
			if err := s.Acquire(ctx, guarded, "c2"); err != nil {
				t.Fatal(err)
			}
			if r := rootOf(t, n.Client); r.Handle != first.Handle {
				t.Fatalf("Acquire rebuilt the schedule (%s -> %s)", first.Handle, r.Handle)
			}

			reg := prometheus.NewRegistry()
			m := NewGuardMetrics(reg)
			port, err := n.Client.PortID()
			if err != nil {
				t.Fatal(err)
			}
			g := NewGuard(s, WithGuardNetNS(n.NS), WithOwnPort(port), WithSettle(100*time.Millisecond), WithGuardMetrics(m))
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("guard: %v", err)
				}
			}()
			<-g.Ready()
			start := time.Now()
			ev.do(t, n, n.Client)
			deadline := time.Now().Add(10 * time.Second)
			var repaired *qdisc.Installed
			for {
				// Mid-repair the root is the kernel's default for a moment.
				if r := rootOf(t, n.Client); r != nil && r.Kind == "taprio" && r.Handle != first.Handle {
					repaired = r
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no repair 10 s after %s", ev.name)
				}
				time.Sleep(10 * time.Millisecond)
			}
			tp2 := repaired.Qdisc.(*qdisc.Taprio)
			if tp2.BaseTime != tp.BaseTime {
				t.Errorf("the repair moved the base time %d -> %d", tp.BaseTime, tp2.BaseTime)
			}
			took := time.Since(start)
			n.WaitRunning(t) // and the neighbour a link flap flushed back
			tr = probe(t, n)
			t.Logf("%s, guard: repaired (%s -> %s) %s after the event; gates %s: %s", ev.name, first.Handle, repaired.Handle, took.Round(time.Millisecond), tr.ProbeGates(), tr)
			if tr.ProbeGates() != qdisctest.GatesRunning {
				t.Fatalf("after the repair the schedule is %s, want running", tr.ProbeGates())
			}
			if v := testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultRepaired))); v != 1 {
				t.Errorf("repairs{result=repaired} = %v, want 1", v)
			}
			if v := testutil.ToFloat64(m.events.WithLabelValues("nic0", ev.event)); v < 1 {
				t.Errorf("deactivations{event=%s} = %v", ev.event, v)
			}
		})
	}
}

// A schedule that still runs after an event (traffic leaves through it) is
// not rebuilt; neither is a root somebody else put on the NIC.
func TestKernelGuardLeavesRunningAndForeignSchedules(t *testing.T) {
	n := qdisctest.NewNIC(t, 4)
	n.RequireKinds(t, "taprio")
	_, ctx := ktesting.NewTestContext(t)
	var sched schedule.Schedule
	if err := json.Unmarshal([]byte(probeSchedule), &sched); err != nil {
		t.Fatal(err)
	}
	cfg := config.NIC{Name: "nic0", Schedule: sched}
	qs := NewQdiscSchedules(n.Client, func(name string) (config.NIC, bool) { return cfg, name == "nic0" })
	s := New(noRestorers{}, qs)
	if err := s.Acquire(ctx, guarded, "c1"); err != nil {
		t.Fatal(err)
	}
	first := rootOf(t, n.Client)
	qdisctest.WaitStarted(t, first.Qdisc.(*qdisc.Taprio))

	// Nothing stopped it, and traffic flows while it is checked.
	since := time.Now()
	sent := make(chan qdisctest.Traffic, 1)
	go func() { sent <- probe(t, n) }()
	time.Sleep(5 * time.Millisecond)
	r, err := s.Repair(ctx, qdisctest.Name, since, "test")
	<-sent
	if err != nil || r != ResultRunning {
		t.Fatalf("repair of a running schedule with traffic: %s %v, want %s", r, err, ResultRunning)
	}
	// An event from before the schedule was built did not stop it.
	if r, err := s.Repair(ctx, qdisctest.Name, since.Add(-time.Hour), "test"); err != nil || r != ResultRebuilt {
		t.Fatalf("repair after an event older than the schedule: %s %v, want %s", r, err, ResultRebuilt)
	}
	// Somebody replaces the root with their own taprio: left alone.
	other := first.Qdisc.(*qdisc.Taprio)
	mine := *other
	mine.Entries, mine.CycleTime = []qdisc.GateEntry{{GateMask: 0x7, Interval: 500000}}, 0
	if err := n.Client.Apply(ctx, qdisctest.Name, qdisc.Config{Root: &mine}); err != nil {
		t.Fatal(err)
	}
	before := rootOf(t, n.Client)
	if r, err := s.Repair(ctx, qdisctest.Name, time.Now(), "test"); err != nil || r != ResultNotOurs {
		t.Fatalf("repair of someone else's schedule: %s %v, want %s", r, err, ResultNotOurs)
	}
	if after := rootOf(t, n.Client); after.Handle != before.Handle {
		t.Fatalf("someone else's root was replaced: %s -> %s", before.Handle, after.Handle)
	}
}
