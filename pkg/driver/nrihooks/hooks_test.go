package nrihooks_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks/nritest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

// fakePlans is a PlanSource over a map.
type fakePlans struct {
	mu    sync.Mutex
	plans map[string]nrihooks.PodPlan
}

func (f *fakePlans) PodPlan(uid string) (nrihooks.PodPlan, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.plans[uid]
	return p, ok
}

func (f *fakePlans) set(uid string, p nrihooks.PodPlan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plans[uid] = p
}

// fakeSavers records attach/detach calls and keeps what is attached. An
// attach of a pod with a gate (hold) blocks until the test lets it go.
type fakeSavers struct {
	mu        sync.Mutex
	attached  map[string]datapath.SaverInfo
	calls     []string
	attachErr error
	gates     map[string]*gate
	// delay, if set, is asked how long each attach takes and whether it fails.
	delay func(uid string) (time.Duration, error)
}

// gate holds the attaches of one pod: each one says it entered, then waits
// for a result from release (nil: attach) or for the gate to open.
type gate struct {
	entered chan struct{}
	release chan error
	opened  chan struct{}
	once    sync.Once
}

func (g *gate) open() { g.once.Do(func() { close(g.opened) }) }

// waitEntered waits until an attach is blocked in the gate.
func (g *gate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no attach reached the gate within 10s")
	}
}

// hold makes the pod's attaches block until released; the gate opens at the
// end of the test.
func (f *fakeSavers) hold(t *testing.T, uid string) *gate {
	g := &gate{entered: make(chan struct{}, 16), release: make(chan error), opened: make(chan struct{})}
	f.mu.Lock()
	if f.gates == nil {
		f.gates = map[string]*gate{}
	}
	f.gates[uid] = g
	f.mu.Unlock()
	t.Cleanup(g.open)
	return g
}

func (f *fakeSavers) AttachSaver(_ context.Context, uid, netns, ifname string, p datapath.Policy) error {
	f.mu.Lock()
	f.calls = append(f.calls, "attach "+uid)
	g := f.gates[uid]
	f.mu.Unlock()
	if g != nil {
		g.entered <- struct{}{}
		select {
		case err := <-g.release:
			if err != nil {
				return err
			}
		case <-g.opened:
		}
	}
	f.mu.Lock()
	delay := f.delay
	f.mu.Unlock()
	if delay != nil {
		d, err := delay(uid)
		time.Sleep(d)
		if err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attachErr != nil {
		return f.attachErr
	}
	f.attached[uid] = datapath.SaverInfo{PodUID: uid, NetnsPath: netns, Ifname: ifname, Policy: p}
	return nil
}

func (f *fakeSavers) DetachSaver(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "detach "+uid)
	delete(f.attached, uid)
	return nil
}

func (f *fakeSavers) Savers() ([]datapath.SaverInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []datapath.SaverInfo
	for _, s := range f.attached {
		out = append(out, s)
	}
	return out, nil
}

// takeCalls returns the calls so far, sorted, and forgets them.
func (f *fakeSavers) takeCalls() []string {
	c := f.takeCallsInOrder()
	slices.Sort(c)
	return c
}

// takeCallsInOrder returns the calls so far in the order they came.
func (f *fakeSavers) takeCallsInOrder() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeSavers) get(uid string) (datapath.SaverInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.attached[uid]
	return s, ok
}

func (f *fakeSavers) setAttachErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attachErr = err
}

var plan1 = nrihooks.PodPlan{
	Interface: "eth0",
	Policy:    datapath.Policy{Allowed: []uint32{1}, Action: datapath.ActionDemote},
	Claims:    []string{"default/claim-a"},
}

type env struct {
	plans   *fakePlans
	savers  *fakeSavers
	rt      *nritest.Runtime
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	stopped chan struct{}

	connMu sync.Mutex
	conns  []net.Conn
}

// cutConnections closes the plugin's connections, as a runtime that exits does.
func (e *env) cutConnections() {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	for _, c := range e.conns {
		c.Close()
	}
	e.conns = nil
}

