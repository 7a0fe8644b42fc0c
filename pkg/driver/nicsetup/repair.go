package nicsetup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

// Result is what a repair check found and did; the values are the "result"
// label of tsn_dra_nic_schedule_repairs_total.
type Result string

const (
	// ResultRepaired: the schedule had stopped and was built anew.
	ResultRepaired Result = "repaired"
	// ResultRunning: packets still left through the gates: nothing to repair.
	ResultRunning Result = "still_running"
	// ResultRebuilt: the schedule on the NIC was built after the event.
	ResultRebuilt Result = "built_after_event"
	// ResultNotOurs: the root is not the schedule the driver applied
	// (somebody replaced or changed it): left alone.
	ResultNotOurs Result = "not_ours"
	// ResultNoGateTimer: the schedule's gates do not depend on a software
	// timer (full offload, txtime-assist): nothing stops them.
	ResultNoGateTimer Result = "no_gate_timer"
	// ResultFailed: checking or re-applying failed.
	ResultFailed Result = "failed"
	// ResultNotWatched: no claim uses the NIC, or its schedule belongs to
	// someone else (scheduleOwner: external).
	ResultNotWatched Result = "not_watched"
)

// Verdict is what Check found.
type Verdict struct {
	Result Result
	// Detail says what the verdict rests on, for the log.
	Detail string
}

// Repairer is implemented by Schedules that can tell whether a NIC's
// schedule stopped and build it anew (QdiscSchedules).
type Repairer interface {
	// Check looks at the NIC's schedule after an event at since that stops
	// a software taprio: Result is ResultRepaired when it has to be built
	// anew (Reapply), else why not.
	Check(ctx context.Context, nic NIC, since time.Time) (Verdict, error)
	// Reapply builds the NIC's schedule anew, keeping a running base time.
	Reapply(ctx context.Context, nic NIC) error
}

var _ Repairer = (*QdiscSchedules)(nil)

// Evidence windows: long enough for every gate to open once (two cycles),
// short enough not to hold a stopped NIC up for long.
const (
	minEvidenceWindow = 20 * time.Millisecond
	maxEvidenceWindow = time.Second
)

// Check implements Repairer. An event that deactivated the device (a qdisc
// grafted at its root or under taprio, the link going down, the carrier
// lost, the queue length changed) cancels the timer that advances a
// software taprio's gates on 6.1 and 6.12 alike (TestKernelTaprioStallEvents),
// and nothing in a dump shows it. So the schedule counts as stopped unless
// packets are seen leaving through it while it runs: cheap to check, and
// it spares a NIC whose kernel restarts the timer.
func (q *QdiscSchedules) Check(ctx context.Context, nic NIC, since time.Time) (Verdict, error) {
	q.mu.Lock()
	built := q.built[nic.Name]
	q.mu.Unlock()
	if built.After(since) {
		return Verdict{ResultRebuilt, fmt.Sprintf("built %s after the event", built.Sub(since).Round(time.Millisecond))}, nil
	}
	link, want, cur, err := q.desired(nic)
	if err != nil {
		return Verdict{Result: ResultFailed}, err
	}
	if err := q.client.Matches(link, cur, want); err != nil {
		return Verdict{ResultNotOurs, err.Error()}, nil
	}
	t, ok := cur.Root.Qdisc.(*qdisc.Taprio)
	if !ok {
		return Verdict{ResultNoGateTimer, "root is " + cur.Root.Kind}, nil
	}
	if !t.NeedsGateTimer() {
		return Verdict{ResultNoGateTimer, "full offload or txtime-assist"}, nil
	}
	if !t.Running() {
		// A schedule that never became the operating one, or is waiting for
		// a base time: its start was cancelled with the timer.
		return Verdict{ResultRepaired, "schedule not running yet (its start was cancelled)"}, nil
	}
	window := min(max(2*time.Duration(t.CycleDuration()), minEvidenceWindow), maxEvidenceWindow)
	before := cur.Root.Stats
	select {
	case <-ctx.Done():
		return Verdict{Result: ResultFailed}, ctx.Err()
	case <-time.After(window):
	}
	after, err := q.client.Snapshot(link)
	if err != nil {
		return Verdict{Result: ResultFailed}, fmt.Errorf("read qdiscs of %s: %w", nic.Interface, err)
	}
	if after.Root != nil && after.Root.Handle == cur.Root.Handle && after.Root.Stats.Packets != before.Packets {
		return Verdict{ResultRunning, fmt.Sprintf("%d packets left in %s", after.Root.Stats.Packets-before.Packets, window)}, nil
	}
	queued := uint32(0)
	if after.Root != nil {
		queued = after.Root.Stats.QLen
	}
	return Verdict{ResultRepaired, fmt.Sprintf("no packet left in %s, %d queued", window, queued)}, nil
}

