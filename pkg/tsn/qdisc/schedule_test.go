package qdisc

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

const userSchedule = `{
  "numTrafficClasses": 3,
  "priorityMap": [2, 1, 0, 2],
  "queues": ["1@0", "1@1", "2@2"],
  "gateControlList": [
    {"gateMask": 1, "interval": "300us"},
    {"gateMask": 2, "interval": "300us"},
    {"gateMask": 4, "interval": "400us"}
  ],
  "cycleTimeExtension": "10us",
  "baseTime": {"policy": "now", "margin": "100ms"},
  "clock": "CLOCK_TAI",
  "mode": "txtime-assist",
  "txtimeDelay": "200us",
  "classes": [
    {"class": 0, "launchTime": {"delta": "150us", "deadlineMode": true}, "maxSDU": 1500},
    {"class": 2, "launchTime": {"delta": "300us", "skipSockCheck": false}}
  ]
}`

func parseSchedule(t *testing.T, js string) *schedule.Schedule {
	t.Helper()
	var s schedule.Schedule
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestFromSchedule(t *testing.T) {
	s := parseSchedule(t, userSchedule)
	cfg, err := FromSchedule(s, dev4, 1_700_000_000_123_456_789)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Root: &Taprio{
			PrioMap:            prioMap(3, []uint8{2, 1, 0, 2}, QueueRange{1, 0}, QueueRange{1, 1}, QueueRange{2, 2}),
			Entries:            []GateEntry{{GateSet, 1, 300000}, {GateSet, 2, 300000}, {GateSet, 4, 400000}},
			BaseTime:           1_700_000_000_224_000_000, // next 1 ms boundary after now + 100 ms
			CycleTimeExtension: 10000,
			Clock:              ClockTAI,
			TxTimeAssist:       true,
			TxTimeDelay:        200000,
			MaxSDU:             []uint32{1500},
		},
		Children: []Child{
			{0, &ETF{Delta: 150000, Clock: ClockTAI, DeadlineMode: true, SkipSockCheck: true}},
			{2, &ETF{Delta: 300000, Clock: ClockTAI}},
			{3, &ETF{Delta: 300000, Clock: ClockTAI}},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got  %+v %+v\nwant %+v %+v", cfg.Root, cfg.Children, want.Root, want.Children)
	}
}

func TestFromScheduleFullOffload(t *testing.T) {
	s := parseSchedule(t, `{"numTrafficClasses": 2, "priorityMap": [1, 0], "queues": ["1@0", "1@1"],
	  "gateControlList": [{"command": "hold", "gateMask": 1, "interval": "1ms"}, {"command": "release", "gateMask": 3, "interval": "1ms"}],
	  "baseTime": {"policy": "absolute", "time": 1000}, "mode": "full-offload"}`)
	cfg, err := FromSchedule(s, dev4, 5)
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.Root.(*Taprio)
	if !q.FullOffload || q.Clock != ClockNone || q.BaseTime != 1000 || q.Entries[0].Command != GateSetAndHold || q.Entries[1].Command != GateSetAndRelease {
		t.Fatalf("got %+v", q)
	}
}

func TestFromScheduleErrors(t *testing.T) {
	cases := []struct {
		name, edit, want string
		dev              Device
	}{
		{"schedule's own validation", `"gateMask": 1,` + `"x": 0,`, "gateControlList[0].gateMask", Device{}},
		{"too few device queues", "", "queues[2]", Device{Name: "tsn0", TxQueues: 3}},
		{"queues out of order", "queues-swap", "taprio.queues[0]", dev4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			js := userSchedule
			switch tc.edit {
			case "":
			case "queues-swap":
				js = strings.Replace(js, `["1@0", "1@1", "2@2"]`, `["1@1", "1@0", "2@2"]`, 1)
			default:
				js = strings.Replace(js, `{"gateMask": 1, "interval": "300us"}`, `{"gateMask": 9, "interval": "300us"}`, 1)
			}
			_, err := FromSchedule(parseSchedule(t, js), tc.dev, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}
