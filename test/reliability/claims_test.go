package reliability

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
)

func newDriver(t *testing.T, client kubernetes.Interface, stateDir string, hooks driver.ClaimHooks) *driver.Driver {
	t.Helper()
	d, err := driver.New(testCtx(t), driver.Options{
		DriverName: driverName, NodeName: nodeName, KubeClient: client,
		Discoverer: newStaticDiscoverer(), Config: mustConfig(t), StateDir: stateDir, Hooks: hooks,
	})
	if err != nil {
		t.Fatalf("new driver: %v", err)
	}
	return d
}

// TestHostileClaimParameters: opaque parameters and allocations a user can write are hostile
// input. Each must fail the claim with an error that says what is wrong and where, and change
// nothing on the node: no checkpoint write, no data-path hook call, no policy for the pod.
func TestHostileClaimParameters(t *testing.T) {
	stateDir := t.TempDir()
	hooks := &recordingHooks{}
	d := newDriver(t, newClient(), stateDir, hooks)
	ctx := testCtx(t)

	// One good claim first, so the checkpoint has content to keep.
	good := newClaim("good", "pod-good", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":5}]}`)
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{good})
	if err != nil || res[good.UID].Err != nil {
		t.Fatalf("prepare the good claim: %v %v", err, res[good.UID].Err)
	}
	before, err := os.ReadFile(checkpointPath(stateDir))
	if err != nil {
		t.Fatal(err)
	}
	hooks.prepared = nil

	deep := strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000)
	// The API server caps opaque parameters at 10 KiB (OpaqueParametersMaxLength): the most
	// mappings a claim can carry, all duplicates.
	huge := `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[` +
		strings.TrimSuffix(strings.Repeat(`{"appPriority":1},`, (resourceapi.OpaqueParametersMaxLength-80)/18), ",") + `]}`
	const tv = `"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig"`
	cases := []struct {
		name    string
		params  string
		devices []string
		want    []string // substrings of the error
	}{
		{"unknown field", `{` + tv + `,"bogus":1}`, nil, []string{"opaque.parameters", `unknown field "bogus"`}},
		{"wrong case", `{` + tv + `,"Ungranted":"drop"}`, nil, []string{"opaque.parameters", "Ungranted"}},
		{"duplicate key", `{` + tv + `,"ungranted":"drop","ungranted":"demote"}`, nil, []string{"opaque.parameters", "duplicate"}},
		{"wrong API version", `{"apiVersion":"tsn.dra.io/v9","kind":"TSNConfig"}`, nil, []string{"opaque.parameters.apiVersion", "v9"}},
		{"wrong kind", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"Pod"}`, nil, []string{"opaque.parameters.kind"}},
		{"priority above 15", `{` + tv + `,"priorityMap":[{"appPriority":16}]}`, nil, []string{"priorityMap[0].appPriority", "between 0 and 15"}},
		{"negative priority", `{` + tv + `,"priorityMap":[{"appPriority":-1}]}`, nil, []string{"priorityMap[0].appPriority"}},
		{"priority overflows int", `{` + tv + `,"priorityMap":[{"appPriority":99999999999999999999999}]}`, nil, []string{"opaque.parameters"}},
		{"priority as string", `{` + tv + `,"priorityMap":[{"appPriority":"5"}]}`, nil, []string{"opaque.parameters"}},
		{"duplicate priority", `{` + tv + `,"priorityMap":[{"appPriority":5},{"appPriority":5}]}`, nil, []string{"priorityMap[1].appPriority", "Duplicate"}},
		{"unknown ungranted action", `{` + tv + `,"ungranted":"forward"}`, nil, []string{"opaque.parameters.ungranted", "forward"}},
		{"path in interface name", `{` + tv + `,"interfaceName":"../../../etc/passwd"}`, nil, []string{"opaque.parameters.interfaceName"}},
		{"long interface name", `{` + tv + `,"interfaceName":"` + strings.Repeat("e", 300) + `"}`, nil, []string{"opaque.parameters.interfaceName"}},
		{"NUL in interface name", `{` + tv + `,"interfaceName":"eth0\u0000x"}`, nil, []string{"opaque.parameters.interfaceName"}},
		{"request not a DNS label", `{` + tv + `,"priorityMap":[{"appPriority":5,"request":"A/B"}]}`, nil, []string{"priorityMap[0].request"}},
		{"request the claim does not have", `{` + tv + `,"priorityMap":[{"appPriority":5,"request":"other"}]}`, nil, []string{"priorityMap[0].request", "other"}},
		{"not JSON", `apiVersion: tsn.dra.io/v1alpha1`, nil, []string{"opaque.parameters"}},
		{"JSON array", `[1,2,3]`, nil, []string{"opaque.parameters"}},
		{"deeply nested", deep, nil, []string{"opaque.parameters"}},
		{"10 KiB of duplicate mappings", huge, nil, []string{"opaque.parameters"}},
		{"device that does not exist", "", []string{"tsn/tsn0-tc9"}, []string{"tsn0-tc9"}},
		{"class not claimable", "", []string{"tsn/tsn0-tc0"}, []string{"tsn0-tc0"}},
		{"device name injection", "", []string{"tsn/tsn0-tc1/../../x"}, []string{"tsn0-tc1/../../x"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClaim(fmt.Sprintf("hostile-%d", i), fmt.Sprintf("pod-h%d", i), tc.params, tc.devices...)
			start := time.Now()
			res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
			took := time.Since(start)
			if err != nil {
				t.Fatalf("PrepareResourceClaims: %v", err)
			}
			perr := res[c.UID].Err
			if perr == nil {
				t.Fatalf("hostile claim was prepared: %+v", res[c.UID])
			}
			msg := perr.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("prepare claim default/%s for %s: ", c.Name, driverName)) {
				t.Errorf("error does not name the claim: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", truncate(msg), w)
				}
			}
			if len(msg) > 16<<10 {
				t.Errorf("error is %d bytes long: a claim's user cannot read that, and it goes into an Event", len(msg))
			}
			if took > 2*time.Second {
				t.Errorf("rejecting took %v", took)
			}
			if p := d.Store().PodPolicies(types.UID(fmt.Sprintf("pod-h%d", i))); len(p) != 0 {
				t.Errorf("pod got policies from a rejected claim: %+v", p)
			}
			t.Logf("error: %s", truncate(msg))
		})
	}
	after, err := os.ReadFile(checkpointPath(stateDir))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("hostile claims changed the checkpoint")
	}
	if len(hooks.prepared) != 0 {
		t.Errorf("hostile claims reached the data path hooks: %v", hooks.prepared)
	}
	if n := len(d.Store().PreparedClaims()); n != 1 {
		t.Errorf("%d prepared claims, want only the good one", n)
	}
}

func truncate(s string) string {
	if len(s) > 300 {
		return s[:300] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}

// TestConcurrentPrepare: the kubelet prepares the claims of different pods in parallel, and may
// retry a claim while its first call still runs. Every claim ends prepared exactly once, in
// memory and in the checkpoint (a restarted driver sees the same), and unprepare in parallel
// leaves nothing.
func TestConcurrentPrepare(t *testing.T) {
	stateDir := t.TempDir()
	hooks := &recordingHooks{}
	d := newDriver(t, newClient(), stateDir, hooks)
	ctx := testCtx(t)
	const n, dup = 100, 4
	var claims []*resourceapi.ResourceClaim
	for i := 0; i < n; i++ {
		dev := "tsn/tsn0-tc1"
		if i%2 == 1 {
			dev = "tsn/tsn0-tc2"
		}
		claims = append(claims, newClaim(fmt.Sprintf("cc%03d", i), fmt.Sprintf("pod-cc%03d", i), "", dev))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n*dup)
	for _, c := range claims {
		for k := 0; k < dup; k++ { // the same claim from several calls at once
			wg.Add(1)
			go func(c *resourceapi.ResourceClaim) {
				defer wg.Done()
				res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
				if err == nil {
					err = res[c.UID].Err
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", c.Name, err)
				}
			}(c)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent prepare: %v", err)
	}
	if got := len(d.Store().PreparedClaims()); got != n {
		t.Fatalf("%d prepared claims, want %d", got, n)
	}
	// The checkpoint holds what memory holds.
	d2 := newDriver(t, newClient(), stateDir, nil)
	if got := len(d2.Store().PreparedClaims()); got != n {
		t.Errorf("after a restart: %d prepared claims, want %d", got, n)
	}
	for _, c := range claims {
		if p := d2.Store().PodPolicies(c.Status.ReservedFor[0].UID); len(p) != 1 {
			t.Errorf("pod of %s has %d policies after a restart, want 1", c.Name, len(p))
		}
	}

	var refs []kubeletplugin.NamespacedObject
	for _, c := range claims {
		refs = append(refs, kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: c.UID})
	}
	for k := 0; k < dup; k++ {
		for _, r := range refs {
			wg.Add(1)
			go func(r kubeletplugin.NamespacedObject) {
				defer wg.Done()
				res, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{r})
				if err == nil {
					err = res[r.UID]
				}
				if err != nil {
					t.Errorf("unprepare %s: %v", r.Name, err)
				}
			}(r)
		}
	}
	wg.Wait()
	if got := len(d.Store().PreparedClaims()); got != 0 {
		t.Errorf("%d claims left after unprepare", got)
	}
	d3 := newDriver(t, newClient(), stateDir, nil)
	if got := len(d3.Store().PreparedClaims()); got != 0 {
		t.Errorf("checkpoint keeps %d claims after unprepare", got)
	}
	// Hooks are idempotent by contract; concurrent unprepares of one claim may each call them
	// (the kubelet plugin helper serializes calls, these did not go through it), but every claim
	// must have been released on the data path.
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	released := map[string]bool{}
	for _, name := range hooks.unprepared {
		released[name] = true
	}
	if len(released) != n {
		t.Errorf("data path hooks released %d of %d claims", len(released), n)
	}
}

// TestCheckpointCorrupted: a checkpoint damaged on disk (a bad sector, a hand edit, a full
// disk in an earlier version) must be detected and reported, and the prepared state rebuilt from
// what the API server knows (claims allocated on this node and reserved for pods), so that a
// node does not stay without its TSN driver until somebody deletes a file by hand.
func TestCheckpointCorrupted(t *testing.T) {
	damages := map[string]func([]byte) []byte{
		"truncated":    func(b []byte) []byte { return b[:len(b)/2] },
		"flipped byte": func(b []byte) []byte { c := bytes.Clone(b); c[len(c)*2/3] ^= 0x20; return c },
		"zeroed":       func(b []byte) []byte { return make([]byte, len(b)) },
		"empty":        func([]byte) []byte { return nil },
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			stateDir := t.TempDir()
			var objs []*resourceapi.ResourceClaim
			for i := 0; i < 3; i++ {
				objs = append(objs, newClaim(fmt.Sprintf("cp%d", i), fmt.Sprintf("pod-cp%d", i), ""))
			}
			client := newClient()
			for i, c := range objs {
				if _, err := client.ResourceV1().ResourceClaims(c.Namespace).Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				// The rebuild takes a claim only while one of its pods runs on this node.
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: fmt.Sprintf("pod-pod-cp%d", i), UID: types.UID(fmt.Sprintf("pod-cp%d", i))},
					Spec:       corev1.PodSpec{NodeName: nodeName},
					Status:     corev1.PodStatus{Phase: corev1.PodRunning},
				}
				if _, err := client.CoreV1().Pods(c.Namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			d := newDriver(t, client, stateDir, nil)
			if _, err := d.PrepareResourceClaims(testCtx(t), objs); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(checkpointPath(stateDir))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(checkpointPath(stateDir), damage(data), 0o600); err != nil {
				t.Fatal(err)
			}

			// Detected: the driver must not silently load garbage or forget the claims.
			d2, err := driver.New(testCtx(t), driver.Options{
				DriverName: driverName, NodeName: nodeName, KubeClient: client,
				Discoverer: newStaticDiscoverer(), Config: mustConfig(t), StateDir: stateDir,
			})
			if err != nil {
				if !strings.Contains(err.Error(), "damaged") && !strings.Contains(err.Error(), "checkpoint") {
					t.Fatalf("damaged checkpoint gives an unclear error: %v", err)
				}
				// Reported, but not rebuilt: the daemon exits, the DaemonSet restarts it, it
				// exits again, until somebody removes the file.
				t.Fatalf("BUG: a damaged checkpoint is detected (%v) but not rebuilt: the driver refuses to start until the file is removed by hand", err)
			}
			// Rebuilt: the claims allocated to this node and reserved for pods are prepared again.
			if got := len(d2.Store().PreparedClaims()); got != len(objs) {
				t.Errorf("rebuilt state has %d claims, want %d", got, len(objs))
			}
			if files, _ := filepath.Glob(filepath.Join(stateDir, "*")); len(files) < 1 {
				t.Errorf("state dir empty after the rebuild")
			}
		})
	}
}

// TestAPIServerUnreachableAtStart: the daemon starts before the API server is reachable (a
// control plane restart, a node reboot). The driver must not give up (no fatal error): it serves
// the kubelet's registration socket, keeps retrying, prepares and checkpoints claims, and a
// shutdown while it waits is prompt.
func TestAPIServerUnreachableAtStart(t *testing.T) {
	stateDir := t.TempDir()
	// A port that refuses connections.
	cfg := &rest.Config{Host: "https://127.0.0.1:1", Timeout: 2 * time.Second}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "tsnrel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	fatal := make(chan error, 1)
	d, err := driver.New(testCtx(t), driver.Options{
		DriverName: driverName, NodeName: nodeName, KubeClient: client,
		Discoverer: newStaticDiscoverer(), Config: mustConfig(t), StateDir: stateDir,
		PluginDataDir: filepath.Join(base, "data"), RegistrarDir: filepath.Join(base, "reg"),
		OnFatal: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		},
	})
	if err != nil {
		t.Fatalf("New needs no API server: %v", err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- d.Start(ctx) }()
	// Start waits for the API server (the ResourceSlice informer's first sync) and retries;
	// meanwhile the kubelet can already reach the registration socket.
	select {
	case err := <-done:
		t.Logf("Start returned after %v: %v", time.Since(start), err)
	case <-time.After(5 * time.Second):
		t.Logf("Start still waits for the API server after 5s (retrying, as the log shows)")
	}
	reg := filepath.Join(base, "reg", driverName+"-reg.sock")
	if _, err := os.Stat(reg); err != nil {
		t.Errorf("registration socket not served while the API server is unreachable: %v", err)
	}
	// Preparing (the kubelet fetched the claim already) still works and is checkpointed.
	c := newClaim("offline", "pod-offline", "")
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || res[c.UID].Err != nil {
		t.Errorf("prepare while the API server is unreachable: %v %v", err, res[c.UID].Err)
	}
	select {
	case err := <-fatal:
		t.Errorf("driver gave up on an unreachable API server: %v", err)
	default:
	}
	// A shutdown while waiting returns promptly (the daemon's SIGTERM path).
	cancel()
	select {
	case err := <-done:
		t.Logf("Start returned after cancel: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("Start does not return within 10s of a shutdown while the API server is unreachable")
	}
	d.Stop()
	d2 := newDriver(t, newClient(), stateDir, nil)
	if len(d2.Store().PreparedClaims()) != 1 {
		t.Errorf("claim prepared while offline is not in the checkpoint")
	}
}
