package driver

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

const testNode = "node-a"

const testConfig = `
apiVersion: tsn.dra.io/v1alpha1
kind: NodeConfig
nics:
- name: tsn0
  match: {interfaceName: enp1s0}
  claimableClasses: [1, 2]
  bandwidthRequest: {default: 10M}
  schedule:
    numTrafficClasses: 3
    priorityMap: [0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    queues: ["1@0", "1@1", "1@2"]
    gateControlList:
    - {gateMask: 0x1, interval: 500us}
    - {gateMask: 0x2, interval: 250us}
    - {gateMask: 0x4, interval: 250us}
    clock: CLOCK_TAI
    mode: software
    classes:
    - {class: 2, launchTime: {delta: 200us}, maxSDU: 1000}
- name: tsn1
  match: {driver: igc}
  claimableClasses: [1]
  schedule:
    numTrafficClasses: 2
    priorityMap: [0, 1]
    queues: ["1@0", "1@1"]
    gateControlList:
    - {gateMask: 0x3, interval: 1ms}
    mode: full-offload
`

// fakeDiscoverer serves interfaces from a map; tests change it to simulate link events.
type fakeDiscoverer struct {
	mu    sync.Mutex
	links map[string]*nic.Info
}

func newFakeDiscoverer() *fakeDiscoverer {
	return &fakeDiscoverer{links: map[string]*nic.Info{
		"enp1s0": {Name: "enp1s0", Up: true, OperState: "up", TxQueues: 4, SpeedMbps: 1000, Driver: "e1000e", PHCIndex: 0, HWTxTimestamping: true},
		"enp2s0": {Name: "enp2s0", Up: true, OperState: "up", TxQueues: 2, SpeedMbps: 2500, Driver: "igc", PHCIndex: 1},
	}}
}

func (f *fakeDiscoverer) set(name string, i *nic.Info) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i == nil {
		delete(f.links, name)
	} else {
		f.links[name] = i
	}
}

func (f *fakeDiscoverer) Resolve(m config.Match) (*nic.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, i := range f.links {
		if i.Name == m.InterfaceName || (m.Driver != "" && i.Driver == m.Driver) || (m.PCIAddress != "" && i.PCIAddress == m.PCIAddress) {
			c := *i
			return &c, nil
		}
	}
	return nil, fmt.Errorf("%+v: %w", m, nic.ErrNotFound)
}

func mustConfig(t testing.TB) *config.NodeConfig {
	t.Helper()
	c, err := config.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newClient is a fake clientset with this node and a GenerateName reactor for ResourceSlices
// (the fake tracker ignores GenerateName).
func newClient(objs ...runtime.Object) *fake.Clientset {
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}})
	c := fake.NewClientset(objs...)
	var n atomic.Int64
	c.PrependReactor("create", "resourceslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.CreateAction).GetObject().(*resourceapi.ResourceSlice)
		if s.Name == "" && s.GenerateName != "" {
			s.Name = fmt.Sprintf("%s%05d", s.GenerateName, n.Add(1))
		}
		return false, nil, nil
	})
	return c
}

func newTestDriver(t testing.TB, client *fake.Clientset, disc Discoverer, stateDir string, hooks ClaimHooks) (*Driver, context.Context) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	d, err := New(ctx, Options{
		DriverName: DefaultDriverName, NodeName: testNode, KubeClient: client,
		Discoverer: disc, Config: mustConfig(t), StateDir: stateDir, Hooks: hooks,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d, ctx
}

type claimOpt func(*resourceapi.ResourceClaim)

func withConfig(source resourceapi.AllocationConfigSource, requests []string, params string) claimOpt {
	return func(c *resourceapi.ResourceClaim) {
		c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, resourceapi.DeviceAllocationConfiguration{
			Source: source, Requests: requests,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: DefaultDriverName, Parameters: runtime.RawExtension{Raw: []byte(params)},
			}},
		})
	}
}

func withDevice(request, device string) claimOpt {
	return func(c *resourceapi.ResourceClaim) {
		share := types.UID(fmt.Sprintf("share-%s-%s", c.UID, device))
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: request, Driver: DefaultDriverName, Pool: testNode, Device: device, ShareID: &share,
		})
	}
}

func withPod(uid string) claimOpt {
	return func(c *resourceapi.ResourceClaim) {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: "pod-" + uid, UID: types.UID(uid)})
	}
}

// newClaim is an allocated claim; without options it has device tsn0-tc1 for request "tsn"
// and is reserved for pod "pod1".
func newClaim(name string, opts ...claimOpt) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}},
	}
	hasDevice, hasPod := false, false
	for _, o := range opts {
		o(c)
	}
	hasDevice = len(c.Status.Allocation.Devices.Results) > 0
	hasPod = len(c.Status.ReservedFor) > 0
	if !hasDevice {
		withDevice("tsn", "tsn0-tc1")(c)
	}
	if !hasPod {
		withPod("pod1")(c)
	}
	return c
}
