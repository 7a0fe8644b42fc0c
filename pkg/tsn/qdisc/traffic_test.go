package qdisc

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sendUDP sends count datagrams with SO_PRIORITY prio from the NIC's namespace
// to 10.77.0.2, a neighbour on tsn0 with a fixed MAC, so every one leaves tsn0.
func (n *testNIC) sendUDP(t *testing.T, prio, count int) {
	t.Helper()
	fd := func() int {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		if err := netns.Set(n.ns); err != nil {
			t.Fatal(err)
		}
		fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err := netns.Set(orig); err != nil {
			runtime.LockOSThread() // leave the thread locked: it is in the wrong namespace
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatal(serr)
		}
		return fd
	}()
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PRIORITY, prio); err != nil {
		t.Fatal(err)
	}
	dst := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{10, 77, 0, 2}}
	for i := 0; i < count; i++ {
		for {
			err := unix.Sendto(fd, []byte("tsn-qdisc-test"), 0, dst)
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				time.Sleep(100 * time.Microsecond)
				continue
			}
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			break
		}
	}
}

func (n *testNIC) addNeighbour(t *testing.T) {
	t.Helper()
	h, err := netlink.NewHandleAt(n.ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(n.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:77:02")
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.IPv4(10, 77, 0, 2), HardwareAddr: mac}); err != nil {
		t.Fatal(err)
	}
}

// queueCounts returns, per tx queue, packets sent plus still queued: under TCG
// a packet may wait behind a closed gate when the counters are read.
func (n *testNIC) queueCounts(t *testing.T, root Handle) map[uint16]uint32 {
	t.Helper()
	st, err := n.client.QueueStats(n.link(t).Index, root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16]uint32{}
	for q, s := range st {
		out[q] = s.Packets + s.QLen
	}
	return out
}

// Local sockets keep their priority (nothing scrubs it), so this checks the
// queue map taprio was given: priority 2 -> class 0 -> queue 0,
// 1 -> class 1 -> queue 1, 0 -> class 2 -> queues 2-3.
func TestKernelTaprioSteersPriorities(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio")
	n.addNeighbour(t)
	mustApply(t, n, Config{Root: vmTaprio(t)})
	time.Sleep(60 * time.Millisecond) // past the base time
	root := MakeHandle(0x7a50, 0)
	before := n.queueCounts(t, root)
	const count = 200
	n.sendUDP(t, 2, count)
	n.sendUDP(t, 1, 2*count)
	n.sendUDP(t, 0, 3*count)
	time.Sleep(20 * time.Millisecond)
	after := n.queueCounts(t, root)
	h := func(queue uint16) uint32 { return after[queue] - before[queue] }
	t.Logf("per queue (sent + queued): 0: %d, 1: %d, 2: %d, 3: %d", h(0), h(1), h(2), h(3))
	// A few packets of the kernel's own (IPv6 router solicitations) may add to best effort.
	if h(0) != count || h(1) != 2*count || h(2)+h(3) < 3*count || h(2)+h(3) > 3*count+10 {
		t.Errorf("want queue 0: %d, 1: %d, 2+3: %d", count, 2*count, 3*count)
	}
}