// newEnv starts a runtime with pods and connects the hooks to it.
func newEnv(t *testing.T, plans map[string]nrihooks.PodPlan, attached []datapath.SaverInfo, pods []*api.PodSandbox, opts ...nrihooks.Option) *env {
	t.Helper()
	e := &env{
		plans:   &fakePlans{plans: plans},
		savers:  &fakeSavers{attached: map[string]datapath.SaverInfo{}},
		reg:     prometheus.NewRegistry(),
		stopped: make(chan struct{}),
	}
	for _, s := range attached {
		e.savers.attached[s.PodUID] = s
	}
	socket := filepath.Join(t.TempDir(), "nri.sock")
	e.rt = nritest.StartRuntime(t, socket, pods...)
	h := nrihooks.New(e.plans, e.savers, nrihooks.NewMetrics(e.reg), opts...)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() {
		defer close(e.stopped)
		dial := func(path string) (net.Conn, error) {
			c, err := net.Dial("unix", path)
			if err == nil {
				e.connMu.Lock()
				e.conns = append(e.conns, c)
				e.connMu.Unlock()
			}
			return c, err
		}
		_ = nrihooks.Run(ctx, h, nrihooks.Options{PluginName: "tsn.dra.io", SocketPath: socket, RetryInterval: 100 * time.Millisecond, Dialer: dial})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.stopped:
		case <-time.After(10 * time.Second):
			t.Error("nrihooks.Run did not return within 10s of cancel")
		}
	})
	e.rt.WaitSynced()
	return e
}

func TestRunPodSandboxAttachesPlannedPodsOnly(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil)
	if got := e.savers.takeCalls(); len(got) != 0 {
		t.Fatalf("calls on an empty sync = %v, want none", got)
	}

	// Through CreateContainer: RunPodSandbox alone may return before the
	// attach ends on a loaded machine.
	if err := e.rt.StartPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox + CreateContainer(a): %v", err)
	}
	s, ok := e.savers.get("a")
	if !ok {
		t.Fatal("pod a has no saver after RunPodSandbox")
	}
	if s.NetnsPath != "/var/run/netns/a" || s.Ifname != "eth0" || !slices.Equal(s.Policy.Allowed, []uint32{1}) {
		t.Fatalf("saver of a = %+v, want netns /var/run/netns/a, eth0, allowed [1]", s)
	}

	// A pod without a claim gets nothing and is not even counted.
	if err := e.rt.StartPod(nritest.Sandbox("b", "/var/run/netns/b")); err != nil {
		t.Fatalf("RunPodSandbox + CreateContainer(b): %v", err)
	}
	if got, want := e.savers.takeCalls(), []string{"attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	if n := hookCount(t, e.reg, "RunPodSandbox"); n != 1 {
		t.Fatalf("RunPodSandbox latency samples = %d, want 1 (pod a only)", n)
	}
}

// An attach that ends within RunPodSandbox's budget reports as before: its
// error fails the sandbox. (The budget here is long enough for any machine;
// what an attach that outlives it does is TestSlowAttach's.)
func TestRunPodSandboxFailsClaimedPodThatCannotBeProtected(t *testing.T) {
	bad := plan1
	bad.Err = errors.New("claims contradict")
	e := newEnv(t, map[string]nrihooks.PodPlan{"host": plan1, "a": plan1, "bad": bad}, nil, nil, nrihooks.WithAttachWait(5*time.Second))

	if err := e.rt.RunPod(nritest.Sandbox("bad", "/var/run/netns/bad")); err == nil || !errContains(err, "pod default/pod-bad: claims contradict") {
		t.Fatalf("RunPodSandbox(pod with an unusable plan) = %v, want the plan's error", err)
	}

	err := e.rt.RunPod(nritest.Sandbox("host", ""))
	if err == nil || !errContains(err, "uses the host network") {
		t.Fatalf("RunPodSandbox(host network pod with a claim) = %v, want a host network error", err)
	}

	e.savers.setAttachErr(errors.New("boom"))
	err = e.rt.RunPod(nritest.Sandbox("a", "/var/run/netns/a"))
	if err == nil || !errContains(err, "attach TSN saver to eth0 in pod default/pod-a") || !errContains(err, "boom") {
		t.Fatalf("RunPodSandbox with a failing attach = %v, want the wrapped attach error", err)
	}
	// The sandbox failed: nothing is kept for it, no late attach counted.
	if n := counterValue(t, e.reg, "tsn_dra_nri_late_attaches_total", nil); n != 0 {
		t.Fatalf("late attaches = %v, want 0", n)
	}

	// A fast attach that succeeds: the saver is on when RunPodSandbox returns.
	e.savers.setAttachErr(nil)
	if err := e.rt.RunPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox(a): %v", err)
	}
	if _, ok := e.savers.get("a"); !ok {
		t.Fatal("pod a has no saver when RunPodSandbox returned nil within its budget")
	}
}

