package qdisc

import (
	"errors"
	"fmt"
	"math"
)

// FieldError says which field of a model is wrong and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

type fieldErrors []error

func (fe *fieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (fe fieldErrors) join(prefix string) error {
	if len(fe) == 0 {
		return nil
	}
	for i, e := range fe {
		var f *FieldError
		if errors.As(e, &f) {
			fe[i] = &FieldError{Field: prefix + f.Field, Reason: f.Reason}
		}
	}
	return errors.Join(fe...)
}

// validate checks the priority map against the device; the rules are those of
// the kernel's mqprio/taprio option parsing, so a map that passes here is not
// refused there.
func (m PrioMap) validate(dev Device, fe *fieldErrors) {
	if m.NumTC < 1 || m.NumTC > MaxTrafficClasses {
		fe.add("numTC", "%d traffic classes, want 1..%d", m.NumTC, MaxTrafficClasses)
		return
	}
	for p, tc := range m.PrioTC {
		if tc >= m.NumTC {
			fe.add(fmt.Sprintf("prioTC[%d]", p), "priority %d maps to traffic class %d, but there are only %d", p, tc, m.NumTC)
		}
	}
	if len(m.Queues) != int(m.NumTC) {
		fe.add("queues", "%d queue ranges for %d traffic classes", len(m.Queues), m.NumTC)
		return
	}
	for tc, q := range m.Queues {
		field := fmt.Sprintf("queues[%d]", tc)
		last := int(q.Offset) + int(q.Count)
		switch {
		case q.Count == 0:
			fe.add(field, "traffic class %d has no queues", tc)
		case dev.TxQueues > 0 && last > dev.TxQueues:
			fe.add(field, "queues %s reach past the %d tx queues of %s", q, dev.TxQueues, dev.Name)
		}
		if tc+1 < len(m.Queues) && last > int(m.Queues[tc+1].Offset) {
			fe.add(field, "queues %s overlap or are out of order with traffic class %d's %s", q, tc+1, m.Queues[tc+1])
		}
	}
}

// Validate checks the schedule before anything is sent to the kernel.
func (t *Taprio) Validate(dev Device) error {
	var fe fieldErrors
	t.PrioMap.validate(dev, &fe)

	switch {
	case t.FullOffload && t.TxTimeAssist:
		fe.add("flags", "txtime-assist and full-offload exclude each other")
	case t.FullOffload && t.Clock != ClockNone:
		fe.add("clock", "must be empty with full-offload (the NIC's clock is used), got %q", t.Clock)
	case !t.FullOffload:
		if t.Clock == ClockNone {
			fe.add("clock", "required unless full-offload")
		} else if _, ok := t.Clock.id(); !ok {
			fe.add("clock", "unknown clock %q, want tai, realtime, monotonic or boottime", t.Clock)
		}
	}
	if t.TxTimeDelay != 0 && !t.TxTimeAssist {
		fe.add("txTimeDelay", "only meaningful with txtime-assist")
	}

	if len(t.Entries) == 0 {
		fe.add("entries", "the gate control list is empty")
	}
	var sum int64
	var classes uint32 = 1<<uint(min(t.PrioMap.NumTC, 32)) - 1
	for i, e := range t.Entries {
		field := fmt.Sprintf("entries[%d]", i)
		if e.Interval == 0 {
			fe.add(field+".interval", "must be positive")
		}
		if e.GateMask&^classes != 0 {
			fe.add(field+".gateMask", "%#x opens gates beyond the %d traffic classes", e.GateMask, t.PrioMap.NumTC)
		}
		switch e.Command {
		case GateSet:
		case GateSetAndHold, GateSetAndRelease:
			if !t.FullOffload {
				fe.add(field+".command", "%s needs frame preemption in the NIC (full-offload)", e.Command)
			}
		default:
			fe.add(field+".command", "unknown gate command %d", uint8(e.Command))
		}
		sum += int64(e.Interval)
	}
	switch {
	case t.CycleTime < 0:
		fe.add("cycleTime", "must not be negative")
	case t.CycleTime != 0 && len(t.Entries) > 0 && t.CycleTime != sum:
		fe.add("cycleTime", "%d ns, but the intervals add up to %d ns", t.CycleTime, sum)
	}
	cycle := t.CycleTime
	if cycle == 0 {
		cycle = sum
	}
	if t.CycleTimeExtension < 0 {
		fe.add("cycleTimeExtension", "must not be negative")
	} else if cycle > 0 && t.CycleTimeExtension >= cycle {
		fe.add("cycleTimeExtension", "%d ns is not shorter than the %d ns cycle", t.CycleTimeExtension, cycle)
	}
	if t.BaseTime < 0 {
		fe.add("baseTime", "must not be negative")
	}
	if len(t.MaxSDU) > int(t.PrioMap.NumTC) {
		fe.add("maxSDU", "%d values for %d traffic classes", len(t.MaxSDU), t.PrioMap.NumTC)
	}
	return fe.join("taprio.")
}

// Validate checks the etf options.
func (e *ETF) Validate(Device) error {
	var fe fieldErrors
	if e.Clock != ClockTAI {
		fe.add("clock", "etf runs on tai only, got %q", e.Clock)
	}
	if e.Delta < 0 {
		fe.add("delta", "must not be negative, got %d", e.Delta)
	}
	return fe.join("etf.")
}

// Validate checks the mqprio options.
func (m *MQPrio) Validate(dev Device) error {
	var fe fieldErrors
	m.PrioMap.validate(dev, &fe)
	if m.HW > 1 {
		fe.add("hw", "must be 0 or 1, got %d", m.HW)
	}
	switch m.Mode {
	case MQPrioModeUnset, MQPrioModeDCB, MQPrioModeChannel:
	default:
		fe.add("mode", "unknown mode %q", m.Mode)
	}
	switch m.Shaper {
	case MQPrioShaperUnset, MQPrioShaperDCB, MQPrioShaperBWRlimit:
	default:
		fe.add("shaper", "unknown shaper %q", m.Shaper)
	}
	if (len(m.MinRate) > 0 || len(m.MaxRate) > 0) && m.Shaper != MQPrioShaperBWRlimit {
		fe.add("shaper", "rates need shaper bw_rlimit")
	}
	// The kernel takes mqprio attributes only in hardware mode.
	if m.Mode != MQPrioModeUnset && m.HW == 0 {
		fe.add("mode", "needs hw offload (hw 1)")
	}
	if m.Shaper != MQPrioShaperUnset && m.HW == 0 {
		fe.add("shaper", "needs hw offload (hw 1)")
	}
	for name, rates := range map[string][]uint64{"minRate": m.MinRate, "maxRate": m.MaxRate} {
		if len(rates) > int(m.PrioMap.NumTC) {
			fe.add(name, "%d values for %d traffic classes", len(rates), m.PrioMap.NumTC)
		}
	}
	for i := range min(len(m.MinRate), len(m.MaxRate)) {
		if m.MaxRate[i] != 0 && m.MinRate[i] > m.MaxRate[i] {
			fe.add(fmt.Sprintf("minRate[%d]", i), "%d B/s is above maxRate %d B/s", m.MinRate[i], m.MaxRate[i])
		}
	}
	return fe.join("mqprio.")
}

// CycleDuration is the cycle time in ns the kernel will use: CycleTime, or the
// sum of the intervals when it is 0. It saturates at MaxInt64.
func (t *Taprio) CycleDuration() int64 {
	if t.CycleTime != 0 {
		return t.CycleTime
	}
	var sum int64
	for _, e := range t.Entries {
		if sum > math.MaxInt64-int64(e.Interval) {
			return math.MaxInt64
		}
		sum += int64(e.Interval)
	}
	return sum
}
