// Package seedtest holds the rig of the seed experiment of the TSN metadata
// proxy, shared by test/seed (which asserts it) and hack/figure (which plots
// it): an emulated node whose tsn0 runs the experiment's taprio schedule, the
// eBPF proxy on that node, and a receiver behind the NIC. Everything it makes
// is removed at the end of the test, and every name it makes is unique.
package seedtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

// Cycle is the schedule's cycle time in ns.
const Cycle = 1_000_000

// entries are the gate windows: class 0 [0, 400 us), class 1 [400, 700 us),
// class 2 [700, 1000 us); entry i opens class i's gate. Windows are wide
// because under TCG narrow ones leave packets queued behind closed gates
// (docs/vmtest.md).
var entries = []qdisc.GateEntry{{GateMask: 0x1, Interval: 400000}, {GateMask: 0x2, Interval: 300000}, {GateMask: 0x4, Interval: 300000}}

// Schedule is the experiment's taprio: priority p goes to class p for p = 0,
// 1, 2 (everything else to class 0), class c has queue c (so its child qdisc
// is root:c+1), on CLOCK_TAI, starting at the next cycle boundary at least
// 50 ms from now.
func Schedule(t testing.TB) *qdisc.Taprio {
	t.Helper()
	q := &qdisc.Taprio{
		PrioMap: qdisc.PrioMap{NumTC: 3, PrioTC: [16]uint8{0, 1, 2},
			Queues: []qdisc.QueueRange{{Count: 1, Offset: 0}, {Count: 1, Offset: 1}, {Count: 1, Offset: 2}}},
		Entries: entries,
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

// ClassAt is the class whose gate Schedule opens at phase ns into the cycle
// (0 <= phase < Cycle).
func ClassAt(phase int64) int {
	for c, e := range entries {
		if phase < int64(e.Interval) {
			return c
		}
		phase -= int64(e.Interval)
	}
	return len(entries) - 1
}

// KernelRelease is the running kernel's release (uname -r).
func KernelRelease() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:])
}

// Node is an emulated node (netemu.Routed, one pod) with a qdisc client in
// its host namespace and tsn0 looked up there.
type Node struct {
	*netemu.Node
	Client *qdisc.Client
	Link   qdisc.Link
}

// NewNode builds the node, closed at the end of the test. It skips where
// TSN_SKIP_ROOT_TESTS is set, without root, and when the kernel has no
// taprio; runHint says in that message where the test runs instead.
func NewNode(t testing.TB, runHint string) *Node {
	t.Helper()
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	n := &Node{Node: datapathtest.NewNode(t, netemu.Routed, 1)}
	hostNS, err := netns.GetFromPath(n.HostNetns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostNS.Close() })
	if n.Client, err = qdisc.NewClient(qdisc.WithNetNS(hostNS)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Client.Close)
	if n.Link, err = n.Client.Link(netemu.NIC); err != nil {
		t.Fatal(err)
	}
	if ok, err := n.Client.HasKind(n.Link.Index, "taprio"); err != nil || !ok {
		t.Skipf("kernel %s has no taprio (%s): %v", KernelRelease(), runHint, err)
	}
	return n
}

// Apply puts q on tsn0 as its root qdisc.
func (n *Node) Apply(ctx context.Context, t testing.TB, q *qdisc.Taprio) {
	t.Helper()
	if err := n.Client.Apply(ctx, netemu.NIC, qdisc.Config{Root: q}); err != nil {
		t.Fatal(err)
	}
}

// Dst is where the experiment sends: Dest's address and the port after it
// (netemu's own sink holds Dest's port).
func (n *Node) Dst() *net.UDPAddr {
	return &net.UDPAddr{IP: n.Dest.IP, Port: n.Dest.Port + 1}
}

