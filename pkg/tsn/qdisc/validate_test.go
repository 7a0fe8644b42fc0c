package qdisc

import (
	"errors"
	"strings"
	"testing"
)

func goodTaprio() *Taprio {
	return &Taprio{
		PrioMap: prioMap(3, []uint8{2, 2, 1, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}, QueueRange{1, 0}, QueueRange{1, 1}, QueueRange{2, 2}),
		Entries: []GateEntry{{GateSet, 0x1, 300000}, {GateSet, 0x2, 300000}, {GateSet, 0x4, 400000}},
		Clock:   ClockTAI,
	}
}

var dev4 = Device{Name: "tsn0", TxQueues: 4}

func TestTaprioValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Taprio)
		field  string // "" = valid
		reason string
	}{
		{"valid", func(*Taprio) {}, "", ""},
		{"valid with cycle time", func(q *Taprio) { q.CycleTime = 1000000; q.CycleTimeExtension = 1000 }, "", ""},
		{"valid full offload", func(q *Taprio) { q.FullOffload = true; q.Clock = ClockNone; q.Entries[0].Command = GateSetAndHold }, "", ""},
		{"valid txtime assist", func(q *Taprio) { q.TxTimeAssist = true; q.TxTimeDelay = 100000 }, "", ""},
		{"no classes", func(q *Taprio) { q.PrioMap.NumTC = 0 }, "taprio.numTC", "0 traffic classes"},
		{"too many classes", func(q *Taprio) { q.PrioMap.NumTC = 17 }, "taprio.numTC", "want 1..16"},
		{"priority to missing class", func(q *Taprio) { q.PrioMap.PrioTC[5] = 3 }, "taprio.prioTC[5]", "maps to traffic class 3"},
		{"queue count mismatch", func(q *Taprio) { q.PrioMap.Queues = q.PrioMap.Queues[:2] }, "taprio.queues", "2 queue ranges for 3"},
		{"empty queue range", func(q *Taprio) { q.PrioMap.Queues[1].Count = 0 }, "taprio.queues[1]", "has no queues"},
		{"queues past device", func(q *Taprio) { q.PrioMap.Queues[2] = QueueRange{3, 2} }, "taprio.queues[2]", "past the 4 tx queues of tsn0"},
		{"queues overlap", func(q *Taprio) { q.PrioMap.Queues[0] = QueueRange{2, 0} }, "taprio.queues[0]", "overlap"},
		{"no entries", func(q *Taprio) { q.Entries = nil }, "taprio.entries", "empty"},
		{"zero interval", func(q *Taprio) { q.Entries[1].Interval = 0 }, "taprio.entries[1].interval", "positive"},
		{"gate beyond classes", func(q *Taprio) { q.Entries[2].GateMask = 0x8 }, "taprio.entries[2].gateMask", "beyond the 3 traffic classes"},
		{"hold without offload", func(q *Taprio) { q.Entries[0].Command = GateSetAndHold }, "taprio.entries[0].command", "full-offload"},
		{"unknown command", func(q *Taprio) { q.Entries[0].Command = 7 }, "taprio.entries[0].command", "unknown gate command 7"},
		{"cycle not sum", func(q *Taprio) { q.CycleTime = 900000 }, "taprio.cycleTime", "add up to 1000000"},
		{"negative cycle", func(q *Taprio) { q.CycleTime = -1 }, "taprio.cycleTime", "negative"},
		{"extension too long", func(q *Taprio) { q.CycleTimeExtension = 1000000 }, "taprio.cycleTimeExtension", "not shorter"},
		{"negative extension", func(q *Taprio) { q.CycleTimeExtension = -5 }, "taprio.cycleTimeExtension", "negative"},
		{"negative base time", func(q *Taprio) { q.BaseTime = -1 }, "taprio.baseTime", "negative"},
		{"no clock", func(q *Taprio) { q.Clock = ClockNone }, "taprio.clock", "required"},
		{"bad clock", func(q *Taprio) { q.Clock = "gps" }, "taprio.clock", `unknown clock "gps"`},
		{"clock with offload", func(q *Taprio) { q.FullOffload = true }, "taprio.clock", "must be empty with full-offload"},
		{"both modes", func(q *Taprio) { q.FullOffload = true; q.TxTimeAssist = true }, "taprio.flags", "exclude each other"},
		{"delay without assist", func(q *Taprio) { q.TxTimeDelay = 5 }, "taprio.txTimeDelay", "txtime-assist"},
		{"too many max sdu", func(q *Taprio) { q.MaxSDU = []uint32{1, 2, 3, 4} }, "taprio.maxSDU", "4 values for 3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := goodTaprio()
			tc.mutate(q)
			checkFieldError(t, q.Validate(dev4), tc.field, tc.reason)
		})
	}
}

