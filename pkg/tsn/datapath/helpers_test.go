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

// sendMix sends count packets cycling priorities 0..7, every other packet with
// a launch time; each packet asks for what it sent. It returns how many carry
// metadata (a priority or a launch time).
func sendMix(t testing.TB, s *netemu.Sender, tag uint32, count int) int {
	t.Helper()
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
	}
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