func TestStopAndRemoveDetachIdempotently(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil)
	p := nritest.Sandbox("a", "/var/run/netns/a")
	if err := e.rt.StartPod(p); err != nil {
		t.Fatal(err)
	}
	e.savers.takeCalls()
	// The claim may be unprepared before the runtime stops the pod: the
	// saver must go all the same.
	e.plans.mu.Lock()
	delete(e.plans.plans, "a")
	e.plans.mu.Unlock()

	if err := e.rt.StopPod(p); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if err := e.rt.RemovePod(p); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if err := e.rt.StopPod(nritest.Sandbox("never-attached", "/x")); err != nil {
		t.Fatalf("StopPodSandbox of an unknown pod: %v", err)
	}
	if got, want := e.savers.takeCalls(), []string{"detach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	if _, ok := e.savers.get("a"); ok {
		t.Fatal("pod a still has a saver")
	}
}

func TestSynchronizeReconciles(t *testing.T) {
	plans := map[string]nrihooks.PodPlan{"missing": plan1, "ok": plan1}
	attached := []datapath.SaverInfo{
		{PodUID: "ok", NetnsPath: "/var/run/netns/ok", Ifname: "eth0"},
		{PodUID: "gone", NetnsPath: "/var/run/netns/gone", Ifname: "eth0"},
		{PodUID: "unclaimed", NetnsPath: "/var/run/netns/unclaimed", Ifname: "eth0"},
	}
	e := newEnv(t, plans, attached, []*api.PodSandbox{
		nritest.Sandbox("missing", "/var/run/netns/missing"),
		nritest.Sandbox("ok", "/var/run/netns/ok"),
		nritest.Sandbox("unclaimed", "/var/run/netns/unclaimed"),
		nritest.Sandbox("plain", "/var/run/netns/plain")})

	// ok is re-attached (AttachSaver is idempotent and refreshes the policy).
	want := []string{"attach missing", "attach ok", "detach gone", "detach unclaimed"}
	if got := e.savers.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls on sync = %v, want %v", got, want)
	}
	for _, uid := range []string{"missing", "ok"} {
		if _, ok := e.savers.get(uid); !ok {
			t.Errorf("pod %s has no saver after sync", uid)
		}
	}
}

func TestReconnectsAfterRuntimeRestart(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil)
	e.rt.Stop()
	e.cutConnections()

	// While the runtime was down, pod a came up (say, containerd restarted
	// with it): the new connection's Synchronize must attach it.
	rt2 := nritest.StartRuntime(t, e.rt.Socket(), nritest.Sandbox("a", "/var/run/netns/a"))
	rt2.WaitSynced()
	if _, ok := e.savers.get("a"); !ok {
		t.Fatal("pod a has no saver after the runtime came back")
	}
	if err := rt2.StartPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox + CreateContainer after reconnect: %v", err)
	}
}

// hookCount returns how many hook calls of event the latency histogram holds.
func hookCount(t *testing.T, reg *prometheus.Registry, event string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != "tsn_dra_nri_hook_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == event {
					n += m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return n
}

func errContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}

// waitResult waits for a hook's result sent on ch.
func waitResult(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10s", what)
		return nil
	}
}

// notYet fails the test if ch delivers within d: the hook must still wait.
func notYet(t *testing.T, ch <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v) while the pod's attach was still running", what, err)
	case <-time.After(d):
	}
}

