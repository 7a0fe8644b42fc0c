package qdisc

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"
)

// Tests in this file change qdiscs on veth pairs in their own network namespaces.
// They need root, and taprio/etf/mqprio in the kernel: the host kernel of the CI
// machine has none of them, so they run under `make vmtest` (Debian 6.1 kernels).

type testNIC struct {
	ns     netns.NsHandle
	client *Client
	name   string
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces")
	}
}

// newTestNIC makes an anonymous network namespace (gone when its handle closes)
// holding a veth pair tsn0/peer0 with txQueues queues on each side, both up.
func newTestNIC(t *testing.T, txQueues int) *testNIC {
	t.Helper()
	requireRoot(t)
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
			t.Fatalf("back to the test's netns: %v", err)
		}
		return ns
	}()
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	la := netlink.NewLinkAttrs()
	la.Name, la.NumTxQueues, la.NumRxQueues = "tsn0", txQueues, txQueues
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "peer0"}
	veth.PeerNumTxQueues, veth.PeerNumRxQueues = uint32(txQueues), uint32(txQueues)
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, n := range []string{"tsn0", "peer0", "lo"} {
		l, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
	c, err := NewClient(WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &testNIC{ns: ns, client: c, name: "tsn0"}
}

// requireKinds skips the test when the kernel lacks one of the qdiscs. A request
// without options is enough to tell: the kernel resolves the kind (ENOENT,
// "Specified qdisc kind is unknown") before it reads the options.
func (n *testNIC) requireKinds(t *testing.T, kinds ...string) {
	t.Helper()
	link := n.link(t)
	for _, k := range kinds {
		ok, err := n.client.HasKind(link.Index, k)
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

func (n *testNIC) link(t *testing.T) Link {
	t.Helper()
	l, err := n.client.Link(n.name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (n *testNIC) snapshot(t *testing.T) State {
	t.Helper()
	s, err := n.client.Snapshot(n.link(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testCtx(t *testing.T) context.Context {
	_, ctx := ktesting.NewTestContext(t)
	return ctx
}

// vmTaprio is a 3-class schedule on 4 queues starting at the next 1 ms boundary
// at least 50 ms from now. Windows are wide (300 us and more) so that packets do
// not sit behind closed gates under TCG.
func vmTaprio(t *testing.T) *Taprio {
	t.Helper()
	q := &Taprio{
		PrioMap: prioMap(3, []uint8{2, 1, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}, QueueRange{1, 0}, QueueRange{1, 1}, QueueRange{2, 2}),
		Entries: []GateEntry{{GateSet, 0x1, 300000}, {GateSet, 0x2, 300000}, {GateSet, 0x4, 400000}},
		Clock:   ClockTAI,
	}
	now, err := NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.SetBaseTimeFromNow(now, 0, 50_000_000); err != nil {
		t.Fatal(err)
	}
	return q
}

func skipSockETF() *ETF { return &ETF{Clock: ClockTAI, Delta: 300000, SkipSockCheck: true} }

func mustApply(t *testing.T, n *testNIC, cfg Config) {
	t.Helper()
	if err := n.client.Apply(testCtx(t), n.name, cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func wantRoot(t *testing.T, s State, kind string, handle Handle, q Qdisc) {
	t.Helper()
	if s.Root == nil || s.Root.Kind != kind || s.Root.Handle != handle {
		t.Fatalf("root is %v, want %s %s", s.Root, kind, handle)
	}
	if q != nil {
		if d := diff(q, s.Root.Qdisc); d != "" {
			t.Fatalf("root read back: %s", d)
		}
	}
}

func TestKernelTaprioApplyReadBack(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	q := vmTaprio(t)
	cfg := Config{Root: q, Children: []Child{{0, skipSockETF()}, {1, skipSockETF()}}}
	mustApply(t, n, cfg)

	s := n.snapshot(t)
	wantRoot(t, s, "taprio", MakeHandle(0x7a50, 0), q)
	if len(s.Children) != 2 {
		t.Fatalf("children %v, want two etf", s.Children)
	}
	for _, c := range s.Children {
		if d := diff(skipSockETF(), c.Qdisc); c.Kind != "etf" || d != "" {
			t.Errorf("child %s: %s", c, d)
		}
	}

	// Applying the same config again changes nothing (a new apply would take the
	// other handle).
	mustApply(t, n, cfg)
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), q)
}

func TestKernelTaprioTxTimeAssist(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	q := vmTaprio(t)
	q.TxTimeAssist, q.TxTimeDelay = true, 200000
	q.CycleTime = 1000000
	q.CycleTimeExtension = 10000
	var children []Child
	for i := range uint16(4) {
		children = append(children, Child{i, skipSockETF()})
	}
	mustApply(t, n, Config{Root: q, Children: children})
	s := n.snapshot(t)
	wantRoot(t, s, "taprio", MakeHandle(0x7a50, 0), q)
	if len(s.Children) != 4 {
		t.Fatalf("children %v, want 4 etf", s.Children)
	}
}

func TestKernelTaprioReplaceSchedule(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio")
	a := vmTaprio(t)
	mustApply(t, n, Config{Root: a})
	b := vmTaprio(t)
	b.Entries = []GateEntry{{GateSet, 0x7, 500000}, {GateSet, 0x1, 500000}}
	b.PrioMap.PrioTC[0] = 0 // a different map needs a new qdisc; Apply always makes one
	mustApply(t, n, Config{Root: b})
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a51, 0), b)
	mustApply(t, n, Config{Root: a})
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), a)
}

func TestKernelMQPrioApplyReadBack(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "mqprio", "etf")
	m := &MQPrio{PrioMap: prioMap(2, []uint8{1, 0, 1, 1}, QueueRange{1, 0}, QueueRange{3, 1})}
	mustApply(t, n, Config{Root: m, Children: []Child{{0, skipSockETF()}}})
	s := n.snapshot(t)
	wantRoot(t, s, "mqprio", MakeHandle(0x7a50, 0), m)
	if len(s.Children) != 1 || s.Children[0].Parent != MakeHandle(0x7a50, 1) {
		t.Fatalf("children %v, want etf at 7a50:1", s.Children)
	}
}

// An etf that asks for offload passes validation but the veth refuses it, after
// the root is already replaced: the device must get its default qdisc back.
func TestKernelRollbackToDefault(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	before := n.snapshot(t)
	if before.Root == nil || !before.Root.Default() {
		t.Fatalf("fresh veth root %v, want a kernel default", before.Root)
	}
	bad := &ETF{Clock: ClockTAI, Delta: 100000, Offload: true}
	err := n.client.Apply(testCtx(t), n.name, Config{Root: vmTaprio(t), Children: []Child{{1, bad}}})
	if err == nil || !strings.Contains(err.Error(), "previous qdiscs restored") {
		t.Fatalf("apply with an offloaded etf on veth: %v, want a failure with the old qdiscs restored", err)
	}
	after := n.snapshot(t)
	if after.Root == nil || !after.Root.Default() || after.Root.Kind != before.Root.Kind {
		t.Fatalf("root after rollback %v, want %v", after.Root, before.Root)
	}
}

// The same failure with the driver's own taprio and etf on the device: both come
// back, with their handle and schedule.
func TestKernelRollbackToPreviousTaprio(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	a := vmTaprio(t)
	mustApply(t, n, Config{Root: a, Children: []Child{{2, skipSockETF()}}})
	before := n.snapshot(t)

	b := vmTaprio(t)
	b.Entries = []GateEntry{{GateSet, 0x3, 600000}, {GateSet, 0x4, 400000}}
	bad := &ETF{Clock: ClockTAI, Delta: 100000, Offload: true}
	err := n.client.Apply(testCtx(t), n.name, Config{Root: b, Children: []Child{{0, skipSockETF()}, {1, bad}}})
	if err == nil || !strings.Contains(err.Error(), "previous qdiscs restored") {
		t.Fatalf("failing apply: %v", err)
	}
	after := n.snapshot(t)
	if err := sameTree(before, after); err != nil {
		t.Fatalf("after rollback: %v", err)
	}
	wantRoot(t, after, "taprio", MakeHandle(0x7a50, 0), a)
	if len(after.Children) != 1 || after.Children[0].Parent != MakeHandle(0x7a50, 3) {
		t.Fatalf("children after rollback %v, want the etf at 7a50:3", after.Children)
	}
}

// A root the kernel refuses (full offload on a veth): the old taprio, which had to
// go first, is back with its handle and schedule.
func TestKernelRefusedRootKeepsPrevious(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio")
	a := vmTaprio(t)
	mustApply(t, n, Config{Root: a})
	off := vmTaprio(t)
	off.FullOffload, off.Clock = true, ClockNone
	if err := n.client.Apply(testCtx(t), n.name, Config{Root: off}); err == nil {
		t.Fatal("full offload on veth applied")
	} else {
		t.Logf("refused as expected: %v", err)
	}
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), a)
}

// A qdisc the package does not model but whose dump is its configuration (pfifo)
// is re-created from the dump.
func TestKernelRollbackReplaysOtherQdisc(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	link := n.link(t)
	limit := make([]byte, 4)
	native.PutUint32(limit, 123)
	if err := n.client.replaceRaw(link.Index, Installed{Kind: "pfifo", Handle: MakeHandle(0x5, 0), Parent: HandleRoot, Options: limit}); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	bad := &ETF{Clock: ClockTAI, Delta: 100000, Offload: true}
	if err := n.client.Apply(testCtx(t), n.name, Config{Root: vmTaprio(t), Children: []Child{{1, bad}}}); err == nil {
		t.Fatal("failing apply succeeded")
	}
	after := n.snapshot(t)
	if after.Root == nil || after.Root.Kind != "pfifo" || after.Root.Handle != MakeHandle(0x5, 0) || string(after.Root.Options) != string(before.Root.Options) {
		t.Fatalf("root after rollback %v (options %x), want %v (options %x)", after.Root, after.Root.Options, before.Root, before.Root.Options)
	}
}

// A classful root (htb) cannot be re-created with its classes and filters, so the
// apply is refused before anything changes. Runs on any kernel with htb.
func TestKernelRefusesUnrestorableRoot(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "htb")
	link := n.link(t)
	// struct tc_htb_glob: version 3, rate2quantum 10, defcls 0.
	glob := make([]byte, 20)
	native.PutUint32(glob[0:], 3)
	native.PutUint32(glob[4:], 10)
	htb := nl.NewRtAttr(nl.TCA_HTB_INIT, glob)
	if err := n.client.replaceRaw(link.Index, Installed{Kind: "htb", Handle: MakeHandle(0x1, 0), Parent: HandleRoot, Options: htb.Serialize()}); err != nil {
		t.Fatal(err)
	}
	q := goodTaprio()
	err := n.client.Apply(testCtx(t), n.name, Config{Root: q})
	if !errors.Is(err, ErrCannotRestore) {
		t.Fatalf("apply over htb: %v, want ErrCannotRestore", err)
	}
	if s := n.snapshot(t); s.Root == nil || s.Root.Kind != "htb" {
		t.Fatalf("root %v, want htb untouched", s.Root)
	}
}

