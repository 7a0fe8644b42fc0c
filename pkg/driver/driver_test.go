package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

func TestDevices(t *testing.T) {
	d, _ := newTestDriver(t, newClient(), newFakeDiscoverer(), t.TempDir(), nil)
	res := d.resources()
	pool, ok := res.Pools[testNode]
	if !ok || len(pool.Slices) != 1 {
		t.Fatalf("pools %+v", res.Pools)
	}
	devs := map[string]resourceapi.Device{}
	for _, dev := range pool.Slices[0].Devices {
		devs[dev.Name] = dev
	}
	if len(devs) != 3 {
		t.Fatalf("devices %v", reflect.ValueOf(devs).MapKeys())
	}
	intAttr := func(dev, name string) int64 {
		a, ok := devs[dev].Attributes[resourceapi.QualifiedName(name)]
		if !ok || a.IntValue == nil {
			t.Errorf("%s: no int attribute %s", dev, name)
			return -1
		}
		return *a.IntValue
	}
	strAttr := func(dev, name string) string {
		a := devs[dev].Attributes[resourceapi.QualifiedName(name)]
		if a.StringValue == nil {
			t.Errorf("%s: no string attribute %s", dev, name)
			return ""
		}
		return *a.StringValue
	}
	boolAttr := func(dev, name string) bool {
		a := devs[dev].Attributes[resourceapi.QualifiedName(name)]
		if a.BoolValue == nil {
			t.Errorf("%s: no bool attribute %s", dev, name)
			return false
		}
		return *a.BoolValue
	}
	for _, c := range []struct {
		got, want int64
		what      string
	}{
		{intAttr("tsn0-tc1", "trafficClass"), 1, "trafficClass"},
		{intAttr("tsn0-tc1", "priority"), 3, "priority"},
		{intAttr("tsn0-tc1", "gateOffsetNs"), 500_000, "gateOffsetNs"},
		{intAttr("tsn0-tc1", "gateLengthNs"), 250_000, "gateLengthNs"},
		{intAttr("tsn0-tc1", "gateWindows"), 1, "gateWindows"},
		{intAttr("tsn0-tc1", "gateOpenPercent"), 25, "gateOpenPercent"},
		{intAttr("tsn0-tc1", "cycleTimeNs"), 1_000_000, "cycleTimeNs"},
		{intAttr("tsn0-tc1", "linkSpeedMbps"), 1000, "linkSpeedMbps"},
		{intAttr("tsn0-tc1", "ptpClock"), 0, "ptpClock"},
		{intAttr("tsn0-tc2", "priority"), 2, "priority tc2"},
		{intAttr("tsn0-tc2", "maxSDU"), 1000, "maxSDU"},
		{intAttr("tsn1-tc1", "ptpClock"), 1, "ptpClock tsn1"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
		}
	}
	if strAttr("tsn0-tc1", "interface") != "enp1s0" || strAttr("tsn1-tc1", "interface") != "enp2s0" || strAttr("tsn0-tc1", "nic") != "tsn0" || strAttr("tsn0-tc1", "mode") != "software" {
		t.Errorf("string attributes wrong")
	}
	if boolAttr("tsn0-tc1", "launchTime") || !boolAttr("tsn0-tc2", "launchTime") || boolAttr("tsn0-tc1", "hardwareOffload") || !boolAttr("tsn1-tc1", "hardwareOffload") || !boolAttr("tsn0-tc1", "hardwareTimestamping") {
		t.Errorf("bool attributes wrong")
	}
	for name, dev := range devs {
		if dev.AllowMultipleAllocations == nil || !*dev.AllowMultipleAllocations {
			t.Errorf("%s: not shareable", name)
		}
	}
	bw := devs["tsn0-tc1"].Capacity[BandwidthCapacity]
	if bw.Value.Value() != 250_000_000 || bw.RequestPolicy.Default.Value() != 10_000_000 ||
		bw.RequestPolicy.ValidRange.Min.Value() != 1_000_000 || bw.RequestPolicy.ValidRange.Max.Value() != 250_000_000 || bw.RequestPolicy.ValidRange.Step.Value() != 1_000_000 {
		t.Errorf("tsn0-tc1 bandwidth %+v %+v", bw.Value, bw.RequestPolicy)
	}
	bw1 := devs["tsn1-tc1"].Capacity[BandwidthCapacity]
	if v := bw1.Value.Value(); v != 2_500_000_000 {
		t.Errorf("tsn1-tc1 bandwidth %d", v)
	}
}

