package qdisc

import (
	"fmt"

	"github.com/vishvananda/netlink/nl"
)

// Kernel limits from include/uapi/linux/pkt_sched.h.
const (
	// MaxTrafficClasses is TC_QOPT_MAX_QUEUE: the most traffic classes a priority map can have.
	MaxTrafficClasses = 16
	// NumPriorities is TC_QOPT_BITMASK+1: skb->priority values 0..15 are mapped, higher ones use 15.
	NumPriorities = 16
)

// Clock names the clock a qdisc's times are on. The empty Clock means "no clock
// attribute", which taprio requires in full offload mode.
type Clock string

const (
	ClockNone      Clock = ""
	ClockTAI       Clock = "tai"
	ClockRealtime  Clock = "realtime"
	ClockMonotonic Clock = "monotonic"
	ClockBoottime  Clock = "boottime"
)

var clockIDs = map[Clock]int32{
	ClockRealtime:  0,  // CLOCK_REALTIME
	ClockMonotonic: 1,  // CLOCK_MONOTONIC
	ClockBoottime:  7,  // CLOCK_BOOTTIME
	ClockTAI:       11, // CLOCK_TAI
}

func (c Clock) id() (int32, bool) {
	id, ok := clockIDs[c]
	return id, ok
}

func clockFromID(id int32) Clock {
	for c, cid := range clockIDs {
		if cid == id {
			return c
		}
	}
	return Clock(fmt.Sprintf("clockid(%d)", id))
}

// QueueRange is a run of transmit queues: Count queues starting at Offset.
type QueueRange struct {
	Count  uint16
	Offset uint16
}

func (r QueueRange) String() string { return fmt.Sprintf("%d@%d", r.Count, r.Offset) }

// PrioMap maps skb->priority to traffic classes and traffic classes to transmit
// queues (struct tc_mqprio_qopt without the hw field), shared by taprio and mqprio.
type PrioMap struct {
	// NumTC is the number of traffic classes, 1..16.
	NumTC uint8
	// PrioTC[p] is the traffic class of priority p.
	PrioTC [NumPriorities]uint8
	// Queues[tc] are the transmit queues of traffic class tc; len(Queues) == NumTC.
	Queues []QueueRange
}

// GateCommand is an IEEE 802.1Q gate operation (TC_TAPRIO_CMD_*).
type GateCommand uint8

const (
	// GateSet opens the gates in the mask and closes the others (tc "S").
	GateSet GateCommand = 0
	// GateSetAndHold is SetAndHoldMAC (tc "H"): like GateSet, and holds preemptible traffic.
	GateSetAndHold GateCommand = 1
	// GateSetAndRelease is SetAndReleaseMAC (tc "R"): like GateSet, and releases preemptible traffic.
	GateSetAndRelease GateCommand = 2
)

func (c GateCommand) String() string {
	switch c {
	case GateSet:
		return "set"
	case GateSetAndHold:
		return "set-and-hold"
	case GateSetAndRelease:
		return "set-and-release"
	}
	return fmt.Sprintf("gate-command(%d)", uint8(c))
}

// GateEntry is one entry of a gate control list.
type GateEntry struct {
	Command GateCommand
	// GateMask has bit tc set when traffic class tc may send during the entry.
	GateMask uint32
	// Interval is how long the entry lasts, in nanoseconds.
	Interval uint32
}

// Taprio is the taprio qdisc (IEEE 802.1Qbv time-aware shaper).
type Taprio struct {
	PrioMap PrioMap
	// Entries is the gate control list, run once per cycle from the base time on.
	Entries []GateEntry
	// BaseTime is when the schedule starts, in ns on Clock. A time in the past makes
	// the kernel start at the next cycle boundary after now; see NextCycleStart.
	BaseTime int64
	// CycleTime in ns; 0 lets the kernel use the sum of the intervals.
	CycleTime int64
	// CycleTimeExtension in ns: how much the last entry of a cycle may be stretched
	// instead of running a short cycle when a new schedule starts.
	CycleTimeExtension int64
	// Clock is the clock of BaseTime. Required unless FullOffload; must be empty with it.
	Clock Clock
	// TxTimeAssist sets launch times on packets for an etf child (flag TXTIME_ASSIST).
	TxTimeAssist bool
	// FullOffload hands the schedule to the NIC (flag FULL_OFFLOAD).
	FullOffload bool
	// TxTimeDelay in ns is the assumed time from enqueue to the wire (txtime-assist only).
	TxTimeDelay uint32
	// MaxSDU[tc] is the largest frame traffic class tc may send, 0 = no limit.
	// nil sends nothing, which the kernel also reads as no limits. In a
	// decoded taprio it is what the kernel reports, which depends on the
	// kernel: see MaxSDUReport.
	MaxSDU []uint32

	// maxSDU says what MaxSDU of a decoded taprio holds; the zero value (a
	// model built by a caller, a 6.1 dump) is the limits asked for.
	maxSDU MaxSDUReport
	// running: decoded from a dump whose schedule is the operating one, with
	// no new (admin) schedule pending.
	running bool
}

