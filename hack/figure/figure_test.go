// Package figure runs the seed experiment of the TSN metadata proxy for the
// gate-cycle figure (docs/figures): a pod sends UDP with socket priorities 0, 1
// and 2 through taprio on an emulated TSN NIC, once without the eBPF proxy and
// once with it, and a receiver behind the NIC timestamps every arrival. Folded
// into the gate cycle, arrivals show which gate window, and so which traffic
// class, each priority went through.
//
// It needs root, bpffs and a kernel with taprio: hack/figure/run.sh runs it in
// the VM test bed (make vmtest) and plots what it prints. Elsewhere it skips.
package figure

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

const (
	perPriority = 300
	// spacing between packets: not a divisor of the cycle, so send times
	// sweep the whole cycle.
	spacing = 373 * time.Microsecond
	port    = 9001
)

// The schedule of the figure (the seed experiment's): priority p -> class p for
// p = 0, 1, 2; class c on queue c. Windows: class 0 [0, 400 us), class 1
// [400, 700 us), class 2 [700, 1000 us); cycle 1 ms. Windows are wide because
// under TCG narrow ones leave packets behind closed gates (docs/vmtest.md).
var entries = []qdisc.GateEntry{{GateMask: 0x1, Interval: 400000}, {GateMask: 0x2, Interval: 300000}, {GateMask: 0x4, Interval: 300000}}

func taprio(now int64) (*qdisc.Taprio, error) {
	q := &qdisc.Taprio{
		PrioMap: qdisc.PrioMap{NumTC: 3, PrioTC: [16]uint8{0, 1, 2},
			Queues: []qdisc.QueueRange{{Count: 1, Offset: 0}, {Count: 1, Offset: 1}, {Count: 1, Offset: 2}}},
		Entries: entries,
		Clock:   qdisc.ClockTAI,
	}
	return q, q.SetBaseTimeFromNow(now, 0, 50_000_000)
}

func TestGateCycleFigure(t *testing.T) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if err := netemu.Available(netemu.Routed); err != nil {
		t.Skip(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf")
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("FIGMETA kernel=%s cycle_ns=1000000 windows=0:0-400000,1:400000-700000,2:700000-1000000 per_priority=%d spacing_ns=%d\n",
		unix.ByteSliceToString(uts.Release[:]), perPriority, spacing.Nanoseconds())
	for _, proxy := range []bool{false, true} {
		name := "without-proxy"
		if proxy {
			name = "with-proxy"
		}
		t.Run(name, func(t *testing.T) { run(t, name, proxy, false) })
	}
	// The host's own packets keep their priority: the same schedule without pods.
	t.Run("host", func(t *testing.T) { run(t, "host", false, true) })
}

// TestClsactOnTaprio is a diagnostic for the stall in docs/figures/README.md:
// host traffic with priorities through taprio, with a clsact qdisc and a
// pass-everything u32 filter at tsn0's egress (no BPF). Run it alone in the VM:
// make vmtest VMTEST_PACKAGES=./hack/figure VMTEST_KERNELS=amd64 VMTEST_RUN=TestClsactOnTaprio
func TestClsactOnTaprio(t *testing.T) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if err := netemu.Available(netemu.Routed); err != nil {
		t.Skip(err)
	}
	clsactU32 = true
	defer func() { clsactU32 = false }()
	run(t, "host-with-clsact", false, true)
}

// TestClsactRestorerOnTaprio is the second diagnostic: the figure's pod traffic
// with the driver, but the restorer forced onto clsact + cls_bpf (the only
// attach mode 6.1 has) on a kernel that also has TCX, to tell a clsact problem
// from a 6.1 one. Run it alone, like TestClsactOnTaprio.
func TestClsactRestorerOnTaprio(t *testing.T) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if err := netemu.Available(netemu.Routed); err != nil {
		t.Skip(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf")
	}
	restorerMode = datapath.ModeTC
	defer func() { restorerMode = "" }()
	run(t, "with-proxy-clsact", true, false)
}

// TestClsactBeforeTaprio tells whether the stall comes from the clsact hook or
// from adding clsact to a device that already has taprio: the same two cases
// as the diagnostics above (u32 pass filter with host traffic; the restorer
// forced onto clsact with pod traffic), but clsact is put on tsn0 before taprio.
// Adding clsact grafts a qdisc, which deactivates the device; that resets
// taprio, and taprio's reset cancels the timer that advances its gates.
func TestClsactBeforeTaprio(t *testing.T) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if err := netemu.Available(netemu.Routed); err != nil {
		t.Skip(err)
	}
	clsactFirst = true
	defer func() { clsactFirst = false }()
	t.Run("u32", func(t *testing.T) {
		clsactU32 = true
		defer func() { clsactU32 = false }()
		run(t, "host-with-clsact-first", false, true)
	})
	t.Run("restorer", func(t *testing.T) {
		var st unix.Statfs_t
		if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			t.Skip("bpffs is not mounted at /sys/fs/bpf")
		}
		restorerMode = datapath.ModeTC
		defer func() { restorerMode = "" }()
		run(t, "with-proxy-clsact-first", true, false)
	})
}

