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
	"encoding/binary"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/test/seed/seedtest"
)

const (
	perPriority = 300
	// spacing between packets: not a divisor of the cycle, so send times
	// sweep the whole cycle.
	spacing = 373 * time.Microsecond
)

// TestGateCycleFigure runs the figure's three cases on the seed experiment's
// schedule (seedtest.Schedule): priority p -> class p for p = 0, 1, 2; class c
// on queue c. Windows: class 0 [0, 400 us), class 1 [400, 700 us), class 2
// [700, 1000 us); cycle 1 ms.
func TestGateCycleFigure(t *testing.T) {
	datapathtest.NeedRoot(t)
	fmt.Printf("FIGMETA kernel=%s cycle_ns=1000000 windows=0:0-400000,1:400000-700000,2:700000-1000000 per_priority=%d spacing_ns=%d\n",
		seedtest.KernelRelease(), perPriority, spacing.Nanoseconds())
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
	clsactU32 = true
	defer func() { clsactU32 = false }()
	run(t, "host-with-clsact", false, true)
}

// TestClsactRestorerOnTaprio is the second diagnostic: the figure's pod traffic
// with the driver, but the restorer forced onto clsact + cls_bpf (the only
// attach mode 6.1 has) on a kernel that also has TCX, to tell a clsact problem
// from a 6.1 one. Run it alone, like TestClsactOnTaprio.
func TestClsactRestorerOnTaprio(t *testing.T) {
	datapathtest.NeedRoot(t)
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
	clsactFirst = true
	defer func() { clsactFirst = false }()
	t.Run("u32", func(t *testing.T) {
		clsactU32 = true
		defer func() { clsactU32 = false }()
		run(t, "host-with-clsact-first", false, true)
	})
	t.Run("restorer", func(t *testing.T) {
		datapathtest.NeedRoot(t)
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
	node := seedtest.NewNode(t, "hack/figure/run.sh runs this in the VM test bed")
	q := seedtest.Schedule(t)
	if !clsactFirst {
		node.Apply(ctx, t, q)
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
		// The pod claimed classes 1 and 2 (priorities 1 and 2).
		podID := "figure-pod"
		if fromHost {
			podID = ""
		}
		mgr = node.OpenProxy(ctx, t, "tsn-figure-", restorerMode, podID)
		t.Logf("%s: restorer attach mode %s", mode, mgr.Mode())
	}

	if clsactFirst {
		node.Apply(ctx, t, q)
		if out, err := exec.Command("/usr/sbin/ip", "netns", "exec", filepath.Base(node.HostNetns),
			"/usr/sbin/tc", "qdisc", "show", "dev", netemu.NIC).CombinedOutput(); err == nil {
			t.Logf("%s: qdiscs with clsact first:\n%s", mode, out)
		}
	}

	// The receiver timestamps arrivals in the kernel as they reach the wire
	// namespace: right after taprio released them from tsn0.
	rx := node.Listen(t, seedtest.ReceiverOptions{Timestamps: true, Buffer: 4 << 20, Poll: 100 * time.Millisecond})
	dst := node.Dst()
	send := func(seq, prio uint32) error { return nil }
	if fromHost {
		// A plain socket: taprio drops packets of SO_TXTIME sockets that carry no launch time.
		fd := -1
		err := netemu.InNetns(node.HostNetns, func() (err error) {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			return err
		})
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
	all := rx.Close()
	if state, err := node.Client.Snapshot(node.Link); err == nil && state.Root != nil {
		if qs, err := node.Client.QueueStats(node.Link.Index, state.Root.Handle); err == nil {
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
	var got []seedtest.Arrival // the ones with a timestamp
	for _, a := range all {
		if a.Realtime != 0 {
			got = append(got, a)
		}
	}
	t.Logf("%s: %d datagrams received, %d without a timestamp", mode, len(all), len(all)-len(got))

	taiOff := taiMinusRealtime(t)
	counts := map[uint32][3]int{}
	for _, a := range got {
		phase := ((a.Realtime+taiOff-q.BaseTime)%seedtest.Cycle + seedtest.Cycle) % seedtest.Cycle
		fmt.Printf("FIGDATA %s %d %d\n", mode, a.Prio, phase)
		cc := counts[a.Prio]
		cc[seedtest.ClassAt(phase)]++
		counts[a.Prio] = cc
	}
	t.Logf("%s: %d of %d packets arrived; per priority, arrivals in the windows of class 0/1/2: %v", mode, len(got), 3*perPriority, counts)
	if len(got) < 3*perPriority*9/10 {
		t.Errorf("only %d of %d packets arrived", len(got), 3*perPriority)
	}
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
