package reliability

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nicsetup"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks/nritest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/podplan"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// daemon is what a restart of cmd/tsn-dra-driver replaces: the data path manager, the driver
// (claim state loaded from the checkpoint), the NIC setup (claim counts in memory, resumed from
// the checkpoint as the daemon's resume does) and the NRI plugin connection.
type daemon struct {
	mgr    *datapath.Manager
	drv    *driver.Driver
	cancel context.CancelFunc
	done   chan struct{}
}

func startDaemon(t testing.TB, n *netemu.Node, dir, stateDir, socket string) *daemon {
	t.Helper()
	mgr := openManager(t, n, dir)
	ctx, cancel := context.WithCancel(quietCtx())
	d := &daemon{mgr: mgr, cancel: cancel, done: make(chan struct{})}
	hooks := nicsetup.ClaimHooks{Setup: nicsetup.New(mgr, &countingSchedules{}), NICs: func(name string) (cfgNIC, bool) { return d.drv.NICConfig(name) }}
	drv, err := driver.New(ctx, driver.Options{
		DriverName: driverName, NodeName: nodeName, KubeClient: newClient(),
		Discoverer: newStaticDiscoverer(), Config: mustConfig(t), StateDir: stateDir, Hooks: hooks,
	})
	if err != nil {
		t.Fatalf("driver: %v", err)
	}
	d.drv = drv
	for _, c := range drv.Store().PreparedClaims() { // cmd/tsn-dra-driver's resume
		if err := hooks.ClaimPrepared(ctx, c); err != nil {
			t.Fatalf("resume claim %s: %v", c.Name, err)
		}
	}
	h := nrihooks.New(podplan.Source{Claims: drv.Store(), Logger: klogDiscard()}, mgr, nrihooks.NewMetrics(prometheus.NewRegistry()))
	go func() {
		defer close(d.done)
		_ = nrihooks.Run(ctx, h, nrihooks.Options{PluginName: driverName, SocketPath: socket, RetryInterval: 50 * time.Millisecond})
	}()
	return d
}

// stop is the daemon's shutdown: NRI goes, the manager's handles go, pins stay.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	d.cancel()
	<-d.done
	if err := d.mgr.Close(); err != nil {
		t.Fatalf("close data path: %v", err)
	}
}