// OpenProxy opens the data path, pinned under a unique
// /sys/fs/bpf/<pinPrefix>… and uninstalled at the end of the test, with the
// restorer on tsn0 in mode ("": the data path's choice, TCX where the kernel
// has it). With podID it installs the saver on the node's pod under that ID,
// the pod granted priorities 1 and 2 (classes 1 and 2).
func (n *Node) OpenProxy(ctx context.Context, t testing.TB, pinPrefix string, mode datapath.AttachMode, podID string) *datapath.Manager {
	t.Helper()
	opts := []datapath.Option{datapath.WithPinDir(datapathtest.PinDir(t, pinPrefix)), datapath.WithNetns(n.HostNetns)}
	if mode != "" {
		opts = append(opts, datapath.WithAttachMode(mode))
	}
	m, err := datapath.Open(ctx, opts...)
	if err != nil {
		t.Fatalf("open data path: %v", err)
	}
	t.Cleanup(func() { _ = m.Uninstall(klog.NewContext(context.Background(), klog.Background())) })
	if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
		t.Fatal(err)
	}
	if podID != "" {
		pod := n.Pods[0]
		if err := m.AttachSaver(ctx, podID, pod.Netns, pod.Ifname, datapath.Policy{Allowed: []uint32{1, 2}}); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// ReceiverOptions say what a Receiver keeps and how its socket is set up.
type ReceiverOptions struct {
	// Tag keeps only observe payloads (observe.Payload) of this flow tag; 0
	// keeps every datagram of 16 bytes or more.
	Tag uint32
	// Timestamps asks the kernel for each datagram's receive time
	// (SO_TIMESTAMPNS).
	Timestamps bool
	// Buffer is the socket's receive buffer in bytes: set with SO_RCVBUF
	// (capped by net.core.rmem_max; a failure is ignored), or with
	// ForceBuffer with SO_RCVBUFFORCE (root; a failure is an error).
	Buffer      int
	ForceBuffer bool
	// Poll is the socket's receive timeout: how soon Close takes effect.
	Poll time.Duration
}

// Arrival is one datagram that reached the receiver.
type Arrival struct {
	// Prio is the priority the payload says the sender set (bytes 12-15, as
	// in observe.Payload).
	Prio uint32
	// Realtime is when the kernel received it (CLOCK_REALTIME, ns); 0
	// without a timestamp.
	Realtime int64
}

// Receiver records the datagrams that reach Dst in the wire namespace behind
// tsn0: right after taprio released them.
type Receiver struct {
	fd   int
	opts ReceiverOptions
	stop atomic.Bool
	done chan struct{}
	mu   sync.Mutex
	got  []Arrival
}

// Listen starts a receiver at Dst in the wire namespace, closed at the end of
// the test.
func (n *Node) Listen(t testing.TB, opts ReceiverOptions) *Receiver {
	t.Helper()
	r, err := newReceiver(n.WireNetns, n.Dst(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newReceiver(wireNetns string, dst *net.UDPAddr, opts ReceiverOptions) (*Receiver, error) {
	fd := -1
	err := netemu.InNetns(wireNetns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("receiver socket in %s: %w", wireNetns, err)
	}
	fail := func(err error) (*Receiver, error) {
		unix.Close(fd)
		return nil, err
	}
	if opts.Timestamps {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fail(fmt.Errorf("SO_TIMESTAMPNS: %w", err))
		}
	}
	if opts.ForceBuffer {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, opts.Buffer); err != nil {
			return fail(fmt.Errorf("SO_RCVBUFFORCE: %w", err))
		}
	} else if opts.Buffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, opts.Buffer)
	}
	// A receive timeout lets the loop see the stop flag.
	tv := unix.NsecToTimeval(opts.Poll.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail(err)
	}
	sa := &unix.SockaddrInet4{Port: dst.Port}
	copy(sa.Addr[:], dst.IP.To4())
	if err := unix.Bind(fd, sa); err != nil {
		return fail(fmt.Errorf("bind %s: %w", dst, err))
	}
	r := &Receiver{fd: fd, opts: opts, done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *Receiver) loop() {
	defer close(r.done)
	buf := make([]byte, 2048)
	var oob []byte
	if r.opts.Timestamps {
		oob = make([]byte, 128)
	}
	for {
		n, oobn, _, _, err := unix.Recvmsg(r.fd, buf, oob, 0)
		if r.stop.Load() {
			return
		}
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		if !r.keep(buf[:n]) {
			continue
		}
		a := Arrival{Prio: binary.BigEndian.Uint32(buf[12:])}
		if oobn > 0 {
			a.Realtime = timestamp(oob[:oobn])
		}
		r.mu.Lock()
		r.got = append(r.got, a)
		r.mu.Unlock()
	}
}

func (r *Receiver) keep(b []byte) bool {
	if r.opts.Tag == 0 {
		return len(b) >= 16
	}
	return len(b) >= observe.PayloadLen && binary.BigEndian.Uint32(b[0:]) == observe.Magic && binary.BigEndian.Uint32(b[4:]) == r.opts.Tag
}

// timestamp is the SO_TIMESTAMPNS receive time in oob, 0 if there is none.
func timestamp(oob []byte) int64 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:]))
			return sec*1e9 + nsec
		}
	}
	return 0
}

// PerPriority counts what arrived so far per priority 0, 1 and 2.
func (r *Receiver) PerPriority() [3]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c [3]int
	for _, a := range r.got {
		if a.Prio < 3 {
			c[a.Prio]++
		}
	}
	return c
}

// Close stops the receiver (once) and returns what arrived.
func (r *Receiver) Close() []Arrival {
	if !r.stop.Swap(true) {
		<-r.done
		unix.Close(r.fd)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got
}
