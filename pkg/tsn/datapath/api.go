// Package datapath loads, attaches, pins and adopts the eBPF TSN metadata
// proxy: a saver per pod (egress of the pod's interface, in the pod's network
// namespace) and a restorer per TSN NIC (first at the NIC's egress). See
// docs/datapath.md for the design and the measurements behind it.
package datapath

import (
	"context"
	"fmt"
	"slices"
)

// Interface is what the DRA/NRI driver uses; *Manager implements it and tests
// of the driver can fake it.
type Interface interface {
	// EnsureRestorer attaches the restorer first at egress of ifname (in the
	// manager's network namespace). Idempotent; an attached restorer is kept.
	EnsureRestorer(ctx context.Context, ifname string) error
	// RemoveRestorer detaches the restorer from ifname. Idempotent.
	RemoveRestorer(ctx context.Context, ifname string) error
	// AttachSaver attaches the saver at egress of ifname in the network
	// namespace at netnsPath, for pod podUID, with policy p. Calling it again
	// for the same pod updates the policy (and moves the saver if netnsPath or
	// ifname changed).
	AttachSaver(ctx context.Context, podUID, netnsPath, ifname string, p Policy) error
	// DetachSaver detaches the pod's saver and frees its slot. A network
	// namespace that is already gone is not an error. Idempotent.
	DetachSaver(ctx context.Context, podUID string) error
	// Savers lists the attached savers, including those adopted from pins.
	Savers() ([]SaverInfo, error)
	// Counters returns the pod's counters per application priority.
	Counters(podUID string) (Counters, error)
	// Close releases the manager's handles. Attached programs, their pins and
	// the expiry timer stay: a new manager adopts them.
	Close() error
}

var _ Interface = (*Manager)(nil)

// MaxPriority bounds the application priorities a policy can name: TSN
// priorities are 0..15 (taprio/mqprio map 16 priorities to traffic classes).
const MaxPriority = 15

// OtherPriorities is the counter bucket for application priorities above MaxPriority.
const OtherPriorities = MaxPriority + 1

// Action is what the saver does with a packet whose priority the pod was not granted.
type Action int

const (
	// ActionDemote sends the packet on with Policy.DefaultPriority.
	ActionDemote Action = iota
	// ActionDrop drops the packet at the pod's interface.
	ActionDrop
)

