package datapath

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
)

// testFrame is an Ethernet + IPv4 + UDP frame with 16 payload bytes, the shape
// the saver's fast path fingerprints. frag sets the IPv4 fragment field.
func testFrame(ipID uint16, payload byte, frag uint16) []byte {
	b := make([]byte, 14+20+8+16)
	b[12], b[13] = 0x08, 0x00
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], ipID)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], []byte{10, 0, 0, 2})
	copy(ip[16:20], []byte{10, 0, 0, 1})
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	for i := range udp[8:] {
		udp[8+i] = payload
	}
	return b
}

// skbWithPriority is the start of struct __sk_buff up to priority (the
// fields BPF_PROG_TEST_RUN lets a caller set before it must be zero).
func skbWithPriority(prio uint32) [9]uint32 {
	var c [9]uint32
	c[8] = prio // offsetof(struct __sk_buff, priority) == 32
	return c
}

// TestMissReasonsTestRun runs the saver on packets built to miss for each
// reason that can be set up without a second CPU, with BPF_PROG_TEST_RUN, and
// checks that every miss is counted once in missed and once under its reason.
// (MissRace needs two CPUs taking one way at once, MissInternal a broken map:
// neither can be provoked on purpose.)
func TestMissReasonsTestRun(t *testing.T) {
	// Quota 4 of 1 pod: a table of 2 buckets (8 ways). No expiry during the test.
	m := openForSweep(t, WithMaxPods(1), WithQuota(4), WithGCInterval(time.Hour), WithKernelTimer(false), WithPreparedSavers(0))
	if n := tableBuckets(1, 4); n != 2 {
		t.Fatalf("table of %d buckets, the test assumes 2", n)
	}
	prog, err := m.loadSaver(0)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	reset := func(t *testing.T) {
		t.Helper()
		for b := uint32(0); b < 2; b++ {
			if err := m.maps[bpf.TsnMapTsnTable].Put(b, &bpf.TsnTsnBucket{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := m.resetSlot(0); err != nil {
			t.Fatal(err)
		}
		if err := m.writePolicy(0, Policy{Allowed: []uint32{1, 2, 3, 4, 5}}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(t *testing.T, frame []byte, prio uint32) {
		t.Helper()
		ctx := skbWithPriority(prio)
		if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx}); err != nil {
			t.Fatalf("run saver: %v", err)
		}
	}
	check := func(t *testing.T, prio int, saved, missed uint64, reason MissReason) {
		t.Helper()
		c, err := m.slotCounters(0)
		if err != nil {
			t.Fatal(err)
		}
		pc := c.ByPriority[prio]
		var want [NumMissReasons]uint64
		want[reason] = missed
		if pc.Saved != saved || pc.Missed != missed || pc.MissedBy != want {
			t.Errorf("priority %d: saved %d, missed %d by reason %v; want saved %d, missed %d, all %s",
				prio, pc.Saved, pc.Missed, pc.MissedBy, saved, missed, reason)
		}
		tot := c.Total()
		var sum uint64
		for _, n := range tot.MissedBy {
			sum += n
		}
		if sum != tot.Missed {
			t.Errorf("reasons add up to %d, missed %d", sum, tot.Missed)
		}
	}

	t.Run("unfingerprintable", func(t *testing.T) {
		reset(t)
		run(t, testFrame(1, 1, 0x2000), 3)      // first fragment (more fragments)
		run(t, testFrame(1, 1, 0x00b9), 3)      // last fragment (offset)
		run(t, testFrame(1, 1, 0)[:14+20+4], 3) // UDP header cut short
		bad := testFrame(4, 1, 0)
		bad[14] = 0x44 // IPv4 header length below 20 bytes
		run(t, bad, 3)
		arp := testFrame(2, 1, 0)
		arp[12], arp[13] = 0x08, 0x06 // not IP
		run(t, arp, 3)
		run(t, testFrame(3, 1, 0), 3) // and one that is saved
		check(t, 3, 1, 5, MissUnfingerprintable)
	})
	t.Run("ambiguous", func(t *testing.T) {
		reset(t)
		run(t, testFrame(7, 9, 0), 2)
		run(t, testFrame(7, 9, 0), 2) // same bytes, same metadata: shares the entry
		run(t, testFrame(7, 9, 0), 4) // same bytes, other metadata
		check(t, 2, 2, 0, MissAmbiguous)
		check(t, 4, 0, 1, MissAmbiguous)
	})
	t.Run("quota", func(t *testing.T) {
		reset(t)
		for id := uint16(10); id < 16; id++ {
			run(t, testFrame(id, 1, 0), 5)
		}
		check(t, 5, 4, 2, MissQuota)
	})
	t.Run("table_full", func(t *testing.T) {
		reset(t)
		// Both buckets full of live entries (another pod's, say): no way
		// for this packet in its home bucket nor in its second one.
		now := coarseUnits(t)
		for b := uint32(0); b < 2; b++ {
			bucket := &bpf.TsnTsnBucket{}
			for w := uint32(0); w < ways; w++ {
				bucket.State[w] = 8 | stateReady
				bucket.Owner[w] = 7
				if err := m.maps[bpf.TsnMapTsnWays].Put(b*ways+w, &bpf.TsnTsnWay{Saved: now, Slot: 7, Refs: 1}); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.maps[bpf.TsnMapTsnTable].Put(b, bucket); err != nil {
				t.Fatal(err)
			}
		}
		run(t, testFrame(20, 1, 0), 1)
		run(t, testFrame(21, 1, 0), 1)
		check(t, 1, 0, 2, MissTableFull)
	})
}

// TestAdoptWithoutMissReasons: a pin directory left by a driver from before
// the miss reasons has every map but tsn_miss_reasons. A manager adopts it,
// creating that map, without a new pin directory version.
func TestAdoptWithoutMissReasons(t *testing.T) {
	old := openForSweep(t, WithMaxPods(2), WithQuota(8), WithPreparedSavers(0))
	dir := old.opts.pinDir
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(dir, "maps", bpf.TsnMapTsnMissReasons)
	if err := os.Remove(pin); err != nil {
		t.Fatalf("remove %s: %v", pin, err)
	}
	_, ctx := ktesting.NewTestContext(t)
	m, err := Open(ctx, WithPinDir(dir), WithMaxPods(2), WithQuota(8), WithPreparedSavers(0))
	if err != nil {
		t.Fatalf("adopt a pin directory without %s: %v", bpf.TsnMapTsnMissReasons, err)
	}
	defer m.Close()
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("%s not created on adoption: %v", bpf.TsnMapTsnMissReasons, err)
	}
	if _, err := m.slotCounters(1); err != nil {
		t.Errorf("counters after adoption: %v", err)
	}
}