// eventually polls cond for up to 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A slow attach: RunPodSandbox returns within its budget, CreateContainer
// blocks until the attach ends, then succeeds; the next container passes at
// once.
func TestSlowAttach(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil, nrihooks.WithAttachWait(20*time.Millisecond))
	g := e.savers.hold(t, "a")
	p := nritest.Sandbox("a", "/var/run/netns/a")

	start := time.Now()
	if err := e.rt.RunPod(p); err != nil {
		t.Fatalf("RunPodSandbox with a slow attach: %v", err)
	}
	g.waitEntered(t)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("RunPodSandbox took %v while the attach was held; want about its 20ms budget", took)
	}
	if _, ok := e.savers.get("a"); ok {
		t.Fatal("saver attached while its attach is held")
	}

	created := make(chan error, 1)
	go func() { created <- e.rt.CreateContainer(p, "app") }()
	notYet(t, created, 200*time.Millisecond, "CreateContainer")
	g.release <- nil
	if err := waitResult(t, created, "CreateContainer"); err != nil {
		t.Fatalf("CreateContainer after the attach ended: %v", err)
	}
	if _, ok := e.savers.get("a"); !ok {
		t.Fatal("CreateContainer succeeded but pod a has no saver")
	}
	if err := e.rt.CreateContainer(p, "sidecar"); err != nil {
		t.Fatalf("second CreateContainer: %v", err)
	}
	if got, want := e.savers.takeCalls(), []string{"attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	// Only the container that waited is in the wait histogram.
	if n := histCount(t, e.reg, "tsn_dra_nri_container_saver_wait_seconds", map[string]string{"result": "attached"}); n != 1 {
		t.Fatalf("container waits (attached) = %d, want 1", n)
	}
	if n := hookCount(t, e.reg, "RunPodSandbox"); n != 1 {
		t.Fatalf("RunPodSandbox samples = %d, want 1", n)
	}
	eventually(t, "one late attach counted (RunPodSandbox, success)", func() bool {
		return counterValue(t, e.reg, "tsn_dra_nri_late_attaches_total", map[string]string{"event": "RunPodSandbox", "result": "success"}) == 1
	})
}

// A slow attach that fails: the waiting container fails with the attach
// error, and the next CreateContainer retries the attach.
func TestSlowAttachThatFails(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil, nrihooks.WithAttachWait(10*time.Millisecond))
	g := e.savers.hold(t, "a")
	p := nritest.Sandbox("a", "/var/run/netns/a")
	if err := e.rt.RunPod(p); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	g.waitEntered(t)

	created := make(chan error, 1)
	go func() { created <- e.rt.CreateContainer(p, "app") }()
	notYet(t, created, 100*time.Millisecond, "CreateContainer")
	g.release <- errors.New("boom")
	err := waitResult(t, created, "CreateContainer")
	if !errContains(err, "container app cannot start without the pod's TSN saver") || !errContains(err, "boom") {
		t.Fatalf("CreateContainer after a failed attach = %v, want an error naming the container and the attach error", err)
	}
	if _, ok := e.savers.get("a"); ok {
		t.Fatal("pod a has a saver after a failed attach")
	}

	// The next container retries the attach, which now succeeds.
	go func() { created <- e.rt.CreateContainer(p, "app") }()
	g.waitEntered(t)
	g.release <- nil
	if err := waitResult(t, created, "CreateContainer (retry)"); err != nil {
		t.Fatalf("CreateContainer retrying the attach: %v", err)
	}
	if _, ok := e.savers.get("a"); !ok {
		t.Fatal("CreateContainer succeeded but pod a has no saver")
	}
	if got, want := e.savers.takeCallsInOrder(), []string{"attach a", "attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	for result, want := range map[string]uint64{"failed": 1, "attached": 1, "timeout": 0} {
		if n := histCount(t, e.reg, "tsn_dra_nri_container_saver_wait_seconds", map[string]string{"result": result}); n != want {
			t.Errorf("container waits (%s) = %d, want %d", result, n, want)
		}
	}
	eventually(t, "one late attach counted (RunPodSandbox, error)", func() bool {
		return counterValue(t, e.reg, "tsn_dra_nri_late_attaches_total", map[string]string{"event": "RunPodSandbox", "result": "error"}) == 1
	})
}