var (
	clsactFirst  bool // clsact (u32 filter or restorer) goes on tsn0 before taprio
	clsactU32    bool
	restorerMode datapath.AttachMode // "": the data path's choice (TCX where the kernel has it)
)

func run(t *testing.T, mode string, proxy, fromHost bool) {
	_, ctx := ktesting.NewTestContext(t)
	node, err := netemu.New(netemu.Routed, 1)
	if err != nil {
		t.Fatalf("build node: %v", err)
	}
	t.Cleanup(node.Close)
	hostNS, err := netns.GetFromPath(node.HostNetns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostNS.Close() })
	c, err := qdisc.NewClient(qdisc.WithNetNS(hostNS))
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
		t.Skipf("kernel %s has no taprio (hack/figure/run.sh runs this in the VM test bed): %v", unix.ByteSliceToString(uts.Release[:]), err)
	}
	now, err := qdisc.NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	q, err := taprio(now)
	if err != nil {
		t.Fatal(err)
	}
	applyTaprio := func() {
		if err := c.Apply(ctx, netemu.NIC, qdisc.Config{Root: q}); err != nil {
			t.Fatal(err)
		}
	}
	if !clsactFirst {
		applyTaprio()
	}
	if err := node.StaticNeighbour(); err != nil {
		t.Fatal(err)
	}
	if clsactU32 {
		for _, args := range [][]string{
			{"qdisc", "add", "dev", netemu.NIC, "clsact"},
			{"filter", "add", "dev", netemu.NIC, "egress", "protocol", "ip", "u32", "match", "u32", "0", "0", "action", "pass"},
		} {
			cmd := append([]string{"netns", "exec", filepath.Base(node.HostNetns), "/usr/sbin/tc"}, args...)
			if out, err := exec.Command("/usr/sbin/ip", cmd...).CombinedOutput(); err != nil {
				t.Fatalf("tc %v: %v\n%s", args, err, out)
			}
		}
	}

	pod := node.Pods[0]
	var mgr *datapath.Manager
	if proxy {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		base := filepath.Join("/sys/fs/bpf", "tsn-figure-"+hex.EncodeToString(b))
		t.Cleanup(func() { _ = os.RemoveAll(base) })
		opts := []datapath.Option{datapath.WithPinDir(filepath.Join(base, "v1")), datapath.WithNetns(node.HostNetns)}
		if restorerMode != "" {
			opts = append(opts, datapath.WithAttachMode(restorerMode))
		}
		m, err := datapath.Open(ctx, opts...)
		if err != nil {
			t.Fatalf("open data path: %v", err)
		}
		t.Cleanup(func() { _ = m.Uninstall(klog.NewContext(context.Background(), klog.Background())) })
		mgr = m
		t.Logf("%s: restorer attach mode %s", mode, m.Mode())
		if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
			t.Fatal(err)
		}
		// The pod claimed classes 1 and 2 (priorities 1 and 2).
		if !fromHost {
			if err := m.AttachSaver(ctx, "figure-pod", pod.Netns, pod.Ifname, datapath.Policy{Allowed: []uint32{1, 2}}); err != nil {
				t.Fatal(err)
			}
		}
	}

	if clsactFirst {
		applyTaprio()
		if out, err := exec.Command("/usr/sbin/ip", "netns", "exec", filepath.Base(node.HostNetns),
			"/usr/sbin/tc", "qdisc", "show", "dev", netemu.NIC).CombinedOutput(); err == nil {
			t.Logf("%s: qdiscs with clsact first:\n%s", mode, out)
		}
	}

	rx, err := newReceiver(node.WireNetns, node.Dest.IP)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.close()
	dst := &net.UDPAddr{IP: node.Dest.IP, Port: port}
	send := func(seq, prio uint32) error { return nil }
	if fromHost {
		// A plain socket: taprio drops packets of SO_TXTIME sockets that carry no launch time.
		fd, err := inNetns(node.HostNetns, func() (int, error) { return unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0) })
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		var sa unix.SockaddrInet4
		copy(sa.Addr[:], dst.IP.To4())
		sa.Port = dst.Port
		send = func(seq, prio uint32) error {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PRIORITY, int(prio)); err != nil {
				return err
			}
			b := make([]byte, 24)
			binary.BigEndian.PutUint32(b[8:], seq)
			binary.BigEndian.PutUint32(b[12:], prio)
			return unix.Sendto(fd, b, 0, &sa)
		}
	} else {
		s, err := netemu.NewSender(pod.Netns, dst, unix.CLOCK_TAI)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		send = func(seq, prio uint32) error { return s.Send(11, seq, prio, 0, prio, 0) }
	}

	time.Sleep(60 * time.Millisecond) // past the base time
	for seq := uint32(0); seq < 3*perPriority; seq++ {
		prio := seq % 3
		if err := send(seq, prio); err != nil {
			t.Fatal(err)
		}
		time.Sleep(spacing)
	}
	time.Sleep(300 * time.Millisecond) // let the last packets through their gates
	got := rx.close()
	if state, err := c.Snapshot(link); err == nil && state.Root != nil {
		if qs, err := c.QueueStats(link.Index, state.Root.Handle); err == nil {
			t.Logf("%s: taprio children (sent, queued): %+v", mode, qs)
		}
	}
	for _, args := range [][]string{
		{"netns", "exec", filepath.Base(node.HostNetns), "/usr/sbin/tc", "-s", "-d", "qdisc", "show", "dev", netemu.NIC},
		{"netns", "exec", filepath.Base(node.HostNetns), "/usr/sbin/ip", "-d", "link", "show", netemu.NIC},
		{"netns", "exec", filepath.Base(node.WireNetns), "/usr/sbin/ip", "-d", "link", "show", "wire0"},
	} {
		out, err := exec.Command("/usr/sbin/ip", args...).CombinedOutput()
		t.Logf("%s: ip %v: %v\n%s", mode, args, err, out)
	}
	if mgr != nil {
		if cnt, err := mgr.Counters("figure-pod"); err == nil {
			t.Logf("%s: saver/restorer counters, priorities 0-2: %+v", mode, cnt.ByPriority[:3])
		}
	}
	t.Logf("%s: %d datagrams received, %d without a timestamp", mode, rx.all, rx.all-len(got))

	taiOff := taiMinusRealtime(t)
	counts := map[uint32][3]int{}
	for _, a := range got {
		phase := ((a.realtime+taiOff-q.BaseTime)%1_000_000 + 1_000_000) % 1_000_000
		fmt.Printf("FIGDATA %s %d %d\n", mode, a.prio, phase)
		w := 0
		switch {
		case phase >= 700_000:
			w = 2
		case phase >= 400_000:
			w = 1
		}
		cc := counts[a.prio]
		cc[w]++
		counts[a.prio] = cc
	}
	t.Logf("%s: %d of %d packets arrived; per priority, arrivals in the windows of class 0/1/2: %v", mode, len(got), 3*perPriority, counts)
	if len(got) < 3*perPriority*9/10 {
		t.Errorf("only %d of %d packets arrived", len(got), 3*perPriority)
	}
}

