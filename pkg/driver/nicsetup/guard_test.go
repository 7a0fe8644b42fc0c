package nicsetup

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc/qdisctest"
)

// repairFake is a Schedules and Repairer that records checks and re-applies.
type repairFake struct {
	mu        sync.Mutex
	verdict   Result
	idle      bool
	checkErr  error
	checks    []time.Time // since of each Check
	windows   []time.Duration
	reapplied int
	// onCheck runs inside Check, without the setup's lock.
	onCheck func()
}

func (f *repairFake) Apply(context.Context, NIC) error  { return nil }
func (f *repairFake) Remove(context.Context, NIC) error { return nil }

func (f *repairFake) Check(_ context.Context, _ NIC, since time.Time, window time.Duration) (Verdict, error) {
	if f.onCheck != nil {
		f.onCheck()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, since)
	f.windows = append(f.windows, window)
	return Verdict{Result: f.verdict, Detail: "fake", Idle: f.idle}, f.checkErr
}

func (f *repairFake) Reapply(context.Context, NIC) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reapplied++
	return nil
}

func (f *repairFake) counts() (checks, reapplied int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.checks), f.reapplied
}

type noRestorers struct{}

func (noRestorers) EnsureRestorer(context.Context, string) error { return nil }
func (noRestorers) RemoveRestorer(context.Context, string) error { return nil }

var guarded = NIC{Name: "nic0", Interface: qdisctest.Name, ApplySchedule: true}

func TestSetupRepair(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := &repairFake{verdict: ResultRepaired}
	s := New(noRestorers{}, f)
	if r, err := s.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultNotWatched || err != nil {
		t.Fatalf("repair of an unclaimed NIC: %s %v", r, err)
	}
	if err := s.Acquire(ctx, guarded, "c1"); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultRepaired || err != nil {
		t.Fatalf("repair: %s %v", r, err)
	}
	if _, n := f.counts(); n != 1 {
		t.Fatalf("%d re-applies, want 1", n)
	}
	// A schedule that still runs (or is not the driver's) is left alone.
	f.verdict = ResultRunning
	if r, _ := s.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultRunning {
		t.Fatalf("repair of a running schedule: %s", r)
	}
	f.verdict, f.checkErr = ResultFailed, errors.New("boom")
	if r, err := s.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultFailed || err == nil {
		t.Fatalf("failed check: %s %v", r, err)
	}
	if _, n := f.counts(); n != 1 {
		t.Fatalf("%d re-applies, want still 1", n)
	}
	// The last claim goes while the schedule is checked: nothing is re-applied.
	f.verdict, f.checkErr = ResultRepaired, nil
	f.onCheck = func() {
		if err := s.Release(ctx, "nic0", "c1"); err != nil {
			t.Error(err)
		}
	}
	if r, _ := s.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultNotWatched {
		t.Fatalf("repair of a NIC released during the check: %s", r)
	}
	if _, n := f.counts(); n != 1 {
		t.Fatalf("%d re-applies, want still 1", n)
	}
	f.onCheck = nil
	// An external schedule owner's NIC is never watched.
	s2 := New(noRestorers{}, f)
	if err := s2.Acquire(ctx, NIC{Name: "nic0", Interface: qdisctest.Name}, "c1"); err != nil {
		t.Fatal(err)
	}
	if r, _ := s2.Repair(ctx, guarded.Interface, time.Now(), "qdisc x1"); r != ResultNotWatched {
		t.Fatalf("repair with scheduleOwner external: %s", r)
	}
}

