// Package qdisctest builds an emulated TSN NIC for kernel tests of qdiscs: a
// multi-queue veth pair tsn0/peer0 in a private network namespace, UDP
// traffic with socket priorities out of tsn0, and the per-queue counters of
// the root qdisc. The tests that use it need root and a kernel with taprio
// (make vmtest); NewNIC and RequireKinds skip elsewhere.
package qdisctest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

// Names of the veth pair; the namespace is private, so they never clash.
const (
	Name = "tsn0"
	Peer = "peer0"
)

// NIC is a veth pair in a network namespace of its own, both ends up.
type NIC struct {
	NS     netns.NsHandle
	Client *qdisc.Client
	h      *netlink.Handle
}

// NewNIC makes the namespace (gone with the test) and the veth pair with
// txQueues queues on each end, both up, with 10.77.0.1/24 on tsn0 and a
// permanent neighbour 10.77.0.2 behind it (no ARP: a request stuck behind a
// closed gate would hold everything after it back).
func NewNIC(t testing.TB, txQueues int) *NIC {
	t.Helper()
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces")
	}
	ns := func() netns.NsHandle {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Fatalf("new netns: %v", err)
		}
		if err := netns.Set(orig); err != nil {
			runtime.LockOSThread() // the thread is in the wrong namespace: let it die
			t.Fatalf("back to the test's netns: %v", err)
		}
		return ns
	}()
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	la := netlink.NewLinkAttrs()
	la.Name, la.NumTxQueues, la.NumRxQueues = Name, txQueues, txQueues
	veth := &netlink.Veth{LinkAttrs: la, PeerName: Peer}
	veth.PeerNumTxQueues, veth.PeerNumRxQueues = uint32(txQueues), uint32(txQueues)
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	n := &NIC{NS: ns, h: h}
	for _, name := range []string{Name, Peer, "lo"} {
		n.SetUp(t, name, true)
	}
	l := n.link(t, Name)
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	n.neighbour(t)
	c, err := qdisc.NewClient(qdisc.WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	n.Client = c
	return n
}

func (n *NIC) link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Index is tsn0's interface index.
func (n *NIC) Index(t testing.TB) int { return n.link(t, Name).Attrs().Index }

// RequireKinds skips the test when the kernel lacks one of the qdisc kinds.
func (n *NIC) RequireKinds(t testing.TB, kinds ...string) {
	t.Helper()
	for _, k := range kinds {
		ok, err := n.Client.HasKind(n.Index(t), k)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			var uts unix.Utsname
			_ = unix.Uname(&uts)
			t.Skipf("kernel %s has no %s qdisc (run make vmtest)", unix.ByteSliceToString(uts.Release[:]), k)
		}
	}
}

// SetUp sets a link of the namespace (tsn0, peer0) administratively up or down.
func (n *NIC) SetUp(t testing.TB, name string, up bool) {
	t.Helper()
	l := n.link(t, name)
	var err error
	if up {
		err = n.h.LinkSetUp(l)
	} else {
		err = n.h.LinkSetDown(l)
	}
	if err != nil {
		t.Fatalf("set %s up=%v: %v", name, up, err)
	}
}

// SetTxQueueLen sets tsn0's transmit queue length (ip link set txqueuelen).
func (n *NIC) SetTxQueueLen(t testing.TB, qlen int) {
	t.Helper()
	if err := n.h.LinkSetTxQLen(n.link(t, Name), qlen); err != nil {
		t.Fatalf("set txqueuelen: %v", err)
	}
}

// WaitRunning waits until tsn0 is up with carrier (IFF_LOWER_UP), as after
// the link watcher has reactivated it, and puts the neighbour back (setting
// the link down flushes even permanent neighbours).
func (n *NIC) WaitRunning(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n.link(t, Name).Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s has no carrier after 5 s", Name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.neighbour(t)
}

func (n *NIC) neighbour(t testing.TB) {
	t.Helper()
	mac, _ := net.ParseMAC("02:00:00:00:77:02")
	if err := n.h.NeighSet(&netlink.Neigh{LinkIndex: n.Index(t), State: netlink.NUD_PERMANENT, IP: net.IPv4(10, 77, 0, 2), HardwareAddr: mac}); err != nil {
		t.Fatalf("neighbour: %v", err)
	}
}

// Traffic is what one Send run left through the root qdisc's queues.
type Traffic struct {
	// Sent and Queued packets per transmit queue, counted from the start of the run.
	Sent   map[uint16]uint32
	Queued map[uint16]uint32
	// Offered datagrams per priority; Refused the ones the socket did not take
	// (its buffer full behind a stalled qdisc).
	Offered map[int]int
	Refused map[int]int
}

// Send sends count datagrams for each priority in prios, interleaved, spaced
// by gap, waits settle, and returns what the root's queues sent and still
// hold. Sends never block: a stalled qdisc fills the socket's buffer, and the
// datagrams it refuses are counted.
func (n *NIC) Send(t testing.TB, prios []int, count int, gap, settle time.Duration) Traffic {
	t.Helper()
	fd, err := n.socket()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	before := n.queueStats(t)
	tr := Traffic{Offered: map[int]int{}, Refused: map[int]int{}}
	dst := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{10, 77, 0, 2}}
	for i := 0; i < count; i++ {
		for _, p := range prios {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PRIORITY, p); err != nil {
				t.Fatal(err)
			}
			tr.Offered[p]++
			err := unix.Sendto(fd, []byte("tsn-qdisc-test"), unix.MSG_DONTWAIT, dst)
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
				tr.Refused[p]++
			case err != nil:
				t.Fatalf("send: %v", err)
			}
		}
		time.Sleep(gap)
	}
	time.Sleep(settle)
	after := n.queueStats(t)
	tr.Sent, tr.Queued = map[uint16]uint32{}, map[uint16]uint32{}
	for q, s := range after {
		tr.Sent[q] = s.Packets
		if b := before[q].Packets; b <= s.Packets {
			tr.Sent[q] -= b
		}
		tr.Queued[q] = s.QLen
	}
	return tr
}

