package datapath

import (
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
)

func TestTableBuckets(t *testing.T) {
	for _, tc := range []struct{ pods, quota, want uint32 }{
		{1, 1, 1}, {1, 256, 128}, {64, 256, 8192}, {3, 100, 256}, {4096, 256, 1 << 19},
	} {
		if got := tableBuckets(tc.pods, tc.quota); got != tc.want {
			t.Errorf("tableBuckets(%d, %d) = %d, want %d", tc.pods, tc.quota, got, tc.want)
		}
		if got := tableBuckets(tc.pods, tc.quota); got&(got-1) != 0 || uint64(got)*ways < 2*uint64(tc.pods)*uint64(tc.quota) {
			t.Errorf("tableBuckets(%d, %d) = %d: not a power of two with room for twice the quotas", tc.pods, tc.quota, got)
		}
	}
}

func TestPolicyRoundTrip(t *testing.T) {
	for _, p := range []Policy{
		{},
		{Allowed: []uint32{2, 3, 5}, Remap: map[uint32]uint32{3: 4}, Action: ActionDemote, DefaultPriority: 1, LaunchTimeClock: ClockTAI},
		{Allowed: []uint32{1}, Remap: map[uint32]uint32{0: 6}, Action: ActionDrop, LaunchTimeClock: ClockMonotonic},
	} {
		g := p.grants()
		got := policyFrom(bpf.TsnTsnPolicy{Grant: g, Action: uint8(p.Action), DemotePrio: uint8(p.DefaultPriority), UnspecClock: uint8(p.LaunchTimeClock)})
		if len(got.Allowed) == 0 {
			got.Allowed = nil
		}
		if len(p.Allowed) == 0 {
			p.Allowed = nil
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("policy %+v read back as %+v", p, got)
		}
	}
	g := Policy{Allowed: []uint32{2}}.grants()
	if g[0] != 0 || g[2] != 2 || g[3] != denied || g[15] != denied {
		t.Errorf("grants: %v", g)
	}
}

// The C structs are laid out as the comments in bpf/tsn.c promise.
func TestLayout(t *testing.T) {
	if s := unsafe.Sizeof(bpf.TsnTsnWay{}); s != 64 {
		t.Errorf("tsn_way is %d bytes, want one cache line", s)
	}
	if s := unsafe.Sizeof(bpf.TsnTsnBucket{}); s != 64 {
		t.Errorf("tsn_bucket is %d bytes, want one cache line", s)
	}
	if n := len(bpf.TsnTsnMisses{}.ByReason); n != missReasonSlots || NumMissReasons > missReasonSlots {
		t.Errorf("tsn_misses has %d reason counters, want %d (room for %d reasons)", n, missReasonSlots, NumMissReasons)
	}
	if s := unsafe.Sizeof(record{}); s != recordSize {
		t.Errorf("record is %d bytes, want %d", s, recordSize)
	}
}

func TestMissReasonNames(t *testing.T) {
	want := []string{"quota", "table_full", "unfingerprintable", "ambiguous", "race", "internal"}
	for i, r := range MissReasons() {
		if r.String() != want[i] {
			t.Errorf("reason %d is %q, want %q", i, r, want[i])
		}
	}
	if len(MissReasons()) != len(want) || NumMissReasons.String() != "MissReason(6)" {
		t.Errorf("reasons %v", MissReasons())
	}
}

func TestOptionsTTLBound(t *testing.T) {
	for _, tc := range []struct {
		ttl time.Duration
		ok  bool
	}{{time.Millisecond, true}, {time.Second, true}, {maxTTL, true}, {maxTTL + time.Second, false}, {0, false}} {
		o := defaultOptions()
		o.ttl = tc.ttl
		if err := o.validate(); (err == nil) != tc.ok {
			t.Errorf("ttl %v: validate() = %v, want ok %v", tc.ttl, err, tc.ok)
		}
	}
}