// Validation errors come back before the device is touched.
func TestKernelInvalidConfigTouchesNothing(t *testing.T) {
	n := newTestNIC(t, 2)
	before := n.snapshot(t)
	q := goodTaprio() // wants 4 queues
	err := n.client.Apply(testCtx(t), n.name, Config{Root: q})
	var fe *FieldError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "taprio.queues[2]") {
		t.Fatalf("apply on 2 queues: %v, want a field error on taprio.queues[2]", err)
	}
	if err := sameTree(before, n.snapshot(t)); err != nil {
		t.Fatal(err)
	}
}

// Per-class max SDU (TCA_TAPRIO_ATTR_TC_ENTRY) reads back, with zeros for the
// classes left unlimited. 6.1 reports the limits as set at once; 6.12 only
// those of the running schedule, so nothing before the base time.
func TestKernelTaprioMaxSDU(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio")
	q := vmTaprio(t)
	q.MaxSDU = []uint32{0, 1500, 200}
	mustApply(t, n, Config{Root: q})
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), q)
	got := runningTaprio(t, n, q)
	t.Logf("max SDU read back once the schedule runs: %v (%s)", got.MaxSDU, got.MaxSDUReport())
	if got.MaxSDUReport() == MaxSDUUnknown || len(got.MaxSDU) < 3 || got.MaxSDU[1] != 1500 || got.MaxSDU[2] != 200 {
		t.Fatalf("max SDU read back %v (%s), want [0 1500 200]", got.MaxSDU, got.MaxSDUReport())
	}
	// Still as wanted: applying again changes nothing (a new qdisc would take
	// the other handle).
	mustApply(t, n, Config{Root: q})
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), q)
}