// An attach slower than the container budget: the container fails with an
// error that says so, the next one waits for the same attach (no second
// one), and once it ended containers pass.
func TestAttachSlowerThanContainerBudget(t *testing.T) {
	const budget = 150 * time.Millisecond
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil, nrihooks.WithContainerWait(budget))
	g := e.savers.hold(t, "a")
	p := nritest.Sandbox("a", "/var/run/netns/a")
	if err := e.rt.RunPod(p); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	g.waitEntered(t)
	for i := 0; i < 2; i++ {
		start := time.Now()
		err := e.rt.CreateContainer(p, "app")
		took := time.Since(start)
		if !errContains(err, "container app cannot start without the pod's TSN saver, which is still being attached after") {
			t.Fatalf("CreateContainer %d while the attach outlives the budget = %v, want a still-attaching error", i, err)
		}
		if took < budget || took > 1500*time.Millisecond {
			t.Fatalf("CreateContainer %d returned after %v, want about the %v budget", i, took, budget)
		}
	}
	g.release <- nil
	eventually(t, "saver attached after the release", func() bool { _, ok := e.savers.get("a"); return ok })
	if err := e.rt.CreateContainer(p, "app"); err != nil {
		t.Fatalf("CreateContainer after the attach ended: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // a second attach, if one was started, would show now
	if got, want := e.savers.takeCalls(), []string{"attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (no second attach while one runs)", got, want)
	}
	if n := histCount(t, e.reg, "tsn_dra_nri_container_saver_wait_seconds", map[string]string{"result": "timeout"}); n != 2 {
		t.Fatalf("container waits (timeout) = %d, want 2", n)
	}
}

// Stop while the attach is in flight: nothing may be left attached, whether
// the stop waits for the attach or gives up waiting, and an attach that had
// not started yet does not start.
func TestStopWhileAttachInFlight(t *testing.T) {
	t.Run("stop waits", func(t *testing.T) {
		e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil)
		g := e.savers.hold(t, "a")
		p := nritest.Sandbox("a", "/var/run/netns/a")
		if err := e.rt.RunPod(p); err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		g.waitEntered(t)
		stopped := make(chan error, 1)
		go func() { stopped <- e.rt.StopPod(p) }()
		notYet(t, stopped, 100*time.Millisecond, "StopPodSandbox")
		g.release <- nil
		if err := waitResult(t, stopped, "StopPodSandbox"); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
		if _, ok := e.savers.get("a"); ok {
			t.Fatal("saver left attached after StopPodSandbox")
		}
		if err := e.rt.RemovePod(p); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		if got, want := e.savers.takeCallsInOrder(), []string{"attach a", "detach a"}; !slices.Equal(got, want) {
			t.Fatalf("calls = %v, want %v", got, want)
		}
	})
	t.Run("stop gives up waiting", func(t *testing.T) {
		e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil, nrihooks.WithContainerWait(100*time.Millisecond))
		g := e.savers.hold(t, "a")
		p := nritest.Sandbox("a", "/var/run/netns/a")
		if err := e.rt.RunPod(p); err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		g.waitEntered(t)
		if err := e.rt.StopPod(p); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
		if err := e.rt.RemovePod(p); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		g.release <- nil // the attach ends after the pod went
		eventually(t, "the late attach took its saver off", func() bool {
			return counterValue(t, e.reg, "tsn_dra_nri_late_attaches_total", map[string]string{"event": "RunPodSandbox", "result": "stopped"}) == 1
		})
		if _, ok := e.savers.get("a"); ok {
			t.Fatal("saver left attached after the pod went")
		}
		if got, want := e.savers.takeCallsInOrder(), []string{"attach a", "detach a"}; !slices.Equal(got, want) {
			t.Fatalf("calls = %v, want %v", got, want)
		}
	})
	t.Run("stop before the attach started", func(t *testing.T) {
		e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1, "b": plan1}, nil, nil, nrihooks.WithContainerWait(100*time.Millisecond))
		gb := e.savers.hold(t, "b")
		pa, pb := nritest.Sandbox("a", "/var/run/netns/a"), nritest.Sandbox("b", "/var/run/netns/b")
		if err := e.rt.RunPod(pb); err != nil {
			t.Fatalf("RunPodSandbox(b): %v", err)
		}
		gb.waitEntered(t)
		// a's attach queues behind b's, which is held.
		if err := e.rt.RunPod(pa); err != nil {
			t.Fatalf("RunPodSandbox(a): %v", err)
		}
		if err := e.rt.StopPod(pa); err != nil {
			t.Fatalf("StopPodSandbox(a): %v", err)
		}
		gb.release <- nil
		eventually(t, "a's attach ended", func() bool {
			return counterValue(t, e.reg, "tsn_dra_nri_late_attaches_total", map[string]string{"event": "RunPodSandbox", "result": "stopped"}) == 1
		})
		if got, want := e.savers.takeCallsInOrder(), []string{"attach b"}; !slices.Equal(got, want) {
			t.Fatalf("calls = %v, want %v (a stopped before its attach began)", got, want)
		}
		if _, ok := e.savers.get("a"); ok {
			t.Fatal("stopped pod a has a saver")
		}
	})
}

