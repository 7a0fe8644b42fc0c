package qdisc

import (
	"math"
	"testing"
)

func TestNextCycleStart(t *testing.T) {
	const ms = int64(1000000)
	cases := []struct {
		name                      string
		now, cycle, phase, margin int64
		want                      int64
		wantErr                   bool
	}{
		{"on a boundary", 10 * ms, ms, 0, 0, 10 * ms, false},
		{"just after a boundary", 10*ms + 1, ms, 0, 0, 11 * ms, false},
		{"margin pushes past boundaries", 10 * ms, ms, 0, 2*ms + 1, 13 * ms, false},
		{"margin lands on a boundary", 10 * ms, ms, 0, 2 * ms, 12 * ms, false},
		{"phase", 10 * ms, ms, 250000, 0, 10*ms + 250000, false},
		{"phase larger than cycle", 10 * ms, ms, 5*ms + 250000, 0, 10*ms + 250000, false},
		{"negative phase", 10*ms + 1, ms, -250000, 0, 10*ms + 750000, false},
		{"odd cycle", 1000, 300, 0, 50, 1200, false},
		{"zero now", 0, 7, 3, 0, 3, false},
		{"zero cycle", 5, 0, 0, 0, 0, true},
		{"negative margin", 5, 10, 0, -1, 0, true},
		{"overflow margin", math.MaxInt64 - 5, 10, 0, 10, 0, true},
		{"overflow boundary", math.MaxInt64 - 5, 1 << 40, 0, 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NextCycleStart(tc.now, tc.cycle, tc.phase, tc.margin)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && got != tc.want {
				t.Fatalf("NextCycleStart(%d, %d, %d, %d) = %d, want %d", tc.now, tc.cycle, tc.phase, tc.margin, got, tc.want)
			}
		})
	}
}

// Properties over many inputs: the result is a boundary, not before now+margin,
// and less than one cycle after it.
func TestNextCycleStartProperties(t *testing.T) {
	for now := int64(0); now < 5000; now += 37 {
		for _, cycle := range []int64{1, 7, 100, 999} {
			for _, phase := range []int64{-13, 0, 5, 1000} {
				for _, margin := range []int64{0, 1, 250} {
					got, err := NextCycleStart(now, cycle, phase, margin)
					if err != nil {
						t.Fatal(err)
					}
					if got < now+margin || got >= now+margin+cycle || ((got-phase)%cycle+cycle)%cycle != 0 {
						t.Fatalf("NextCycleStart(%d, %d, %d, %d) = %d", now, cycle, phase, margin, got)
					}
				}
			}
		}
	}
}

func TestSetBaseTimeFromNow(t *testing.T) {
	q := goodTaprio() // 1 ms cycle from the intervals
	if err := q.SetBaseTimeFromNow(1_700_000_000_123_456_789, 0, 100_000_000); err != nil {
		t.Fatal(err)
	}
	if q.BaseTime != 1_700_000_000_224_000_000 {
		t.Errorf("base time %d, want 1700000000224000000", q.BaseTime)
	}
	empty := &Taprio{}
	checkFieldError(t, empty.SetBaseTimeFromNow(1, 0, 0), "taprio.cycleTime", "empty")
}

func TestNowTAI(t *testing.T) {
	a, err := NowTAI()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NowTAI()
	if a <= 0 || b < a {
		t.Errorf("CLOCK_TAI readings %d then %d", a, b)
	}
}
