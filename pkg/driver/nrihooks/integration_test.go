package nrihooks_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containernetworking/cni/libcni"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks/nritest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// cniPluginDirs are searched, in order, for the reference CNI plugins; the
// Makefile's cni-plugins target installs them into the first default.
var cniPluginDirs = []string{
	os.Getenv("CNI_PATH"),
	"/var/cache/tsn-dra-driver/cni-v1.9.1",
	"/var/cache/tsn-dra-driver/e2e-v1/bin/cni",
	"/opt/cni/bin",
}

// waitLimit is how long a test waits for the observer to see all the packets
// it sent (datapathtest.WaitTotal).
const waitLimit = 10 * time.Second

func cniPath(t *testing.T) string {
	for _, d := range cniPluginDirs {
		if d == "" {
			continue
		}
		ok := true
		for _, p := range []string{"bridge", "host-local", "loopback"} {
			if _, err := os.Stat(filepath.Join(d, p)); err != nil {
				ok = false
			}
		}
		if ok {
			return d
		}
	}
	t.Skip("the CNI bridge, host-local and loopback plugins are not installed (run `make cni-plugins`, or set CNI_PATH)")
	return ""
}

// cniNode makes pod network namespaces the way a container runtime does: a
// new netns, then the bridge CNI plugin (run in the node's host netns) wires
// eth0 to a bridge with the gateway address and host-local IPAM.
type cniNode struct {
	t        *testing.T
	hostNetn string
	cni      *libcni.CNIConfig
	conf     *libcni.NetworkConfigList
	pods     map[string]string // uid -> netns path
}

