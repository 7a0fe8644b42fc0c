// Package schedule is the user-facing model of one TSN NIC's transmission schedule: how socket
// priorities map to traffic classes, which tx queues serve each class, the 802.1Qbv gate control
// list, the cycle and its base time, the clock and the offload mode, and the optional per-class
// launch-time (etf) and max-SDU settings.
//
// The model is what a user writes in the node configuration (YAML, JSON tags in camelCase). It
// knows nothing about netlink: the qdisc package turns a validated Schedule into taprio/etf/mqprio
// messages, and the driver derives device attributes (gate windows, bandwidth) from it.
package schedule

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxTrafficClasses is the kernel's limit on traffic classes (TC_QOPT_MAX_QUEUE).
const MaxTrafficClasses = 16

// NumPriorities is the number of socket priorities a priority map covers (TC_BITMASK + 1).
const NumPriorities = 16

// Schedule is the TSN schedule of one NIC.
type Schedule struct {
	// NumTrafficClasses is the number of traffic classes, 1..16.
	NumTrafficClasses int `json:"numTrafficClasses"`
	// PriorityMap maps socket priority i (the index, 0..15) to a traffic class. Up to 16 entries;
	// priorities without an entry map to class 0, as with iproute2's "map".
	PriorityMap []int `json:"priorityMap"`
	// Queues gives, per traffic class (the index), the tx queues serving it as "count@offset".
	// Exactly numTrafficClasses entries; ranges may not overlap.
	Queues []QueueRange `json:"queues"`
	// GateControlList is the 802.1Qbv gate control list, executed in order once per cycle.
	GateControlList []GateEntry `json:"gateControlList"`
	// CycleTime is the length of one cycle. Optional: when set it must equal the sum of the
	// intervals; when omitted the sum is used.
	CycleTime Duration `json:"cycleTime,omitempty"`
	// CycleTimeExtension lets the last entry of a cycle run this much longer when a new schedule
	// takes over. Optional, must be shorter than the cycle.
	CycleTimeExtension Duration `json:"cycleTimeExtension,omitempty"`
	// BaseTime says when the first cycle starts.
	BaseTime BaseTime `json:"baseTime"`
	// Clock is the clock the schedule runs on: CLOCK_TAI, CLOCK_REALTIME, CLOCK_MONOTONIC or
	// CLOCK_BOOTTIME. Required in software and txtime-assist modes (txtime-assist needs
	// CLOCK_TAI); must be empty in full-offload mode, where the NIC's PTP clock drives the gates.
	Clock Clock `json:"clock,omitempty"`
	// Mode is how the gates are run: software (the kernel's taprio), txtime-assist (taprio sets
	// launch times for an offloaded etf) or full-offload (the NIC runs the gate control list).
	Mode Mode `json:"mode"`
	// TxtimeDelay is how long before its launch time a packet must reach the NIC; required in
	// txtime-assist mode and forbidden otherwise.
	TxtimeDelay Duration `json:"txtimeDelay,omitempty"`
	// Classes holds optional per-class settings (launch time, max SDU). At most one entry per class.
	Classes []ClassSettings `json:"classes,omitempty"`
}

// QueueRange is a contiguous range of tx queues: Count queues starting at Offset. In JSON/YAML it
// is the string "count@offset", as in iproute2 ("2@0").
type QueueRange struct {
	Count  int
	Offset int
}

// String renders the range as "count@offset".
func (q QueueRange) String() string { return fmt.Sprintf("%d@%d", q.Count, q.Offset) }

// MarshalJSON renders the range as "count@offset".
func (q QueueRange) MarshalJSON() ([]byte, error) { return json.Marshal(q.String()) }

// UnmarshalJSON parses "count@offset".
func (q *QueueRange) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("queue range must be a string \"count@offset\": %w", err)
	}
	r, err := ParseQueueRange(s)
	if err != nil {
		return err
	}
	*q = r
	return nil
}

// ParseQueueRange parses "count@offset".
func ParseQueueRange(s string) (QueueRange, error) {
	cs, os, ok := strings.Cut(strings.TrimSpace(s), "@")
	if !ok {
		return QueueRange{}, fmt.Errorf("queue range %q: want \"count@offset\"", s)
	}
	c, err := strconv.Atoi(cs)
	if err != nil {
		return QueueRange{}, fmt.Errorf("queue range %q: count: %w", s, err)
	}
	o, err := strconv.Atoi(os)
	if err != nil {
		return QueueRange{}, fmt.Errorf("queue range %q: offset: %w", s, err)
	}
	return QueueRange{Count: c, Offset: o}, nil
}

// GateCommand is the operation of a gate control list entry (IEEE 802.1Q-2018 8.6.8.4 and
// 802.1Qbu for hold/release).
type GateCommand string

const (
	// CommandSet sets the gate states (SetGateStates).
	CommandSet GateCommand = "set"
	// CommandHold sets the gate states and holds preemptable traffic (Set-And-Hold-MAC).
	CommandHold GateCommand = "hold"
	// CommandRelease sets the gate states and releases preemptable traffic (Set-And-Release-MAC).
	CommandRelease GateCommand = "release"
)

// Kernel returns the TC_TAPRIO_CMD_* value of the command.
func (c GateCommand) Kernel() (uint8, bool) {
	switch c {
	case CommandSet:
		return 0x00, true
	case CommandHold:
		return 0x01, true
	case CommandRelease:
		return 0x02, true
	}
	return 0, false
}

