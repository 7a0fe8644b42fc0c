package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
)

// rebuildClaims are the claims the API server knows: two prepared on this node, and what a
// rebuild must not take (another pool, not reserved, another driver) or cannot (a device this
// node does not have: it no longer plans).
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
	for _, c := range []*resourceapi.ResourceClaim{a, b, elsewhere, unreserved, foreign, gone} {
		all = append(all, c)
	}
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
			for name, want := range map[string]float64{"damaged": 1, "pending": 0, "prepared": 2, rebuildResultRebuilt: 2, rebuildResultLeftOut: 1} {
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
			wantMsg := fmt.Sprintf("checkpoint %s was damaged (%s) and is kept as %s; rebuilt 2 prepared claims from the API server, 1 left out because they no longer plan: default/gone", cp, reason, kept[0])
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
