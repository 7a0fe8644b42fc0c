package schedule

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// FuzzValidate decodes arbitrary YAML into a Schedule and validates it. The schedule is what the
// driver turns into netlink messages for the NIC and into device attributes (gate windows,
// bandwidth) for the scheduler, so an accepted schedule must be one every derived value makes
// sense for. Properties:
//   - decoding and Validate never panic;
//   - for an accepted schedule: the cycle is positive, every gate window lies within the cycle,
//     open shares are within [0, 1], bandwidth never exceeds the link, every priority maps to an
//     existing class, the base time for "now" is a cycle boundary at or after now+margin, the
//     schedule survives a JSON round trip, and ValidateForDevice with its own queue count agrees.
//
// The committed corpus (testdata/fuzz/FuzzValidate) runs with every `go test`.
func FuzzValidate(f *testing.F) {
	f.Add([]byte(validYAML))
	f.Add([]byte("numTrafficClasses: 2\npriorityMap: [0, 1]\nqueues: [\"1@0\", \"1@1\"]\ngateControlList: [{gateMask: 0x3, interval: 1ms}]\nmode: full-offload\n"))
	f.Add([]byte("numTrafficClasses: 3\nqueues: [\"1@0\", \"1@1\", \"1@2\"]\ngateControlList: [{command: set, gateMask: 0x2, interval: 300us}, {command: hold, gateMask: 0x4, interval: 300us}, {command: release, gateMask: 0x1, interval: 400us}]\ncycleTime: 1ms\nclock: CLOCK_TAI\nmode: txtime-assist\ntxtimeDelay: 200us\n"))
	f.Add([]byte("numTrafficClasses: 16\ngateControlList: [{gateMask: 0xffffffff, interval: -1ns}]\ncycleTime: 9223372036854775807\n"))
	f.Add([]byte("numTrafficClasses: 2\nqueues: [\"1@0\", \"1@1\"]\ngateControlList: [{gateMask: 0x1, interval: 5124095h}, {gateMask: 0x2, interval: 5124095h}]\nclock: CLOCK_TAI\nmode: software\n"))
	f.Add([]byte("baseTime: {policy: absolute, time: -5}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Schedule
		if err := yaml.UnmarshalStrict(data, &s); err != nil {
			return
		}
		errs := s.ValidateAt(field.NewPath("schedule"))
		if len(errs) > 0 {
			if s.Validate() == nil {
				t.Fatalf("ValidateAt found %v, Validate found nothing", errs)
			}
			return
		}
		cycle := s.Cycle()
		if cycle <= 0 {
			t.Fatalf("accepted schedule has cycle %v", cycle)
		}
		const link = 10_000_000_000
		for tc := 0; tc < s.NumTrafficClasses; tc++ {
			for _, w := range s.Windows(tc) {
				if w.Offset < 0 || w.Length <= 0 || w.Offset+w.Length > cycle {
					t.Fatalf("class %d window %+v outside the cycle %v", tc, w, cycle)
				}
			}
			if sh := s.OpenShare(tc); sh < 0 || sh > 1 || math.IsNaN(sh) {
				t.Fatalf("class %d open share %v", tc, sh)
			}
			if bw := s.Bandwidth(tc, link); bw > link {
				t.Fatalf("class %d bandwidth %d above the link's %d", tc, bw, link)
			}
		}
		for p := uint32(0); p < NumPriorities; p++ {
			if c := s.ClassOf(p); c < 0 || c >= s.NumTrafficClasses {
				t.Fatalf("priority %d maps to class %d of %d", p, c, s.NumTrafficClasses)
			}
		}
		if s.BaseTime.EffectivePolicy() != BaseTimeAbsolute {
			now := time.Date(2026, 11, 23, 12, 0, 0, 1, time.UTC).UnixNano()
			bt := s.BaseTimeAt(now)
			if min := now + int64(s.BaseTime.EffectiveMargin()); bt < min || bt%int64(cycle) != 0 || bt-min >= int64(cycle) {
				t.Fatalf("base time %d for now %d, margin %v, cycle %v", bt, now, s.BaseTime.EffectiveMargin(), cycle)
			}
		}
		b, err := json.Marshal(&s)
		if err != nil {
			t.Fatalf("marshal accepted schedule: %v", err)
		}
		var s2 Schedule
		if err := json.Unmarshal(b, &s2); err != nil {
			t.Fatalf("accepted schedule does not decode after a JSON round trip: %v\n%s", err, b)
		}
		if err := s2.Validate(); err != nil {
			t.Fatalf("accepted schedule invalid after a JSON round trip: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(s.PriorityMapFull(), s2.PriorityMapFull()) || s.Cycle() != s2.Cycle() || !reflect.DeepEqual(s.Queues, s2.Queues) {
			t.Fatalf("JSON round trip changed the schedule:\n%+v\n%+v", s, s2)
		}
		queues := 0
		for _, q := range s.Queues {
			queues = max(queues, q.Count+q.Offset)
		}
		if errs := s.ValidateForDevice(field.NewPath("schedule"), queues); len(errs) > 0 {
			t.Fatalf("accepted schedule needs %d queues but does not fit a device with %d: %v", queues, queues, errs)
		}
	})
}
