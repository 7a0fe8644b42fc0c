package schedule

import (
	"encoding/json"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

const validYAML = `
numTrafficClasses: 4
priorityMap: [3, 3, 2, 1, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
queues: ["1@0", "1@1", "1@2", "1@3"]
gateControlList:
- {gateMask: 0x1, interval: 300us}
- {gateMask: 0x2, interval: 200us}
- {command: set, gateMask: 0xc, interval: 500000}
cycleTime: 1ms
baseTime: {policy: now, margin: 2s}
clock: CLOCK_TAI
mode: software
classes:
- class: 1
  launchTime: {delta: 150us, offload: true}
  maxSDU: 1500
`

func valid(t *testing.T) *Schedule {
	t.Helper()
	var s Schedule
	if err := yaml.UnmarshalStrict([]byte(validYAML), &s); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return &s
}

func TestValidScheduleParsesAndValidates(t *testing.T) {
	s := valid(t)
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if s.GateControlList[2].Interval.D() != 500*time.Microsecond {
		t.Errorf("integer nanoseconds: got %v", s.GateControlList[2].Interval)
	}
	if s.Queues[3] != (QueueRange{Count: 1, Offset: 3}) {
		t.Errorf("queues[3] = %+v", s.Queues[3])
	}
	if s.BaseTime.Margin.D() != 2*time.Second {
		t.Errorf("margin = %v", s.BaseTime.Margin)
	}
	lt := s.Settings(1).LaunchTime
	if lt == nil || !lt.Offload || !lt.EffectiveSkipSockCheck() || lt.Delta.D() != 150*time.Microsecond {
		t.Errorf("launchTime = %+v", lt)
	}
	// Round trip through JSON keeps the schedule.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Schedule
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	b2, _ := json.Marshal(&back)
	if string(b) != string(b2) {
		t.Errorf("round trip differs:\n%s\n%s", b, b2)
	}
}

func TestValidModes(t *testing.T) {
	ta := valid(t)
	ta.Mode, ta.TxtimeDelay = ModeTxtimeAssist, Duration(200*time.Microsecond)
	fo := valid(t)
	fo.Mode, fo.Clock = ModeFullOffload, ""
	fo.GateControlList[0].Command = CommandHold
	fo.GateControlList[1].Command = CommandRelease
	abs := valid(t)
	abs.BaseTime = BaseTime{Policy: BaseTimeAbsolute, Time: 1_000_000_000}
	noCycle := valid(t)
	noCycle.CycleTime = 0
	for name, s := range map[string]*Schedule{"txtime-assist": ta, "full-offload": fo, "absolute": abs, "derived cycle": noCycle} {
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Schedule)
		want   string
	}{
		{"too few classes", func(s *Schedule) { s.NumTrafficClasses = 0 },
			"numTrafficClasses: Invalid value: 0: must be between 1 and 16"},
		{"too many classes", func(s *Schedule) { s.NumTrafficClasses = 17 },
			"numTrafficClasses: Invalid value: 17: must be between 1 and 16"},
		{"no priority map", func(s *Schedule) { s.PriorityMap = nil },
			"priorityMap: Required value: map socket priorities 0..15 to traffic classes"},
		{"priority map too long", func(s *Schedule) { s.PriorityMap = make([]int, 17) },
			"priorityMap: Too many: 17: must have at most 16 items"},
		{"priority to unknown class", func(s *Schedule) { s.PriorityMap[5] = 4 },
			"priorityMap[5]: Invalid value: 4: must be a traffic class between 0 and 3"},
		{"negative class in priority map", func(s *Schedule) { s.PriorityMap[0] = -1 },
			"priorityMap[0]: Invalid value: -1: must be a traffic class between 0 and 3"},
		{"queues per class", func(s *Schedule) { s.Queues = s.Queues[:3] },
			"queues: Invalid value: 3: must have one entry per traffic class (numTrafficClasses is 4)"},
		{"empty queue range", func(s *Schedule) { s.Queues[1].Count = 0 },
			`queues[1]: Invalid value: "0@1": count must be at least 1`},
		{"negative offset", func(s *Schedule) { s.Queues[1].Offset = -1 },
			`queues[1]: Invalid value: "1@-1": offset must not be negative`},
		{"overlapping queues", func(s *Schedule) { s.Queues[0].Count = 2 },
			`queues[1]: Invalid value: "1@1": overlaps queues[0] (2@0)`},
		{"no gate list", func(s *Schedule) { s.GateControlList = nil; s.CycleTime = 0 },
			"gateControlList: Required value: at least one entry"},
		{"unknown command", func(s *Schedule) { s.GateControlList[1].Command = "open" },
			`gateControlList[1].command: Unsupported value: "open": supported values: "set", "hold", "release"`},
		{"hold in software mode", func(s *Schedule) { s.GateControlList[0].Command = CommandHold },
			`gateControlList[0].command: Invalid value: "hold": hold and release (frame preemption) need mode full-offload`},
		{"gate mask beyond classes", func(s *Schedule) { s.GateControlList[2].GateMask = 0x1c },
			`gateControlList[2].gateMask: Invalid value: "0x1c": opens gates of traffic classes beyond numTrafficClasses (4): allowed bits are 0xf`},
		{"zero interval", func(s *Schedule) { s.GateControlList[0].Interval = 0; s.CycleTime = 0 },
			`gateControlList[0].interval: Invalid value: "0s": must be positive`},
		{"negative interval", func(s *Schedule) { s.GateControlList[0].Interval = -1; s.CycleTime = 0 },
			`gateControlList[0].interval: Invalid value: "-1ns": must be positive`},
		{"cycle not the sum", func(s *Schedule) { s.CycleTime = Duration(2 * time.Millisecond) },
			`cycleTime: Invalid value: "2ms": must equal the sum of the gate intervals (1ms)`},
		{"negative cycle", func(s *Schedule) { s.CycleTime = -5 },
			`cycleTime: Invalid value: "-5ns": must not be negative`},
		{"extension too long", func(s *Schedule) { s.CycleTimeExtension = Duration(time.Millisecond) },
			`cycleTimeExtension: Invalid value: "1ms": must be shorter than the cycle (1ms)`},
		{"negative extension", func(s *Schedule) { s.CycleTimeExtension = -1 },
			`cycleTimeExtension: Invalid value: "-1ns": must not be negative`},
		{"unknown base time policy", func(s *Schedule) { s.BaseTime.Policy = "later" },
			`baseTime.policy: Unsupported value: "later": supported values: "now", "absolute"`},
		{"time with now", func(s *Schedule) { s.BaseTime.Time = 5 },
			`baseTime.time: Forbidden: only with policy "absolute"`},
		{"negative margin", func(s *Schedule) { s.BaseTime.Margin = -1 },
			`baseTime.margin: Invalid value: "-1ns": must not be negative`},
		{"absolute without time", func(s *Schedule) { s.BaseTime = BaseTime{Policy: BaseTimeAbsolute} },
			`baseTime.time: Required value: policy "absolute" needs a positive start time in nanoseconds`},
		{"absolute with margin", func(s *Schedule) { s.BaseTime.Policy = BaseTimeAbsolute; s.BaseTime.Time = 1 },
			`baseTime.margin: Forbidden: only with policy "now"`},
		{"unknown clock", func(s *Schedule) { s.Clock = "CLOCK_PTP" },
			`clock: Unsupported value: "CLOCK_PTP": supported values: "CLOCK_TAI", "CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_BOOTTIME"`},
		{"no mode", func(s *Schedule) { s.Mode = "" },
			"mode: Required value: software, txtime-assist or full-offload"},
		{"unknown mode", func(s *Schedule) { s.Mode = "hardware" },
			`mode: Unsupported value: "hardware": supported values: "software", "txtime-assist", "full-offload"`},
		{"software without clock", func(s *Schedule) { s.Clock = "" },
			"clock: Required value: software mode runs the gates on a system clock"},
		{"software with txtime delay", func(s *Schedule) { s.TxtimeDelay = 1 },
			"txtimeDelay: Forbidden: only with mode txtime-assist"},
		{"negative txtime delay", func(s *Schedule) { s.Mode = ModeTxtimeAssist; s.TxtimeDelay = -1 },
			`txtimeDelay: Invalid value: "-1ns": must not be negative`},
		{"txtime-assist without clock", func(s *Schedule) { s.Mode = ModeTxtimeAssist; s.Clock = ""; s.TxtimeDelay = 1 },
			"clock: Required value: txtime-assist mode needs CLOCK_TAI"},
		{"txtime-assist on realtime", func(s *Schedule) { s.Mode = ModeTxtimeAssist; s.Clock = ClockRealtime; s.TxtimeDelay = 1 },
			`clock: Invalid value: "CLOCK_REALTIME": txtime-assist mode needs CLOCK_TAI (etf runs on TAI)`},
		{"txtime-assist without delay", func(s *Schedule) { s.Mode = ModeTxtimeAssist },
			"txtimeDelay: Required value: txtime-assist mode needs a positive txtime delay"},
		{"full offload with clock", func(s *Schedule) { s.Mode = ModeFullOffload },
			"clock: Forbidden: full-offload mode runs on the NIC's PTP clock: leave clock empty"},
		{"full offload with txtime delay", func(s *Schedule) { s.Mode = ModeFullOffload; s.Clock = ""; s.TxtimeDelay = 1 },
			"txtimeDelay: Forbidden: only with mode txtime-assist"},
		{"class out of range", func(s *Schedule) { s.Classes[0].Class = 4 },
			"classes[0].class: Invalid value: 4: must be a traffic class between 0 and 3"},
		{"duplicate class", func(s *Schedule) { s.Classes = append(s.Classes, ClassSettings{Class: 1}) },
			`classes[1].class: Duplicate value: "1 (also in classes[0])"`},
		{"launch time delta", func(s *Schedule) { s.Classes[0].LaunchTime.Delta = 0 },
			`classes[0].launchTime.delta: Invalid value: "0s": must be positive`},
		{"max SDU", func(s *Schedule) { s.Classes[0].MaxSDU = 70000 },
			"classes[0].maxSDU: Invalid value: 70000: must be between 0 (no limit) and 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := valid(t)
			tc.mutate(s)
			err := s.Validate()
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got %q\nwant %q", err.Error(), tc.want)
			}
		})
	}
}

