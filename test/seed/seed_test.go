// Package seed holds the seed experiment of the TSN metadata proxy: pod traffic
// with priorities goes through taprio on an emulated TSN NIC, once without the
// eBPF proxy and once with it. It needs root, bpffs and a kernel with taprio:
// it runs under `make vmtest` and skips elsewhere.
package seed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

const perPriority = 300

// seedTaprio maps priority 1 to class 1 and 2 to class 2, everything else to
// best effort (class 0); class c has queue c, so its child qdisc is root:c+1.
// Gate windows are wide (300-400 us): under TCG narrow windows leave packets
// queued, and the counts include what is still queued anyway.
func seedTaprio(t *testing.T) *qdisc.Taprio {
	q := &qdisc.Taprio{
		PrioMap: qdisc.PrioMap{NumTC: 3, PrioTC: [16]uint8{0, 1, 2},
			Queues: []qdisc.QueueRange{{Count: 1, Offset: 0}, {Count: 1, Offset: 1}, {Count: 1, Offset: 2}}},
		Entries: []qdisc.GateEntry{{GateMask: 0x1, Interval: 400000}, {GateMask: 0x2, Interval: 300000}, {GateMask: 0x4, Interval: 300000}},
		Clock:   qdisc.ClockTAI,
	}
	now, err := qdisc.NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.SetBaseTimeFromNow(now, 0, 50_000_000); err != nil {
		t.Fatal(err)
	}
	return q
}

func TestSeedExperiment(t *testing.T) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf")
	}
	results := map[bool]map[uint16]uint32{}
	for _, proxy := range []bool{false, true} {
		name := "without-proxy"
		if proxy {
			name = "with-proxy"
		}
		t.Run(name, func(t *testing.T) { results[proxy] = run(t, proxy) })
	}
	t.Logf("seed experiment, %d packets per priority 0/1/2, per taprio child (sent + queued): without proxy %v, with proxy %v",
		perPriority, results[false], results[true])
}

// run returns, per taprio queue, how many pod packets went through it.
func run(t *testing.T, proxy bool) map[uint16]uint32 {
	_, ctx := ktesting.NewTestContext(t)
	node, err := netemu.New(netemu.Routed, 1)
	if err != nil {
		t.Fatalf("build node: %v", err)
	}
	t.Cleanup(node.Close)
	ns, err := netns.GetFromPath(node.HostNetns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	c, err := qdisc.NewClient(qdisc.WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	link, err := c.Link(netemu.NIC)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.HasKind(link.Index, "taprio"); err != nil || !ok {
		var uts unix.Utsname
		_ = unix.Uname(&uts)
		t.Skipf("kernel %s has no taprio (run make vmtest): %v", unix.ByteSliceToString(uts.Release[:]), err)
	}
	if err := c.Apply(ctx, netemu.NIC, qdisc.Config{Root: seedTaprio(t)}); err != nil {
		t.Fatal(err)
	}
	state, err := c.Snapshot(link)
	if err != nil {
		t.Fatal(err)
	}
	root := state.Root.Handle

	staticNeighbour(t, node, ns)

	pod := node.Pods[0]
	if proxy {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		base := filepath.Join("/sys/fs/bpf", "tsn-seed-"+hex.EncodeToString(b))
		t.Cleanup(func() { _ = os.RemoveAll(base) })
		m, err := datapath.Open(ctx, datapath.WithPinDir(filepath.Join(base, "v1")), datapath.WithNetns(node.HostNetns))
		if err != nil {
			t.Fatalf("open data path: %v", err)
		}
		t.Cleanup(func() { _ = m.Uninstall(klog.NewContext(context.Background(), klog.Background())) })
		if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
			t.Fatal(err)
		}
		if err := m.AttachSaver(ctx, "seed-pod", pod.Netns, pod.Ifname, datapath.Policy{Allowed: []uint32{1, 2}}); err != nil {
			t.Fatal(err)
		}
	}

	time.Sleep(60 * time.Millisecond) // past the base time
	before, err := c.QueueStats(link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := netemu.NewSender(pod.Netns, node.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for seq := uint32(0); seq < 3*perPriority; seq++ {
		prio := seq % 3
		if err := s.Send(7, seq, prio, 0, prio, 0); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	after, err := c.QueueStats(link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]uint32{}
	for q := range uint16(3) {
		got[q] = after[q].Packets + after[q].QLen - before[q].Packets - before[q].QLen
	}
	t.Logf("per taprio child %x:1, :2, :3 (sent + queued): %d, %d, %d", root.Major(), got[0], got[1], got[2])

	// The host's own packets (ARP, neighbour discovery) may add a few to best effort.
	const noise = 10
	if proxy {
		if got[1] != perPriority || got[2] != perPriority || got[0] < perPriority || got[0] > perPriority+noise {
			t.Errorf("with the proxy, want %d packets in each of children 1, 2 and 3, got %v", perPriority, got)
		}
	} else if got[1] != 0 || got[2] != 0 || got[0] < 3*perPriority || got[0] > 3*perPriority+noise {
		t.Errorf("without the proxy, want all %d packets in the best-effort child, got %v", 3*perPriority, got)
	}
	return got
}

// staticNeighbour gives the host a permanent ARP entry for the destination.
// Otherwise the first packets wait for ARP, and the ARP request itself may wait
// in taprio behind a closed gate: 6.1's software taprio does not wake the queue
// when a gate opens, so under TCG it can sit there until the held packets are
// dropped.
func staticNeighbour(t *testing.T, node *netemu.Node, hostNS netns.NsHandle) {
	t.Helper()
	wireNS, err := netns.GetFromPath(node.WireNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer wireNS.Close()
	wire, err := netlink.NewHandleAt(wireNS, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer wire.Close()
	peer, err := wire.LinkByName("wire0")
	if err != nil {
		t.Fatal(err)
	}
	host, err := netlink.NewHandleAt(hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	nic, err := host.LinkByName(netemu.NIC)
	if err != nil {
		t.Fatal(err)
	}
	err = host.NeighSet(&netlink.Neigh{LinkIndex: nic.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: node.Dest.IP, HardwareAddr: peer.Attrs().HardwareAddr, Family: unix.AF_INET})
	if err != nil {
		t.Fatalf("static neighbour %s: %v", node.Dest.IP, err)
	}
}
