package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"sigs.k8s.io/yaml"
)

// newPod is a pod of the API server, bound to node (none when empty) and in the given phase.
func newPod(namespace, name, uid, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// rebuildClaims are the claims the API server knows: two prepared on this node, and what a
// rebuild must not take (another pool, not reserved, another driver) or cannot (a device this
// node does not have: it no longer plans) or must not (its pod has finished); and the pods.
func rebuildClaims() (prepared []*resourceapi.ResourceClaim, all []runtime.Object) {
	a := newClaim("a")
	b := newClaim("b", withDevice("v", "tsn0-tc2"), withPod("pod2"),
		withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":6}],"ungranted":"drop"}`))
	b.Namespace = "other"
	elsewhere := newClaim("elsewhere")
	elsewhere.Status.Allocation.Devices.Results[0].Pool = "node-b"
	unreserved := newClaim("unreserved")
	unreserved.Status.ReservedFor = nil
	foreign := newClaim("foreign")
	foreign.Status.Allocation.Devices.Results[0].Driver = "gpu.example.com"
	gone := newClaim("gone", withDevice("tsn", "tsn0-tc0"))
	// Unprepared before the restart: its pod has finished, the reservation is still there.
	done := newClaim("done", withPod("pod3"))
	for _, c := range []*resourceapi.ResourceClaim{a, b, elsewhere, unreserved, foreign, gone, done} {
		all = append(all, c)
	}
	all = append(all, newPod("default", "pod-pod1", "pod1", testNode, corev1.PodRunning),
		newPod("other", "pod-pod2", "pod2", testNode, corev1.PodRunning), newPod("default", "pod-pod3", "pod3", testNode, corev1.PodSucceeded))
	return []*resourceapi.ResourceClaim{a, b}, all
}

func metricValue(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	switch name {
	case "damaged":
		return testutil.ToFloat64(m.checkpointDamaged)
	case "pending":
		return testutil.ToFloat64(m.rebuildPending)
	case "prepared":
		return testutil.ToFloat64(m.preparedClaims)
	default:
		return testutil.ToFloat64(m.rebuiltClaims.WithLabelValues(name))
	}
}

func events(t *testing.T, client *fake.Clientset, reason string) []corev1.Event {
	t.Helper()
	var out []corev1.Event
	for _, ns := range []string{"default", "other"} {
		l, err := client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range l.Items {
			if e.Reason == reason {
				out = append(out, e)
			}
		}
	}
	return out
}

func TestRebuildDamagedCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
		reason string // how the damage is described
	}{
		{"checksum", func(b []byte) []byte { return bytes.Replace(b, []byte(`"checksum":"`), []byte(`"checksum":"0`), 1) }, "checksum 0"},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, "unexpected end of JSON input"},
		{"zeroed", func(b []byte) []byte { return make([]byte, len(b)) }, `invalid character '\x00' looking for beginning of value`},
		{"empty", func([]byte) []byte { return nil }, "the file is empty"},
		{"no version", func([]byte) []byte { return []byte(`{}`) }, "no version"},
		{"null", func([]byte) []byte { return []byte(`null`) }, "no version"},
		{"claims not an object", func([]byte) []byte {
			return []byte(`{"version":1,"checksum":"` + checksum([]byte(`[]`)) + `","claims":[]}`)
		}, "json: cannot unmarshal array into Go value of type map[types.UID]driver.PreparedClaim"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cp := filepath.Join(dir, checkpointFileName)
			prepared, all := rebuildClaims()
			client := newClient(all...)
			d1, ctx := newTestDriver(t, client, newFakeDiscoverer(), dir, nil)
			for _, c := range prepared {
				if r := prepare(t, d1, ctx, c); r.Err != nil {
					t.Fatal(r.Err)
				}
			}
			want := d1.Store().PreparedClaims()
			data, err := os.ReadFile(cp)
			if err != nil {
				t.Fatal(err)
			}
			damaged := tc.damage(data)
			if err := os.WriteFile(cp, damaged, 0o600); err != nil {
				t.Fatal(err)
			}

			m := NewMetrics(nil)
			d2, err := New(ctx, Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: client,
				Discoverer: newFakeDiscoverer(), Config: mustConfig(t), StateDir: dir, Metrics: m})
			if err != nil {
				t.Fatalf("New with a damaged checkpoint: %v", err)
			}
			select {
			case <-d2.StateReady():
			default:
				t.Fatal("state not ready although the API server answered")
			}
			// Re-planned as Prepare did: the same state, pod policies included.
			if got := d2.Store().PreparedClaims(); !reflect.DeepEqual(got, want) {
				t.Errorf("rebuilt state\n got %+v\nwant %+v", got, want)
			}
			// Written: a new process loads it.
			d3, _ := newTestDriver(t, newClient(), newFakeDiscoverer(), dir, nil)
			if got := d3.Store().PreparedClaims(); !reflect.DeepEqual(got, want) {
				t.Errorf("rebuilt checkpoint reloads as %+v", got)
			}
			// Kept for inspection, byte for byte.
			kept, _ := filepath.Glob(cp + ".damaged-*")
			if len(kept) != 1 {
				t.Fatalf("kept damaged files: %v", kept)
			}
			if b, _ := os.ReadFile(kept[0]); !bytes.Equal(b, damaged) {
				t.Errorf("kept file differs from the damaged one")
			}
			for name, want := range map[string]float64{"damaged": 1, "pending": 0, "prepared": 2, rebuildResultRebuilt: 2, rebuildResultLeftOut: 1, rebuildResultPodsFinished: 1} {
				if got := metricValue(t, m, name); got != want {
					t.Errorf("metric %s = %v, want %v", name, got, want)
				}
			}
			// Reported on the Node, and on the claim that was left out.
			evs := events(t, client, "CheckpointRebuilt")
			if len(evs) != 1 {
				t.Fatalf("CheckpointRebuilt events: %+v", evs)
			}
			var reason string
			if _, err := (&checkpoint{path: kept[0]}).load(); err != nil {
				reason = strings.TrimPrefix(err.Error(), "checkpoint "+kept[0]+" is damaged: ")
			}
			if !strings.HasPrefix(reason, tc.reason) {
				t.Errorf("damage described as %q, want %q...", reason, tc.reason)
			}
			wantMsg := fmt.Sprintf("checkpoint %s was damaged (%s) and is kept as %s; rebuilt 2 prepared claims from the API server, 1 skipped because their pods have finished or left the node, 1 left out because they no longer plan: default/gone", cp, reason, kept[0])
			ev := evs[0]
			if ev.Message != wantMsg || ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "Node" ||
				ev.InvolvedObject.Name != testNode || ev.InvolvedObject.UID != "node-uid" || ev.Source.Component != DefaultDriverName {
				t.Errorf("node event %+v\nwant message %q", ev, wantMsg)
			}
			evs = events(t, client, "NotRebuilt")
			const wantLeft = `prepared state lost with a damaged checkpoint on node node-a and not rebuilt: status.allocation.devices.results[0].device: Not found: "tsn0-tc0"`
			if len(evs) != 1 || evs[0].InvolvedObject.Name != "gone" || evs[0].InvolvedObject.Kind != "ResourceClaim" || evs[0].Message != wantLeft {
				t.Errorf("claim events %+v\nwant %q", evs, wantLeft)
			}
		})
	}
}