func TestValidateAtPrefixesPaths(t *testing.T) {
	s := valid(t)
	s.GateControlList[0].Interval = 0
	s.CycleTime = 0
	errs := s.ValidateAt(field.NewPath("nics").Index(2).Child("schedule"))
	want := `nics[2].schedule.gateControlList[0].interval: Invalid value: "0s": must be positive`
	if errs.ToAggregate() == nil || errs.ToAggregate().Error() != want {
		t.Errorf("got %v, want %q", errs.ToAggregate(), want)
	}
}

func TestValidateForDevice(t *testing.T) {
	s := valid(t)
	if errs := s.ValidateForDevice(nil, 4); len(errs) != 0 {
		t.Errorf("4 queues: %v", errs)
	}
	errs := s.ValidateForDevice(field.NewPath("schedule"), 3)
	want := `schedule.queues[3]: Invalid value: "1@3": beyond the NIC's 3 tx queues`
	if errs.ToAggregate() == nil || errs.ToAggregate().Error() != want {
		t.Errorf("got %v, want %q", errs.ToAggregate(), want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"queues": ["1-0"]}`, `queue range "1-0": want "count@offset"`},
		{`{"queues": ["x@0"]}`, `queue range "x@0": count: strconv.Atoi: parsing "x": invalid syntax`},
		{`{"cycleTime": "1 fortnight"}`, `invalid duration "1 fortnight": time: unknown unit " fortnight" in duration "1 fortnight"`},
	} {
		var s Schedule
		err := json.Unmarshal([]byte(tc.in), &s)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestDerived(t *testing.T) {
	s := &Schedule{
		NumTrafficClasses: 3,
		PriorityMap:       []int{0, 0, 2, 1},
		GateControlList: []GateEntry{
			{GateMask: 0b001, Interval: Duration(100 * time.Microsecond)},
			{GateMask: 0b011, Interval: Duration(100 * time.Microsecond)},
			{GateMask: 0b100, Interval: Duration(300 * time.Microsecond)},
			{GateMask: 0b001, Interval: Duration(500 * time.Microsecond)},
		},
	}
	if got := s.Cycle(); got != time.Millisecond {
		t.Errorf("cycle = %v", got)
	}
	w0 := s.Windows(0)
	if len(w0) != 2 || w0[0] != (Window{0, 200 * time.Microsecond}) || w0[1] != (Window{500 * time.Microsecond, 500 * time.Microsecond}) {
		t.Errorf("windows(0) = %v", w0)
	}
	if w1 := s.Windows(1); len(w1) != 1 || w1[0] != (Window{100 * time.Microsecond, 100 * time.Microsecond}) {
		t.Errorf("windows(1) = %v", w1)
	}
	if got := s.OpenShare(2); got != 0.3 {
		t.Errorf("share(2) = %v", got)
	}
	if got := s.Bandwidth(2, 1_000_000_000); got != 300_000_000 {
		t.Errorf("bandwidth(2) = %d", got)
	}
	// 400 Gbit/s times a 1 s window would overflow 64 bits in a naive product.
	big := &Schedule{GateControlList: []GateEntry{{GateMask: 1, Interval: Duration(3 * time.Second)}, {GateMask: 0, Interval: Duration(time.Second)}}}
	if got := big.Bandwidth(0, 400_000_000_000); got != 300_000_000_000 {
		t.Errorf("bandwidth 400G = %d", got)
	}
	if got := s.Bandwidth(1, 0); got != 0 {
		t.Errorf("no link speed: %d", got)
	}
	if got := s.Priorities(0); len(got) != 14 || got[0] != 0 || got[2] != 4 {
		t.Errorf("priorities(0) = %v", got)
	}
	if got := s.Priorities(2); len(got) != 1 || got[0] != 2 {
		t.Errorf("priorities(2) = %v", got)
	}
	if s.ClassOf(3) != 1 || s.ClassOf(19) != 1 || s.ClassOf(9) != 0 {
		t.Errorf("ClassOf wrong")
	}
}

func TestBaseTimeAt(t *testing.T) {
	s := &Schedule{GateControlList: []GateEntry{{GateMask: 1, Interval: Duration(time.Millisecond)}}}
	// now + default margin (1s) = 10.0005s -> next 1ms boundary 10.001s.
	if got := s.BaseTimeAt(9_000_500_000); got != 10_001_000_000 {
		t.Errorf("now policy: %d", got)
	}
	// Exactly on a boundary stays.
	s.BaseTime.Margin = Duration(time.Millisecond)
	if got := s.BaseTimeAt(5_000_000); got != 6_000_000 {
		t.Errorf("on boundary: %d", got)
	}
	s.BaseTime = BaseTime{Policy: BaseTimeAbsolute, Time: 42}
	if got := s.BaseTimeAt(1 << 40); got != 42 {
		t.Errorf("absolute: %d", got)
	}
	now, err := NowTAI()
	if err != nil || now <= 0 {
		t.Fatalf("NowTAI: %d %v", now, err)
	}
}

func TestKernelValues(t *testing.T) {
	if id, _ := ClockTAI.ID(); id != 11 {
		t.Errorf("TAI id %d", id)
	}
	if f, _ := ModeFullOffload.TaprioFlags(); f != 2 {
		t.Errorf("full offload flags %d", f)
	}
	if f, _ := ModeTxtimeAssist.TaprioFlags(); f != 1 {
		t.Errorf("txtime flags %d", f)
	}
	if c, _ := CommandRelease.Kernel(); c != 2 {
		t.Errorf("release %d", c)
	}
	if c, _ := (GateEntry{}).EffectiveCommand().Kernel(); c != 0 {
		t.Errorf("default command %d", c)
	}
}
