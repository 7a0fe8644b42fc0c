package nrihooks_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"

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

// fakeSavers records attach/detach calls and keeps what is attached.
type fakeSavers struct {
	mu        sync.Mutex
	attached  map[string]datapath.SaverInfo
	calls     []string
	attachErr error
}

func (f *fakeSavers) AttachSaver(_ context.Context, uid, netns, ifname string, p datapath.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "attach "+uid)
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

func (f *fakeSavers) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	slices.Sort(c)
	return c
}

func (f *fakeSavers) get(uid string) (datapath.SaverInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.attached[uid]
	return s, ok
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
func newEnv(t *testing.T, plans map[string]nrihooks.PodPlan, attached []datapath.SaverInfo, pods ...*api.PodSandbox) *env {
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
	h := nrihooks.New(e.plans, e.savers, nrihooks.NewMetrics(e.reg))
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
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil)
	if got := e.savers.takeCalls(); len(got) != 0 {
		t.Fatalf("calls on an empty sync = %v, want none", got)
	}

	if err := e.rt.RunPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox(a): %v", err)
	}
	s, ok := e.savers.get("a")
	if !ok {
		t.Fatal("pod a has no saver after RunPodSandbox")
	}
	if s.NetnsPath != "/var/run/netns/a" || s.Ifname != "eth0" || !slices.Equal(s.Policy.Allowed, []uint32{1}) {
		t.Fatalf("saver of a = %+v, want netns /var/run/netns/a, eth0, allowed [1]", s)
	}

	// A pod without a claim gets nothing and is not even counted.
	if err := e.rt.RunPod(nritest.Sandbox("b", "/var/run/netns/b")); err != nil {
		t.Fatalf("RunPodSandbox(b): %v", err)
	}
	if got, want := e.savers.takeCalls(), []string{"attach a"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	if n := hookCount(t, e.reg, "RunPodSandbox"); n != 1 {
		t.Fatalf("RunPodSandbox latency samples = %d, want 1 (pod a only)", n)
	}
}

func TestRunPodSandboxFailsClaimedPodThatCannotBeProtected(t *testing.T) {
	bad := plan1
	bad.Err = errors.New("claims contradict")
	e := newEnv(t, map[string]nrihooks.PodPlan{"host": plan1, "a": plan1, "bad": bad}, nil)

	if err := e.rt.RunPod(nritest.Sandbox("bad", "/var/run/netns/bad")); err == nil || !errContains(err, "pod default/pod-bad: claims contradict") {
		t.Fatalf("RunPodSandbox(pod with an unusable plan) = %v, want the plan's error", err)
	}

	err := e.rt.RunPod(nritest.Sandbox("host", ""))
	if err == nil || !errContains(err, "uses the host network") {
		t.Fatalf("RunPodSandbox(host network pod with a claim) = %v, want a host network error", err)
	}

	e.savers.mu.Lock()
	e.savers.attachErr = errors.New("boom")
	e.savers.mu.Unlock()
	err = e.rt.RunPod(nritest.Sandbox("a", "/var/run/netns/a"))
	if err == nil || !errContains(err, "attach TSN saver to eth0 in pod default/pod-a") || !errContains(err, "boom") {
		t.Fatalf("RunPodSandbox with a failing attach = %v, want the wrapped attach error", err)
	}
}

func TestStopAndRemoveDetachIdempotently(t *testing.T) {
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil)
	p := nritest.Sandbox("a", "/var/run/netns/a")
	if err := e.rt.RunPod(p); err != nil {
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
	e := newEnv(t, plans, attached,
		nritest.Sandbox("missing", "/var/run/netns/missing"),
		nritest.Sandbox("ok", "/var/run/netns/ok"),
		nritest.Sandbox("unclaimed", "/var/run/netns/unclaimed"),
		nritest.Sandbox("plain", "/var/run/netns/plain"))

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
	e := newEnv(t, map[string]nrihooks.PodPlan{"a": plan1}, nil)
	e.rt.Stop()
	e.cutConnections()

	// While the runtime was down, pod a came up (say, containerd restarted
	// with it): the new connection's Synchronize must attach it.
	rt2 := nritest.StartRuntime(t, e.rt.Socket(), nritest.Sandbox("a", "/var/run/netns/a"))
	rt2.WaitSynced()
	if _, ok := e.savers.get("a"); !ok {
		t.Fatal("pod a has no saver after the runtime came back")
	}
	if err := rt2.RunPod(nritest.Sandbox("a", "/var/run/netns/a")); err != nil {
		t.Fatalf("RunPodSandbox after reconnect: %v", err)
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
