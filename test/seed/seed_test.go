// Package seed holds the seed experiment of the TSN metadata proxy: pod traffic
// with priorities goes through taprio on an emulated TSN NIC, once without the
// eBPF proxy and once with it, and a receiver behind the NIC counts what
// arrives. It needs root, bpffs and a kernel with taprio: it runs under
// `make vmtest` and skips elsewhere.
package seed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
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
	results := map[bool]result{}
	for _, proxy := range []bool{false, true} {
		name := "without-proxy"
		if proxy {
			name = "with-proxy"
		}
		t.Run(name, func(t *testing.T) { results[proxy] = run(t, proxy) })
	}
	t.Logf("seed experiment, %d packets per priority 0/1/2: without proxy %s; with proxy %s",
		perPriority, results[false], results[true])
}

// result is what one run measured: per taprio child (class c is child c+1),
// packets it sent and packets still queued in it; per socket priority the pod
// set, datagrams that arrived behind the NIC.
type result struct {
	sent, queued map[uint16]uint32
	arrived      [3]int
	restorer     datapath.AttachMode // "" without the proxy
}

func (r result) String() string {
	return fmt.Sprintf("taprio children sent %v, still queued %v, arrived per priority %v (restorer %q)",
		r.sent, r.queued, r.arrived, r.restorer)
}

// run sends the pod's traffic and returns what went where.
func run(t *testing.T, proxy bool) result {
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
		t.Skipf("kernel %s has no taprio (run make vmtest): %v", kernelRelease(), err)
	}
	if err := node.StaticNeighbour(); err != nil {
		t.Fatal(err)
	}

	var res result
	pod := node.Pods[0]
	// In the driver's order (pkg/driver/nicsetup): the restorer first, then
	// the schedule. Without TCX the restorer needs clsact, and clsact grafted
	// onto a NIC that already runs taprio stops taprio's gates.
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
		res.restorer = m.Mode()
	}
	if err := c.Apply(ctx, netemu.NIC, qdisc.Config{Root: seedTaprio(t)}); err != nil {
		t.Fatal(err)
	}
	state, err := c.Snapshot(link)
	if err != nil {
		t.Fatal(err)
	}
	root := state.Root.Handle

	// netemu's own sink holds node.Dest's port: the experiment uses the next one.
	dst := &net.UDPAddr{IP: node.Dest.IP, Port: node.Dest.Port + 1}
	rx, err := newReceiver(node.WireNetns, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.close()

	time.Sleep(60 * time.Millisecond) // past the base time
	before, err := c.QueueStats(link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := netemu.NewSender(pod.Netns, dst, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for seq := uint32(0); seq < 3*perPriority; seq++ {
		prio := seq % 3
		if err := s.Send(seqTag, seq, prio, 0, prio, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until everything arrived or nothing moves any more: where the NIC
	// stalls, what is queued stays queued.
	last, still := -1, 0
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && still < 10; {
		time.Sleep(50 * time.Millisecond)
		n := rx.total()
		if n >= 3*perPriority {
			break
		}
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	after, err := c.QueueStats(link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	res.arrived = rx.close()
	res.sent, res.queued = map[uint16]uint32{}, map[uint16]uint32{}
	for q := range uint16(3) {
		res.sent[q] = after[q].Packets - before[q].Packets
		res.queued[q] = after[q].QLen - before[q].QLen
	}
	t.Logf("taprio %x: %s", root.Major(), res)

	// The host's own packets (ARP, neighbour discovery) may add a few to best effort.
	const noise = 10
	var want [3]uint32 // per class, sent + queued
	if proxy {
		want = [3]uint32{perPriority, perPriority, perPriority}
	} else {
		want = [3]uint32{3 * perPriority, 0, 0}
	}
	// Which class each priority was put in: sent plus still queued, so this
	// holds even where the NIC does not send.
	t.Run("classes", func(t *testing.T) {
		for q := range uint16(3) {
			got := res.sent[q] + res.queued[q]
			if got < want[q] || got > want[q]+noise || (q > 0 && got != want[q]) {
				t.Errorf("taprio child %d: %d packets sent or queued, want %d", q+1, got, want[q])
			}
		}
	})
	// That they left the NIC through their classes and arrived behind it.
	t.Run("arrived", func(t *testing.T) {
		for p := range 3 {
			if res.arrived[p] != perPriority {
				t.Errorf("priority %d: %d of %d packets arrived behind the NIC", p, res.arrived[p], perPriority)
			}
		}
		for q := range uint16(3) {
			if res.sent[q] < want[q] || res.sent[q] > want[q]+noise || (q > 0 && res.sent[q] != want[q]) {
				t.Errorf("taprio child %d sent %d packets, want %d", q+1, res.sent[q], want[q])
			}
		}
	})
	return res
}

// seqTag marks the experiment's datagrams (observe.Payload's tag).
const seqTag = 7

func kernelRelease() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:])
}

// receiver counts, per the priority each datagram's payload says the pod set,
// the experiment's datagrams that reach the wire namespace behind the NIC.
type receiver struct {
	fd      int
	stop    atomic.Bool
	done    chan struct{}
	mu      sync.Mutex
	arrived [3]int
}

func newReceiver(wireNetns string, dst *net.UDPAddr) (*receiver, error) {
	fd, err := socketIn(wireNetns)
	if err != nil {
		return nil, fmt.Errorf("receiver socket in %s: %w", wireNetns, err)
	}
	// The burst of 900 datagrams must fit: SO_RCVBUF is capped by rmem_max
	// (208 KiB), which dropped ~15% on 6.1 under TCG; root may force more.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	// A receive timeout lets the loop see the stop flag.
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: dst.Port}
	copy(sa.Addr[:], dst.IP.To4())
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", dst, err)
	}
	r := &receiver{fd: fd, done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *receiver) loop() {
	defer close(r.done)
	buf := make([]byte, 2048)
	for !r.stop.Load() {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		if n < observe.PayloadLen || binary.BigEndian.Uint32(buf[0:]) != observe.Magic || binary.BigEndian.Uint32(buf[4:]) != seqTag {
			continue
		}
		if p := binary.BigEndian.Uint32(buf[12:]); p < 3 {
			r.mu.Lock()
			r.arrived[p]++
			r.mu.Unlock()
		}
	}
}

func (r *receiver) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.arrived[0] + r.arrived[1] + r.arrived[2]
}

// close stops the receiver (once) and returns the counts.
func (r *receiver) close() [3]int {
	if !r.stop.Swap(true) {
		<-r.done
		unix.Close(r.fd)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.arrived
}

// socketIn opens an IPv4 UDP socket in the network namespace at path; the
// thread that entered it is locked and discarded with its goroutine.
func socketIn(path string) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromPath(path)
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- res{-1, err}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}
