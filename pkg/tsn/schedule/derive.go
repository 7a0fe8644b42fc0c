package schedule

import (
	"math/bits"
	"time"

	"golang.org/x/sys/unix"
)

// Window is a span of the cycle in which a class's gate is open.
type Window struct {
	// Offset is the start of the window from the start of the cycle.
	Offset time.Duration
	// Length is how long the gate stays open.
	Length time.Duration
}

// Cycle returns the cycle time: CycleTime when set, else the sum of the intervals.
func (s *Schedule) Cycle() time.Duration {
	if s.CycleTime > 0 {
		return s.CycleTime.D()
	}
	var sum time.Duration
	for _, e := range s.GateControlList {
		sum += e.Interval.D()
	}
	return sum
}

// Windows returns the windows in which the gate of class tc is open, in cycle order; adjacent
// entries that both open the gate form one window. A window that runs to the end of the cycle and
// one that starts the cycle stay separate (offsets stay within the cycle).
func (s *Schedule) Windows(tc int) []Window {
	var out []Window
	var at time.Duration
	for _, e := range s.GateControlList {
		if e.GateMask&(1<<uint(tc)) != 0 {
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == at {
				out[n-1].Length += e.Interval.D()
			} else {
				out = append(out, Window{Offset: at, Length: e.Interval.D()})
			}
		}
		at += e.Interval.D()
	}
	return out
}

// OpenTime is the total time per cycle the gate of class tc is open.
func (s *Schedule) OpenTime(tc int) time.Duration {
	var sum time.Duration
	for _, w := range s.Windows(tc) {
		sum += w.Length
	}
	return sum
}

// OpenShare is the fraction of the cycle (0..1) the gate of class tc is open.
func (s *Schedule) OpenShare(tc int) float64 {
	c := s.Cycle()
	if c <= 0 {
		return 0
	}
	return float64(s.OpenTime(tc)) / float64(c)
}

// Bandwidth is the share of a link of linkBitsPerSecond that class tc can send in its gate
// windows, in bits per second (rounded down).
func (s *Schedule) Bandwidth(tc int, linkBitsPerSecond uint64) uint64 {
	c := s.Cycle()
	open := s.OpenTime(tc)
	if c <= 0 || open <= 0 {
		return 0
	}
	if open > c {
		open = c
	}
	hi, lo := bits.Mul64(linkBitsPerSecond, uint64(open))
	q, _ := bits.Div64(hi, lo, uint64(c)) // hi < c because open <= c
	return q
}

// PriorityMapFull returns the priority map with all 16 priorities, unset ones mapping to class 0.
func (s *Schedule) PriorityMapFull() [NumPriorities]int {
	var m [NumPriorities]int
	copy(m[:], s.PriorityMap)
	return m
}

// Priorities returns the socket priorities (ascending) that map to class tc.
func (s *Schedule) Priorities(tc int) []int {
	var out []int
	for p, c := range s.PriorityMapFull() {
		if c == tc {
			out = append(out, p)
		}
	}
	return out
}

// ClassOf returns the traffic class socket priority prio maps to. Like the kernel
// (netdev_get_prio_tc_map), only the low four bits of the priority count.
func (s *Schedule) ClassOf(prio uint32) int {
	m := s.PriorityMapFull()
	return m[prio&(NumPriorities-1)]
}

// Settings returns the per-class settings of tc, or nil when there are none.
func (s *Schedule) Settings(tc int) *ClassSettings {
	for i := range s.Classes {
		if s.Classes[i].Class == tc {
			return &s.Classes[i]
		}
	}
	return nil
}

// BaseTimeAt returns the base time (nanoseconds) for a schedule applied when the schedule's
// clock reads now (nanoseconds). Policy "now": the first multiple of the cycle time at or after
// now+margin. Policy "absolute": the configured time.
func (s *Schedule) BaseTimeAt(now int64) int64 {
	if s.BaseTime.EffectivePolicy() == BaseTimeAbsolute {
		return s.BaseTime.Time
	}
	c := int64(s.Cycle())
	t := now + int64(s.BaseTime.EffectiveMargin())
	if c <= 0 {
		return t
	}
	if r := t % c; r != 0 {
		t += c - r
	}
	return t
}

// NowTAI reads CLOCK_TAI in nanoseconds.
func NowTAI() (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		return 0, err
	}
	return ts.Nano(), nil
}