type lockedHooks struct {
	mu       sync.Mutex
	prepared []types.UID
}

func (h *lockedHooks) ClaimPrepared(_ context.Context, c PreparedClaim) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.prepared = append(h.prepared, c.UID)
	return nil
}

func (h *lockedHooks) ClaimUnprepared(context.Context, PreparedClaim) error { return nil }

func (h *lockedHooks) get() []types.UID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]types.UID(nil), h.prepared...)
}

// TestRebuildWaitsForAPIServer: with a damaged checkpoint and no API server, New returns, the
// state stays unknown (Prepare and Unprepare refuse, clearly) and the rebuild retries until the
// API server answers; then the rebuilt claims go to the data path hooks before the state counts
// as known.
func TestRebuildWaitsForAPIServer(t *testing.T) {
	saved := rebuildTiming
	rebuildTiming.firstAttemptTimeout, rebuildTiming.attemptTimeout = time.Second, time.Second
	rebuildTiming.firstRetry, rebuildTiming.maxRetry = 20*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { rebuildTiming = saved })

	dir := t.TempDir()
	cp := filepath.Join(dir, checkpointFileName)
	if err := os.WriteFile(cp, []byte(`{"version":1,"checks`), 0o600); err != nil {
		t.Fatal(err)
	}
	prepared, all := rebuildClaims()
	client := newClient(all...)
	var down atomic.Bool
	var lists atomic.Int32
	down.Store(true)
	client.PrependReactor("list", "resourceclaims", func(k8stesting.Action) (bool, runtime.Object, error) {
		lists.Add(1)
		if down.Load() {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	hooks := &lockedHooks{}
	m := NewMetrics(nil)
	_, ctx := ktesting.NewTestContext(t)
	opts := Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: client,
		Discoverer: newFakeDiscoverer(), Config: mustConfig(t), StateDir: dir, Metrics: m, Hooks: hooks}
	d, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New must not fail while the API server is down: %v", err)
	}
	defer d.Stop()
	select {
	case <-d.StateReady():
		t.Fatal("state ready without the API server")
	default:
	}
	if n := len(d.Store().PreparedClaims()); n != 0 {
		t.Errorf("%d claims known before the rebuild", n)
	}
	if v := metricValue(t, m, "pending"); v != 1 {
		t.Errorf("pending = %v", v)
	}
	// Wait for a retry, so that the error names the last attempt.
	for start := lists.Load(); lists.Load() < start+2; {
		time.Sleep(5 * time.Millisecond)
	}
	why := "the prepared state of this node is not known yet: checkpoint " + cp +
		" was damaged and the claims of this node are being read again from the API server (last attempt: list ResourceClaims: connection refused); retry later"
	a := prepared[0]
	if r := prepare(t, d, ctx, a); r.Err == nil || r.Err.Error() != "prepare claim default/a for tsn.dra.io: "+why {
		t.Errorf("prepare while rebuilding: %v\nwant %q", r.Err, why)
	}
	obj := kubeletplugin.NamespacedObject{UID: a.UID, NamespacedName: types.NamespacedName{Namespace: "default", Name: "a"}}
	res, _ := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{obj})
	if err := res[a.UID]; err == nil || err.Error() != "unprepare claim default/a for tsn.dra.io: "+why {
		t.Errorf("unprepare while rebuilding: %v\nwant %q", err, why)
	}
	// Nothing written yet: a restart now finds the damage again (and keeps no second copy).
	if b, _ := os.ReadFile(cp); string(b) != `{"version":1,"checks` {
		t.Errorf("checkpoint replaced before the rebuild: %q", b)
	}
	d2, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { d2.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop does not end a pending rebuild")
	}
	if kept, _ := filepath.Glob(cp + ".damaged-*"); len(kept) != 1 {
		t.Errorf("kept damaged files after a restart: %v", kept)
	}
	if len(hooks.get()) != 0 {
		t.Errorf("hooks called before the rebuild: %v", hooks.get())
	}

	down.Store(false)
	select {
	case <-d.StateReady():
	case <-time.After(10 * time.Second):
		t.Fatal("state not rebuilt after the API server came back")
	}
	got := d.Store().PreparedClaims()
	if len(got) != 2 || got[0].UID != "uid-a" || got[1].UID != "uid-b" {
		t.Errorf("rebuilt %+v", got)
	}
	if h := hooks.get(); !reflect.DeepEqual(h, []types.UID{"uid-a", "uid-b"}) {
		t.Errorf("hooks got %v, want both rebuilt claims", h)
	}
	if v := metricValue(t, m, "pending"); v != 0 {
		t.Errorf("pending = %v after the rebuild", v)
	}
	if r := prepare(t, d, ctx, a); r.Err != nil {
		t.Errorf("prepare after the rebuild: %v", r.Err)
	}
	res, _ = d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{obj})
	if res[a.UID] != nil || len(d.Store().PreparedClaims()) != 1 {
		t.Errorf("unprepare after the rebuild: %v", res)
	}
}

