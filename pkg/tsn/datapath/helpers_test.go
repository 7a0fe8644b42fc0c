package datapath_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and loads eBPF (run with sudo)")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
	}
}

func testCtx(t testing.TB) context.Context {
	_, ctx := ktesting.NewTestContext(t)
	return ctx
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// pinDir is a unique pin directory, removed at the end of the test.
func pinDir(t testing.TB) string {
	base := filepath.Join("/sys/fs/bpf", "tsn-test-"+randHex())
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	return filepath.Join(base, "v1")
}

func newNode(t testing.TB, topo netemu.Topology, pods int) *netemu.Node {
	t.Helper()
	if err := netemu.Available(topo); err != nil {
		t.Skipf("topology %s: %v", topo, err)
	}
	n, err := netemu.New(topo, pods)
	if err != nil {
		t.Fatalf("build node: %v", err)
	}
	t.Cleanup(n.Close)
	return n
}

func openManager(t testing.TB, n *netemu.Node, dir string, opts ...datapath.Option) *datapath.Manager {
	t.Helper()
	ctx := testCtx(t)
	opts = append([]datapath.Option{datapath.WithPinDir(dir), datapath.WithNetns(n.HostNetns)}, opts...)
	m, err := datapath.Open(ctx, opts...)
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Uninstall(klog.NewContext(context.Background(), klog.Background())); err != nil && !isClosed(err) {
			t.Errorf("uninstall: %v", err)
		}
	})
	return m
}

func isClosed(err error) bool { return err != nil && err.Error() == "datapath manager is closed" }

func attachObserver(t testing.TB, n *netemu.Node, mode datapath.AttachMode) *observe.Observer {
	t.Helper()
	o, err := observe.Attach(n.HostNetns, netemu.NIC, mode)
	if err != nil {
		t.Fatalf("observer: %v", err)
	}
	t.Cleanup(func() { _ = o.Close() })
	return o
}

func newSender(t testing.TB, netnsPath string, n *netemu.Node) *netemu.Sender {
	t.Helper()
	dst := n.Dest
	if netnsPath == n.HostNetns {
		dst = n.HostDest
	}
	s, err := netemu.NewSender(netnsPath, dst, unix.CLOCK_TAI)
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// allowAll grants priorities 1..7 unchanged.
var allowAll = datapath.Policy{Allowed: []uint32{1, 2, 3, 4, 5, 6, 7}}

// inFlightWindow bounds how many packets a test sender has out that the
// observer has not seen yet. A pod holds at most its quota (256 by default) of
// saved entries; packets beyond it are counted misses by design (TestMapBounded).
// Tight send loops stay far below it on the 6.18 host and on PREEMPT_RT (1-2 in
// flight), but on 6.1 generic under qemu TCG, where NET_RX processing is handed
// to ksoftirqd, a loop got up to 316 packets ahead of the NIC (docs/datapath.md).
// The tests that check restores, not the quota, pace themselves below it.
const inFlightWindow = 128

// pacer keeps the packets of some flows (observer tags) in flight below
// inFlightWindow. Not for flows whose packets are dropped on purpose.
type pacer struct {
	t             testing.TB
	o             *observe.Observer
	tags          map[uint32]bool
	sent, checked uint64
	checks, waits int
	spent         time.Duration
}

func newPacer(t testing.TB, o *observe.Observer, tags ...uint32) *pacer {
	p := &pacer{t: t, o: o, tags: map[uint32]bool{}}
	for _, tag := range tags {
		p.tags[tag] = true
	}
	return p
}

// add counts one more packet sent and, every 32 packets, waits while more than
// inFlightWindow of them have not reached the NIC. It gives up waiting after
// 10 s (the test's own checks then report what is missing). Safe to call from
// a goroutine other than the test's: it never calls Fatal.
func (p *pacer) add() {
	p.sent++
	if p.sent-p.checked < 32 {
		return
	}
	p.checked = p.sent
	p.checks++
	start := time.Now()
	for try := 0; ; try++ {
		all, err := p.o.Counts()
		if err != nil {
			p.t.Errorf("observer: %v", err)
			return
		}
		var seen uint64
		for k, n := range all {
			if p.tags[k.Tag] {
				seen += n
			}
		}
		if p.sent <= seen+inFlightWindow {
			break
		}
		if try == 0 {
			p.waits++
		}
		if time.Since(start) > 10*time.Second {
			p.t.Logf("pacer: %d sent, %d seen at the NIC after 10s; not waiting any longer", p.sent, seen)
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	p.spent += time.Since(start)
}

func (p *pacer) log() {
	p.t.Helper()
	p.t.Logf("pacing: %d of %d checks waited for the NIC to catch up; %v in checks and waits",
		p.waits, p.checks, p.spent.Round(time.Millisecond))
}

// sendMix sends count packets cycling priorities 0..7, every other packet with
// a launch time, paced by the observer; each packet asks for what it sent. It
// returns how many carry metadata (a priority or a launch time).
func sendMix(t testing.TB, s *netemu.Sender, o *observe.Observer, tag uint32, count int) int {
	t.Helper()
	p := newPacer(t, o, tag)
	base := netemu.TAINow() + uint64(time.Hour)
	withMeta := 0
	for i := 0; i < count; i++ {
		prio := uint32(i % 8)
		var tx uint64
		if i%2 == 0 {
			tx = base + uint64(i)*1000
		}
		if prio != 0 || tx != 0 {
			withMeta++
		}
		if err := s.Send(tag, uint32(i), prio, tx, prio, tx); err != nil {
			t.Fatalf("send packet %d: %v", i, err)
		}
		p.add()
	}
	p.log()
	return withMeta
}

// waitTotal waits until the observer saw want packets of the flow.
func waitTotal(t testing.TB, o *observe.Observer, tag uint32, want uint64) observe.Result {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := o.Result(tag)
		if err != nil {
			t.Fatalf("observer: %v", err)
		}
		if r.Total >= want || time.Now().After(deadline) {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
}
