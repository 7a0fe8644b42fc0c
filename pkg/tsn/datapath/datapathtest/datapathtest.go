// Package datapathtest holds what tests of the data path share across
// packages (the data path's own tests, test/reliability, the NRI hooks'
// integration test): the root check, unique bpffs pin directories, an
// emulated node (netemu), the observer at tsn0 (observe) and the wait for
// its counts. Everything it makes is removed in t.Cleanup, and every name it
// makes is unique, because other tests make namespaces and pins at the same
// time.
package datapathtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

// NeedRoot skips the test unless it can build network namespaces and pin eBPF
// objects: root, bpffs at /sys/fs/bpf, and TSN_SKIP_ROOT_TESTS unset.
func NeedRoot(t testing.TB) {
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

// Suffix is 8 random hex digits, to make a name no concurrent test uses.
func Suffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// PinDir is a unique data path pin directory, <base>/v1 with base
// /sys/fs/bpf/<prefix><Suffix()>; base is removed at the end of the test.
func PinDir(t testing.TB, prefix string) string {
	base := filepath.Join("/sys/fs/bpf", prefix+Suffix())
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	return filepath.Join(base, "v1")
}

// NewNode builds an emulated node with pods pod namespaces on the path topo,
// closed at the end of the test. It skips when this kernel cannot build topo.
func NewNode(t testing.TB, topo netemu.Topology, pods int) *netemu.Node {
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

// AttachObserver attaches the observer last at egress of the node's tsn0
// (after the restorer, with the restorer's attach mode), detached at the end
// of the test.
func AttachObserver(t testing.TB, n *netemu.Node, mode datapath.AttachMode) *observe.Observer {
	t.Helper()
	o, err := observe.Attach(n.HostNetns, netemu.NIC, mode)
	if err != nil {
		t.Fatalf("observer: %v", err)
	}
	t.Cleanup(func() { _ = o.Close() })
	return o
}

// WaitTotal waits until the observer saw want packets of the flow tag, or
// until timeout, and returns what it saw: the caller's checks then say what
// is missing.
func WaitTotal(t testing.TB, o *observe.Observer, tag uint32, want uint64, timeout time.Duration) observe.Result {
	t.Helper()
	deadline := time.Now().Add(timeout)
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