// TestKeepDamagedBounded: each distinct damaged file is kept once, the newest maxDamagedKept
// of them.
func TestKeepDamagedBounded(t *testing.T) {
	dir := t.TempDir()
	c := &checkpoint{path: filepath.Join(dir, checkpointFileName)}
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	var names []string
	for i := 0; i < maxDamagedKept+3; i++ {
		if err := os.WriteFile(c.path+".tmp", []byte(fmt.Sprintf("garbage %d", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(c.path+".tmp", c.path); err != nil { // a new inode, as the driver writes
			t.Fatal(err)
		}
		name, err := c.keepDamaged(t0.Add(time.Duration(i) * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		again, err := c.keepDamaged(t0.Add(time.Hour))
		if err != nil || again != name {
			t.Fatalf("the same damaged file kept again: %s, %v (first %s)", again, err, name)
		}
		names = append(names, name)
	}
	if want := c.path + ".damaged-20261123T120000.000000000Z"; names[0] != want {
		t.Errorf("name %s, want %s", names[0], want)
	}
	kept, _ := filepath.Glob(c.path + ".damaged-*")
	if !reflect.DeepEqual(kept, names[3:]) {
		t.Errorf("kept %v, want the newest %v", kept, names[3:])
	}
	if b, _ := os.ReadFile(kept[len(kept)-1]); string(b) != fmt.Sprintf("garbage %d", maxDamagedKept+2) {
		t.Errorf("newest kept file holds %q", b)
	}
}

// TestDamagedCheckpointCannotBeKept: when the damaged file cannot be kept, New fails rather
// than overwrite the only copy.
func TestDamagedCheckpointCannotBeKept(t *testing.T) {
	dir := t.TempDir()
	cp := filepath.Join(dir, checkpointFileName)
	os.WriteFile(cp, []byte("x"), 0o600)
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	now = func() time.Time { return at }
	t.Cleanup(func() { now = time.Now })
	// A directory where the copy goes: neither a link nor a copy can be made.
	if err := os.Mkdir(cp+".damaged-20261123T120000.000000000Z", 0o700); err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	_, err := New(ctx, Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: newClient(),
		Discoverer: newFakeDiscoverer(), Config: mustConfig(t), StateDir: dir})
	want := "checkpoint " + cp + " is damaged: invalid character 'x' looking for beginning of value; keep the damaged checkpoint: link: link " +
		cp + " " + cp + ".damaged-20261123T120000.000000000Z: file exists; copy: open " + cp + ".damaged-20261123T120000.000000000Z: is a directory"
	if err == nil || err.Error() != want {
		t.Errorf("New: %v\nwant %s", err, want)
	}
	if b, _ := os.ReadFile(cp); string(b) != "x" {
		t.Errorf("damaged checkpoint changed: %q", b)
	}
}

// TestRebuildSkipsClaimsOfFinishedPods: a claim is rebuilt only while a pod it is reserved for
// is live on this node (same UID, bound here, not Succeeded or Failed); the others were
// unprepared by the kubelet before the restart (or will never be prepared) and would stay
// prepared forever. They are logged with the reason and counted, without a claim Event.
func TestRebuildSkipsClaimsOfFinishedPods(t *testing.T) {
	deleted := metav1.Now()
	terminating := newPod("default", "pod-term", "term", testNode, corev1.PodRunning)
	terminating.DeletionTimestamp = &deleted
	for _, tc := range []struct {
		name     string
		reserved []string      // UIDs of the pods the claim is reserved for
		pods     []*corev1.Pod // what the API server has
		rebuilt  bool
		why      []string // logged for a skipped claim, one per reserved pod
	}{
		{name: "running", reserved: []string{"run"}, pods: []*corev1.Pod{newPod("default", "pod-run", "run", testNode, corev1.PodRunning)}, rebuilt: true},
		{name: "pending", reserved: []string{"pend"}, pods: []*corev1.Pod{newPod("default", "pod-pend", "pend", testNode, corev1.PodPending)}, rebuilt: true},
		{name: "terminating", reserved: []string{"term"}, pods: []*corev1.Pod{terminating}, rebuilt: true},
		{name: "one of two finished", reserved: []string{"done1", "live1"}, pods: []*corev1.Pod{
			newPod("default", "pod-done1", "done1", testNode, corev1.PodSucceeded), newPod("default", "pod-live1", "live1", testNode, corev1.PodRunning)}, rebuilt: true},
		{name: "succeeded", reserved: []string{"succ"}, pods: []*corev1.Pod{newPod("default", "pod-succ", "succ", testNode, corev1.PodSucceeded)},
			why: []string{"default/pod-succ is Succeeded"}},
		{name: "failed", reserved: []string{"fail"}, pods: []*corev1.Pod{newPod("default", "pod-fail", "fail", testNode, corev1.PodFailed)},
			why: []string{"default/pod-fail is Failed"}},
		{name: "gone", reserved: []string{"gone"}, why: []string{"default/pod-gone (UID gone) is not on node node-a"}},
		{name: "recreated", reserved: []string{"old"}, pods: []*corev1.Pod{newPod("default", "pod-old", "new", testNode, corev1.PodRunning)},
			why: []string{"default/pod-old was replaced: UID old is reserved, the pod of that name on node node-a has UID new"}},
		{name: "other node", reserved: []string{"away"}, pods: []*corev1.Pod{newPod("default", "pod-away", "away", "node-b", corev1.PodRunning)},
			why: []string{"default/pod-away (UID away) is not on node node-a"}},
		{name: "not bound", reserved: []string{"unbound"}, pods: []*corev1.Pod{newPod("default", "pod-unbound", "unbound", "", corev1.PodPending)},
			why: []string{"default/pod-unbound (UID unbound) is not on node node-a"}},
		{name: "all finished", reserved: []string{"done2", "done3"}, pods: []*corev1.Pod{
			newPod("default", "pod-done2", "done2", testNode, corev1.PodFailed), newPod("default", "pod-done3", "done3", testNode, corev1.PodSucceeded)},
			why: []string{"default/pod-done2 is Failed", "default/pod-done3 is Succeeded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []claimOpt
			for _, uid := range tc.reserved {
				opts = append(opts, withPod(uid))
			}
			objs := []runtime.Object{newClaim("c", opts...)}
			for _, p := range tc.pods {
				objs = append(objs, p)
			}
			client := newClient(objs...)
			var selectors []string
			client.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				selectors = append(selectors, a.(k8stesting.ListAction).GetListRestrictions().Fields.String())
				return false, nil, nil
			})
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, checkpointFileName), []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			ctx := klog.NewContext(context.Background(), logger)
			m := NewMetrics(nil)
			d, err := New(ctx, Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: client,
				Discoverer: newFakeDiscoverer(), Config: mustConfig(t), StateDir: dir, Metrics: m})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-d.StateReady():
			default:
				t.Fatal("state not ready although the API server answered")
			}
			if !reflect.DeepEqual(selectors, []string{"spec.nodeName=" + testNode}) {
				t.Errorf("pod lists with field selectors %q, want one with spec.nodeName=%s", selectors, testNode)
			}
			got := d.Store().PreparedClaims()
			if tc.rebuilt != (len(got) == 1) {
				t.Fatalf("rebuilt claims %+v, want rebuilt=%v", got, tc.rebuilt)
			}
			if tc.rebuilt {
				// All reserved pods get their policy, as Prepare gives them.
				var uids []string
				for _, p := range got[0].Pods {
					uids = append(uids, string(p.PodUID))
				}
				if !reflect.DeepEqual(uids, tc.reserved) {
					t.Errorf("policies for pods %v, want %v", uids, tc.reserved)
				}
			}
			// Written as the new checkpoint: a restart does not bring the claim back.
			d2, _ := newTestDriver(t, newClient(), newFakeDiscoverer(), dir, nil)
			if n := len(d2.Store().PreparedClaims()); n != len(got) {
				t.Errorf("checkpoint reloads %d claims, want %d", n, len(got))
			}
			skipped := 1.0
			if tc.rebuilt {
				skipped = 0
			}
			for name, want := range map[string]float64{"prepared": 1 - skipped, rebuildResultRebuilt: 1 - skipped,
				rebuildResultPodsFinished: skipped, rebuildResultLeftOut: 0} {
				if v := metricValue(t, m, name); v != want {
					t.Errorf("metric %s = %v, want %v", name, v, want)
				}
			}
			if evs := events(t, client, "NotRebuilt"); len(evs) != 0 {
				t.Errorf("claim events for a claim whose pods finished: %+v", evs)
			}
			evs := events(t, client, "CheckpointRebuilt")
			if len(evs) != 1 {
				t.Fatalf("CheckpointRebuilt events: %+v", evs)
			}
			wantTail := "; rebuilt 1 prepared claims from the API server"
			if !tc.rebuilt {
				wantTail = "; rebuilt 0 prepared claims from the API server, 1 skipped because their pods have finished or left the node"
			}
			if !strings.HasSuffix(evs[0].Message, wantTail) {
				t.Errorf("node event %q, want it to end with %q", evs[0].Message, wantTail)
			}
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			const skipMsg = "Claim of this node not rebuilt: none of its pods is still running here"
			if tc.rebuilt == strings.Contains(logs, skipMsg) {
				t.Errorf("skip logged: %v, want %v:\n%s", !tc.rebuilt, !tc.rebuilt, logs)
			}
			if len(tc.why) > 0 {
				quoted := make([]string, len(tc.why))
				for i, w := range tc.why {
					quoted[i] = strconv.Quote(w)
				}
				if w := "pods=[" + strings.Join(quoted, ",") + "]"; !strings.Contains(logs, w) {
					t.Errorf("log lacks %s:\n%s", w, logs)
				}
			}
			if !strings.Contains(logs, `podsFinished=["default/c"]`) && !tc.rebuilt {
				t.Errorf("summary log lacks the skipped claim:\n%s", logs)
			}
		})
	}
}