// A pod without a plan creates its containers at once, even while another
// pod's attach is stuck; so does a pod whose attach succeeded.
func TestPodWithoutPlanCreatesContainerAtOnce(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1, "c": plan1}, nil, nil)
	ga := e.savers.hold(t, "a")
	if err := e.rt.RunPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox(a): %v", err)
	}
	ga.waitEntered(t)

	plain := nritest.Sandbox("plain", "/var/run/netns/plain")
	if err := e.rt.RunPod(plain); err != nil {
		t.Fatalf("RunPodSandbox(plain): %v", err)
	}
	start := time.Now()
	if err := e.rt.CreateContainer(plain, "app"); err != nil {
		t.Fatalf("CreateContainer(plain): %v", err)
	}
	// The container budget is 1.5 s: a container that waited would show.
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("CreateContainer of a pod without a plan took %v", took)
	}
	ga.release <- nil

	c := nritest.Sandbox("c", "/var/run/netns/c")
	if err := e.rt.StartPod(c); err != nil {
		t.Fatalf("start pod c: %v", err)
	}
	e.savers.setAttachErr(errors.New("must not be called"))
	if err := e.rt.CreateContainer(c, "second"); err != nil {
		t.Fatalf("CreateContainer of a pod whose saver is attached: %v", err)
	}
	if got := e.savers.takeCalls(); slices.Contains(got, "attach plain") || slices.Equal(got, []string{"attach a", "attach c", "attach c"}) {
		t.Fatalf("calls = %v: a container attached again", got)
	}
	if n := histCount(t, e.reg, "tsn_dra_nri_container_saver_wait_seconds", nil); n > 1 {
		t.Fatalf("container waits = %d, want at most 1 (pod c's first container, if its attach was slow)", n)
	}
}

// Synchronize after a runtime restart while an attach is in flight (a) and
// another queued behind it (b): pods still listed join their attaches (no
// second one); pods no longer listed are treated as stopped: a's saver is
// taken off after its attach, b's attach never begins.
func TestSynchronizeWithAttachInFlight(t *testing.T) {
	for _, listed := range []bool{true, false} {
		name := map[bool]string{true: "pods still listed", false: "pods gone"}[listed]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1, "b": plan1}, nil, nil, nrihooks.WithContainerWait(200*time.Millisecond))
			g := e.savers.hold(t, "a")
			p, pb := nritest.Sandbox("a", "/var/run/netns/a"), nritest.Sandbox("b", "/var/run/netns/b")
			if err := e.rt.RunPod(p); err != nil {
				t.Fatalf("RunPodSandbox: %v", err)
			}
			g.waitEntered(t)
			if err := e.rt.RunPod(pb); err != nil {
				t.Fatalf("RunPodSandbox(b): %v", err)
			}
			e.rt.Stop()
			e.cutConnections()
			var pods []*api.PodSandbox
			if listed {
				pods = append(pods, p, pb)
			}
			t0 := time.Now()
			rt2 := nritest.StartRuntime(t, e.rt.Socket(), pods...)
			rt2.WaitSynced()
			// Synchronize waits 200ms for the held attach, then returns: the
			// runtime would drop a plugin whose sync takes 2s.
			if took := time.Since(t0); took > 1500*time.Millisecond {
				t.Fatalf("reconnect and Synchronize took %v behind a stuck attach; want about the 200ms budget", took)
			}
			g.release <- nil
			if listed {
				for _, q := range []*api.PodSandbox{p, pb} {
					if err := rt2.CreateContainer(q, "app"); err != nil {
						t.Fatalf("CreateContainer(%s): %v", q.Uid, err)
					}
					if _, ok := e.savers.get(q.Uid); !ok {
						t.Fatalf("pod %s created a container without its saver", q.Uid)
					}
				}
				time.Sleep(50 * time.Millisecond)
				if got, want := e.savers.takeCallsInOrder(), []string{"attach a", "attach b"}; !slices.Equal(got, want) {
					t.Fatalf("calls = %v, want %v (Synchronize joins the attaches in flight)", got, want)
				}
				return
			}
			var calls []string
			eventually(t, "the attach of the gone pod took its saver off", func() bool {
				calls = append(calls, e.savers.takeCallsInOrder()...)
				return len(calls) >= 2
			})
			time.Sleep(50 * time.Millisecond)
			calls = append(calls, e.savers.takeCallsInOrder()...)
			if want := []string{"attach a", "detach a"}; !slices.Equal(calls, want) {
				t.Fatalf("calls = %v, want %v (b's attach skipped)", calls, want)
			}
			if sv, _ := e.savers.Savers(); len(sv) != 0 {
				t.Fatalf("savers of gone pods left attached: %+v", sv)
			}
		})
	}
}