func (a Action) String() string {
	switch a {
	case ActionDemote:
		return "demote"
	case ActionDrop:
		return "drop"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Clock is the clock a launch time (SO_TXTIME) is expressed in.
type Clock uint8

// Values match BPF_SKB_CLOCK_*.
const (
	ClockRealtime  Clock = 0
	ClockMonotonic Clock = 1
	ClockTAI       Clock = 2
)

func (c Clock) String() string {
	switch c {
	case ClockRealtime:
		return "realtime"
	case ClockMonotonic:
		return "monotonic"
	case ClockTAI:
		return "tai"
	}
	return fmt.Sprintf("Clock(%d)", uint8(c))
}

// Policy holds a pod to the traffic classes it claimed.
type Policy struct {
	// Allowed lists the application priorities (0..15) the pod may use.
	// Priority 0 (best effort) is always allowed.
	Allowed []uint32
	// Remap maps an allowed application priority to the priority granted on
	// the NIC (for example the priority of the claimed traffic class).
	Remap map[uint32]uint32
	// Action applies to every other priority.
	Action Action
	// DefaultPriority is what ActionDemote sets (0..254).
	DefaultPriority uint32
	// LaunchTimeClock is the clock of the pod's SO_TXTIME launch times on
	// kernels that do not mark it on the packet (before 6.11). Zero value: TAI.
	LaunchTimeClock Clock
}

// Validate reports the first problem with p.
func (p Policy) Validate() error {
	for _, a := range p.Allowed {
		if a > MaxPriority {
			return fmt.Errorf("allowed priority %d: above %d", a, MaxPriority)
		}
	}
	for from, to := range p.Remap {
		if from > MaxPriority {
			return fmt.Errorf("remap from priority %d: above %d", from, MaxPriority)
		}
		if from != 0 && !slices.Contains(p.Allowed, from) {
			return fmt.Errorf("remap from priority %d: not in Allowed", from)
		}
		if to >= 255 {
			return fmt.Errorf("remap %d -> %d: granted priority must be below 255", from, to)
		}
	}
	if p.Action != ActionDemote && p.Action != ActionDrop {
		return fmt.Errorf("unknown action %d", int(p.Action))
	}
	if p.DefaultPriority >= 255 {
		return fmt.Errorf("default priority %d: must be below 255", p.DefaultPriority)
	}
	switch p.LaunchTimeClock {
	case 0, ClockMonotonic, ClockTAI:
	default:
		return fmt.Errorf("launch time clock %d: want monotonic or tai", p.LaunchTimeClock)
	}
	return nil
}

// grants returns the per application priority table the saver reads.
func (p Policy) grants() [MaxPriority + 1]uint8 {
	var g [MaxPriority + 1]uint8
	for i := range g {
		g[i] = denied
	}
	g[0] = 0
	for _, a := range p.Allowed {
		g[a] = uint8(a)
	}
	for from, to := range p.Remap {
		g[from] = uint8(to)
	}
	return g
}

const denied = 0xff

// PriorityCounters count one application priority of one pod.
type PriorityCounters struct {
	// Saved: packets whose metadata the saver stored.
	Saved uint64
	// Restored: packets whose metadata the restorer wrote back at the NIC.
	Restored uint64
	// Missed: packets with metadata the saver could not store; MissedBy says
	// why.
	Missed uint64
	// Demoted: packets with an ungranted priority sent on with the default priority.
	Demoted uint64
	// Dropped: packets with an ungranted priority dropped (ActionDrop).
	Dropped uint64
	// Rejected: packets the restorer refused because their fingerprint was
	// ambiguous (two packets with the same bytes and different metadata).
	Rejected uint64
	// Expired: saved entries that did not reach the NIC within the TTL.
	Expired uint64
	// MissedBy splits Missed by reason: MissedBy[MissQuota] and so on. Its
	// sum is Missed, except for misses of a saver program loaded by a driver
	// older than this split (it keeps running on an upgrade until its pod
	// goes), which are counted in Missed only.
	MissedBy [NumMissReasons]uint64
}

func (c *PriorityCounters) add(o PriorityCounters) {
	c.Saved += o.Saved
	c.Restored += o.Restored
	c.Missed += o.Missed
	c.Demoted += o.Demoted
	c.Dropped += o.Dropped
	c.Rejected += o.Rejected
	c.Expired += o.Expired
	for r, n := range o.MissedBy {
		c.MissedBy[r] += n
	}
}

// MissReason is why the saver could not store a packet's metadata. The
// values index the pinned map tsn_miss_reasons (TSN_MISS_* in bpf/tsn.c).
type MissReason int

const (
	// MissQuota: the pod already held its quota of in-flight entries
	// (WithQuota): a burst larger than the quota, or packets that never reach
	// the NIC (local destinations) holding entries until they expire.
	MissQuota MissReason = iota
	// MissTableFull: every way of the packet's home and second bucket was
	// held by live entries (table pressure).
	MissTableFull
	// MissUnfingerprintable: the packet has no fingerprint: an IP fragment,
	// not IPv4/IPv6, or too short.
	MissUnfingerprintable
	// MissAmbiguous: a packet with the same bytes from the same pod was in
	// flight with other metadata; the entry is poisoned and neither packet
	// is restored (the restorer counts the other one rejected).
	MissAmbiguous
	// MissRace: another CPU took the free way this packet had found.
	MissRace
	// MissInternal: a map lookup that cannot fail did (a bug, or maps changed
	// under a running program).
	MissInternal
	// NumMissReasons is the number of reasons.
	NumMissReasons
)

// missReasonSlots is the number of reason counters per slot and priority in
// the pinned map (TSN_MISS_REASONS): room for later reasons.
const missReasonSlots = 8

var missReasonNames = [NumMissReasons]string{"quota", "table_full", "unfingerprintable", "ambiguous", "race", "internal"}

// String returns the reason's name as in metrics and the status command:
// quota, table_full, unfingerprintable, ambiguous, race, internal.
func (r MissReason) String() string {
	if r >= 0 && r < NumMissReasons {
		return missReasonNames[r]
	}
	return fmt.Sprintf("MissReason(%d)", int(r))
}

// MissReasons lists every reason, in order.
func MissReasons() []MissReason {
	out := make([]MissReason, NumMissReasons)
	for i := range out {
		out[i] = MissReason(i)
	}
	return out
}

// Counters of one pod: ByPriority[p] for application priority p (0..15), and
// ByPriority[OtherPriorities] for every priority above 15.
type Counters struct {
	ByPriority [OtherPriorities + 1]PriorityCounters
}

// Total sums all priorities.
func (c Counters) Total() PriorityCounters {
	var t PriorityCounters
	for _, p := range c.ByPriority {
		t.add(p)
	}
	return t
}

// AttachMode is how programs are attached to an interface.
type AttachMode string

const (
	// ModeTCX uses TCX links (Linux >= 6.6).
	ModeTCX AttachMode = "tcx"
	// ModeTC uses a clsact qdisc and a direct-action cls_bpf filter (older kernels).
	ModeTC AttachMode = "tc"
)

// SaverInfo describes an attached saver.
type SaverInfo struct {
	PodUID    string
	NetnsPath string
	Ifname    string
	Slot      uint32
	Mode      AttachMode
	Policy    Policy
}