// 6.12 lowers a class's limit to the longest frame its gate window lets
// through at the link speed (a 10 us window at the veth's 10 Gbit/s: 12500
// bytes less the Ethernet header), and reports that. Apply's comparison
// knows, so the schedule is still as wanted; 6.1 reports the limits as set.
func TestKernelTaprioMaxSDUWindow(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio")
	q := vmTaprio(t)
	q.Entries = []GateEntry{{GateSet, 0x1, 300000}, {GateSet, 0x2, 300000}, {GateSet, 0x4, 10000}}
	q.MaxSDU = []uint32{0, 1500}
	mustApply(t, n, Config{Root: q})
	got := runningTaprio(t, n, q)
	rate := n.client.linkRate(n.name)
	t.Logf("max SDU read back once the schedule runs: %v (%s); link %s", got.MaxSDU, got.MaxSDUReport(), rate)
	switch got.MaxSDUReport() {
	case MaxSDUEffective:
		win, ok := windowMaxSDU(q, 2, rate)
		if !ok || len(got.MaxSDU) < 3 || got.MaxSDU[1] != 1500 || got.MaxSDU[2] != win {
			t.Fatalf("effective max SDU %v, want [0 1500 %d]", got.MaxSDU, win)
		}
	case MaxSDUAsSet:
		if len(got.MaxSDU) < 2 || got.MaxSDU[1] != 1500 || (len(got.MaxSDU) > 2 && got.MaxSDU[2] != 0) {
			t.Fatalf("max SDU as set %v, want [0 1500]", got.MaxSDU)
		}
	default:
		t.Fatalf("max SDU %s once the schedule runs", got.MaxSDUReport())
	}
	mustApply(t, n, Config{Root: q})
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), nil)
}

