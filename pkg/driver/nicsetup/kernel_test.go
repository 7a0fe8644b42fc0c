package nicsetup

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"runtime"
	"sync"
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
// stopped; a guard started then finds it in its first check of the NIC;
// after an event the guard sees, the schedule is built anew with its base
// time and traffic goes through the gates again. (A qdisc grafted under the driver's
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
			// The guard begins to watch a NIC whose schedule stopped
			// unseen: its first check finds it and builds it anew.
			// (Idle when the event flushed the queue: clsact's delete.)
			if r := waitAdopted(t, m, "nic0"); r != ResultAdoptedRepaired && r != ResultAdoptedIdle {
				t.Fatalf("the guard's first check = %s, want %s or %s", r, ResultAdoptedRepaired, ResultAdoptedIdle)
			}
			adopted := waitRebuilt(t, n.Client, first.Handle, "the guard's start")
			if tr := probe(t, n); tr.ProbeGates() != qdisctest.GatesRunning {
				t.Fatalf("after the guard's first check the schedule is %s: %s", tr.ProbeGates(), tr)
			}
			first = adopted
			start := time.Now()
			ev.do(t, n, n.Client)
			repaired := waitRebuilt(t, n.Client, first.Handle, ev.name)
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

// waitRebuilt waits up to 10 s for a taprio root other than old, and for
// its gate timer to have started, and returns it.
func waitRebuilt(t *testing.T, c *qdisc.Client, old qdisc.Handle, after string) *qdisc.Installed {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Mid-repair the root is the kernel's default for a moment.
		if r := rootOf(t, c); r != nil && r.Kind == "taprio" && r.Handle != old {
			waitGated()
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("no repair 10 s after %s", after)
		}
		time.Sleep(10 * time.Millisecond)
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
	stop := trafficFlowing(t, n)
	r, err := s.Repair(ctx, qdisctest.Name, since, "test")
	stop()
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

// waitGated waits until a taprio just built has reached its first cycle
// boundary: until its timer first fires it has no current entry, which
// 6.1 and 6.12 alike read as every gate open (taprio_dequeue_from_txq).
// That takes at most one cycle (600 us here), but a loaded TCG VM fires
// timers late: seen on 6.12, 2 datagrams of the never-open class left
// right after a rebuild.
func waitGated() { time.Sleep(50 * time.Millisecond) }

// adoptedResults are the results of the check of a NIC the guard begins to watch.
var adoptedResults = []Result{ResultAdoptedRepaired, ResultAdoptedIdle, ResultAdoptedRunning, ResultAdoptedBuilt,
	ResultAdoptedNotOurs, ResultAdoptedNoGateTimer, ResultAdoptedFailed}

// waitAdopted waits up to 10 s for the check of an adopted NIC and returns
// its result (the one adopted_ counter that went to 1).
func waitAdopted(t *testing.T, m *GuardMetrics, nic string) Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []Result
		for _, r := range adoptedResults {
			if v := testutil.ToFloat64(m.repairs.WithLabelValues(nic, string(r))); v > 0 {
				got = append(got, r)
			}
		}
		switch {
		case len(got) > 1:
			t.Fatalf("the adopted NIC was checked more than once: %v", got)
		case len(got) == 1:
			return got[0]
		case time.Now().After(deadline):
			t.Fatal("the adopted NIC was not checked within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openPrios are the classes of probeSchedule whose gates open: traffic on
// them alone leaves nothing queued behind a running schedule.
var openPrios = []int{0, 1}

// trafficFlowing sends datagrams of the open classes through tsn0 until the
// returned stop is called; it returns once packets are seen leaving the
// root qdisc (under a loaded TCG VM a sender can take longer to start than a
// check's window).
func trafficFlowing(t *testing.T, n *qdisctest.NIC) (stop func()) {
	t.Helper()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			// Long bursts: between two, the sender pauses (a new socket,
			// counters read), and a packet that waits behind a closed gate
			// leaves only when the next one comes (taprio does not wake a
			// queue when its gate opens), so a pause longer than a check's
			// window looks like a stopped schedule.
			n.Send(t, openPrios, 200, time.Millisecond, 0)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	start := rootOf(t, n.Client).Stats.Packets
	for deadline := time.Now().Add(5 * time.Second); rootOf(t, n.Client).Stats.Packets == start; {
		if time.Now().After(deadline) {
			t.Fatal("no packet left tsn0's root within 5 s of sending")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return stop
}

// quiet turns IPv6 off on tsn0: the kernel's own router solicitations and
// MLD reports would be traffic on a NIC meant to be idle (seen: an "idle"
// NIC's check found packets leaving).
func quiet(t *testing.T, n *qdisctest.NIC) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(n.NS); err != nil {
		t.Fatal(err)
	}
	// /proc/sys/net is the namespace of the thread that opens it.
	werr := os.WriteFile("/proc/sys/net/ipv6/conf/"+qdisctest.Name+"/disable_ipv6", []byte("1"), 0)
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's netns: %v", err) // the thread stays locked and dies
	}
	runtime.UnlockOSThread()
	if werr != nil && !errors.Is(werr, fs.ErrNotExist) {
		t.Fatalf("disable IPv6 on %s: %v", qdisctest.Name, werr)
	}
}

// A schedule stopped while the daemon was down sends the next daemon's
// guard no event. The guard checks each NIC it begins to watch once: a
// stopped schedule (traffic waits behind its gates) is built anew with its
// base time, whether the guard started before the claims were resumed (the
// daemon's order) or after; one that nothing stopped and that carries
// traffic is left alone; an idle one cannot be told from a stopped one and
// is built anew to be sure.
func TestKernelGuardRepairsScheduleStoppedWhileDown(t *testing.T) {
	cases := []struct {
		name string
		// whileDown happens while no daemon runs; nil: nothing.
		whileDown func(t *testing.T, n *qdisctest.NIC)
		// guardFirst: the new guard runs before the claim is resumed.
		guardFirst bool
		// traffic: packets of the open classes flow during the check.
		traffic bool
		want    Result
	}{
		{"tsn0 down and up, guard then resume", func(t *testing.T, n *qdisctest.NIC) {
			n.SetUp(t, qdisctest.Name, false)
			n.SetUp(t, qdisctest.Name, true)
		}, true, false, ResultAdoptedRepaired},
		{"clsact added, resume then guard", func(t *testing.T, n *qdisctest.NIC) { n.AddClsact(t) }, false, false, ResultAdoptedRepaired},
		{"nothing, traffic flowing", nil, true, true, ResultAdoptedRunning},
		{"nothing, idle", nil, true, false, ResultAdoptedIdle},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := qdisctest.NewNIC(t, 4)
			n.RequireKinds(t, "taprio")
			quiet(t, n)
			_, ctx := ktesting.NewTestContext(t)
			var sched schedule.Schedule
			if err := json.Unmarshal([]byte(probeSchedule), &sched); err != nil {
				t.Fatal(err)
			}
			cfg := config.NIC{Name: "nic0", Schedule: sched}
			nics := func(name string) (config.NIC, bool) { return cfg, name == "nic0" }
			// daemon starts a setup and its guard over client c, the
			// guard first or the claim first.
			type daemon struct {
				setup  *Setup
				m      *GuardMetrics
				stop   func()
				resume time.Time
			}
			start := func(c *qdisc.Client, guardFirst bool) *daemon {
				d := &daemon{setup: New(noRestorers{}, NewQdiscSchedules(c, nics)), m: NewGuardMetrics(prometheus.NewRegistry())}
				port, err := c.PortID()
				if err != nil {
					t.Fatal(err)
				}
				g := NewGuard(d.setup, WithGuardNetNS(n.NS), WithOwnPort(port), WithSettle(100*time.Millisecond), WithGuardMetrics(d.m))
				gctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				ran := false
				run := func() {
					ran = true
					go func() { done <- g.Run(gctx) }()
					select {
					case <-g.Ready():
					case err := <-done:
						ran = false
						t.Fatalf("guard: %v", err)
					}
				}
				var once sync.Once
				d.stop = func() {
					once.Do(func() {
						cancel()
						if !ran {
							return
						}
						if err := <-done; err != nil {
							t.Errorf("guard: %v", err)
						}
					})
				}
				t.Cleanup(d.stop)
				if guardFirst {
					run()
				}
				d.resume = time.Now()
				if err := d.setup.Acquire(ctx, guarded, "c1"); err != nil {
					t.Fatal(err)
				}
				if !guardFirst {
					run()
				}
				return d
			}

			// The first daemon builds the schedule; its guard's check of
			// the NIC finds it built by this process.
			d1 := start(n.Client, true)
			if r := waitAdopted(t, d1.m, "nic0"); r != ResultAdoptedBuilt {
				t.Fatalf("first daemon: the check of the NIC it built the schedule on = %s, want %s", r, ResultAdoptedBuilt)
			}
			first := rootOf(t, n.Client)
			tp := first.Qdisc.(*qdisc.Taprio)
			qdisctest.WaitStarted(t, tp)
			if tr := n.Send(t, openPrios, 30, time.Millisecond, 50*time.Millisecond); tr.ProbeGates() != qdisctest.GatesRunning {
				t.Fatalf("first daemon: the schedule is %s: %s", tr.ProbeGates(), tr)
			}

			// The daemon goes down; the NIC may be deactivated meanwhile.
			d1.stop()
			if tc.whileDown != nil {
				tc.whileDown(t, n)
				n.WaitRunning(t)
				tr := n.Send(t, openPrios, 30, time.Millisecond, 50*time.Millisecond)
				t.Logf("while down: gates %s: %s", tr.ProbeGates(), tr)
				if tr.ProbeGates() != qdisctest.GatesStopped {
					t.Fatalf("while the daemon was down the schedule is %s, want stopped", tr.ProbeGates())
				}
			}

			// The next daemon: a new client (a new netlink port), setup and
			// guard over the same NIC; the resumed claim adopts the tree.
			c2, err := qdisc.NewClient(qdisc.WithNetNS(n.NS))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c2.Close)
			stopTraffic := func() {}
			if tc.traffic {
				stopTraffic = trafficFlowing(t, n)
			}
			d2 := start(c2, tc.guardFirst)
			if r := rootOf(t, c2); r.Handle != first.Handle {
				t.Fatalf("the resumed claim rebuilt the schedule (%s -> %s): nothing would be adopted", first.Handle, r.Handle)
			}
			got := waitAdopted(t, d2.m, "nic0")
			took := time.Since(d2.resume)
			stopTraffic()
			if got != tc.want {
				t.Fatalf("the check of the adopted NIC = %s, want %s", got, tc.want)
			}
			if v := testutil.CollectAndCount(d2.m.events); v != 0 {
				t.Errorf("the second daemon counted %d deactivation series: it saw events from while it was down", v)
			}
			r := rootOf(t, c2)
			if tc.want == ResultAdoptedRunning {
				if r.Handle != first.Handle {
					t.Fatalf("a running schedule was rebuilt (%s -> %s)", first.Handle, r.Handle)
				}
			} else {
				if r.Kind != "taprio" || r.Handle == first.Handle {
					t.Fatalf("root after the check %v, want a new taprio (was %s)", r, first.Handle)
				}
				if tp2 := r.Qdisc.(*qdisc.Taprio); tp2.BaseTime != tp.BaseTime {
					t.Errorf("the rebuild moved the base time %d -> %d", tp.BaseTime, tp2.BaseTime)
				}
			}
			waitGated()
			n.WaitRunning(t)
			tr := probe(t, n)
			t.Logf("%s: %s %s after the claim was resumed (root %s -> %s); gates %s: %s", tc.name, got, took.Round(time.Millisecond), first.Handle, r.Handle, tr.ProbeGates(), tr)
			if tr.ProbeGates() != qdisctest.GatesRunning || tr.Sent[0] != 30 || tr.Sent[1] != 30 {
				t.Fatalf("after the check the schedule is %s, want running with 30/30 sent through classes 0 and 1: %s", tr.ProbeGates(), tr)
			}
		})
	}
}
