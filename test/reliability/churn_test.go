package reliability

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nicsetup"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks/nritest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/podplan"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

// TestChurn500 runs 500 pod sandboxes with claims through the whole node side, wired as the
// daemon wires it: the driver prepares each claim (checkpoint, NIC setup with the restorer on
// tsn0), the runtime starts the pod through NRI (saver attached per podplan), some pods send
// traffic that is checked at tsn0, then the pod stops (for every fifth pod its netns is gone
// before StopPodSandbox), is removed, and its claim unprepared. Pods come and go in overlapping
// waves. Afterwards nothing may be left: no link, netns, pin, map entry, saver, qdisc change,
// schedule, or checkpoint entry.
func TestChurn500(t *testing.T) {
	datapathtest.NeedRoot(t)
	pods := 500
	if testing.Short() {
		pods = 100
	}
	n := datapathtest.NewNode(t, netemu.Routed, 0)
	dir := datapathtest.PinDir(t, pinPrefix)
	m := openManager(t, n, dir)
	defer func() { _ = m.Uninstall(quietCtx()) }()
	ctx := quietCtx()

	hostNS, err := netns.GetFromPath(n.HostNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	disc, err := nic.New(nic.InNamespace(hostNS))
	if err != nil {
		t.Fatal(err)
	}
	defer disc.Close()
	sched := &countingSchedules{}
	var d *driver.Driver
	nics := func(name string) (cfgNIC, bool) { return d.NICConfig(name) }
	hooks := nicsetup.ClaimHooks{Setup: nicsetup.New(m, sched), NICs: nics}
	stateDir := t.TempDir()
	d, err = driver.New(ctx, driver.Options{
		DriverName: driverName, NodeName: nodeName, KubeClient: newClient(),
		Discoverer: disc, Config: mustConfig(t), StateDir: stateDir, Hooks: hooks,
	})
	if err != nil {
		t.Fatal(err)
	}

	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := nritest.StartRuntime(t, socket)
	h := nrihooks.New(podplan.Source{Claims: d.Store(), Logger: klogDiscard()}, m, nrihooks.NewMetrics(prometheus.NewRegistry()))
	nriCtx, stopNRI := contextWithCancel()
	nriDone := make(chan struct{})
	go func() {
		defer close(nriDone)
		_ = nrihooks.Run(nriCtx, h, nrihooks.Options{PluginName: driverName, SocketPath: socket, RetryInterval: 50 * time.Millisecond})
	}()
	defer func() { stopNRI(); <-nriDone }()
	rt.WaitSynced()

	linksBefore := linkNames(t, n.HostNetns)
	qdiscsBefore := qdiscs(t, n.HostNetns, netemu.NIC)
	suffix := datapathtest.Suffix()
	obs := datapathtest.AttachObserver(t, n, m.Mode())

	type live struct {
		ns    *podNS
		sb    *podSandbox
		claim *resourceapi.ResourceClaim
	}
	const wave = 20
	var tPrepare, tNetns, tRun, tStop, tUnprepare time.Duration
	timed := func(acc *time.Duration, since time.Time) { *acc += time.Since(since) }
	var running []live
	var sentChecked, tags uint64
	start := time.Now()
	teardown := func(l live, i int) {
		t.Helper()
		if i%5 == 0 { // the netns is gone before StopPodSandbox
			if err := l.ns.delete(); err != nil {
				t.Fatalf("delete netns: %v", err)
			}
		}
		t0 := time.Now()
		if err := rt.StopPod(l.sb); err != nil {
			t.Fatalf("StopPodSandbox(%s) (netns gone: %v): %v", l.sb.Uid, i%5 == 0, err)
		}
		if err := l.ns.delete(); err != nil {
			t.Fatalf("delete netns: %v", err)
		}
		if err := rt.RemovePod(l.sb); err != nil {
			t.Fatalf("RemovePodSandbox(%s): %v", l.sb.Uid, err)
		}
		timed(&tStop, t0)
		t0 = time.Now()
		defer timed(&tUnprepare, t0)
		ref := kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: l.claim.Namespace, Name: l.claim.Name}, UID: l.claim.UID}
		res, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{ref})
		if err == nil {
			err = res[l.claim.UID]
		}
		if err != nil {
			t.Fatalf("unprepare %s: %v", l.claim.Name, err)
		}
	}
	for i := 0; i < pods; i++ {
		uid := fmt.Sprintf("churn-%s-%d", suffix, i)
		dev := "tsn/tsn0-tc1"
		if i%2 == 1 {
			dev = "tsn/tsn0-tc2"
		}
		claim := newClaim(fmt.Sprintf("churn-%d", i), uid, "", dev)
		t0 := time.Now()
		res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim})
		if err == nil {
			err = res[claim.UID].Err
		}
		timed(&tPrepare, t0)
		t0 = time.Now()
		if err != nil {
			t.Fatalf("prepare %s: %v", claim.Name, err)
		}
		ns, err := addPodNS(n.HostNetns, suffix, i)
		if err != nil {
			if ns != nil {
				_ = ns.delete()
			}
			t.Fatalf("pod netns %d: %v", i, err)
		}
		timed(&tNetns, t0)
		t0 = time.Now()
		sb := nritest.Sandbox(uid, ns.Path)
		// The pod's container is created once its saver is attached.
		if err := rt.StartPod(sb); err != nil {
			t.Fatalf("RunPodSandbox + CreateContainer(%s): %v", uid, err)
		}
		timed(&tRun, t0)
		if i%25 == 0 { // traffic from some pods: class 1 is priority 3, class 2 priority 2
			prio := uint32(3)
			if i%2 == 1 {
				prio = 2
			}
			tags++
			if err := sendRouted(n, ns, uint32(1000+i), 200, prio); err != nil {
				t.Fatalf("traffic from pod %d: %v", i, err)
			}
			r := datapathtest.WaitTotal(t, obs, uint32(1000+i), 200, waitLimit)
			if r.Right != 200 || r.Wrong != 0 {
				t.Errorf("pod %d: %+v, want 200 right", i, r)
			}
			sentChecked += 200
		}
		running = append(running, live{ns: ns, sb: sb, claim: claim})
		if len(running) == wave {
			for j, l := range running[:wave/2] {
				teardown(l, i-wave+1+j)
			}
			running = slices.Delete(running, 0, wave/2)
		}
	}
	for j, l := range running {
		teardown(l, pods-len(running)+j)
	}
	t.Logf("%d pods with claims through prepare/run/stop/remove/unprepare in %v; %d packets from %d pods checked at tsn0",
		pods, time.Since(start).Round(time.Millisecond), sentChecked, tags)
	t.Logf("per pod: prepare %v, netns+veth %v, RunPodSandbox+CreateContainer %v, stop+netns delete+remove %v, unprepare %v",
		tPrepare/time.Duration(pods), tNetns/time.Duration(pods), tRun/time.Duration(pods), tStop/time.Duration(pods), tUnprepare/time.Duration(pods))
	if err := obs.Close(); err != nil {
		t.Fatal(err)
	}

	// Nothing left.
	if sv, _ := m.Savers(); len(sv) != 0 {
		t.Errorf("%d savers left", len(sv))
	}
	if p := pins(t, dir); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		live, err := liveEntries(dir)
		if err != nil {
			t.Fatal(err)
		}
		if live == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d map entries left 3s after the last pod", live)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The kernel dismantles a deleted netns (and the host end of its veth) in a work queue.
	for deadline := time.Now().Add(10 * time.Second); ; {
		got := linkNames(t, n.HostNetns)
		if slices.Equal(got, linksBefore) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("host links before %v, 10s after the last pod %v", linksBefore, got)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := qdiscs(t, n.HostNetns, netemu.NIC); !slices.Equal(got, qdiscsBefore) {
		t.Errorf("%s qdiscs before %v, after %v", netemu.NIC, qdiscsBefore, got)
	}
	tcx, tc, err := egressPrograms(n.HostNetns, netemu.NIC)
	if err != nil || tcx+tc != 0 {
		t.Errorf("%s still has %d TCX programs and %d tc filters (%v)", netemu.NIC, tcx, tc, err)
	}
	if s := sched.scheduled(); len(s) != 0 {
		t.Errorf("schedules left on %v", s)
	}
	t.Logf("schedule applied %d times, removed %d times", sched.applies, sched.removes)
	if c := d.Store().PreparedClaims(); len(c) != 0 {
		t.Errorf("%d claims left in the state", len(c))
	}
	var cp struct {
		Claims map[string]json.RawMessage `json:"claims"`
	}
	data, err := os.ReadFile(checkpointPath(stateDir))
	if err != nil || json.Unmarshal(data, &cp) != nil || len(cp.Claims) != 0 {
		t.Errorf("checkpoint not empty: %v %s", err, truncate(string(data)))
	}
	ents, _ := filepath.Glob("/var/run/netns/tsnrel-" + suffix + "-*")
	if len(ents) != 0 {
		t.Errorf("%d pod netns left", len(ents))
	}
}

// sendRouted gives the pod a route to the wire through its veth (the host side has no address
// of the pod's subnet: an on-link default route, as Calico does) and sends count packets with
// priority prio.
func sendRouted(n *netemu.Node, p *podNS, tag uint32, count int, prio uint32) error {
	if err := routePod(n, p); err != nil {
		return err
	}
	s, err := netemu.NewSender(p.Path, n.Dest, unix.CLOCK_TAI)
	if err != nil {
		return err
	}
	defer s.Close()
	for i := 0; i < count; i++ {
		if err := s.Send(tag, uint32(i), prio, 0, prio, 0); err != nil {
			return err
		}
	}
	return nil
}