func TestBandwidthCapacityPolicy(t *testing.T) {
	mk := func(def, mn, step string) config.BandwidthRequest {
		q := func(s string) *resource.Quantity { v := resource.MustParse(s); return &v }
		return config.BandwidthRequest{Default: q(def), Min: q(mn), Step: q(step)}
	}
	for _, tc := range []struct {
		bps                 uint64
		policy              config.BandwidthRequest
		def, min, max, step int64
	}{
		// Max rounds down onto the grid from min.
		{333_333_333, mk("10M", "1M", "1M"), 10_000_000, 1_000_000, 333_000_000, 1_000_000},
		{333_333_333, mk("2M", "500k", "1500k"), 2_000_000, 500_000, 332_000_000, 1_500_000},
		// Default above the class: capped at max.
		{5_500_000, mk("10M", "1M", "1M"), 5_000_000, 1_000_000, 5_000_000, 1_000_000},
		// Slower than min+step: every request takes the whole class.
		{1_500_000, mk("1M", "1M", "1M"), 1_500_000, 1_500_000, -1, -1},
	} {
		c := bandwidthCapacity(tc.bps, tc.policy)
		p := c.RequestPolicy
		get := func(q *resource.Quantity) int64 {
			if q == nil {
				return -1
			}
			return q.Value()
		}
		if c.Value.Value() != int64(tc.bps) || get(p.Default) != tc.def || get(p.ValidRange.Min) != tc.min || get(p.ValidRange.Max) != tc.max || get(p.ValidRange.Step) != tc.step {
			t.Errorf("%d bit/s: value %v default %d min %d max %d step %d", tc.bps, c.Value.String(), get(p.Default), get(p.ValidRange.Min), get(p.ValidRange.Max), get(p.ValidRange.Step))
		}
	}
}

func TestDevicesNotPublishedWhenScheduleDoesNotFit(t *testing.T) {
	disc := newFakeDiscoverer()
	disc.set("enp1s0", &nic.Info{Name: "enp1s0", Up: true, TxQueues: 2, Driver: "e1000e", PHCIndex: -1})
	d, _ := newTestDriver(t, newClient(), disc, t.TempDir(), nil)
	if _, ok := d.inv.devices["tsn0-tc1"]; ok {
		t.Errorf("tsn0 published with 2 tx queues for a 3-queue schedule")
	}
	if err := d.inv.nics[0].err; err == nil || err.Error() != `schedule does not fit interface enp1s0: queues[2]: Invalid value: "1@2": beyond the NIC's 2 tx queues` {
		t.Errorf("error %v", err)
	}
	// No link speed: no bandwidth capacity, still a device.
	disc.set("enp1s0", &nic.Info{Name: "enp1s0", Up: true, TxQueues: 4, Driver: "e1000e", PHCIndex: -1})
	d2, _ := newTestDriver(t, newClient(), disc, t.TempDir(), nil)
	dev := d2.inv.devices["tsn0-tc1"].resourceDevice()
	if _, ok := dev.Capacity[BandwidthCapacity]; ok {
		t.Errorf("capacity without link speed")
	}
	if _, ok := dev.Attributes["ptpClock"]; ok {
		t.Errorf("ptpClock without PHC")
	}
}

func prepare(t *testing.T, d *Driver, ctx context.Context, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	t.Helper()
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := res[c.UID]
	if !ok || len(res) != 1 {
		t.Fatalf("result %+v", res)
	}
	return r
}

