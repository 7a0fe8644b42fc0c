package schedule

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// maxSDULimit is the largest max SDU accepted (a 16-bit length).
const maxSDULimit = 65535

// Validate checks the schedule on its own (without a device) and returns every problem, each
// naming its field (e.g. "gateControlList[2].gateMask"). It returns nil for a valid schedule.
func (s *Schedule) Validate() error {
	return s.ValidateAt(nil).ToAggregate()
}

// ValidateAt is Validate with field paths below path (for a schedule embedded in a larger file).
func (s *Schedule) ValidateAt(path *field.Path) field.ErrorList {
	var errs field.ErrorList
	ntc := s.NumTrafficClasses
	ntcOK := ntc >= 1 && ntc <= MaxTrafficClasses
	if !ntcOK {
		errs = append(errs, field.Invalid(path.Child("numTrafficClasses"), ntc,
			fmt.Sprintf("must be between 1 and %d", MaxTrafficClasses)))
	}

	// Priority map.
	pm := path.Child("priorityMap")
	switch {
	case len(s.PriorityMap) == 0:
		errs = append(errs, field.Required(pm, "map socket priorities 0..15 to traffic classes"))
	case len(s.PriorityMap) > NumPriorities:
		errs = append(errs, field.TooMany(pm, len(s.PriorityMap), NumPriorities))
	}
	for i, tc := range s.PriorityMap {
		if tc < 0 || (ntcOK && tc >= ntc) {
			errs = append(errs, field.Invalid(pm.Index(i), tc, classRangeDetail(ntc, ntcOK)))
		}
	}

	// Queues.
	qp := path.Child("queues")
	if ntcOK && len(s.Queues) != ntc {
		errs = append(errs, field.Invalid(qp, len(s.Queues),
			fmt.Sprintf("must have one entry per traffic class (numTrafficClasses is %d)", ntc)))
	}
	for i, q := range s.Queues {
		switch {
		case q.Count < 1:
			errs = append(errs, field.Invalid(qp.Index(i), q.String(), "count must be at least 1"))
			continue
		case q.Offset < 0:
			errs = append(errs, field.Invalid(qp.Index(i), q.String(), "offset must not be negative"))
			continue
		}
		for j := 0; j < i; j++ {
			p := s.Queues[j]
			if p.Count < 1 || p.Offset < 0 {
				continue
			}
			if q.Offset < p.Offset+p.Count && p.Offset < q.Offset+q.Count {
				errs = append(errs, field.Invalid(qp.Index(i), q.String(),
					fmt.Sprintf("overlaps queues[%d] (%s)", j, p)))
			}
		}
	}

	// Gate control list.
	gp := path.Child("gateControlList")
	var sum time.Duration
	if len(s.GateControlList) == 0 {
		errs = append(errs, field.Required(gp, "at least one entry"))
	}
	for i, e := range s.GateControlList {
		ep := gp.Index(i)
		if _, ok := e.EffectiveCommand().Kernel(); !ok {
			errs = append(errs, field.NotSupported(ep.Child("command"), e.Command,
				[]GateCommand{CommandSet, CommandHold, CommandRelease}))
		} else if e.EffectiveCommand() != CommandSet && s.Mode != ModeFullOffload {
			errs = append(errs, field.Invalid(ep.Child("command"), e.Command,
				"hold and release (frame preemption) need mode full-offload"))
		}
		if ntcOK && e.GateMask>>uint(ntc) != 0 {
			errs = append(errs, field.Invalid(ep.Child("gateMask"), fmt.Sprintf("%#x", e.GateMask),
				fmt.Sprintf("opens gates of traffic classes beyond numTrafficClasses (%d): allowed bits are %#x",
					ntc, uint32(1)<<uint(ntc)-1)))
		}
		if e.Interval <= 0 {
			errs = append(errs, field.Invalid(ep.Child("interval"), e.Interval.String(), "must be positive"))
		} else {
			sum += e.Interval.D()
		}
	}

	// Cycle.
	cycle := sum
	switch {
	case s.CycleTime < 0:
		errs = append(errs, field.Invalid(path.Child("cycleTime"), s.CycleTime.String(), "must not be negative"))
	case s.CycleTime > 0:
		cycle = s.CycleTime.D()
		if sum > 0 && cycle != sum {
			errs = append(errs, field.Invalid(path.Child("cycleTime"), s.CycleTime.String(),
				fmt.Sprintf("must equal the sum of the gate intervals (%s)", sum)))
		}
	}
	if s.CycleTimeExtension < 0 {
		errs = append(errs, field.Invalid(path.Child("cycleTimeExtension"), s.CycleTimeExtension.String(),
			"must not be negative"))
	} else if s.CycleTimeExtension > 0 && cycle > 0 && s.CycleTimeExtension.D() >= cycle {
		errs = append(errs, field.Invalid(path.Child("cycleTimeExtension"), s.CycleTimeExtension.String(),
			fmt.Sprintf("must be shorter than the cycle (%s)", cycle)))
	}

	// Base time.
	bp := path.Child("baseTime")
	switch s.BaseTime.EffectivePolicy() {
	case BaseTimeNow:
		if s.BaseTime.Time != 0 {
			errs = append(errs, field.Forbidden(bp.Child("time"), "only with policy \"absolute\""))
		}
		if s.BaseTime.Margin < 0 {
			errs = append(errs, field.Invalid(bp.Child("margin"), s.BaseTime.Margin.String(), "must not be negative"))
		}
	case BaseTimeAbsolute:
		if s.BaseTime.Time <= 0 {
			errs = append(errs, field.Required(bp.Child("time"),
				"policy \"absolute\" needs a positive start time in nanoseconds"))
		}
		if s.BaseTime.Margin != 0 {
			errs = append(errs, field.Forbidden(bp.Child("margin"), "only with policy \"now\""))
		}
	default:
		errs = append(errs, field.NotSupported(bp.Child("policy"), s.BaseTime.Policy,
			[]BaseTimePolicy{BaseTimeNow, BaseTimeAbsolute}))
	}

	// Mode, clock, txtime delay.
	cp := path.Child("clock")
	if s.Clock != "" {
		if _, ok := s.Clock.ID(); !ok {
			errs = append(errs, field.NotSupported(cp, s.Clock,
				[]Clock{ClockTAI, ClockRealtime, ClockMonotonic, ClockBoottime}))
		}
	}
	tp := path.Child("txtimeDelay")
	if s.TxtimeDelay < 0 {
		errs = append(errs, field.Invalid(tp, s.TxtimeDelay.String(), "must not be negative"))
	}
	switch s.Mode {
	case "":
		errs = append(errs, field.Required(path.Child("mode"), "software, txtime-assist or full-offload"))
	case ModeSoftware:
		if s.Clock == "" {
			errs = append(errs, field.Required(cp, "software mode runs the gates on a system clock"))
		}
		if s.TxtimeDelay != 0 {
			errs = append(errs, field.Forbidden(tp, "only with mode txtime-assist"))
		}
	case ModeTxtimeAssist:
		if s.Clock == "" {
			errs = append(errs, field.Required(cp, "txtime-assist mode needs CLOCK_TAI"))
		} else if s.Clock != ClockTAI {
			errs = append(errs, field.Invalid(cp, s.Clock, "txtime-assist mode needs CLOCK_TAI (etf runs on TAI)"))
		}
		if s.TxtimeDelay == 0 {
			errs = append(errs, field.Required(tp, "txtime-assist mode needs a positive txtime delay"))
		}
	case ModeFullOffload:
		if s.Clock != "" {
			errs = append(errs, field.Forbidden(cp, "full-offload mode runs on the NIC's PTP clock: leave clock empty"))
		}
		if s.TxtimeDelay != 0 {
			errs = append(errs, field.Forbidden(tp, "only with mode txtime-assist"))
		}
	default:
		errs = append(errs, field.NotSupported(path.Child("mode"), s.Mode,
			[]Mode{ModeSoftware, ModeTxtimeAssist, ModeFullOffload}))
	}

	// Per-class settings.
	clp := path.Child("classes")
	seen := map[int]int{}
	for i, c := range s.Classes {
		p := clp.Index(i)
		if c.Class < 0 || (ntcOK && c.Class >= ntc) {
			errs = append(errs, field.Invalid(p.Child("class"), c.Class, classRangeDetail(ntc, ntcOK)))
		} else if j, dup := seen[c.Class]; dup {
			errs = append(errs, field.Duplicate(p.Child("class"), fmt.Sprintf("%d (also in classes[%d])", c.Class, j)))
		} else {
			seen[c.Class] = i
		}
		if c.LaunchTime != nil && c.LaunchTime.Delta <= 0 {
			errs = append(errs, field.Invalid(p.Child("launchTime", "delta"), c.LaunchTime.Delta.String(), "must be positive"))
		}
		if c.MaxSDU < 0 || c.MaxSDU > maxSDULimit {
			errs = append(errs, field.Invalid(p.Child("maxSDU"), c.MaxSDU,
				fmt.Sprintf("must be between 0 (no limit) and %d", maxSDULimit)))
		}
	}
	return errs
}

// ValidateForDevice checks what depends on the NIC: every queue range must lie within its tx
// queues. Call it after Validate, with the NIC's real tx queue count.
func (s *Schedule) ValidateForDevice(path *field.Path, txQueues int) field.ErrorList {
	var errs field.ErrorList
	for i, q := range s.Queues {
		if q.Offset+q.Count > txQueues {
			errs = append(errs, field.Invalid(path.Child("queues").Index(i), q.String(),
				fmt.Sprintf("beyond the NIC's %d tx queues", txQueues)))
		}
	}
	return errs
}

func classRangeDetail(ntc int, ntcOK bool) string {
	if !ntcOK {
		return "must be a valid traffic class"
	}
	return fmt.Sprintf("must be a traffic class between 0 and %d", ntc-1)
}