func newCNINode(t *testing.T, hostNetns string) *cniNode {
	t.Helper()
	dir := t.TempDir()
	conf, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tsn-test",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.1.0.0/16", "gateway": "10.1.0.1"}]],
             "dataDir": %q}
  }]
}`, filepath.Join(dir, "ipam"))))
	if err != nil {
		t.Fatalf("parse CNI config: %v", err)
	}
	return &cniNode{
		t: t, hostNetn: hostNetns, conf: conf, pods: map[string]string{},
		cni: libcni.NewCNIConfigWithCacheDir([]string{cniPath(t)}, filepath.Join(dir, "cache"), nil),
	}
}

func (c *cniNode) rt(uid string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: "sb-" + uid, NetNS: c.pods[uid], IfName: "eth0"}
}

// addPod creates the pod's netns and runs CNI ADD for it.
func (c *cniNode) addPod(uid string) *api.PodSandbox {
	c.t.Helper()
	name := "tsnnri-" + datapathtest.Suffix() + "-" + uid
	path, err := netemu.NewNetns(name)
	if err != nil {
		c.t.Fatalf("create pod netns %s: %v", name, err)
	}
	c.pods[uid] = path
	c.t.Cleanup(func() { c.delPod(uid) })
	var res any
	err = netemu.InNetns(c.hostNetn, func() error {
		r, err := c.cni.AddNetworkList(context.Background(), c.conf, c.rt(uid))
		res = r
		return err
	})
	if err != nil {
		c.t.Fatalf("CNI ADD for pod %s: %v", uid, err)
	}
	if res == nil {
		c.t.Fatalf("CNI ADD for pod %s returned no result", uid)
	}
	return nritest.Sandbox(uid, c.pods[uid])
}

// delPod runs CNI DEL and removes the netns; it is safe to call twice.
func (c *cniNode) delPod(uid string) {
	path, ok := c.pods[uid]
	if !ok {
		return
	}
	delete(c.pods, uid)
	_ = netemu.InNetns(c.hostNetn, func() error {
		return c.cni.DelNetworkList(context.Background(), c.conf, &libcni.RuntimeConf{ContainerID: "sb-" + uid, NetNS: path, IfName: "eth0"})
	})
	_ = netns.DeleteNamed(filepath.Base(path))
}

// sendFrom sends n packets from the pod with socket priority prio, each
// saying in its payload what it must leave tsn0 with.
func sendFrom(t *testing.T, netnsPath string, dst *netemu.Node, tag uint32, n int, prio, wantPrio uint32) {
	t.Helper()
	s, err := netemu.NewSender(netnsPath, dst.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatalf("sender in %s: %v", netnsPath, err)
	}
	defer s.Close()
	for i := 0; i < n; i++ {
		if err := s.Send(tag, uint32(i), prio, 0, wantPrio, 0); err != nil {
			t.Fatalf("send %d from %s: %v", i, netnsPath, err)
		}
	}
}

type daemon struct {
	mgr    *datapath.Manager
	cancel context.CancelFunc
	done   chan struct{}
}

// startDaemon opens the data path on the pin dir and connects the hooks to
// the runtime, as the driver daemon does at start.
func startDaemon(t *testing.T, node *netemu.Node, pinDir, socket string, plans nrihooks.PlanSource, reg prometheus.Registerer, opts ...datapath.Option) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := datapath.Open(ctx, append([]datapath.Option{datapath.WithPinDir(pinDir), datapath.WithNetns(node.HostNetns)}, opts...)...)
	if err != nil {
		cancel()
		t.Fatalf("open data path: %v", err)
	}
	if err := mgr.EnsureRestorer(ctx, netemu.NIC); err != nil {
		cancel()
		t.Fatalf("restorer on %s: %v", netemu.NIC, err)
	}
	d := &daemon{mgr: mgr, cancel: cancel, done: make(chan struct{})}
	h := nrihooks.New(plans, mgr, nrihooks.NewMetrics(reg))
	go func() {
		defer close(d.done)
		_ = nrihooks.Run(ctx, h, nrihooks.Options{PluginName: "tsn.dra.io", SocketPath: socket, RetryInterval: 50 * time.Millisecond})
	}()
	return d
}

// stop ends the daemon the way a restart does: handles go, pins stay.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.cancel()
	<-d.done
	if err := d.mgr.Close(); err != nil {
		t.Fatalf("close data path: %v", err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and loads eBPF")
	}
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
}

// TestPodsThroughNRI is the scenario: pods made by the bridge CNI
// plugin, started through NRI's runtime side, traffic checked at tsn0.
func TestPodsThroughNRI(t *testing.T) {
	requireRoot(t)
	node := datapathtest.NewNode(t, netemu.Routed, 0)
	cni := newCNINode(t, node.HostNetns)
	pinDir := datapathtest.PinDir(t, "tsn-nri-test-")

	// Class 1 is priority 1, class 2 priority 2 on this NIC.
	plans := &fakePlans{plans: map[string]nrihooks.PodPlan{
		"a": {Interface: "eth0", Claims: []string{"default/a-tc1"},
			Policy: datapath.Policy{Allowed: []uint32{1}, Action: datapath.ActionDemote}},
		"c": {Interface: "eth0", Claims: []string{"default/c-tc2"},
			Policy: datapath.Policy{Allowed: []uint32{2}, Action: datapath.ActionDemote}},
	}}
	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := nritest.StartRuntime(t, socket)
	reg := prometheus.NewRegistry()
	d := startDaemon(t, node, pinDir, socket, plans, reg)
	rt.WaitSynced()
	defer func() {
		if d != nil {
			d.stop(t)
		}
	}()

	obs := datapathtest.AttachObserver(t, node, d.mgr.Mode())

	pods := map[string]*api.PodSandbox{}
	for _, uid := range []string{"a", "b", "c"} {
		pods[uid] = cni.addPod(uid)
		// As a runtime does: the pod's application runs once its container
		// is created, which waits for the saver.
		if err := rt.StartPod(pods[uid]); err != nil {
			t.Fatalf("RunPodSandbox + CreateContainer(%s): %v", uid, err)
		}
	}
	savers, err := d.mgr.Savers()
	if err != nil {
		t.Fatal(err)
	}
	if got := saverUIDs(savers); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("savers after RunPodSandbox = %v, want [a c] (b has no claim)", got)
	}

	const n = 500
	// a claims class 1 and sends 1: arrives as 1.
	sendFrom(t, cni.pods["a"], node, 1, n, 1, 1)
	// b claims nothing and sends 1: the kernel scrubs it to 0.
	sendFrom(t, cni.pods["b"], node, 2, n, 1, 0)
	// c claims class 2 and sends 1: demoted to 0, counted.
	sendFrom(t, cni.pods["c"], node, 3, n, 1, 0)
	for _, tc := range []struct {
		uid  string
		tag  uint32
		prio uint32
	}{{"a", 1, 1}, {"b", 2, 0}, {"c", 3, 0}} {
		r := datapathtest.WaitTotal(t, obs, tc.tag, n, waitLimit)
		t.Logf("pod %s: %d packets at tsn0, by priority %v, right %d, wrong %d", tc.uid, r.Total, r.ByGot, r.Right, r.Wrong)
		if r.Total != n || r.ByGot[tc.prio] != n || r.Wrong != 0 {
			t.Errorf("pod %s: %d of %d packets left tsn0 with priority %d (by priority %v, wrong %d)", tc.uid, r.ByGot[tc.prio], n, tc.prio, r.ByGot, r.Wrong)
		}
	}
	cc, err := d.mgr.Counters("c")
	if err != nil {
		t.Fatal(err)
	}
	if got := cc.ByPriority[1].Demoted; got != n {
		t.Errorf("pod c: demoted counter for priority 1 = %d, want %d", got, n)
	}

	// Restart: the daemon goes away mid-life; pods keep being protected
	// while it is down (pinned programs) and after it is back.
	d.stop(t)
	d = nil
	sendFrom(t, cni.pods["a"], node, 4, n, 1, 1)
	if r := datapathtest.WaitTotal(t, obs, 4, n, waitLimit); r.ByGot[1] != n || r.Wrong != 0 {
		t.Errorf("while the daemon was down: %d of %d packets of pod a left with priority 1 (%v, wrong %d)", r.ByGot[1], n, r.ByGot, r.Wrong)
	}
	rt.Stop() // the old connection is gone with the daemon; a runtime restart re-syncs
	rt2 := nritest.StartRuntime(t, socket, pods["a"], pods["b"], pods["c"])
	d = startDaemon(t, node, pinDir, socket, plans, prometheus.NewRegistry())
	rt2.WaitSynced()
	sendFrom(t, cni.pods["a"], node, 5, n, 1, 1)
	if r := datapathtest.WaitTotal(t, obs, 5, n, waitLimit); r.ByGot[1] != n || r.Wrong != 0 {
		t.Errorf("after the restart: %d of %d packets of pod a left with priority 1 (%v, wrong %d)", r.ByGot[1], n, r.ByGot, r.Wrong)
	}
	if savers, _ := d.mgr.Savers(); !slices.Equal(saverUIDs(savers), []string{"a", "c"}) {
		t.Fatalf("savers after restart = %v, want [a c]", saverUIDs(savers))
	}

	// Pods go: nothing of theirs remains.
	requireNoEntries(t, d.mgr, "a")
	requireNoEntries(t, d.mgr, "c")
	for _, uid := range []string{"a", "b", "c"} {
		if err := rt2.StopPod(pods[uid]); err != nil {
			t.Fatalf("StopPodSandbox(%s): %v", uid, err)
		}
		cni.delPod(uid)
		if err := rt2.RemovePod(pods[uid]); err != nil {
			t.Fatalf("RemovePodSandbox(%s) after its netns is gone: %v", uid, err)
		}
	}
	if savers, _ := d.mgr.Savers(); len(savers) != 0 {
		t.Fatalf("savers after the pods went: %v", saverUIDs(savers))
	}
	requireNoSaverPins(t, pinDir)
	for _, uid := range []string{"a", "c"} {
		if _, err := d.mgr.Counters(uid); err == nil {
			t.Errorf("pod %s still has a policy slot after it went", uid)
		}
	}
}

// TestHookLatency measures RunPodSandbox, CreateContainer and StopPodSandbox
// through NRI for claimed pods, as containerd calls them (p50/p99 go to the
// test log), with savers attached as cls_bpf filters (the daemon's default)
// and as TCX links. RunPodSandbox waits for the attach up to its 10 ms
// budget; a container waits for what is left of it. test/bench parses the
// log line.
func TestHookLatency(t *testing.T) {
	requireRoot(t)
	for _, mode := range []datapath.AttachMode{datapath.ModeTC, datapath.ModeTCX} {
		t.Run(string(mode), func(t *testing.T) { hookLatency(t, mode) })
	}
}

func hookLatency(t *testing.T, mode datapath.AttachMode) {
	node := datapathtest.NewNode(t, netemu.Routed, 0)
	cni := newCNINode(t, node.HostNetns)
	pinDir := datapathtest.PinDir(t, "tsn-nri-lat-")

	const npods, rounds = 10, 10
	plans := &fakePlans{plans: map[string]nrihooks.PodPlan{}}
	var pods []*api.PodSandbox
	for i := 0; i < npods; i++ {
		uid := fmt.Sprintf("p%d", i)
		plans.set(uid, nrihooks.PodPlan{Interface: "eth0", Policy: datapath.Policy{Allowed: []uint32{1, 2}, Action: datapath.ActionDrop}})
		pods = append(pods, cni.addPod(uid))
	}
	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := nritest.StartRuntime(t, socket)
	reg := prometheus.NewRegistry()
	d := startDaemon(t, node, pinDir, socket, plans, reg, datapath.WithSaverAttachMode(mode))
	defer d.stop(t)
	rt.WaitSynced()

	var run, create, stop []time.Duration
	for r := 0; r < rounds; r++ {
		for _, p := range pods {
			start := time.Now()
			if err := rt.RunPod(p); err != nil {
				t.Fatalf("RunPodSandbox(%s): %v", p.Uid, err)
			}
			run = append(run, time.Since(start))
			start = time.Now()
			if err := rt.CreateContainer(p, "app"); err != nil {
				t.Fatalf("CreateContainer(%s): %v", p.Uid, err)
			}
			create = append(create, time.Since(start))
			start = time.Now()
			if err := rt.StopPod(p); err != nil {
				t.Fatalf("StopPodSandbox(%s): %v", p.Uid, err)
			}
			stop = append(stop, time.Since(start))
		}
	}
	p50r, p99r := percentiles(run)
	p50c, p99c := percentiles(create)
	p50s, p99s := percentiles(stop)
	late := metricSum(t, reg, "tsn_dra_nri_late_attaches_total")
	waited := metricSum(t, reg, "tsn_dra_nri_container_saver_wait_seconds")
	// test/bench/control.go parses this line: the part up to the stop's p99
	// is its original form (a space ends that p99).
	t.Logf("saver attach %s: RunPodSandbox over NRI n=%d p50=%v p99=%v; StopPodSandbox p50=%v p99=%v | CreateContainer (waits for a late attach) p50=%v p99=%v max=%v; attaches past RunPodSandbox's budget %.0f, containers that waited %.0f",
		mode, len(run), p50r, p99r, p50s, p99s, p50c, p99c, slices.Max(create), late, waited)
	// containerd drops a hook after 2 s; half of that is a failure whatever
	// the machine's load (the targets are far lower; see the test log).
	if p99r > time.Second || p99s > time.Second || p99c > time.Second {
		t.Errorf("hook p99 too slow: run %v, create %v, stop %v (containerd's limit is 2s)", p99r, p99c, p99s)
	}
	// A stop waits for its detach up to 1.5 s and lets it finish after.
	deadline := time.Now().Add(5 * time.Second)
	for {
		savers, _ := d.mgr.Savers()
		if len(savers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("savers left after every pod stopped: %v", saverUIDs(savers))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metricSum returns the sum of a counter's values, or of a histogram's
// sample counts, over all its series.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v += m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return v
}

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)*50/100], s[(len(s)*99+99)/100-1]
}

func saverUIDs(s []datapath.SaverInfo) []string {
	var out []string
	for _, i := range s {
		out = append(out, i.PodUID)
	}
	slices.Sort(out)
	return out
}

// requireNoEntries waits until the pod holds no saved entry in the data
// path's map (its packets were restored, or expired within the TTL).
func requireNoEntries(t *testing.T, mgr *datapath.Manager, uid string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _, err := mgr.InFlight(uid)
		if err != nil {
			t.Fatalf("entries of pod %s: %v", uid, err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s still holds %d saved entries 5s after its traffic", uid, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireNoSaverPins checks that no saver is pinned under the pin dir.
func requireNoSaverPins(t *testing.T, pinDir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(pinDir, "savers"))
	if err != nil {
		t.Fatalf("read saver pins: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 0 {
		t.Errorf("saver pins left after the pods went: %v", names)
	}
}