// Synchronize's sweep of stale savers queues behind a stuck attach; a pod
// that starts after the sync is attached after the sweep, and keeps its
// saver.
func TestSweepBehindStuckAttach(t *testing.T) {
	plans := map[string]nrihooks.PodPlan{"s": plan1, "y": plan1}
	stale := []datapath.SaverInfo{{PodUID: "stale", NetnsPath: "/var/run/netns/stale", Ifname: "eth0"}}
	e := newEnv(t, plans, stale, nil, nrihooks.WithContainerWait(200*time.Millisecond))
	// The first sync listed no pod: the stale saver went.
	if _, ok := e.savers.get("stale"); ok {
		t.Fatal("stale saver left after the first sync")
	}
	e.savers.mu.Lock()
	e.savers.attached["stale"] = stale[0]
	e.savers.mu.Unlock()
	g := e.savers.hold(t, "s")
	ps := nritest.Sandbox("s", "/var/run/netns/s")
	if err := e.rt.RunPod(ps); err != nil {
		t.Fatalf("RunPodSandbox(s): %v", err)
	}
	g.waitEntered(t)
	e.rt.Stop()
	e.cutConnections()
	rt2 := nritest.StartRuntime(t, e.rt.Socket(), ps)
	rt2.WaitSynced() // its sweep is queued behind s's attach
	py := nritest.Sandbox("y", "/var/run/netns/y")
	if err := rt2.RunPod(py); err != nil {
		t.Fatalf("RunPodSandbox(y): %v", err)
	}
	g.release <- nil
	if err := rt2.CreateContainer(py, "app"); err != nil {
		t.Fatalf("CreateContainer(y): %v", err)
	}
	if err := rt2.CreateContainer(ps, "app"); err != nil {
		t.Fatalf("CreateContainer(s): %v", err)
	}
	eventually(t, "the stale saver swept", func() bool { _, ok := e.savers.get("stale"); return !ok })
	for _, uid := range []string{"s", "y"} {
		if _, ok := e.savers.get(uid); !ok {
			t.Errorf("pod %s lost its saver to the sweep", uid)
		}
	}
	if got, want := e.savers.takeCallsInOrder(), []string{"detach stale", "attach s", "detach stale", "attach y"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (the sweep between s's attach and y's)", got, want)
	}
}

// An attach that fails in Synchronize (the pod started while the driver was
// down) holds back the pod's next container until a retry succeeds.
func TestSynchronizeFailureHoldsContainers(t *testing.T) {
	plans := map[string]nrihooks.PodPlan{"a": plan1}
	p := nritest.Sandbox("a", "/var/run/netns/a")
	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := nritest.StartRuntime(t, socket, p)
	savers := &fakeSavers{attached: map[string]datapath.SaverInfo{}, attachErr: errors.New("boom")}
	h := nrihooks.New(&fakePlans{plans: plans}, savers, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = nrihooks.Run(ctx, h, nrihooks.Options{PluginName: "tsn.dra.io", SocketPath: socket, RetryInterval: 100 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })
	rt.WaitSynced()
	if _, ok := savers.get("a"); ok {
		t.Fatal("saver attached although the attach failed")
	}
	if err := rt.CreateContainer(p, "app"); !errContains(err, "boom") {
		t.Fatalf("CreateContainer after a failed sync attach = %v, want the attach error (retried, failing again)", err)
	}
	savers.setAttachErr(nil)
	if err := rt.CreateContainer(p, "app"); err != nil {
		t.Fatalf("CreateContainer once the attach works: %v", err)
	}
	if _, ok := savers.get("a"); !ok {
		t.Fatal("CreateContainer succeeded but pod a has no saver")
	}
	if got, want := savers.takeCalls(), []string{"attach a", "attach a", "attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (sync, then one retry per container)", got, want)
	}
}