// TestRebuildPodListFails: when the pods cannot be listed the rebuild does not guess: the
// attempt fails, the state stays unknown (Prepare refuses, naming the error) and the checkpoint
// untouched, and a later attempt rebuilds once the pods can be read.
func TestRebuildPodListFails(t *testing.T) {
	saved := rebuildTiming
	rebuildTiming.firstAttemptTimeout, rebuildTiming.attemptTimeout = time.Second, time.Second
	rebuildTiming.firstRetry, rebuildTiming.maxRetry = 20*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { rebuildTiming = saved })

	dir := t.TempDir()
	cp := filepath.Join(dir, checkpointFileName)
	if err := os.WriteFile(cp, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	prepared, all := rebuildClaims()
	client := newClient(all...)
	var forbidden atomic.Bool
	var lists atomic.Int32
	forbidden.Store(true)
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		lists.Add(1)
		if forbidden.Load() {
			return true, nil, errors.New(`pods is forbidden: User "system:serviceaccount:tsn-dra-driver:tsn-dra-driver" cannot list resource "pods"`)
		}
		return false, nil, nil
	})
	hooks := &lockedHooks{}
	m := NewMetrics(nil)
	_, ctx := ktesting.NewTestContext(t)
	d, err := New(ctx, Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: client,
		Discoverer: newFakeDiscoverer(), Config: mustConfig(t), StateDir: dir, Metrics: m, Hooks: hooks})
	if err != nil {
		t.Fatalf("New must not fail while the pods cannot be read: %v", err)
	}
	defer d.Stop()
	for deadline := time.Now().Add(10 * time.Second); lists.Load() < 3; time.Sleep(5 * time.Millisecond) {
		select {
		case <-d.StateReady():
			t.Fatal("state ready although the pods could not be read")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods listed %d times in 10 s: the failed attempt is not retried", lists.Load())
		}
	}
	if n := len(d.Store().PreparedClaims()); n != 0 {
		t.Errorf("%d claims known before the pods were read", n)
	}
	if v := metricValue(t, m, "pending"); v != 1 {
		t.Errorf("pending = %v", v)
	}
	for _, name := range []string{rebuildResultRebuilt, rebuildResultPodsFinished, rebuildResultLeftOut} {
		if v := metricValue(t, m, name); v != 0 {
			t.Errorf("metric %s = %v before a rebuild", name, v)
		}
	}
	why := "prepare claim default/a for tsn.dra.io: the prepared state of this node is not known yet: checkpoint " + cp +
		` was damaged and the claims of this node are being read again from the API server (last attempt: list the pods of node node-a: pods is forbidden: User "system:serviceaccount:tsn-dra-driver:tsn-dra-driver" cannot list resource "pods"); retry later`
	if r := prepare(t, d, ctx, prepared[0]); r.Err == nil || r.Err.Error() != why {
		t.Errorf("prepare while the pods cannot be read: %v\nwant %s", r.Err, why)
	}
	if b, _ := os.ReadFile(cp); string(b) != "garbage" {
		t.Errorf("checkpoint replaced before the rebuild: %q", b)
	}
	if evs := events(t, client, "CheckpointRebuilt"); len(evs) != 0 {
		t.Errorf("rebuild reported before it happened: %+v", evs)
	}

	forbidden.Store(false)
	select {
	case <-d.StateReady():
	case <-time.After(10 * time.Second):
		t.Fatal("state not rebuilt after the pods could be read")
	}
	if h := hooks.get(); !reflect.DeepEqual(h, []types.UID{"uid-a", "uid-b"}) {
		t.Errorf("rebuilt and handed to the hooks: %v, want both claims", h)
	}
}

