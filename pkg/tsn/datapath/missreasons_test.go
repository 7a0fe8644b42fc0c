package datapath_test

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// TestMissReasons provokes misses with real pod traffic and checks that each
// is counted under its reason and that the reasons add up to missed:
//   - ambiguous: a pod sends the same bytes twice with other metadata while
//     the first entry lives (raw sockets, fixed IP ID, to a local destination);
//   - unfingerprintable: UDP datagrams larger than the pod's MTU, which the
//     pod's kernel fragments before the saver sees them;
//   - quota: another pod sends more packets to a local destination (entries
//     that wait for their TTL) than its quota.
//
// TestMissReasonsTestRun covers table_full, which real traffic reaches only
// by chance.
func TestMissReasons(t *testing.T) {
	datapathtest.NeedRoot(t)
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	const quota = 16
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix), datapath.WithQuota(quota), datapath.WithMaxPods(4))
	restoreAndObserve(t, ctx, n, m)
	mixed, flooder := n.Pods[0], n.Pods[1]
	if err := m.AttachSaver(ctx, "mixed", mixed.Netns, mixed.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}
	if err := m.AttachSaver(ctx, "flooder", flooder.Netns, flooder.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}

	// Ambiguous, first, while the table is empty: 5 entries with priority 5
	// (they wait for their TTL: the destination is local), then the same
	// bytes with priority 4.
	const twins = 5
	raw, err := netemu.NewRawSender(mixed.Netns, &net.UDPAddr{IP: mixed.Local, Port: 9}, 0x4321)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, prio := range []uint32{5, 4} {
		for i := uint32(0); i < twins; i++ {
			if err := raw.Send(31, i, prio, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Unfingerprintable: IP fragments.
	const datagrams, size = 20, 3000
	var mtu int
	var fd int
	err = netemu.InNetns(mixed.Netns, func() error {
		ifc, err := net.InterfaceByName(mixed.Ifname)
		if err != nil {
			return err
		}
		mtu = ifc.MTU
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PRIORITY, 3); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT); err != nil {
		t.Fatal(err)
	}
	dst := &unix.SockaddrInet4{Port: 9}
	copy(dst.Addr[:], mixed.Local.To4())
	for i := 0; i < datagrams; i++ {
		for {
			err := unix.Sendto(fd, make([]byte, size), 0, dst)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ENOBUFS) {
				t.Fatal(err)
			}
		}
	}
	perFragment := (mtu - 20) / 8 * 8
	fragments := uint64(datagrams * ((size + 8 + perFragment - 1) / perFragment))

	// Quota: 100 packets with priority 2 to a local destination.
	const flood = 100
	local, err := netemu.NewSender(flooder.Netns, &net.UDPAddr{IP: flooder.Local, Port: 9}, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	for i := uint32(0); i < flood; i++ {
		if err := local.Send(32, i, 2, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
	}

	reasons := func(by [datapath.NumMissReasons]uint64) map[string]uint64 {
		out := map[string]uint64{}
		for _, r := range datapath.MissReasons() {
			if by[r] != 0 {
				out[r.String()] = by[r]
			}
		}
		return out
	}
	addsUp := func(name string, c datapath.Counters) {
		t.Helper()
		for p, pc := range c.ByPriority {
			var sum uint64
			for _, n := range pc.MissedBy {
				sum += n
			}
			if sum != pc.Missed {
				t.Errorf("%s, priority %d: missed %d, reasons %v add up to %d", name, p, pc.Missed, reasons(pc.MissedBy), sum)
			}
		}
	}

	mc, err := m.Counters("mixed")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mixed pod (MTU %d): priority 3 %+v, reasons %v; priority 4 %+v, reasons %v", mtu,
		mc.ByPriority[3], reasons(mc.ByPriority[3].MissedBy), mc.ByPriority[4], reasons(mc.ByPriority[4].MissedBy))
	addsUp("mixed pod", mc)
	if p := mc.ByPriority[3]; p.Missed != fragments || p.MissedBy[datapath.MissUnfingerprintable] != fragments {
		t.Errorf("fragments: want %d missed as unfingerprintable, got %d missed, reasons %v", fragments, p.Missed, reasons(p.MissedBy))
	}
	if p := mc.ByPriority[4]; p.Missed != twins || p.MissedBy[datapath.MissAmbiguous] != twins {
		t.Errorf("same bytes, other metadata: want %d missed as ambiguous, got %d missed, reasons %v", twins, p.Missed, reasons(p.MissedBy))
	}
	if p := mc.ByPriority[5]; p.Saved != twins || p.Missed != 0 {
		t.Errorf("the first of the twins: want %d saved, none missed, got %+v", twins, p)
	}

	fc, err := m.Counters("flooder")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flooder: priority 2 %+v, reasons %v", fc.ByPriority[2], reasons(fc.ByPriority[2].MissedBy))
	addsUp("flooder", fc)
	// The pod's own kernel may hold a few entries of its quota (IPv6 ND/MLD,
	// priority 7), so at most quota are saved.
	if p := fc.ByPriority[2]; p.Saved+p.Missed != flood || p.Missed < flood-quota || p.MissedBy[datapath.MissQuota] != p.Missed {
		t.Errorf("flood past the quota: want %d packets, at least %d missed, all for the quota; got %+v, reasons %v",
			flood, flood-quota, p, reasons(p.MissedBy))
	}
}