// runningTaprio waits until q's base time has passed (so the schedule is
// the running one) and returns the root as decoded then.
func runningTaprio(t *testing.T, n *testNIC, q *Taprio) *Taprio {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		now, err := NowTAI()
		if err != nil {
			t.Fatal(err)
		}
		if now > q.BaseTime+2*q.CycleDuration() {
			s := n.snapshot(t)
			got, ok := s.Root.Qdisc.(*Taprio)
			if !ok {
				t.Fatalf("root is %v, want taprio", s.Root)
			}
			if got.MaxSDUReport() != MaxSDUUnknown || time.Now().After(deadline) {
				return got
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A user schedule (txtime-assist, launch times, max SDU) goes on through FromSchedule.
func TestKernelApplyFromSchedule(t *testing.T) {
	n := newTestNIC(t, 4)
	n.requireKinds(t, "taprio", "etf")
	now, err := NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := FromSchedule(parseSchedule(t, userSchedule), n.link(t).Device, now)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, n, cfg)
	s := n.snapshot(t)
	wantRoot(t, s, "taprio", MakeHandle(0x7a50, 0), cfg.Root)
	if len(s.Children) != 3 {
		t.Fatalf("children %v, want etf on queues 0, 2 and 3", s.Children)
	}
}

// TxQueues sets the device's transmit queues through ethtool channels, and a
// failed apply puts the old count back with the old qdiscs.
func TestKernelTxQueues(t *testing.T) {
	n := newTestNIC(t, 8)
	n.requireKinds(t, "taprio", "etf")
	if got := n.link(t).TxQueues; got != 8 {
		t.Fatalf("fresh veth has %d tx queues, want 8", got)
	}
	a := vmTaprio(t) // uses queues 0..3
	mustApply(t, n, Config{Root: a, TxQueues: 4})
	if got := n.link(t).TxQueues; got != 4 {
		t.Fatalf("after apply: %d tx queues, want 4", got)
	}
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), a)

	b := vmTaprio(t)
	b.PrioMap = prioMap(2, []uint8{1, 0}, QueueRange{1, 0}, QueueRange{1, 1})
	b.Entries = []GateEntry{{GateSet, 0x1, 500000}, {GateSet, 0x2, 500000}}
	bad := &ETF{Clock: ClockTAI, Delta: 100000, Offload: true}
	if err := n.client.Apply(testCtx(t), n.name, Config{Root: b, TxQueues: 2, Children: []Child{{1, bad}}}); err == nil {
		t.Fatal("failing apply succeeded")
	}
	if got := n.link(t).TxQueues; got != 4 {
		t.Fatalf("after rollback: %d tx queues, want 4", got)
	}
	wantRoot(t, n.snapshot(t), "taprio", MakeHandle(0x7a50, 0), a)

	// More queues than the device has is a field error, and nothing changes.
	err := n.client.Apply(testCtx(t), n.name, Config{Root: a, TxQueues: 9})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "txQueues" {
		t.Fatalf("9 queues on an 8-queue veth: %v, want a txQueues field error", err)
	}
}
