package reliability

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containerd/nri/pkg/api"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nicsetup"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

const (
	driverName = driver.DefaultDriverName
	nodeName   = "node-rel"
)

// nodeConfig publishes the emulated tsn0: class 1 is priority 3, class 2 priority 2 (as in
// deployments/20-configmap.yaml). The last claim to go takes the restorer off, so that a leak of
// the NIC side is visible.
const nodeConfig = `
apiVersion: tsn.dra.io/v1alpha1
kind: NodeConfig
nics:
- name: tsn0
  match: {interfaceName: tsn0}
  claimableClasses: [1, 2]
  onLastRelease: remove
  schedule:
    numTrafficClasses: 3
    priorityMap: [0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    queues: ["1@0", "1@1", "1@2"]
    gateControlList:
    - {command: set, gateMask: 0x2, interval: 300us}
    - {command: set, gateMask: 0x4, interval: 300us}
    - {command: set, gateMask: 0x1, interval: 400us}
    clock: CLOCK_TAI
    mode: software
`

func mustConfig(t testing.TB) *config.NodeConfig {
	t.Helper()
	c, err := config.Parse([]byte(nodeConfig))
	if err != nil {
		t.Fatalf("node config: %v", err)
	}
	return c
}

// pinPrefix starts the name of every pin directory the suite makes (datapathtest.PinDir).
const pinPrefix = "tsn-rel-"

// waitLimit is how long a test waits for the observer to see all the packets it sent
// (datapathtest.WaitTotal).
const waitLimit = 10 * time.Second

func testCtx(t testing.TB) context.Context {
	_, ctx := ktesting.NewTestContext(t)
	return ctx
}

// quietCtx is for the long loops: ktesting would log every attach of 500 pods.
func quietCtx() context.Context {
	return klog.NewContext(context.Background(), klog.Background().V(10))
}

func openManager(t testing.TB, n *netemu.Node, dir string, opts ...datapath.Option) *datapath.Manager {
	t.Helper()
	opts = append([]datapath.Option{datapath.WithPinDir(dir), datapath.WithNetns(n.HostNetns),
		datapath.WithSaverAttachMode(datapath.ModeTC)}, opts...)
	m, err := datapath.Open(quietCtx(), opts...)
	if err != nil {
		t.Fatalf("open data path: %v", err)
	}
	return m
}

// inNetns runs f on a locked thread in the network namespace at path.
func inNetns(path string, f func() error) error { return netemu.InNetns(path, f) }

// egressPrograms counts what is attached at egress of ifname in the netns at path: TCX
// programs and cls_bpf filters of a clsact qdisc. A restart that attaches twice shows here.
func egressPrograms(path, ifname string) (tcx, tc int, err error) {
	err = inNetns(path, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXEgress})
		if err == nil {
			tcx = len(res.Programs)
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if _, ok := f.(*netlink.BpfFilter); ok {
				tc++
			}
		}
		return nil
	})
	return tcx, tc, err
}

// liveEntries counts the saved entries in the pinned table of the data path at dir, whatever
// pod they belong to.
func liveEntries(dir string) (int, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", bpf.TsnMapTsnTable), nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	n := 0
	var k uint32
	var b bpf.TsnTsnBucket
	it := m.Iterate()
	for it.Next(&k, &b) {
		for _, s := range b.State {
			if s&3 == 2 { // ready (bpf/tsn.c)
				n++
			}
		}
	}
	return n, it.Err()
}

// pins lists what is pinned in the data path's saver and restorer directories.
func pins(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"savers", "restorers"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("read pins: %v", err)
		}
		for _, e := range ents {
			out = append(out, sub+"/"+e.Name())
		}
	}
	return out
}

// linkNames lists the links of the netns at path.
func linkNames(t testing.TB, path string) []string {
	t.Helper()
	var out []string
	err := inNetns(path, func() error {
		ls, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range ls {
			out = append(out, l.Attrs().Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	slices.Sort(out)
	return out
}

// qdiscs describes the qdiscs of ifname in the netns at path.
func qdiscs(t testing.TB, path, ifname string) []string {
	t.Helper()
	var out []string
	err := inNetns(path, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			a := q.Attrs()
			out = append(out, fmt.Sprintf("%s %x parent %x", q.Type(), a.Handle, a.Parent))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list qdiscs: %v", err)
	}
	slices.Sort(out)
	return out
}

// podNS is a pod network namespace made the way a CNI plugin makes one: a veth whose host end
// is in the node's host netns, routed.
type podNS struct {
	Name   string
	Path   string
	HostIf string
	IP     string
}

// addPodNS creates a pod netns with eth0 (10.200.<i/250>.<i%250+2>/32 style point-to-point
// routes) connected to the host netns at hostPath.
func addPodNS(hostPath, suffix string, i int) (*podNS, error) {
	p := &podNS{Name: fmt.Sprintf("tsnrel-%s-p%d", suffix, i), HostIf: fmt.Sprintf("rv%s%d", suffix[:4], i)}
	path, err := netemu.NewNetns(p.Name)
	if err != nil {
		return nil, err
	}
	p.Path = path
	hostNS, err := netns.GetFromPath(hostPath)
	if err != nil {
		return nil, err
	}
	defer hostNS.Close()
	podH, err := netns.GetFromPath(p.Path)
	if err != nil {
		return nil, err
	}
	defer podH.Close()
	host, err := netlink.NewHandleAt(hostNS)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	pod, err := netlink.NewHandleAt(podH)
	if err != nil {
		return nil, err
	}
	defer pod.Close()
	if err := host.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podH)}); err != nil {
		return p, fmt.Errorf("create veth %s: %w", p.HostIf, err)
	}
	hl, err := host.LinkByName(p.HostIf)
	if err != nil {
		return p, err
	}
	pl, err := pod.LinkByName("eth0")
	if err != nil {
		return p, err
	}
	lo, err := pod.LinkByName("lo")
	if err != nil {
		return p, err
	}
	p.IP = fmt.Sprintf("10.200.%d.%d", i/250, i%250+2)
	addr, _ := netlink.ParseAddr(p.IP + "/32")
	addr.Flags = unix.IFA_F_NODAD
	for _, step := range []error{
		host.LinkSetUp(hl), pod.LinkSetUp(pl), pod.LinkSetUp(lo), pod.AddrAdd(pl, addr),
	} {
		if step != nil {
			return p, step
		}
	}
	return p, nil
}

func (p *podNS) delete() error {
	if err := netns.DeleteNamed(p.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// newClient is a fake API server with this node.
func newClient(objs ...k8sruntime.Object) *fake.Clientset {
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: "node-uid"}})
	return fake.NewClientset(objs...)
}