// The guard turns rtnetlink notifications into one check per burst, only
// for NICs a claim uses, and not for the driver's own qdisc changes. Runs as
// root on any kernel with clsact (the host's too).
func TestGuardEvents(t *testing.T) {
	n := qdisctest.NewNIC(t, 4)
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	f := &repairFake{verdict: ResultRepaired}
	s := New(noRestorers{}, f)
	if err := s.Acquire(ctx, guarded, "c1"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewGuardMetrics(reg)
	port, err := n.Client.PortID()
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(s, WithGuardNetNS(n.NS), WithOwnPort(port), WithSettle(50*time.Millisecond), WithGuardMetrics(m))
	started := time.Now()
	startGuard(t, ctx, cancel, g)

	repairs := 0
	wait := func(t *testing.T, what string) {
		t.Helper()
		repairs++
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, r := f.counts(); r == repairs {
				break
			} else if r > repairs {
				t.Fatalf("%d repairs, want %d: the burst was not handled once", r, repairs)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no repair after %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The claim came before the guard: its NIC is checked once as the guard
	// begins to watch it, for a stop nobody saw.
	wait(t, "the guard's start")
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultAdoptedRepaired))) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("repairs{result=adopted_repaired} not 1 after the guard's start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if f.checks[0].Before(started) {
		t.Errorf("check of the adopted NIC since %v, before the guard started (%v): events then were not missed", f.checks[0], started)
	}
	if f.windows[0] != adoptEvidenceWindow {
		t.Errorf("check of the adopted NIC watched traffic for at least %s, want %s", f.windows[0], adoptEvidenceWindow)
	}
	expect := func(t *testing.T, event string) {
		t.Helper()
		wait(t, event)
		if v := testutil.ToFloat64(m.events.WithLabelValues("nic0", event)); v < 1 {
			t.Errorf("deactivations{event=%s} = %v", event, v)
		}
		time.Sleep(150 * time.Millisecond) // nothing more comes of it
		if _, r := f.counts(); r != repairs {
			t.Fatalf("%d repairs after %s, want %d", r, event, repairs)
		}
	}
	expectNone := func(t *testing.T, what string) {
		t.Helper()
		time.Sleep(300 * time.Millisecond)
		if _, r := f.counts(); r != repairs {
			t.Fatalf("%s: %d repairs, want %d", what, r, repairs)
		}
	}

	before := time.Now()
	n.AddClsact(t)
	expect(t, eventQdisc)
	if f.checks[1].Before(before) {
		t.Errorf("check since %v, before the event (%v)", f.checks[1], before)
	}
	if f.windows[1] != 0 {
		t.Errorf("check after an event watched traffic for at least %s, want the default (two cycles, 20 ms at least)", f.windows[1])
	}
	// The driver's own change (its qdisc client's port) is not an event.
	if err := n.Client.Delete(n.Index(t), qdisc.Handle(0xfffffff1)); err != nil {
		t.Fatal(err)
	}
	expectNone(t, "the driver's own qdisc change")

	n.SetUp(t, qdisctest.Name, false)
	time.Sleep(100 * time.Millisecond) // down for longer than the settle time: still one check, once up
	n.SetUp(t, qdisctest.Name, true)
	expect(t, eventLinkDown)

	n.SetUp(t, qdisctest.Peer, false)
	time.Sleep(100 * time.Millisecond)
	n.SetUp(t, qdisctest.Peer, true)
	expect(t, eventCarrier)

	n.SetTxQueueLen(t, 500)
	expect(t, eventTxQueueLen)

	if got := testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultRepaired))); got != float64(repairs-1) {
		t.Errorf("repairs{result=repaired} = %v, want %d", got, repairs-1)
	}

	// Without a claim the NIC is not watched.
	if err := s.Release(ctx, "nic0", "c1"); err != nil {
		t.Fatal(err)
	}
	n.AddClsact(t)
	expectNone(t, "an event on a NIC without claims")
}

// startGuard runs g until the test ends and waits until it has subscribed.
func startGuard(t *testing.T, ctx context.Context, cancel context.CancelFunc, g *Guard) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("guard: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("guard stopped: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("guard not subscribed after 5 s")
	}
}

