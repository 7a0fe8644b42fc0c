package datapath

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
)

// coarseUnits is the clock the programs age entries by: the kernel's coarse
// monotonic clock (bpf_ktime_get_coarse_ns) in units of 2^20 ns.
func coarseUnits(t *testing.T) uint32 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatal(err)
	}
	return uint32(uint64(ts.Nano()) >> 20)
}

// openForSweep opens a manager on a pin directory of its own (in the host's
// network namespace: these tests send no packets), uninstalled at the end of
// the test; it skips without root or bpffs.
func openForSweep(t *testing.T, opts ...Option) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	base := filepath.Join("/sys/fs/bpf", "tsn-test-"+hex.EncodeToString(b))
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	_, ctx := ktesting.NewTestContext(t)
	m, err := Open(ctx, append([]Option{WithPinDir(filepath.Join(base, "v1"))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Uninstall(context.Background()) })
	return m
}

// TestExpiryAge pins down the age rule the expiry sweep (and the saver's
// reuse of expired ways) applies: an entry saved after the sweep read the
// clock (a saver on another CPU, a tick later, while a long pass runs) is
// young, not 2^32 units old. Before this rule a live entry could be freed
// microseconds after it was saved; under qemu TCG that cost a few restores per
// run on 6.1 (docs/datapath.md).
func TestExpiryAge(t *testing.T) {
	const ttl = 100 * time.Millisecond
	// The sweep is run by hand below: its own ticker never fires.
	m := openForSweep(t, WithMaxPods(1), WithQuota(8), WithTTL(ttl), WithGCInterval(time.Hour), WithKernelTimer(false), WithPreparedSavers(0))
	var slot bpf.TsnTsnSlot
	if err := m.maps[bpf.TsnMapTsnSlots].Lookup(uint32(0), &slot); err != nil {
		t.Fatal(err)
	}
	ttlUnits := uint32(ttl.Nanoseconds() >> 20)

	for _, tc := range []struct {
		name string
		age  int64 // in units of 2^20 ns, relative to the clock now
		keep bool
	}{
		{"saved after the sweep read the clock", -3, true},
		{"saved just now", 0, true},
		{"half the ttl", int64(ttlUnits / 2), true},
		{"past the ttl", int64(ttlUnits) + 3, false},
		{"long past the ttl", 1 << 30, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := &bpf.TsnTsnBucket{}
			bucket.State[0] = 8 | stateReady
			bucket.Tag[0] = 1
			way := &bpf.TsnTsnWay{Saved: uint32(int64(coarseUnits(t)) - tc.age), Slot: 0, Gen: uint16(slot.Gen), Refs: 1}
			if err := m.maps[bpf.TsnMapTsnWays].Put(uint32(0), way); err != nil {
				t.Fatal(err)
			}
			if err := m.maps[bpf.TsnMapTsnTable].Put(uint32(0), bucket); err != nil {
				t.Fatal(err)
			}
			freed, err := m.sweep.Run(&ebpf.RunOptions{Data: probePacket()})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.maps[bpf.TsnMapTsnTable].Lookup(uint32(0), bucket); err != nil {
				t.Fatal(err)
			}
			kept := bucket.State[0]&stateMask == stateReady
			if kept != tc.keep || (freed == 0) != tc.keep {
				t.Errorf("entry aged %d units (ttl %d): kept %v (sweep freed %d), want kept %v", tc.age, ttlUnits, kept, freed, tc.keep)
			}
		})
	}
}

// TestExpirySweepTime reports how long one expiry pass over a table of the
// default size takes on this kernel: the window in which a saver could meet
// the sweep's clock reading from the past (TestExpiryAge).
func TestExpirySweepTime(t *testing.T) {
	m := openForSweep(t, WithGCInterval(time.Hour), WithKernelTimer(false), WithPreparedSavers(0))
	_, d, err := m.sweep.Benchmark(probePacket(), 20, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one expiry pass over %d buckets: %v", tableBuckets(m.opts.maxPods, m.opts.quota), d)
}