func TestPrepareAndUnprepare(t *testing.T) {
	claim := newClaim("c1",
		withDevice("ctrl", "tsn0-tc1"), withDevice("video", "tsn0-tc2"),
		withPod("pod1"), withPod("pod2"),
		withConfig(resourceapi.AllocationConfigSourceClass, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"drop","interfaceName":"net1"}`),
		withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig",
			"priorityMap":[{"appPriority":5,"request":"ctrl"},{"appPriority":2,"request":"video"},{"appPriority":6,"request":"video"}],
			"launchTime":false,"ungranted":"demote"}`),
	)
	client := newClient(claim)
	dir := t.TempDir()
	d, ctx := newTestDriver(t, client, newFakeDiscoverer(), dir, nil)
	d.recorderForTest(t)

	r := prepare(t, d, ctx, claim)
	if r.Err != nil {
		t.Fatalf("prepare: %v", r.Err)
	}
	if len(r.Devices) != 2 || r.Devices[0].DeviceName != "tsn0-tc1" || r.Devices[0].PoolName != testNode || r.Devices[0].Requests[0] != "ctrl" || r.Devices[0].ShareID == nil {
		t.Errorf("devices %+v", r.Devices)
	}
	pols := d.Store().PodPolicies("pod2")
	if len(pols) != 1 {
		t.Fatalf("policies %+v", pols)
	}
	want := PodPolicy{
		ClaimUID: claim.UID, ClaimNamespace: "default", ClaimName: "c1", PodUID: "pod2", PodName: "pod-pod2",
		NIC: "tsn0", Interface: "enp1s0", PodInterface: "net1",
		GrantedClasses: []int{1, 2}, GrantedPriorities: []uint32{2, 3},
		Remap:     map[uint32]uint32{5: 3, 2: 2, 6: 2},
		Ungranted: v1alpha1.UngrantedDemote, DemotePriority: 0, LaunchTime: false,
	}
	if !reflect.DeepEqual(pols[0], want) {
		t.Errorf("policy\n got %+v\nwant %+v", pols[0], want)
	}
	if len(d.Store().PodPolicies("pod1")) != 1 || len(d.Store().PodPolicies("pod3")) != 0 {
		t.Errorf("pod policies wrong")
	}
	if got := d.Store().NICClaims("tsn0"); len(got) != 1 || got[0] != claim.UID {
		t.Errorf("NICClaims(tsn0) = %v", got)
	}
	if got := d.Store().NICClaims("tsn1"); len(got) != 0 {
		t.Errorf("NICClaims(tsn1) = %v", got)
	}

	// Claim status: Ready condition and the pod interface per device.
	got, err := client.ResourceV1().ResourceClaims("default").Get(ctx, "c1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Devices) != 2 {
		t.Fatalf("status devices %+v", got.Status.Devices)
	}
	for _, ds := range got.Status.Devices {
		if ds.Driver != DefaultDriverName || ds.Pool != testNode || ds.ShareID == nil || ds.NetworkData == nil || ds.NetworkData.InterfaceName != "net1" ||
			len(ds.Conditions) != 1 || ds.Conditions[0].Type != "Ready" || ds.Conditions[0].Status != metav1.ConditionTrue {
			t.Errorf("device status %+v", ds)
		}
	}

	// Idempotent: the same answer, the checkpoint untouched.
	cp := filepath.Join(dir, checkpointFileName)
	st1, _ := os.Stat(cp)
	time.Sleep(10 * time.Millisecond)
	r2 := prepare(t, d, ctx, claim)
	st2, _ := os.Stat(cp)
	if r2.Err != nil || !reflect.DeepEqual(r.Devices, r2.Devices) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second prepare differs: %+v %v (checkpoint rewritten: %v)", r2.Devices, r2.Err, !st1.ModTime().Equal(st2.ModTime()))
	}

	// Unprepare, twice.
	for i := 0; i < 2; i++ {
		res, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: claim.UID, NamespacedName: types.NamespacedName{Namespace: "default", Name: "c1"}}})
		if err != nil || len(res) != 1 || res[claim.UID] != nil {
			t.Fatalf("unprepare %d: %v %v", i, res, err)
		}
	}
	if len(d.Store().PodPolicies("pod1")) != 0 || len(d.Store().PreparedClaims()) != 0 {
		t.Errorf("state left after unprepare")
	}
}

