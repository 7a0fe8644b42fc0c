package nicsetup

import (
	"context"
	"errors"
	"fmt"
	"sort"
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

// Results of the check when the guard begins to watch a NIC (RepairAdopted):
// a stop from before then (the daemon down, the NIC without claims) sent no
// event the guard saw, so each NIC is checked once, by the same rules.
const (
	// ResultAdoptedRepaired: the schedule had stopped (packets waited and
	// none left, or it never started) and was built anew.
	ResultAdoptedRepaired Result = "adopted_repaired"
	// ResultAdoptedIdle: no packet left or waited during the check, so a
	// running schedule could not be told from a stopped one: built anew, with
	// the same base time, to be sure.
	ResultAdoptedIdle Result = "adopted_idle_rebuilt"
	// ResultAdoptedRunning: packets left through the gates: left alone.
	ResultAdoptedRunning Result = "adopted_still_running"
	// ResultAdoptedBuilt: this process built the schedule as it began to
	// watch the NIC (the first claim found none, or a different one).
	ResultAdoptedBuilt Result = "adopted_built"
	// ResultAdoptedNotOurs: the root is not the driver's schedule: left alone.
	ResultAdoptedNotOurs Result = "adopted_not_ours"
	// ResultAdoptedNoGateTimer: nothing stops this schedule's gates.
	ResultAdoptedNoGateTimer Result = "adopted_no_gate_timer"
	// ResultAdoptedFailed: checking or re-applying failed.
	ResultAdoptedFailed Result = "adopted_failed"
)

// adopted is r as the result of the check of a NIC the guard begins to watch.
func adopted(r Result, idle bool) Result {
	switch r {
	case ResultRepaired:
		if idle {
			return ResultAdoptedIdle
		}
		return ResultAdoptedRepaired
	case ResultRunning:
		return ResultAdoptedRunning
	case ResultRebuilt:
		return ResultAdoptedBuilt
	case ResultNotOurs:
		return ResultAdoptedNotOurs
	case ResultNoGateTimer:
		return ResultAdoptedNoGateTimer
	case ResultFailed:
		return ResultAdoptedFailed
	}
	return r
}

// Verdict is what Check found.
type Verdict struct {
	Result Result
	// Detail says what the verdict rests on, for the log.
	Detail string
	// Idle: ResultRepaired only because nothing moved: no packet left and
	// none waited while the schedule was watched, which a running schedule
	// on an idle NIC shows too.
	Idle bool
}

// Repairer is implemented by Schedules that can tell whether a NIC's
// schedule stopped and build it anew (QdiscSchedules).
type Repairer interface {
	// Check looks at the NIC's schedule after an event at since that stops
	// a software taprio, watching its traffic for at least minWindow (0:
	// two cycles, at least 20 ms): Result is ResultRepaired when it has to
	// be built anew (Reapply), else why not.
	Check(ctx context.Context, nic NIC, since time.Time, minWindow time.Duration) (Verdict, error)
	// Reapply builds the NIC's schedule anew, keeping a running base time.
	Reapply(ctx context.Context, nic NIC) error
}

var _ Repairer = (*QdiscSchedules)(nil)

// Evidence windows: long enough for every gate to open once (two cycles),
// short enough not to hold a stopped NIC up for long.
const (
	minEvidenceWindow = 20 * time.Millisecond
	maxEvidenceWindow = time.Second
	// adoptEvidenceWindow is the window of the check of a NIC the guard
	// begins to watch. Its schedule may have stopped long before, so there
	// is no hurry, and an idle NIC is rebuilt: a longer look spares NICs
	// with sparse traffic (a stream every 100 ms shows 4 packets).
	adoptEvidenceWindow = 500 * time.Millisecond
)

// Check implements Repairer. An event that deactivated the device (a qdisc
// grafted at its root or under taprio, the link going down, the carrier
// lost, the queue length changed) cancels the timer that advances a
// software taprio's gates on 6.1 and 6.12 alike (TestKernelTaprioStallEvents),
// and nothing in a dump shows it. So the schedule counts as stopped unless
// packets are seen leaving through it while it runs: cheap to check, and
// it spares a NIC whose kernel restarts the timer.
func (q *QdiscSchedules) Check(ctx context.Context, nic NIC, since time.Time, minWindow time.Duration) (Verdict, error) {
	q.mu.Lock()
	built := q.built[nic.Name]
	q.mu.Unlock()
	if built.After(since) {
		return Verdict{Result: ResultRebuilt, Detail: fmt.Sprintf("built %s after the event", built.Sub(since).Round(time.Millisecond))}, nil
	}
	link, want, cur, err := q.desired(nic)
	if err != nil {
		return Verdict{Result: ResultFailed}, err
	}
	if err := q.client.Matches(link, cur, want); err != nil {
		return Verdict{Result: ResultNotOurs, Detail: err.Error()}, nil
	}
	t, ok := cur.Root.Qdisc.(*qdisc.Taprio)
	if !ok {
		return Verdict{Result: ResultNoGateTimer, Detail: "root is " + cur.Root.Kind}, nil
	}
	if !t.NeedsGateTimer() {
		return Verdict{Result: ResultNoGateTimer, Detail: "full offload or txtime-assist"}, nil
	}
	if !t.Running() {
		// A schedule that never became the operating one, or is waiting for
		// a base time: its start was cancelled with the timer.
		return Verdict{Result: ResultRepaired, Detail: "schedule not running yet (its start was cancelled)"}, nil
	}
	window := min(max(2*time.Duration(t.CycleDuration()), minEvidenceWindow, minWindow), maxEvidenceWindow)
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
		return Verdict{Result: ResultRunning, Detail: fmt.Sprintf("%d packets left in %s", after.Root.Stats.Packets-before.Packets, window)}, nil
	}
	queued := uint32(0)
	if after.Root != nil {
		queued = after.Root.Stats.QLen
	}
	if queued == 0 {
		return Verdict{ResultRepaired, fmt.Sprintf("no packet left or waited in %s: an idle NIC, running or stopped cannot be told apart", window), true}, nil
	}
	return Verdict{Result: ResultRepaired, Detail: fmt.Sprintf("no packet left in %s, %d queued", window, queued)}, nil
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

// WatchedNICs returns the NICs Watched reports, sorted by interface.
func (s *Setup) WatchedNICs() []NIC {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []NIC
	for name, users := range s.claims {
		if nic := s.nics[name]; len(users) > 0 && nic.ApplySchedule {
			out = append(out, nic)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Interface < out[j].Interface })
	return out
}

// Repair checks the schedule of the NIC with interface ifname after events
// (described by what, the last at since) that stop a software taprio, and
// builds it anew if it stopped. Only NICs a claim uses and whose schedule the
// driver owns are touched; a root somebody else put there is left alone.
// The check (which may watch the NIC's counters for up to a second) runs
// without the setup's lock; the re-apply holds it, so it cannot race a
// claim's Acquire or Release.
func (s *Setup) Repair(ctx context.Context, ifname string, since time.Time, what string) (Result, error) {
	return s.repair(ctx, ifname, since, what, false)
}

// RepairAdopted is Repair for a NIC the guard begins to watch at since: its
// first claim in this process (after a restart, the resumed ones), a claim
// on it again after its last one went, or the guard's own start. Whatever
// stopped its schedule before since (a link flap while the daemon was down,
// an upgrade's qdisc change) sent no event the guard saw; the same check
// finds it. Results are the adopted_ ones; what lists events seen since, if
// any.
func (s *Setup) RepairAdopted(ctx context.Context, ifname string, since time.Time, what string) (Result, error) {
	return s.repair(ctx, ifname, since, what, true)
}

func (s *Setup) repair(ctx context.Context, ifname string, since time.Time, what string, adopt bool) (Result, error) {
	nic, ok := s.Watched(ifname)
	if !ok {
		return ResultNotWatched, nil
	}
	logger := klog.FromContext(ctx).WithValues("nic", nic.Name, "interface", ifname)
	checked := "TSN schedule checked after an event that stops taprio"
	repaired := "Re-applied the TSN schedule: an event had stopped taprio's gates"
	result := func(r Result, _ bool) Result { return r }
	var window time.Duration
	if adopt {
		window = adoptEvidenceWindow
		logger = logger.WithValues("watchingSince", since.Format(time.RFC3339Nano))
		if what != "" {
			logger = logger.WithValues("events", what)
		}
		checked = "TSN schedule checked on taking over the NIC (a stop from before sent no event)"
		repaired = "Re-applied the TSN schedule of a NIC the driver had not been watching"
		result = adopted
	} else {
		logger = logger.WithValues("events", what)
	}
	r, ok := s.schedules.(Repairer)
	if !ok {
		return ResultNotWatched, nil
	}
	v, err := r.Check(ctx, nic, since, window)
	if err != nil {
		logger.Error(err, checked+": the check failed")
		return result(ResultFailed, false), err
	}
	if v.Result != ResultRepaired {
		logger.Info(checked+": nothing to do", "result", result(v.Result, false), "detail", v.Detail)
		return result(v.Result, false), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if nic, ok = s.watchedLocked(ifname); !ok {
		return ResultNotWatched, nil
	}
	if err := r.Reapply(ctx, nic); err != nil {
		if errors.Is(err, errNotOurs) {
			logger.Info(checked+": changed by someone else while being checked, left alone", "result", result(ResultNotOurs, false), "detail", err.Error())
			return result(ResultNotOurs, false), nil
		}
		logger.Error(err, checked+": re-applying the stopped schedule failed", "evidence", v.Detail)
		return result(ResultFailed, false), err
	}
	res := result(ResultRepaired, v.Idle)
	logger.Info(repaired, "result", res, "evidence", v.Detail)
	return res, nil
}