// errNotOurs: the root changed between Check and Reapply.
var errNotOurs = errors.New("the NIC's root is no longer the driver's schedule")

// Reapply implements Repairer: Apply with qdisc.Recreate, so that a taprio
// that dumps exactly as wanted is built anew all the same; the base time
// of a "now" schedule is kept (desired), so the gate cycle keeps its phase.
func (q *QdiscSchedules) Reapply(ctx context.Context, nic NIC) error {
	link, want, cur, err := q.desired(nic)
	if err != nil {
		return err
	}
	if err := q.client.Matches(link, cur, want); err != nil {
		return fmt.Errorf("%w: %v", errNotOurs, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.apply(ctx, nic, link, want, qdisc.Recreate())
}

// watchedLocked returns the NIC with interface ifname if a claim uses it and
// the driver owns its schedule. s.mu is held.
func (s *Setup) watchedLocked(ifname string) (NIC, bool) {
	for name, users := range s.claims {
		nic := s.nics[name]
		if len(users) > 0 && nic.Interface == ifname && nic.ApplySchedule {
			return nic, true
		}
	}
	return NIC{}, false
}

// Watched returns the NIC with interface ifname if a claim uses it and the
// driver applies its schedule: the NICs Guard repairs.
func (s *Setup) Watched(ifname string) (NIC, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watchedLocked(ifname)
}

// Repair checks the schedule of the NIC with interface ifname after events
// (described by what, the first at since) that stop a software taprio, and
// builds it anew if it stopped. Only NICs a claim uses and whose schedule the
// driver owns are touched; a root somebody else put there is left alone.
// The check (which may watch the NIC's counters for up to a second) runs
// without the setup's lock; the re-apply holds it, so it cannot race a
// claim's Acquire or Release.
func (s *Setup) Repair(ctx context.Context, ifname string, since time.Time, what string) (Result, error) {
	nic, ok := s.Watched(ifname)
	if !ok {
		return ResultNotWatched, nil
	}
	logger := klog.FromContext(ctx).WithValues("nic", nic.Name, "interface", ifname, "events", what)
	r, ok := s.schedules.(Repairer)
	if !ok {
		return ResultNotWatched, nil
	}
	v, err := r.Check(ctx, nic, since)
	if err != nil {
		logger.Error(err, "Checking the TSN schedule after an event that stops taprio")
		return ResultFailed, err
	}
	if v.Result != ResultRepaired {
		logger.Info("TSN schedule checked after an event that stops taprio: nothing to do", "result", v.Result, "detail", v.Detail)
		return v.Result, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if nic, ok = s.watchedLocked(ifname); !ok {
		return ResultNotWatched, nil
	}
	if err := r.Reapply(ctx, nic); err != nil {
		if errors.Is(err, errNotOurs) {
			logger.Info("TSN schedule changed by someone else while being checked: left alone", "detail", err.Error())
			return ResultNotOurs, nil
		}
		logger.Error(err, "Re-applying the stopped TSN schedule", "evidence", v.Detail)
		return ResultFailed, err
	}
	logger.Info("Re-applied the TSN schedule: an event had stopped taprio's gates", "evidence", v.Detail)
	return ResultRepaired, nil
}