func TestPrepareErrors(t *testing.T) {
	const cfg = "status.allocation.devices.config"
	for _, tc := range []struct {
		name  string
		claim *resourceapi.ResourceClaim
		want  string
	}{
		{"unknown device", newClaim("c", withDevice("tsn", "tsn0-tc0")),
			`status.allocation.devices.results[0].device: Not found: "tsn0-tc0"`},
		{"other pool", func() *resourceapi.ResourceClaim {
			c := newClaim("c")
			c.Status.Allocation.Devices.Results[0].Pool = "node-b"
			return c
		}(), `status.allocation.devices.results[0].pool: Invalid value: "node-b": this node's pool is "node-a"`},
		{"not allocated", func() *resourceapi.ResourceClaim {
			c := newClaim("c")
			c.Status.Allocation = nil
			return c
		}(), "claim is not allocated"},
		{"no device of ours", func() *resourceapi.ResourceClaim {
			c := newClaim("c")
			c.Status.Allocation.Devices.Results[0].Driver = "gpu.example.com"
			return c
		}(), "claim has no device of driver tsn.dra.io"},
		{"no pod", func() *resourceapi.ResourceClaim {
			c := newClaim("c")
			c.Status.ReservedFor[0].Resource = "jobs"
			return c
		}(), "status.reservedFor: Required value: the claim is not reserved for any pod"},
		{"unknown field in claim config", newClaim("c", withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priority":3}`)),
			cfg + `[0].opaque.parameters: Invalid value: "": unknown field "priority"`},
		{"bad class config", newClaim("c",
			withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig"}`),
			withConfig(resourceapi.AllocationConfigSourceClass, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"keep"}`)),
			cfg + `[1].opaque.parameters.ungranted: Unsupported value: "keep": supported values: "demote", "drop"`},
		{"priority map to unknown request", newClaim("c", withConfig(resourceapi.AllocationConfigSourceClaim, nil,
			`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":5,"request":"video"}]}`)),
			cfg + `[0].opaque.parameters.priorityMap[0].request: Invalid value: "video": no device of this driver was allocated for this request`},
		{"priority map needs request", newClaim("c", withDevice("a", "tsn0-tc1"), withDevice("b", "tsn0-tc2"),
			withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":5}]}`)),
			cfg + `[0].opaque.parameters.priorityMap[0].request: Required value: the claim has more than one device of this driver: name the request`},
		{"errors of several configs listed up to five", newClaim("c",
			withConfig(resourceapi.AllocationConfigSourceClaim, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"keep"}`),
			withConfig(resourceapi.AllocationConfigSourceClass, nil, `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[`+
				strings.TrimSuffix(strings.Repeat(`{"appPriority":1},`, 7), ",")+`]}`)),
			"[" + cfg + `[1].opaque.parameters.priorityMap[1].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				cfg + `[1].opaque.parameters.priorityMap[2].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				cfg + `[1].opaque.parameters.priorityMap[3].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				cfg + `[1].opaque.parameters.priorityMap[4].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				cfg + `[1].opaque.parameters.priorityMap[5].appPriority: Duplicate value: "1 (also priorityMap[0])", and 2 more]`},
		{"NUL in interface name", newClaim("c", withConfig(resourceapi.AllocationConfigSourceClaim, nil,
			`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"eth0\u0000x"}`)),
			cfg + `[0].opaque.parameters.interfaceName: Invalid value: "eth0\x00x": must be a network interface name: 1-15 bytes, not "." or "..", without '/', ':', whitespace or control characters`},
		{"launch time without etf", newClaim("c", withConfig(resourceapi.AllocationConfigSourceClass, nil,
			`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","launchTime":true}`)),
			cfg + `[0].opaque.parameters.launchTime: Invalid value: true: device tsn0-tc1 has neither launch time (etf) nor txtime-assist configured`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(tc.claim)
			d, ctx := newTestDriver(t, client, newFakeDiscoverer(), t.TempDir(), nil)
			d.recorderForTest(t)
			r := prepare(t, d, ctx, tc.claim)
			if r.Err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			full := "prepare claim default/c for tsn.dra.io: " + tc.want
			if r.Err.Error() != full {
				t.Errorf("error:\n got %q\nwant %q", r.Err.Error(), full)
			}
			if len(d.Store().PreparedClaims()) != 0 {
				t.Errorf("a failed prepare left state")
			}
			// The error reaches the claim as an event.
			ev := d.waitEvent(t, "PrepareFailed")
			if !strings.Contains(ev, tc.want) {
				t.Errorf("event %q does not carry the error", ev)
			}
		})
	}
}