// GateEntry is one entry of the gate control list: for Interval, the gates of the classes whose
// bit is set in GateMask are open.
type GateEntry struct {
	// Command is set, hold or release. Empty means set.
	Command GateCommand `json:"command,omitempty"`
	// GateMask has bit i set when the gate of traffic class i is open. 0 closes every gate
	// (a guard band).
	GateMask uint32 `json:"gateMask"`
	// Interval is how long the entry lasts; positive.
	Interval Duration `json:"interval"`
}

// EffectiveCommand is the command with the default applied.
func (e GateEntry) EffectiveCommand() GateCommand {
	if e.Command == "" {
		return CommandSet
	}
	return e.Command
}

// BaseTimePolicy says how the base time is chosen.
type BaseTimePolicy string

const (
	// BaseTimeNow starts the schedule at the first cycle boundary (a multiple of the cycle time
	// since the TAI epoch) that lies at least Margin after the moment the schedule is applied.
	// Nodes that use it with the same cycle run their cycles in phase.
	BaseTimeNow BaseTimePolicy = "now"
	// BaseTimeAbsolute starts the schedule at Time.
	BaseTimeAbsolute BaseTimePolicy = "absolute"
)

// DefaultBaseTimeMargin is the margin used with policy "now" when none is given: long enough for
// the qdisc to be installed before its first cycle starts.
const DefaultBaseTimeMargin = Duration(time.Second)

// BaseTime is the base-time policy of a schedule.
type BaseTime struct {
	// Policy is "now" (default) or "absolute".
	Policy BaseTimePolicy `json:"policy,omitempty"`
	// Margin is, for policy "now", how far in the future the first cycle starts at least.
	// Default 1s.
	Margin Duration `json:"margin,omitempty"`
	// Time is, for policy "absolute", the start of the first cycle in nanoseconds on the
	// schedule's clock (for full offload: on the NIC's PTP clock, which runs TAI).
	Time int64 `json:"time,omitempty"`
}

// EffectivePolicy is the policy with the default applied.
func (b BaseTime) EffectivePolicy() BaseTimePolicy {
	if b.Policy == "" {
		return BaseTimeNow
	}
	return b.Policy
}

// EffectiveMargin is the margin with the default applied.
func (b BaseTime) EffectiveMargin() Duration {
	if b.Margin == 0 {
		return DefaultBaseTimeMargin
	}
	return b.Margin
}

// Clock names a POSIX clock.
type Clock string

// The clocks taprio accepts.
const (
	ClockTAI       Clock = "CLOCK_TAI"
	ClockRealtime  Clock = "CLOCK_REALTIME"
	ClockMonotonic Clock = "CLOCK_MONOTONIC"
	ClockBoottime  Clock = "CLOCK_BOOTTIME"
)

// ID returns the clockid_t of the clock.
func (c Clock) ID() (int32, bool) {
	switch c {
	case ClockRealtime:
		return 0, true
	case ClockMonotonic:
		return 1, true
	case ClockBoottime:
		return 7, true
	case ClockTAI:
		return 11, true
	}
	return 0, false
}

// Mode is the gate-operation mode of a schedule.
type Mode string

const (
	// ModeSoftware runs the gates in the kernel's taprio qdisc.
	ModeSoftware Mode = "software"
	// ModeTxtimeAssist lets taprio compute launch times that an offloaded etf enforces
	// (taprio flag 0x1).
	ModeTxtimeAssist Mode = "txtime-assist"
	// ModeFullOffload hands the gate control list to the NIC (taprio flag 0x2).
	ModeFullOffload Mode = "full-offload"
)

// TaprioFlags returns the taprio flags (TCA_TAPRIO_ATTR_FLAGS) of the mode.
func (m Mode) TaprioFlags() (uint32, bool) {
	switch m {
	case ModeSoftware:
		return 0, true
	case ModeTxtimeAssist:
		return 0x1, true
	case ModeFullOffload:
		return 0x2, true
	}
	return 0, false
}

// ClassSettings holds optional settings of one traffic class.
type ClassSettings struct {
	// Class is the traffic class these settings belong to.
	Class int `json:"class"`
	// LaunchTime, when set, puts an etf qdisc on the class's queues so packets leave at the launch
	// time (SO_TXTIME) they carry.
	LaunchTime *LaunchTime `json:"launchTime,omitempty"`
	// MaxSDU limits the frame size (bytes, without FCS) the class may send; 0 means no limit.
	MaxSDU int `json:"maxSDU,omitempty"`
}

// LaunchTime configures etf for a traffic class. etf always runs on CLOCK_TAI.
type LaunchTime struct {
	// Delta is how long before its launch time a packet is handed to the NIC; positive.
	Delta Duration `json:"delta"`
	// DeadlineMode treats the launch time as a deadline: packets go out as soon as possible
	// before it.
	DeadlineMode bool `json:"deadlineMode,omitempty"`
	// Offload lets the NIC enforce launch times (LaunchTime/TBS offload).
	Offload bool `json:"offload,omitempty"`
	// SkipSockCheck lets etf accept packets without a socket. Default true: pod packets are
	// forwarded and reach the NIC without one (skb->sk is NULL).
	SkipSockCheck *bool `json:"skipSockCheck,omitempty"`
}

// EffectiveSkipSockCheck is SkipSockCheck with the default (true) applied.
func (l LaunchTime) EffectiveSkipSockCheck() bool {
	return l.SkipSockCheck == nil || *l.SkipSockCheck
}

// Duration is a time.Duration that reads either a Go duration string ("250us", "1ms") or an
// integer number of nanoseconds, and writes a duration string.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string or integer nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"250us\" or integer nanoseconds: %w", err)
	}
	*d = Duration(n)
	return nil
}