// The kubelet may give a pod a new sandbox and remove the old one later: the
// old one's removal must not take off the new one's saver.
func TestOldSandboxRemovalKeepsNewSandboxSaver(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil, nil)
	old := nritest.Sandbox("a", "/var/run/netns/a-1")
	if err := e.rt.StartPod(old); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.StopPod(old); err != nil {
		t.Fatal(err)
	}
	cur := nritest.Sandbox("a", "/var/run/netns/a-2")
	cur.Id = "sb-a-2"
	if err := e.rt.StartPod(cur); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.RemovePod(old); err != nil {
		t.Fatalf("RemovePodSandbox(old sandbox): %v", err)
	}
	if s, ok := e.savers.get("a"); !ok || s.NetnsPath != "/var/run/netns/a-2" {
		t.Fatalf("saver of pod a after the old sandbox's removal = %+v, %v; want the new sandbox's", s, ok)
	}
	if err := e.rt.StopPod(cur); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.savers.get("a"); ok {
		t.Fatal("saver left after the new sandbox stopped")
	}
}

// The invariant: a container of a pod with a plan is created only once the
// pod's saver is attached, whatever the attach's timing and failures.
// Attaches take 0-60 ms and one in four fails; RunPodSandbox waits 2 ms and
// a container 20 ms, so every path (in time, late, failed, timed out,
// retried) is taken many times.
func TestContainersNeverStartWithoutSaver(t *testing.T) {
	const pods = 40
	plans := map[string]nrihooks.PodPlan{}
	for i := 0; i < pods; i++ {
		plans[fmt.Sprintf("p%d", i)] = plan1
	}
	e := newEnv(t, plans, nil, nil, nrihooks.WithAttachWait(2*time.Millisecond), nrihooks.WithContainerWait(20*time.Millisecond))
	var rmu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	e.savers.mu.Lock()
	e.savers.delay = func(string) (time.Duration, error) {
		rmu.Lock()
		defer rmu.Unlock()
		d := time.Duration(rng.IntN(60)) * time.Millisecond
		if rng.IntN(4) == 0 {
			return d, errors.New("injected attach failure")
		}
		return d, nil
	}
	e.savers.mu.Unlock()

	for i := 0; i < pods; i++ {
		uid := fmt.Sprintf("p%d", i)
		p := nritest.Sandbox(uid, "/var/run/netns/"+uid)
		started := false
		for attempt := 0; attempt < 100 && !started; attempt++ {
			// A sandbox whose attach failed within RunPodSandbox's budget
			// failed: the kubelet makes it again.
			if err := e.rt.RunPod(p); err != nil {
				continue
			}
			for c := 0; c < 100; c++ {
				err := e.rt.CreateContainer(p, "app")
				if err == nil {
					if _, ok := e.savers.get(uid); !ok {
						t.Fatalf("pod %s: CreateContainer succeeded without the pod's saver attached", uid)
					}
					started = true
					break
				}
				if !errContains(err, "cannot start without the pod's TSN saver") {
					t.Fatalf("pod %s: CreateContainer = %v, want a saver error", uid, err)
				}
			}
		}
		if !started {
			t.Fatalf("pod %s never started", uid)
		}
	}
	for _, result := range []string{"attached", "failed", "timeout"} {
		n := histCount(t, e.reg, "tsn_dra_nri_container_saver_wait_seconds", map[string]string{"result": result})
		t.Logf("container waits %s: %d", result, n)
		if n == 0 {
			t.Errorf("no container wait ended %q: the test did not exercise that path", result)
		}
	}
}

// histCount returns the sample count of histogram name over the series
// whose labels include labels.
func histCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	var n uint64
	for _, m := range series(t, reg, name, labels) {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// counterValue returns the sum of counter name over the series whose labels
// include labels.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var v float64
	for _, m := range series(t, reg, name, labels) {
		v += m.GetCounter().GetValue()
	}
	return v
}

func series(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			out = append(out, m)
		}
	}
	return out
}
