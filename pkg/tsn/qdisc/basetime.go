package qdisc

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// NowTAI reads CLOCK_TAI in ns, the clock TSN schedules run on.
func NowTAI() (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_TAI: %w", err)
	}
	return ts.Nano(), nil
}

// NextCycleStart returns the first cycle boundary at or after now+margin. Cycle
// boundaries are at phase + k*cycle for any integer k, so schedules computed on
// different nodes (or by different applies) with the same cycle and phase line up.
// All values are ns on one clock; phase may be any value, only phase mod cycle counts.
func NextCycleStart(now, cycle, phase, margin int64) (int64, error) {
	if cycle <= 0 {
		return 0, errors.New("cycle must be positive")
	}
	if margin < 0 {
		return 0, errors.New("margin must not be negative")
	}
	if now > math.MaxInt64-margin {
		return 0, errors.New("now + margin overflows")
	}
	earliest := now + margin
	phase %= cycle
	if phase < 0 {
		phase += cycle
	}
	// Offset of earliest from the previous boundary, in [0, cycle).
	off := (earliest - phase) % cycle
	if off < 0 {
		off += cycle
	}
	if off == 0 {
		return earliest, nil
	}
	wait := cycle - off
	if earliest > math.MaxInt64-wait {
		return 0, errors.New("next cycle start overflows")
	}
	return earliest + wait, nil
}

// SetBaseTimeFromNow sets BaseTime to the next boundary of this schedule's cycle
// (aligned to multiples of the cycle on the clock's epoch, shifted by phase) at
// least margin after now. now must be on t.Clock; see NowTAI.
func (t *Taprio) SetBaseTimeFromNow(now, phase, margin int64) error {
	cycle := t.CycleDuration()
	if cycle <= 0 {
		return &FieldError{Field: "taprio.cycleTime", Reason: "no cycle: the gate control list is empty"}
	}
	bt, err := NextCycleStart(now, cycle, phase, margin)
	if err != nil {
		return &FieldError{Field: "taprio.baseTime", Reason: err.Error()}
	}
	t.BaseTime = bt
	return nil
}