func TestSetupRepairAdopted(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := &repairFake{}
	s := New(noRestorers{}, f)
	if r, err := s.RepairAdopted(ctx, guarded.Interface, time.Now(), ""); r != ResultNotWatched || err != nil {
		t.Fatalf("check of an unclaimed NIC: %s %v", r, err)
	}
	if err := s.Acquire(ctx, guarded, "c1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		verdict   Result
		idle      bool
		err       error
		want      Result
		reapplied int
	}{
		{ResultRepaired, false, nil, ResultAdoptedRepaired, 1},
		{ResultRepaired, true, nil, ResultAdoptedIdle, 1},
		{ResultRunning, false, nil, ResultAdoptedRunning, 0},
		{ResultRebuilt, false, nil, ResultAdoptedBuilt, 0},
		{ResultNotOurs, false, nil, ResultAdoptedNotOurs, 0},
		{ResultNoGateTimer, false, nil, ResultAdoptedNoGateTimer, 0},
		{ResultFailed, false, errors.New("boom"), ResultAdoptedFailed, 0},
	} {
		f.verdict, f.idle, f.checkErr = c.verdict, c.idle, c.err
		_, before := f.counts()
		r, err := s.RepairAdopted(ctx, guarded.Interface, time.Now(), "")
		if r != c.want || (err != nil) != (c.err != nil) {
			t.Errorf("verdict %s (idle %v): %s %v, want %s", c.verdict, c.idle, r, err, c.want)
		}
		if _, after := f.counts(); after-before != c.reapplied {
			t.Errorf("verdict %s (idle %v): %d re-applies, want %d", c.verdict, c.idle, after-before, c.reapplied)
		}
	}
}

// The guard checks a NIC once when it begins to watch it: the first claim
// on it, a claim again after the last one went; not for a second claim on a
// watched NIC, nor for a NIC whose schedule is someone else's, and not
// before its link is up. Root, any kernel with clsact (the host's too).
func TestGuardAdopts(t *testing.T) {
	n := qdisctest.NewNIC(t, 4)
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	f := &repairFake{verdict: ResultRunning}
	s := New(noRestorers{}, f)
	reg := prometheus.NewRegistry()
	m := NewGuardMetrics(reg)
	port, err := n.Client.PortID()
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(s, WithGuardNetNS(n.NS), WithOwnPort(port), WithSettle(50*time.Millisecond), WithGuardMetrics(m))
	startGuard(t, ctx, cancel, g)

	checks := 0
	expect := func(t *testing.T, what string, since time.Time) {
		t.Helper()
		checks++
		deadline := time.Now().Add(5 * time.Second)
		for {
			if c, _ := f.counts(); c == checks {
				break
			} else if c > checks {
				t.Fatalf("%s: %d checks, want %d", what, c, checks)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no check", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		f.mu.Lock()
		got := f.checks[checks-1]
		f.mu.Unlock()
		if got.Before(since) {
			t.Errorf("%s: checked since %v, before watching began (%v)", what, got, since)
		}
		// Counted once the check returns.
		for testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultAdoptedRunning))) != float64(checks) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: repairs{result=adopted_still_running} = %v, want %d", what,
					testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultAdoptedRunning))), checks)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	expectNone := func(t *testing.T, what string) {
		t.Helper()
		time.Sleep(300 * time.Millisecond)
		if c, _ := f.counts(); c != checks {
			t.Fatalf("%s: %d checks, want %d", what, c, checks)
		}
	}

	before := time.Now()
	if err := s.Acquire(ctx, guarded, "c1"); err != nil {
		t.Fatal(err)
	}
	expect(t, "the first claim", before)
	if err := s.Acquire(ctx, guarded, "c2"); err != nil {
		t.Fatal(err)
	}
	expectNone(t, "a second claim on a watched NIC")
	if err := s.Acquire(ctx, NIC{Name: "nic1", Interface: qdisctest.Peer}, "c1"); err != nil {
		t.Fatal(err)
	}
	expectNone(t, "a claim on a NIC whose schedule is someone else's")

	for _, uid := range []string{"c1", "c2"} {
		if err := s.Release(ctx, "nic0", uid); err != nil {
			t.Fatal(err)
		}
	}
	n.SetUp(t, qdisctest.Name, false) // unwatched: no event
	before = time.Now()
	if err := s.Acquire(ctx, guarded, "c3"); err != nil {
		t.Fatal(err)
	}
	expectNone(t, "a claim again, the link down")
	n.SetUp(t, qdisctest.Name, true)
	expect(t, "a claim again, the link back up", before)
	if v := testutil.ToFloat64(m.repairs.WithLabelValues("nic0", string(ResultRunning))); v != 0 {
		t.Errorf("repairs{result=still_running} = %v: an adoption counted as an event's check", v)
	}
}