func TestETFValidate(t *testing.T) {
	cases := []struct {
		name          string
		q             ETF
		field, reason string
	}{
		{"valid", ETF{Clock: ClockTAI, Delta: 200000, SkipSockCheck: true}, "", ""},
		{"wrong clock", ETF{Clock: ClockMonotonic}, "etf.clock", `tai only, got "monotonic"`},
		{"no clock", ETF{}, "etf.clock", "tai only"},
		{"negative delta", ETF{Clock: ClockTAI, Delta: -1}, "etf.delta", "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkFieldError(t, tc.q.Validate(dev4), tc.field, tc.reason) })
	}
}

func TestMQPrioValidate(t *testing.T) {
	base := func() *MQPrio {
		return &MQPrio{PrioMap: prioMap(2, []uint8{1, 0}, QueueRange{2, 0}, QueueRange{2, 2})}
	}
	cases := []struct {
		name          string
		mutate        func(*MQPrio)
		field, reason string
	}{
		{"valid", func(*MQPrio) {}, "", ""},
		{"valid hw channel", func(m *MQPrio) {
			m.HW, m.Mode, m.Shaper, m.MinRate, m.MaxRate = 1, MQPrioModeChannel, MQPrioShaperBWRlimit, []uint64{1, 2}, []uint64{3, 4}
		}, "", ""},
		{"queues past device", func(m *MQPrio) { m.PrioMap.Queues[1] = QueueRange{3, 2} }, "mqprio.queues[1]", "past the 4 tx queues"},
		{"hw 2", func(m *MQPrio) { m.HW = 2 }, "mqprio.hw", "0 or 1"},
		{"mode without hw", func(m *MQPrio) { m.Mode = MQPrioModeChannel }, "mqprio.mode", "needs hw offload"},
		{"unknown mode", func(m *MQPrio) { m.HW = 1; m.Mode = "x" }, "mqprio.mode", `unknown mode "x"`},
		{"unknown shaper", func(m *MQPrio) { m.HW = 1; m.Shaper = "y" }, "mqprio.shaper", `unknown shaper "y"`},
		{"rates without shaper", func(m *MQPrio) { m.HW = 1; m.MaxRate = []uint64{1} }, "mqprio.shaper", "bw_rlimit"},
		{"min above max", func(m *MQPrio) {
			m.HW, m.Shaper, m.MinRate, m.MaxRate = 1, MQPrioShaperBWRlimit, []uint64{5, 0}, []uint64{4, 0}
		}, "mqprio.minRate[0]", "above maxRate"},
		{"too many rates", func(m *MQPrio) {
			m.HW, m.Shaper, m.MaxRate = 1, MQPrioShaperBWRlimit, []uint64{1, 2, 3}
		}, "mqprio.maxRate", "3 values for 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.mutate(m)
			checkFieldError(t, m.Validate(dev4), tc.field, tc.reason)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	etf := &ETF{Clock: ClockTAI, Delta: 100000, SkipSockCheck: true}
	cases := []struct {
		name          string
		cfg           Config
		field, reason string
	}{
		{"valid", Config{Root: goodTaprio(), Children: []Child{{0, etf}, {3, etf}}}, "", ""},
		{"valid with more queues", Config{Root: goodTaprio(), TxQueues: 8, Children: []Child{{7, etf}}}, "", ""},
		{"no root", Config{}, "root", "no root"},
		{"child past queues", Config{Root: goodTaprio(), Children: []Child{{4, etf}}}, "children[0].queue", "tsn0 has 4 tx queues"},
		{"two on a queue", Config{Root: goodTaprio(), Children: []Child{{1, etf}, {1, etf}}}, "children[1].queue", "two qdiscs"},
		{"missing child", Config{Root: goodTaprio(), Children: []Child{{1, nil}}}, "children[0].qdisc", "missing"},
		{"bad child", Config{Root: goodTaprio(), Children: []Child{{1, &ETF{}}}}, "etf.clock", "tai only"},
		{"child under etf", Config{Root: etf, Children: []Child{{0, etf}}}, "children", "no per-queue classes"},
		{"root error", Config{Root: &Taprio{}}, "taprio.numTC", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkFieldError(t, tc.cfg.Validate(dev4), tc.field, tc.reason) })
	}
}

// checkFieldError wants no error for field "", else a FieldError on field whose
// reason contains reason.
func checkFieldError(t *testing.T, err error, field, reason string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want one on %s", field)
	}
	var found []string
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			if fe.Field == field && strings.Contains(fe.Reason, reason) {
				return
			}
			found = append(found, fe.Error())
		}
	}
	t.Fatalf("error %q has no %s error containing %q (field errors: %q)", err, field, reason, found)
}

func flatten(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range u.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	if u := errors.Unwrap(err); u != nil {
		return append([]error{err}, flatten(u)...)
	}
	return []error{err}
}