// TestRebuildWithoutClaimsListsNoPods: with no claim of this node there is nothing to check, so
// the pods are not listed (and a driver without the pods permission still rebuilds).
func TestRebuildWithoutClaimsListsNoPods(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, checkpointFileName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	client := newClient(newPod("default", "pod-x", "x", testNode, corev1.PodRunning))
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("pods listed")
	})
	d, _ := newTestDriver(t, client, newFakeDiscoverer(), dir, nil)
	select {
	case <-d.StateReady():
	default:
		t.Fatal("state not ready")
	}
	if n := len(d.Store().PreparedClaims()); n != 0 {
		t.Errorf("%d claims rebuilt from nothing", n)
	}
}

// TestRebuildRBAC: every API call a rebuild makes is allowed by the shipped ClusterRole (the
// chart's is compared with it object by object in deployments/helm).
func TestRebuildRBAC(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deployments", "10-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.ClusterRole
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var r rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == "ClusterRole" {
			role = &r
		}
	}
	if role == nil {
		t.Fatal("no ClusterRole in deployments/10-rbac.yaml")
	}
	allowed := func(a k8stesting.Action) bool {
		res := a.GetResource().Resource
		if a.GetSubresource() != "" {
			res += "/" + a.GetSubresource()
		}
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, a.GetResource().Group) && slices.Contains(r.Resources, res) && slices.Contains(r.Verbs, a.GetVerb()) {
				return true
			}
		}
		return false
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, checkpointFileName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, all := rebuildClaims()
	client := newClient(all...)
	client.ClearActions()
	d, _ := newTestDriver(t, client, newFakeDiscoverer(), dir, nil)
	if len(d.Store().PreparedClaims()) != 2 {
		t.Fatalf("rebuilt %+v", d.Store().PreparedClaims())
	}
	calls := map[string]bool{}
	for _, a := range client.Actions() {
		call := a.GetVerb() + " " + a.GetResource().GroupResource().String()
		calls[call] = true
		if !allowed(a) {
			t.Errorf("the rebuild calls %s, which the ClusterRole does not allow", call)
		}
	}
	for _, want := range []string{"list resourceclaims.resource.k8s.io", "list pods", "create events"} {
		if !calls[want] {
			t.Errorf("the rebuild made no %q call (made %v): this test checks too little", want, calls)
		}
	}
}
