package qdisc

import (
	"errors"
	"fmt"
	"math"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

var scheduleClocks = map[schedule.Clock]Clock{
	schedule.ClockTAI:       ClockTAI,
	schedule.ClockRealtime:  ClockRealtime,
	schedule.ClockMonotonic: ClockMonotonic,
	schedule.ClockBoottime:  ClockBoottime,
}

// FromSchedule turns a user schedule into the qdisc tree for a device: a taprio
// root and, for each class with a launch time, an etf on each of its queues.
//
// The schedule is checked with its own validation (errors carry the schedule's
// field paths, e.g. "gateControlList[2].gateMask") and against the device's tx
// queues; what only the kernel-level model can tell (values that do not fit the
// kernel's types, queue ranges out of order) comes back as FieldErrors.
//
// now is the current time on the schedule's clock (NowTAI for CLOCK_TAI; for
// full offload, the NIC's PTP clock) and is used by base-time policy "now".
func FromSchedule(s *schedule.Schedule, dev Device, now int64) (Config, error) {
	errs := s.ValidateAt(nil)
	if len(errs) == 0 && dev.TxQueues > 0 {
		errs = append(errs, s.ValidateForDevice(nil, dev.TxQueues)...)
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("invalid schedule: %w", errs.ToAggregate())
	}
	var fe field.ErrorList

	pm := PrioMap{NumTC: uint8(s.NumTrafficClasses)}
	for p, tc := range s.PriorityMapFull() {
		pm.PrioTC[p] = uint8(tc)
	}
	for i, q := range s.Queues {
		if q.Offset > math.MaxUint16 || q.Count > math.MaxUint16 {
			fe = append(fe, field.Invalid(field.NewPath("queues").Index(i), q.String(), "does not fit the kernel's 16-bit queue numbers"))
			continue
		}
		pm.Queues = append(pm.Queues, QueueRange{Count: uint16(q.Count), Offset: uint16(q.Offset)})
	}

	t := &Taprio{
		PrioMap:            pm,
		CycleTime:          int64(s.CycleTime),
		CycleTimeExtension: int64(s.CycleTimeExtension),
		BaseTime:           s.BaseTimeAt(now),
	}
	for i, e := range s.GateControlList {
		cmd, _ := e.EffectiveCommand().Kernel()
		if e.Interval.D() > math.MaxUint32 {
			fe = append(fe, field.Invalid(field.NewPath("gateControlList").Index(i).Child("interval"), e.Interval.String(),
				"longer than the kernel's limit of 4.294967295s"))
		}
		t.Entries = append(t.Entries, GateEntry{Command: GateCommand(cmd), GateMask: e.GateMask, Interval: uint32(e.Interval)})
	}
	switch s.Mode {
	case schedule.ModeTxtimeAssist:
		t.TxTimeAssist = true
		if s.TxtimeDelay.D() > math.MaxUint32 {
			fe = append(fe, field.Invalid(field.NewPath("txtimeDelay"), s.TxtimeDelay.String(), "longer than the kernel's limit of 4.294967295s"))
		}
		t.TxTimeDelay = uint32(s.TxtimeDelay)
	case schedule.ModeFullOffload:
		t.FullOffload = true
	}
	if s.Clock != "" {
		t.Clock = scheduleClocks[s.Clock]
	}

	var children []Child
	for i, c := range s.Classes {
		if c.MaxSDU > 0 {
			for len(t.MaxSDU) <= c.Class {
				t.MaxSDU = append(t.MaxSDU, 0)
			}
			t.MaxSDU[c.Class] = uint32(c.MaxSDU)
		}
		if c.LaunchTime == nil {
			continue
		}
		if c.LaunchTime.Delta.D() > math.MaxInt32 {
			fe = append(fe, field.Invalid(field.NewPath("classes").Index(i).Child("launchTime", "delta"), c.LaunchTime.Delta.String(),
				"longer than the kernel's limit of 2.147483647s"))
			continue
		}
		q := s.Queues[c.Class]
		for queue := q.Offset; queue < q.Offset+q.Count; queue++ {
			children = append(children, Child{Queue: uint16(queue), Qdisc: &ETF{
				Delta:         int32(c.LaunchTime.Delta),
				Clock:         ClockTAI,
				DeadlineMode:  c.LaunchTime.DeadlineMode,
				Offload:       c.LaunchTime.Offload,
				SkipSockCheck: c.LaunchTime.EffectiveSkipSockCheck(),
			}})
		}
	}
	if len(fe) > 0 {
		return Config{}, fmt.Errorf("invalid schedule: %w", fe.ToAggregate())
	}
	cfg := Config{Root: t, Children: children}
	if err := cfg.Validate(dev); err != nil {
		return Config{}, fmt.Errorf("schedule does not make valid qdiscs: %w", errors.Join(err))
	}
	return cfg, nil
}