func TestLaunchTimeOnEtfClass(t *testing.T) {
	claim := newClaim("c", withDevice("v", "tsn0-tc2"), withConfig(resourceapi.AllocationConfigSourceClaim, nil,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","launchTime":true}`))
	d, ctx := newTestDriver(t, newClient(claim), newFakeDiscoverer(), t.TempDir(), nil)
	if r := prepare(t, d, ctx, claim); r.Err != nil {
		t.Fatal(r.Err)
	}
	p := d.Store().PodPolicies("pod1")
	if len(p) != 1 || !p[0].LaunchTime || p[0].Ungranted != v1alpha1.UngrantedDemote || p[0].PodInterface != "eth0" || p[0].Remap != nil || !reflect.DeepEqual(p[0].GrantedPriorities, []uint32{2}) {
		t.Errorf("policy %+v", p)
	}
}

func TestCheckpointSurvivesRestart(t *testing.T) {
	claim := newClaim("c1")
	dir := t.TempDir()
	d, ctx := newTestDriver(t, newClient(claim), newFakeDiscoverer(), dir, nil)
	if r := prepare(t, d, ctx, claim); r.Err != nil {
		t.Fatal(r.Err)
	}
	before := d.Store().PreparedClaims()

	// A new process: state comes back from the checkpoint, even when the NIC is gone meanwhile.
	disc := newFakeDiscoverer()
	disc.set("enp1s0", nil)
	d2, ctx2 := newTestDriver(t, newClient(claim), disc, dir, nil)
	if after := d2.Store().PreparedClaims(); !reflect.DeepEqual(before, after) {
		t.Fatalf("state after restart\n got %+v\nwant %+v", after, before)
	}
	// The kubelet prepares again after a restart: idempotent, keeps the state.
	if r := prepare(t, d2, ctx2, claim); r.Err != nil || len(r.Devices) != 1 || r.Devices[0].DeviceName != "tsn0-tc1" {
		t.Errorf("re-prepare after restart: %+v", r)
	}
	// Unprepare after the restart works from the checkpoint alone.
	res, _ := d2.UnprepareResourceClaims(ctx2, []kubeletplugin.NamespacedObject{{UID: claim.UID}})
	if res[claim.UID] != nil || len(d2.Store().PreparedClaims()) != 0 {
		t.Errorf("unprepare after restart: %v", res)
	}

	// A checkpoint of another version (a newer driver wrote it) is not damaged: it stops the
	// driver rather than being replaced. (Damage is rebuilt: rebuild_test.go.)
	cp := filepath.Join(dir, checkpointFileName)
	os.WriteFile(cp, []byte(`{"version":2,"checksum":"","claims":{}}`), 0o600)
	_, err := New(ctx, Options{DriverName: DefaultDriverName, NodeName: testNode, KubeClient: newClient(), Discoverer: disc, Config: mustConfig(t), StateDir: dir})
	if want := "checkpoint " + cp + " has version 2, this driver reads version 1"; err == nil || err.Error() != want {
		t.Errorf("foreign checkpoint: %v, want %q", err, want)
	}
}

func TestCheckpointWriteFailureChangesNothing(t *testing.T) {
	claim := newClaim("c1")
	dir := t.TempDir()
	d, ctx := newTestDriver(t, newClient(claim), newFakeDiscoverer(), dir, nil)
	// Make the checkpoint unwritable: replace the directory by a file.
	d.state.cp.path = filepath.Join(dir, "not-a-dir", checkpointFileName)
	os.WriteFile(filepath.Join(dir, "not-a-dir"), nil, 0o600)
	r := prepare(t, d, ctx, claim)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "checkpoint: write checkpoint") {
		t.Fatalf("want checkpoint error, got %v", r.Err)
	}
	if len(d.Store().PreparedClaims()) != 0 {
		t.Errorf("state changed although the checkpoint write failed")
	}
}

type fakeHooks struct {
	prepareErr, unprepareErr error
	prepared, unprepared     []types.UID
}

func (f *fakeHooks) ClaimPrepared(_ context.Context, c PreparedClaim) error {
	f.prepared = append(f.prepared, c.UID)
	return f.prepareErr
}
func (f *fakeHooks) ClaimUnprepared(_ context.Context, c PreparedClaim) error {
	f.unprepared = append(f.unprepared, c.UID)
	return f.unprepareErr
}

func TestHooks(t *testing.T) {
	claim := newClaim("c1")
	h := &fakeHooks{prepareErr: errors.New("taprio refused")}
	d, ctx := newTestDriver(t, newClient(claim), newFakeDiscoverer(), t.TempDir(), h)
	r := prepare(t, d, ctx, claim)
	if r.Err == nil || r.Err.Error() != "prepare claim default/c1 for tsn.dra.io: set up data path: taprio refused" {
		t.Errorf("hook error: %v", r.Err)
	}
	if len(d.Store().PreparedClaims()) != 0 {
		t.Errorf("checkpoint not rolled back")
	}
	h.prepareErr = nil
	if r := prepare(t, d, ctx, claim); r.Err != nil {
		t.Fatal(r.Err)
	}
	h.unprepareErr = errors.New("busy")
	obj := []kubeletplugin.NamespacedObject{{UID: claim.UID, NamespacedName: types.NamespacedName{Namespace: "default", Name: "c1"}}}
	res, _ := d.UnprepareResourceClaims(ctx, obj)
	if res[claim.UID] == nil || res[claim.UID].Error() != "unprepare claim default/c1 for tsn.dra.io: tear down data path: busy" || len(d.Store().PreparedClaims()) != 1 {
		t.Errorf("failed unprepare hook: %v", res)
	}
	h.unprepareErr = nil
	res, _ = d.UnprepareResourceClaims(ctx, obj)
	if res[claim.UID] != nil || len(d.Store().PreparedClaims()) != 0 {
		t.Errorf("unprepare: %v", res)
	}
	if len(h.prepared) != 2 || len(h.unprepared) != 2 {
		t.Errorf("hook calls %v %v", h.prepared, h.unprepared)
	}
}

func TestLinkRelevant(t *testing.T) {
	d, _ := newTestDriver(t, newClient(), newFakeDiscoverer(), t.TempDir(), nil)
	// tsn1 is selected by driver: any link may matter.
	if !d.LinkRelevant("veth1234") || !d.LinkRelevant("") {
		t.Errorf("driver selector: events must count")
	}
	d.cfg.NICs = d.cfg.NICs[:1]
	d.inv = buildInventory(d.cfg, d.opts.Discoverer)
	if d.LinkRelevant("veth1234") || !d.LinkRelevant("enp1s0") || !d.LinkRelevant("") {
		t.Errorf("name selector: only the NIC's events count")
	}
}

func TestHealth(t *testing.T) {
	disc := newFakeDiscoverer()
	d, ctx := newTestDriver(t, newClient(), disc, t.TempDir(), nil)
	d.opts.HealthResend = time.Hour
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reports := make(chan kubeletplugin.DeviceHealthReport)
	done := make(chan error, 1)
	go func() { done <- d.WatchHealthStatus(ctx, reports) }()

	health := func() map[string]string {
		select {
		case r := <-reports:
			m := map[string]string{}
			for _, dh := range r.Devices {
				m[dh.DeviceName] = string(dh.Health) + " " + dh.Message
			}
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("no health report")
			return nil
		}
	}
	if h := health(); h["tsn0-tc1"] != "Healthy " || h["tsn0-tc2"] != "Healthy " || h["tsn1-tc1"] != "Healthy " {
		t.Errorf("initial %v", h)
	}
	disc.set("enp1s0", &nic.Info{Name: "enp1s0", Up: false, OperState: "down", TxQueues: 4, Driver: "e1000e", PHCIndex: -1})
	disc.set("enp2s0", nil)
	if err := d.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	h := health()
	if h["tsn0-tc1"] != "Unhealthy interface enp1s0 is down (down)" || !strings.HasPrefix(h["tsn1-tc1"], "Unhealthy ") || !strings.Contains(h["tsn1-tc1"], "no matching network interface") {
		t.Errorf("after link events %v", h)
	}
	// A NIC that is gone is not published; a down one stays published (unhealthy).
	if _, ok := d.inv.devices["tsn1-tc1"]; ok {
		t.Errorf("device of a missing NIC still in inventory")
	}
	if _, ok := d.inv.devices["tsn0-tc1"]; !ok {
		t.Errorf("device of a down NIC withdrawn")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("WatchHealthStatus: %v", err)
	}
}