type arrival struct {
	prio     uint32
	realtime int64
}

// receiver timestamps arrivals in the kernel (SO_TIMESTAMPNS) as they reach
// the wire namespace: right after taprio released them from tsn0.
type receiver struct {
	fd   int
	all  int // datagrams received
	stop atomic.Bool
	mu   sync.Mutex
	got  []arrival
	done chan struct{}
}

func newReceiver(wireNetns string, ip net.IP) (*receiver, error) {
	fd, err := inNetns(wireNetns, func() (int, error) { return unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0) })
	if err != nil {
		return nil, fmt.Errorf("receiver socket: %w", err)
	}
	r := &receiver{fd: fd, done: make(chan struct{})}
	var sa unix.SockaddrInet4
	copy(sa.Addr[:], ip.To4())
	sa.Port = port
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	// A receive timeout lets the loop see the stop flag.
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s:%d: %w", ip, port, err)
	}
	go r.loop()
	return r, nil
}

func (r *receiver) loop() {
	defer close(r.done)
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
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
		if n < 16 {
			continue
		}
		r.mu.Lock()
		r.all++
		r.mu.Unlock()
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
				sec := int64(binary.NativeEndian.Uint64(m.Data[0:]))
				nsec := int64(binary.NativeEndian.Uint64(m.Data[8:]))
				r.mu.Lock()
				r.got = append(r.got, arrival{prio: binary.BigEndian.Uint32(buf[12:]), realtime: sec*1e9 + nsec})
				r.mu.Unlock()
			}
		}
	}
}

// close stops the receiver and returns what arrived.
func (r *receiver) close() []arrival {
	if r.fd >= 0 {
		r.stop.Store(true)
		<-r.done
		unix.Close(r.fd)
		r.fd = -1
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got
}

func inNetns(path string, fn func() (int, error)) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		// The thread is left in the namespace and discarded with the goroutine.
		runtime.LockOSThread()
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
		fd, err := fn()
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// taiMinusRealtime is the offset of CLOCK_TAI from CLOCK_REALTIME (37 s on a
// synchronized host, often 0 in a VM).
func taiMinusRealtime(t *testing.T) int64 {
	var rt, tai unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &rt); err != nil {
		t.Fatal(err)
	}
	if err := unix.ClockGettime(unix.CLOCK_TAI, &tai); err != nil {
		t.Fatal(err)
	}
	d := tai.Nano() - rt.Nano()
	return (d + 500_000_000) / 1_000_000_000 * 1_000_000_000 // whole seconds
}