// MaxSDUReport says what the MaxSDU of a taprio read from the kernel holds.
type MaxSDUReport uint8

const (
	// MaxSDUAsSet: the limits asked for. 6.1 dumps the qdisc's limits
	// whatever the state of its schedules.
	MaxSDUAsSet MaxSDUReport = iota
	// MaxSDUEffective: the limits the running (oper) schedule enforces,
	// which newer kernels (6.12: their tc entries carry the frame-preemption
	// attribute) dump: per class the smaller of the limit asked for and the
	// longest frame the class's longest gate window lets through at the link
	// speed.
	MaxSDUEffective
	// MaxSDUUnknown: the dump does not tell. Newer kernels dump limits only
	// for the running schedule: before the base time there is none, and while
	// a new (admin) schedule is pending the dumped limits are the old one's.
	MaxSDUUnknown
)

func (r MaxSDUReport) String() string {
	switch r {
	case MaxSDUAsSet:
		return "as set"
	case MaxSDUEffective:
		return "effective"
	case MaxSDUUnknown:
		return "unknown"
	}
	return fmt.Sprintf("MaxSDUReport(%d)", uint8(r))
}

// MaxSDUReport says what MaxSDU holds; for a model built by a caller,
// MaxSDUAsSet.
func (t *Taprio) MaxSDUReport() MaxSDUReport { return t.maxSDU }

// Running reports whether a taprio read from the kernel runs its schedule:
// the kernel has made it the operating schedule and no other is pending.
// Before the base time, while a new schedule waits for its start, and for a
// model built by a caller, it is false.
func (t *Taprio) Running() bool { return t.running }

// NeedsGateTimer reports whether the kernel advances this taprio's gates with
// a software timer: not in full offload (the NIC does), nor with
// txtime-assist (launch times are computed from the base time and cycle as
// packets arrive). Only such a taprio stops when the device is deactivated.
func (t *Taprio) NeedsGateTimer() bool { return !t.FullOffload && !t.TxTimeAssist }

// ETF is the etf qdisc (earliest txtime first): it holds each packet until its
// launch time (skb->tstamp) minus Delta.
type ETF struct {
	// Delta in ns: how long before its launch time a packet is dequeued.
	Delta int32
	// Clock of the launch times; the kernel accepts only ClockTAI.
	Clock Clock
	// DeadlineMode sends as soon as possible, treating the launch time as a deadline.
	DeadlineMode bool
	// Offload uses the NIC's launch-time feature.
	Offload bool
	// SkipSockCheck accepts packets without a socket (forwarded pod traffic has none)
	// and does not check their clock against the socket's.
	SkipSockCheck bool
}

// MQPrioMode is TCA_MQPRIO_MODE; the empty mode sends no attribute.
type MQPrioMode string

const (
	MQPrioModeUnset   MQPrioMode = ""
	MQPrioModeDCB     MQPrioMode = "dcb"
	MQPrioModeChannel MQPrioMode = "channel"
)

// MQPrioShaper is TCA_MQPRIO_SHAPER; the empty shaper sends no attribute.
type MQPrioShaper string

const (
	MQPrioShaperUnset    MQPrioShaper = ""
	MQPrioShaperDCB      MQPrioShaper = "dcb"
	MQPrioShaperBWRlimit MQPrioShaper = "bw_rlimit"
)

// MQPrio is the mqprio qdisc: the priority map on a multi-queue NIC without a schedule.
type MQPrio struct {
	PrioMap PrioMap
	// HW asks the NIC to offload the mapping (1) or not (0).
	HW     uint8
	Mode   MQPrioMode
	Shaper MQPrioShaper
	// MinRate and MaxRate per traffic class, bytes per second (shaper bw_rlimit only).
	MinRate []uint64
	MaxRate []uint64
}

// Qdisc is one of *Taprio, *ETF and *MQPrio.
type Qdisc interface {
	// Kind is the kernel's name of the qdisc (TCA_KIND).
	Kind() string
	// Validate checks the qdisc against the device it goes on. Errors name the field.
	Validate(dev Device) error
	options() (*nl.RtAttr, error)
}

func (*Taprio) Kind() string { return "taprio" }
func (*ETF) Kind() string    { return "etf" }
func (*MQPrio) Kind() string { return "mqprio" }

// Device is what validation needs to know about the NIC.
type Device struct {
	Name string
	// TxQueues is the number of transmit queues in use (real_num_tx_queues).
	TxQueues int
}

// Handle is a qdisc or class handle, major:minor.
type Handle uint32

// HandleRoot is TC_H_ROOT, the parent of a root qdisc.
const HandleRoot Handle = 0xFFFFFFFF

// MakeHandle builds major:minor.
func MakeHandle(major, minor uint16) Handle { return Handle(uint32(major)<<16 | uint32(minor)) }

func (h Handle) Major() uint16 { return uint16(h >> 16) }
func (h Handle) Minor() uint16 { return uint16(h) }

func (h Handle) String() string {
	switch h {
	case HandleRoot:
		return "root"
	case 0:
		return "none"
	}
	return fmt.Sprintf("%x:%x", h.Major(), h.Minor())
}