// TestDaemonRestartUnderTraffic restarts the daemon (data path manager, driver with its
// checkpoint, NIC setup resumed from it, NRI plugin: what cmd/tsn-dra-driver does on SIGTERM and
// start) ten times while a pod with a prepared claim sends without pause, and the runtime
// re-synchronizes it each time. Every packet must leave tsn0 with its
// priority and launch time (no restore lost while the daemon is down or coming back), and after
// every restart exactly one saver and one restorer are attached (nothing attached twice).
func TestDaemonRestartUnderTraffic(t *testing.T) {
	datapathtest.NeedRoot(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	dir := datapathtest.PinDir(t, pinPrefix)
	socket := filepath.Join(t.TempDir(), "nri.sock")
	pod, other := n.Pods[0], n.Pods[1]
	stateDir := t.TempDir()
	rt := nritest.StartRuntime(t, socket)
	d := startDaemon(t, n, dir, stateDir, socket)
	rt.WaitSynced()
	// The pod's claims: class 1 (priority 3) and class 2 (priority 2), and priority 1 remapped
	// onto class 1's priority by the claim's parameters.
	claim := newClaim("restart", "claimed", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":1,"request":"tsn"}]}`, "tsn/tsn0-tc1", "tsn2/tsn0-tc2")
	if res, err := d.drv.PrepareResourceClaims(quietCtx(), []*resourceapi.ResourceClaim{claim}); err != nil || res[claim.UID].Err != nil {
		t.Fatalf("prepare: %v %v", err, res[claim.UID].Err)
	}
	defer func() { d.stop(t); cleanupPins(t, n, dir) }()
	obs := datapathtest.AttachObserver(t, n, d.mgr.Mode())
	// As a runtime does: the application runs once its container is created,
	// which waits for the pod's saver (RunPodSandbox may return before).
	if err := rt.StartPod(nritest.Sandbox("claimed", pod.Netns)); err != nil {
		t.Fatalf("RunPodSandbox + CreateContainer: %v", err)
	}
	if err := rt.StartPod(nritest.Sandbox("unclaimed", other.Netns)); err != nil {
		t.Fatalf("RunPodSandbox + CreateContainer: %v", err)
	}

	// Traffic from the claimed pod (tag 1, must be restored) and the unclaimed one (tag 2: its
	// priority is scrubbed, it must never get the claimed pod's metadata).
	var sent, sentOther atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	sender := func(ns string, tag uint32, restored bool, count *atomic.Uint64) {
		defer wg.Done()
		s, err := netemu.NewSender(ns, n.Dest, unix.CLOCK_TAI)
		if err != nil {
			t.Errorf("sender: %v", err)
			return
		}
		defer s.Close()
		base := netemu.TAINow() + uint64(time.Hour)
		for i := uint32(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			prio := 1 + i%3
			tx := base + uint64(i)*1000
			wantPrio, wantTx := prio, tx
			if prio == 1 {
				wantPrio = 3 // remapped onto class 1's priority
			}
			if !restored {
				wantPrio = 0 // scrubbed by forwarding; launch time survives on 6.18 without a proxy
			}
			if err := s.Send(tag, i, prio, tx, wantPrio, wantTx); err != nil {
				t.Errorf("send: %v", err)
				return
			}
			count.Add(1)
			if i%64 == 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
	}
	wg.Add(2)
	go sender(pod.Netns, 1, true, &sent)
	go sender(other.Netns, 2, false, &sentOther)

	const restarts = 10
	for r := 0; r < restarts; r++ {
		time.Sleep(150 * time.Millisecond)
		d.stop(t)
		time.Sleep(50 * time.Millisecond) // traffic while no daemon runs
		rt.Stop()                         // the plugin's connection went with the daemon
		rt = nritest.StartRuntime(t, socket, nritest.Sandbox("claimed", pod.Netns), nritest.Sandbox("unclaimed", other.Netns))
		d = startDaemon(t, n, dir, stateDir, socket)
		rt.WaitSynced()
		checkAttachedOnce(t, n, pod.Netns, pod.Ifname, d.mgr)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()

	res := datapathtest.WaitTotal(t, obs, 1, sent.Load(), waitLimit)
	resOther := datapathtest.WaitTotal(t, obs, 2, sentOther.Load(), waitLimit)
	t.Logf("claimed pod: %d sent over %d restarts, at tsn0 %+v", sent.Load(), restarts, res)
	t.Logf("unclaimed pod: %d sent, at tsn0 %+v", sentOther.Load(), resOther)
	if res.Total != sent.Load() || res.Right != sent.Load() || res.Wrong != 0 {
		t.Errorf("claimed pod: %d sent, %d at tsn0, %d right, %d missed, %d wrong; want all right", sent.Load(), res.Total, res.Right, res.Missed, res.Wrong)
	}
	if resOther.Wrong != 0 {
		t.Errorf("unclaimed pod: %d packets left tsn0 with metadata that is not its own", resOther.Wrong)
	}
	if sv, _ := d.mgr.Savers(); len(sv) != 1 {
		t.Errorf("savers after the restarts: %+v", sv)
	}
}

// checkAttachedOnce: one saver on the pod's interface, one restorer (plus the observer) on tsn0.
func checkAttachedOnce(t testing.TB, n *netemu.Node, podNetns, ifname string, m *datapath.Manager) {
	t.Helper()
	tcx, tc, err := egressPrograms(podNetns, ifname)
	if err != nil {
		t.Fatalf("programs on the pod's %s: %v", ifname, err)
	}
	if tcx+tc != 1 {
		t.Errorf("pod's %s has %d TCX programs and %d tc filters at egress, want one saver", ifname, tcx, tc)
	}
	tcx, tc, err = egressPrograms(n.HostNetns, netemu.NIC)
	if err != nil {
		t.Fatalf("programs on %s: %v", netemu.NIC, err)
	}
	if tcx+tc != 2 {
		t.Errorf("%s has %d TCX programs and %d tc filters at egress, want the restorer and the observer", netemu.NIC, tcx, tc)
	}
}

// cleanupPins uninstalls what is left under the pin dir (after the test's own checks).
func cleanupPins(t testing.TB, n *netemu.Node, dir string) {
	m, err := datapath.Open(quietCtx(), datapath.WithPinDir(dir), datapath.WithNetns(n.HostNetns))
	if err != nil {
		t.Logf("reopen for clean-up: %v", err)
		return
	}
	if err := m.Uninstall(quietCtx()); err != nil {
		t.Logf("uninstall: %v", err)
	}
}

// TestFloodAndFarFutureDoNotDisturb: pod A floods destinations on the node (its saved entries
// never reach tsn0, so they wait for expiry) and sets launch times an hour ahead; pod B sends its
// TSN traffic at the same time. B's packets must all be restored right, none missed for lack of
// room; A stays within its quota and its entries expire.
func TestFloodAndFarFutureDoNotDisturb(t *testing.T) {
	datapathtest.NeedRoot(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	dir := datapathtest.PinDir(t, pinPrefix)
	const quota = 256
	m := openManager(t, n, dir, datapath.WithQuota(quota), datapath.WithTTL(500*time.Millisecond))
	defer func() { _ = m.Uninstall(quietCtx()) }()
	ctx := quietCtx()
	if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
		t.Fatal(err)
	}
	obs := datapathtest.AttachObserver(t, n, m.Mode())
	a, b := n.Pods[0], n.Pods[1]
	all := datapath.Policy{Allowed: []uint32{1, 2, 3, 4, 5, 6, 7}}
	for uid, p := range map[string]*netemu.Pod{"flooder": a, "victim": b} {
		if err := m.AttachSaver(ctx, uid, p.Netns, p.Ifname, all); err != nil {
			t.Fatal(err)
		}
	}
	local, err := netemu.NewSender(a.Netns, &net.UDPAddr{IP: a.Local, Port: 9}, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	far, err := netemu.NewSender(a.Netns, n.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	victim, err := netemu.NewSender(b.Netns, n.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()

	const flood, vn = 100000, 20000
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		farFuture := netemu.TAINow() + uint64(time.Hour)
		for i := 0; i < flood; i++ {
			var err error
			if i%10 == 9 { // some far-future traffic that does reach the NIC
				err = far.Send(10, uint32(i), 5, farFuture+uint64(i), 5, farFuture+uint64(i))
			} else {
				err = local.Send(11, uint32(i), 6, farFuture+uint64(i), 6, farFuture+uint64(i))
			}
			if err != nil {
				t.Errorf("flood: %v", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		base := netemu.TAINow() + uint64(time.Second)
		for i := 0; i < vn; i++ {
			prio := uint32(1 + i%3)
			if err := victim.Send(20, uint32(i), prio, base+uint64(i), prio, base+uint64(i)); err != nil {
				t.Errorf("victim: %v", err)
				return
			}
			if i%32 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	wg.Wait()
	inflight, _, err := m.InFlight("flooder")
	if err != nil {
		t.Fatal(err)
	}
	res := datapathtest.WaitTotal(t, obs, 20, vn, waitLimit)
	resFar := datapathtest.WaitTotal(t, obs, 10, flood/10, waitLimit)
	vc, _ := m.Counters("victim")
	fc, _ := m.Counters("flooder")
	t.Logf("victim: %+v, counters %+v", res, vc.Total())
	t.Logf("flooder far-future to the wire: %+v; counters %+v; in flight right after the flood %d (quota %d)", resFar, fc.Total(), inflight, quota)
	if res.Right != vn || res.Wrong != 0 || vc.Total().Missed != 0 {
		t.Errorf("victim: %d of %d right, %d wrong, %d missed at the saver; want all right", res.Right, vn, res.Wrong, vc.Total().Missed)
	}
	if inflight > quota {
		t.Errorf("flooder holds %d entries, above its quota %d", inflight, quota)
	}
	if resFar.Wrong != 0 {
		t.Errorf("flooder's far-future packets: %d wrong", resFar.Wrong)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		inflight, total, err := m.InFlight("flooder")
		if err != nil {
			t.Fatal(err)
		}
		if inflight == 0 && total == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("5s after the flood the flooder still holds %d entries (table %d): far-future launch times pin entries", inflight, total)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNICRemovedWhileClaimed: the TSN NIC disappears (driver unbound, cable module pulled)
// while a claim holds it. Releasing the claim must still succeed and leave no restorer pin;
// when the NIC comes back, the next claim configures it again and restores work.
func TestNICRemovedWhileClaimed(t *testing.T) {
	datapathtest.NeedRoot(t)
	n := datapathtest.NewNode(t, netemu.Routed, 1)
	dir := datapathtest.PinDir(t, pinPrefix)
	m := openManager(t, n, dir)
	defer func() { _ = m.Uninstall(quietCtx()) }()
	ctx := quietCtx()
	sched := &countingSchedules{}
	setup := nicsetup.New(m, sched)
	tsn0 := nicsetup.NIC{Name: "tsn0", Interface: netemu.NIC, RemoveOnLastRelease: true}
	if err := setup.Acquire(ctx, tsn0, "claim-1"); err != nil {
		t.Fatal(err)
	}
	pod := n.Pods[0]
	if err := m.AttachSaver(ctx, "pod", pod.Netns, pod.Ifname, datapath.Policy{Allowed: []uint32{1}}); err != nil {
		t.Fatal(err)
	}

	// The NIC goes (its wire peer with it).
	if err := inNetns(n.HostNetns, func() error {
		l, err := netlink.LinkByName(netemu.NIC)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatalf("remove %s: %v", netemu.NIC, err)
	}
	s, err := netemu.NewSender(pod.Netns, n.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 100; i++ { // traffic into a missing NIC: no route, nothing restored
		_ = s.Send(1, uint32(i), 1, 0, 1, 0)
	}
	if err := setup.Release(ctx, "tsn0", "claim-1"); err != nil {
		t.Errorf("release a claim whose NIC is gone: %v", err)
	}
	if p := pins(t, dir); len(p) != 1 || p[0] != "savers/slot-0" {
		t.Errorf("pins after the NIC went and its claim was released: %v (want only the pod's saver)", p)
	}
	if len(sched.scheduled()) != 0 {
		t.Errorf("schedule still recorded on %v", sched.scheduled())
	}

	// The NIC comes back (same name, new ifindex): a new claim sets it up, traffic is restored.
	if err := inNetns(n.HostNetns, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: netemu.NIC, NumTxQueues: 4, NumRxQueues: 4}, PeerName: "wire1"})
	}); err != nil {
		t.Fatalf("re-create %s: %v", netemu.NIC, err)
	}
	if err := inNetns(n.HostNetns, func() error {
		for _, name := range []string{netemu.NIC, "wire1"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		l, _ := netlink.LinkByName(netemu.NIC)
		addr, _ := netlink.ParseAddr("10.2.0.1/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		// The wire's address, reachable through a static neighbour: the peer stays in the host
		// netns here, and the observer only needs the packets to leave tsn0.
		w, _ := netlink.LinkByName("wire1")
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: n.Dest.IP, HardwareAddr: w.Attrs().HardwareAddr, Family: unix.AF_INET})
	}); err != nil {
		t.Fatalf("set up the new %s: %v", netemu.NIC, err)
	}
	if err := setup.Acquire(ctx, tsn0, "claim-2"); err != nil {
		t.Fatalf("acquire the NIC after it came back: %v", err)
	}
	obs := datapathtest.AttachObserver(t, n, m.Mode())
	for i := 0; i < 500; i++ {
		if err := s.Send(2, uint32(i), 1, 0, 1, 0); err != nil {
			t.Fatal(err)
		}
	}
	if res := datapathtest.WaitTotal(t, obs, 2, 500, waitLimit); res.Right != 500 || res.Wrong != 0 {
		t.Errorf("after the NIC came back: %+v, want 500 right", res)
	}
	checkAttachedOnce(t, n, pod.Netns, pod.Ifname, m)
	if err := setup.Release(ctx, "tsn0", "claim-2"); err != nil {
		t.Fatal(err)
	}
}