func (tr Traffic) String() string {
	return fmt.Sprintf("sent %v, queued %v (offered %v, refused %v)", tr.Sent, tr.Queued, tr.Offered, tr.Refused)
}

// queueStats reads the counters of the queues of tsn0's root qdisc. A
// counter that went backwards (the qdisc was re-created) counts from 0.
func (n *NIC) queueStats(t testing.TB) map[uint16]qdisc.Stats {
	t.Helper()
	l, err := n.Client.Link(Name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := n.Client.Snapshot(l)
	if err != nil {
		t.Fatal(err)
	}
	if s.Root == nil {
		return nil
	}
	st, err := n.Client.QueueStats(l.Index, s.Root.Handle)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// socket opens a UDP socket in the NIC's namespace (a socket stays in the
// namespace it was made in).
func (n *NIC) socket() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return -1, err
	}
	defer orig.Close()
	if err := netns.Set(n.NS); err != nil {
		return -1, err
	}
	fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // the thread is in the wrong namespace: let it die
		if serr == nil {
			unix.Close(fd)
		}
		return -1, err
	}
	if serr != nil {
		return -1, serr
	}
	return fd, nil
}

// AddClsact adds a clsact qdisc to tsn0 (tc qdisc add dev tsn0 clsact), as a
// CNI or an operator would.
func (n *NIC) AddClsact(t testing.TB) {
	t.Helper()
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: n.Index(t), Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := n.h.QdiscAdd(q); err != nil {
		t.Fatalf("add clsact: %v", err)
	}
}

// DeleteClsact deletes tsn0's clsact qdisc.
func (n *NIC) DeleteClsact(t testing.TB) {
	t.Helper()
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: n.Index(t), Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := n.h.QdiscDel(q); err != nil {
		t.Fatalf("delete clsact: %v", err)
	}
}

// GraftChild puts an fq_codel under class root:queue+1 of tsn0's root qdisc.
func (n *NIC) GraftChild(t testing.TB, root qdisc.Handle, queue uint16) {
	t.Helper()
	q := netlink.NewFqCodel(netlink.QdiscAttrs{LinkIndex: n.Index(t), Parent: netlink.MakeHandle(root.Major(), queue+1)})
	if err := n.h.QdiscReplace(q); err != nil {
		t.Fatalf("graft fq_codel under %x:%x: %v", root.Major(), queue+1, err)
	}
}

// ProbeTaprio is a schedule whose state shows in traffic: priorities 0, 1
// and 2 go to classes 0, 1 and 2 on queues 0, 1 and 2; class 0's gate is
// open for 300 us of each 600 us cycle, class 1's for the other 300 us, and
// class 2's never. The windows are wide for qemu's TCG. It starts at the next
// cycle boundary at least 20 ms after now.
func ProbeTaprio(now int64) (*qdisc.Taprio, error) {
	q := &qdisc.Taprio{
		PrioMap: qdisc.PrioMap{NumTC: 3, PrioTC: [16]uint8{0, 1, 2},
			Queues: []qdisc.QueueRange{{Count: 1, Offset: 0}, {Count: 1, Offset: 1}, {Count: 1, Offset: 2}}},
		Entries: []qdisc.GateEntry{{GateMask: 0x1, Interval: 300000}, {GateMask: 0x2, Interval: 300000}},
		Clock:   qdisc.ClockTAI,
	}
	return q, q.SetBaseTimeFromNow(now, 0, 20_000_000)
}

// ProbePrios are the priorities to send through ProbeTaprio.
var ProbePrios = []int{0, 1, 2}

// Gates is what traffic through ProbeTaprio showed of its schedule.
type Gates string

const (
	// GatesRunning: classes 0 and 1 sent, class 2 (never open) did not.
	GatesRunning Gates = "running"
	// GatesStopped: the classes whose gates open sent nothing: the schedule
	// stopped with its gates closed.
	GatesStopped Gates = "stopped"
	// GatesOpen: class 2, whose gate never opens, sent: the schedule is not
	// running and every gate is open (taprio before its first entry).
	GatesOpen Gates = "open"
	// GatesUnclear: anything else (some classes sent, others not).
	GatesUnclear Gates = "unclear"
)

// ProbeGates classifies traffic sent with ProbePrios through ProbeTaprio.
func (tr Traffic) ProbeGates() Gates {
	switch {
	case tr.Sent[2] > 0:
		return GatesOpen
	case tr.Sent[0] > 0 && tr.Sent[1] > 0:
		return GatesRunning
	case tr.Sent[0] == 0 && tr.Sent[1] == 0:
		return GatesStopped
	}
	return GatesUnclear
}

// WaitStarted waits until the schedule of q has run for two cycles.
func WaitStarted(t testing.TB, q *qdisc.Taprio) {
	t.Helper()
	for {
		now, err := qdisc.NowTAI()
		if err != nil {
			t.Fatal(err)
		}
		left := q.BaseTime + 2*q.CycleDuration() - now
		if left <= 0 {
			return
		}
		time.Sleep(time.Duration(left))
	}
}
