package qdisc_test

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc/qdisctest"
)

// probe sends a burst through the probe schedule: 30 datagrams per priority,
// one round per ms, and 50 ms for the gates to let them out.
func probe(t *testing.T, n *qdisctest.NIC) qdisctest.Traffic {
	t.Helper()
	return n.Send(t, qdisctest.ProbePrios, 30, time.Millisecond, 50*time.Millisecond)
}

// TestKernelTaprioStallEvents establishes which events stop a running
// software taprio on this kernel: everything that deactivates the device
// (dev_deactivate) resets the root qdisc, and taprio's reset cancels the
// timer that advances its gate list; nothing starts it again. Each subtest
// checks that the schedule runs, does one thing to the device, and reports
// what traffic shows afterwards (a "STALLFACT" line per event). It fails when
// the schedule did not run before the event, or when the control (nothing
// done) does not run after it.
func TestKernelTaprioStallEvents(t *testing.T) {
	events := []struct {
		name   string
		before func(t *testing.T, n *qdisctest.NIC) // before taprio goes on
		do     func(t *testing.T, n *qdisctest.NIC, root qdisc.Handle)
	}{
		{name: "nothing", do: func(*testing.T, *qdisctest.NIC, qdisc.Handle) {}},
		{name: "clsact added", do: func(t *testing.T, n *qdisctest.NIC, _ qdisc.Handle) { n.AddClsact(t) }},
		{name: "clsact deleted", before: func(t *testing.T, n *qdisctest.NIC) { n.AddClsact(t) },
			do: func(t *testing.T, n *qdisctest.NIC, _ qdisc.Handle) { n.DeleteClsact(t) }},
		{name: "child grafted under taprio", do: func(t *testing.T, n *qdisctest.NIC, root qdisc.Handle) { n.GraftChild(t, root, 3) }},
		{name: "tsn0 down and up", do: func(t *testing.T, n *qdisctest.NIC, _ qdisc.Handle) {
			n.SetUp(t, qdisctest.Name, false)
			n.SetUp(t, qdisctest.Name, true)
		}},
		{name: "carrier lost and back (peer down and up)", do: func(t *testing.T, n *qdisctest.NIC, _ qdisc.Handle) {
			n.SetUp(t, qdisctest.Peer, false)
			time.Sleep(100 * time.Millisecond) // let the link watcher see the carrier go
			n.SetUp(t, qdisctest.Peer, true)
		}},
		{name: "txqueuelen changed", do: func(t *testing.T, n *qdisctest.NIC, _ qdisc.Handle) { n.SetTxQueueLen(t, 500) }},
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	kernel := unix.ByteSliceToString(uts.Release[:])
	var mu sync.Mutex
	facts := map[string]string{}
	for _, ev := range events {
		t.Run(ev.name, func(t *testing.T) {
			n := qdisctest.NewNIC(t, 4)
			n.RequireKinds(t, "taprio")
			_, ctx := ktesting.NewTestContext(t)
			if ev.before != nil {
				ev.before(t, n)
			}
			now, err := qdisc.NowTAI()
			if err != nil {
				t.Fatal(err)
			}
			q, err := qdisctest.ProbeTaprio(now)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Client.Apply(ctx, qdisctest.Name, qdisc.Config{Root: q}); err != nil {
				t.Fatal(err)
			}
			qdisctest.WaitStarted(t, q)
			if tr := probe(t, n); tr.ProbeGates() != qdisctest.GatesRunning {
				t.Fatalf("before the event the schedule is %s, want running: %s", tr.ProbeGates(), tr)
			}
			ev.do(t, n, qdisc.MakeHandle(0x7a50, 0))
			n.WaitRunning(t)
			tr := probe(t, n)
			t.Logf("STALLFACT kernel=%s event=%q gates=%s: %s", kernel, ev.name, tr.ProbeGates(), tr)
			mu.Lock()
			facts[ev.name] = string(tr.ProbeGates())
			mu.Unlock()
			if ev.do == nil || ev.name == "nothing" {
				if tr.ProbeGates() != qdisctest.GatesRunning {
					t.Errorf("with nothing done the schedule is %s: %s", tr.ProbeGates(), tr)
				}
			}
		})
	}
	var lines []string
	for ev, g := range facts {
		lines = append(lines, fmt.Sprintf("%s: %s", ev, g))
	}
	sort.Strings(lines)
	t.Logf("software taprio after each event on %s:\n  %s", kernel, strings.Join(lines, "\n  "))
}

// Apply puts children (etf) under a new taprio, and grafting a child under
// taprio deactivates the device too (taprio_graft): the schedule must run
// all the same once Apply returns.
func TestKernelTaprioRunsWithChildren(t *testing.T) {
	n := qdisctest.NewNIC(t, 4)
	n.RequireKinds(t, "taprio", "etf")
	_, ctx := ktesting.NewTestContext(t)
	now, err := qdisc.NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	q, err := qdisctest.ProbeTaprio(now)
	if err != nil {
		t.Fatal(err)
	}
	etf := &qdisc.ETF{Clock: qdisc.ClockTAI, Delta: 300000, SkipSockCheck: true}
	if err := n.Client.Apply(ctx, qdisctest.Name, qdisc.Config{Root: q, Children: []qdisc.Child{{Queue: 3, Qdisc: etf}}}); err != nil {
		t.Fatal(err)
	}
	qdisctest.WaitStarted(t, q)
	tr := probe(t, n)
	t.Logf("taprio with an etf child: gates %s: %s", tr.ProbeGates(), tr)
	if tr.ProbeGates() != qdisctest.GatesRunning {
		t.Fatalf("the schedule is %s after Apply with a child, want running", tr.ProbeGates())
	}
}

// A failed apply puts the previous taprio and its child back, and that
// schedule runs too.
func TestKernelTaprioRunsAfterRollback(t *testing.T) {
	n := qdisctest.NewNIC(t, 4)
	n.RequireKinds(t, "taprio", "etf")
	_, ctx := ktesting.NewTestContext(t)
	now, err := qdisc.NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	q, err := qdisctest.ProbeTaprio(now)
	if err != nil {
		t.Fatal(err)
	}
	etf := &qdisc.ETF{Clock: qdisc.ClockTAI, Delta: 300000, SkipSockCheck: true}
	if err := n.Client.Apply(ctx, qdisctest.Name, qdisc.Config{Root: q, Children: []qdisc.Child{{Queue: 3, Qdisc: etf}}}); err != nil {
		t.Fatal(err)
	}
	other, err := qdisctest.ProbeTaprio(now)
	if err != nil {
		t.Fatal(err)
	}
	other.Entries[0].Interval = 200000
	bad := &qdisc.ETF{Clock: qdisc.ClockTAI, Delta: 100000, Offload: true} // veth refuses it
	err = n.Client.Apply(ctx, qdisctest.Name, qdisc.Config{Root: other, Children: []qdisc.Child{{Queue: 3, Qdisc: etf}, {Queue: 2, Qdisc: bad}}})
	if err == nil || !strings.Contains(err.Error(), "previous qdiscs restored") {
		t.Fatalf("failing apply: %v, want the previous qdiscs restored", err)
	}
	qdisctest.WaitStarted(t, q)
	tr := probe(t, n)
	t.Logf("restored taprio with an etf child: gates %s: %s", tr.ProbeGates(), tr)
	if tr.ProbeGates() != qdisctest.GatesRunning {
		t.Fatalf("the restored schedule is %s, want running", tr.ProbeGates())
	}
}