// newClaim is a claim allocated on this node's pool with one device per (request, device) pair
// given as "request/device" (default tsn/tsn0-tc1), reserved for pod podUID, with the given
// opaque parameters (none when empty).
func newClaim(name, podUID, params string, devices ...string) *resourceapi.ResourceClaim {
	if len(devices) == 0 {
		devices = []string{"tsn/tsn0-tc1"}
	}
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Status: resourceapi.ResourceClaimStatus{
			Allocation:  &resourceapi.AllocationResult{},
			ReservedFor: []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "pod-" + podUID, UID: types.UID(podUID)}},
		},
	}
	for _, d := range devices {
		req, dev, _ := strings.Cut(d, "/")
		share := types.UID(fmt.Sprintf("share-%s-%s", name, dev))
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: req, Driver: driverName, Pool: nodeName, Device: dev, ShareID: &share,
		})
	}
	if params != "" {
		c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{{
			Source: resourceapi.AllocationConfigSourceClaim,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: driverName, Parameters: k8sruntime.RawExtension{Raw: []byte(params)},
			}},
		}}
	}
	return c
}

// countingSchedules stands in for the taprio schedules, which this host kernel cannot run
// (hack/vmtest runs them in Debian's 6.1 kernel): it counts what is on each NIC, so a leak of
// the NIC side shows as a NIC left "scheduled".
type countingSchedules struct {
	mu      sync.Mutex
	on      map[string]bool
	applies int
	removes int
}

func (c *countingSchedules) Apply(_ context.Context, n nicsetup.NIC) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on == nil {
		c.on = map[string]bool{}
	}
	if !c.on[n.Name] {
		c.applies++
	}
	c.on[n.Name] = true
	return nil
}

func (c *countingSchedules) Remove(_ context.Context, n nicsetup.NIC) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on[n.Name] {
		c.removes++
	}
	delete(c.on, n.Name)
	return nil
}

func (c *countingSchedules) scheduled() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.on {
		out = append(out, n)
	}
	return out
}

// recordingHooks records calls of the driver's claim hooks (for tests without a data path).
type recordingHooks struct {
	mu         sync.Mutex
	prepared   []string
	unprepared []string
}

func (r *recordingHooks) ClaimPrepared(_ context.Context, c driver.PreparedClaim) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prepared = append(r.prepared, c.Name)
	return nil
}

func (r *recordingHooks) ClaimUnprepared(_ context.Context, c driver.PreparedClaim) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unprepared = append(r.unprepared, c.Name)
	return nil
}

// staticDiscoverer serves one NIC called tsn0 (for tests without namespaces).
type staticDiscoverer struct {
	mu   sync.Mutex
	info *nic.Info
}

func newStaticDiscoverer() *staticDiscoverer {
	return &staticDiscoverer{info: &nic.Info{Name: "tsn0", Up: true, OperState: "up", TxQueues: 4, SpeedMbps: 1000, Driver: "veth", PHCIndex: -1}}
}

func (s *staticDiscoverer) Resolve(m config.Match) (*nic.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.info == nil || m.InterfaceName != s.info.Name {
		return nil, fmt.Errorf("%+v: %w", m, nic.ErrNotFound)
	}
	c := *s.info
	return &c, nil
}

func checkpointPath(stateDir string) string { return filepath.Join(stateDir, "checkpoint.json") }

type podSandbox = api.PodSandbox

type cfgNIC = config.NIC

func klogDiscard() klog.Logger { return klog.Background().V(10) }

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(quietCtx())
}

// routePod routes the pod to everything through its veth with a static neighbour for the
// gateway (the host side has no address in the pod's subnet, as with Calico), and the host back
// to the pod's /32.
func routePod(n *netemu.Node, p *podNS) error {
	var hostMAC net.HardwareAddr
	if err := inNetns(n.HostNetns, func() error {
		l, err := netlink.LinkByName(p.HostIf)
		if err != nil {
			return err
		}
		hostMAC = l.Attrs().HardwareAddr
		_, dst, _ := net.ParseCIDR(p.IP + "/32")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK})
	}); err != nil {
		return fmt.Errorf("host route to pod: %w", err)
	}
	return inNetns(p.Path, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		gw := net.ParseIP("169.254.1.1")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC, Family: unix.AF_INET}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw})
	})
}
