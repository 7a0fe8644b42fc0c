// Package nicsetup configures a TSN NIC for the claims on it: the first claim
// on a NIC puts the NIC's schedule and the restorer on it, the last one to go
// leaves them or takes them off as the node config says. A NIC shared by many
// claims is configured once.
//
// It counts claims, not pods: claims are what kubelet prepares and
// unprepares, and what the checkpoint remembers across restarts.
//
// A software taprio stops for good when its device is deactivated (a link
// flap, a lost carrier, another process's qdisc change): Guard watches the
// NICs the driver schedules for such events and has Setup.Repair rebuild the
// schedule. A stop nobody saw (the daemon was down, the NIC had no claim)
// sends no event: the Guard checks each NIC once as it begins to watch it
// (Setup.RepairAdopted).
package nicsetup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// NIC is what the setup needs to know of a NIC.
type NIC struct {
	// Name is the NIC's name in the node config (device names "<name>-tc<n>").
	Name string
	// Interface is its kernel interface name.
	Interface string
	// ApplySchedule puts the node config's schedule on the NIC; false when the
	// NIC's qdiscs belong to someone else (scheduleOwner: external).
	ApplySchedule bool
	// RemoveOnLastRelease takes the restorer (and the schedule, if applied)
	// off when the last claim goes.
	RemoveOnLastRelease bool
}

// Restorers is the part of the data path the setup drives.
type Restorers interface {
	EnsureRestorer(ctx context.Context, ifname string) error
	RemoveRestorer(ctx context.Context, ifname string) error
}

// Schedules puts a NIC's configured schedule on it and takes it off again.
type Schedules interface {
	// Apply puts the schedule the node config gives the NIC on it; it is a
	// no-op when the NIC already runs it, and leaves the NIC as it was on
	// failure.
	Apply(ctx context.Context, nic NIC) error
	// Remove takes the schedule off and gives the NIC back its previous (or
	// default) root qdisc.
	Remove(ctx context.Context, nic NIC) error
}

// Setup tracks the claims on each NIC. It is safe for concurrent use.
type Setup struct {
	restorers Restorers
	schedules Schedules

	mu sync.Mutex
	// claims[nic.Name] holds the UIDs of the claims using the NIC.
	claims map[string]map[string]bool
	nics   map[string]NIC
	// onWatch are told of each NIC the setup begins to watch (Watched), and
	// since when; called with mu held.
	onWatch []func(nic NIC, since time.Time)
}

// New returns a setup that tracks no claims.
func New(restorers Restorers, schedules Schedules) *Setup {
	return &Setup{restorers: restorers, schedules: schedules, claims: map[string]map[string]bool{}, nics: map[string]NIC{}}
}

// Acquire records that claimUID uses nic. On every call it makes sure the
// restorer and the schedule are on the NIC (both are idempotent, and a NIC
// whose qdisc somebody replaced is put right again). On failure the claim is
// not recorded and, if it was the NIC's first, what this call put on the NIC
// is taken off again.
//
// The restorer goes on first: without TCX (kernels before 6.6) it needs a
// clsact qdisc, and grafting clsact onto a NIC that already runs taprio
// deactivates the device, which resets taprio and cancels the timer that
// advances its gates: the schedule stops and every packet stays queued
// (measured on 6.1 and 6.12: test/seed, hack/figure TestClsactBeforeTaprio).
// taprio created next to an existing clsact runs.
func (s *Setup) Acquire(ctx context.Context, nic NIC, claimUID string) error {
	logger := klog.FromContext(ctx).WithValues("nic", nic.Name, "interface", nic.Interface, "claimUID", claimUID)
	s.mu.Lock()
	defer s.mu.Unlock()
	users := s.claims[nic.Name]
	first := len(users) == 0
	_, watched := s.watchedLocked(nic.Interface)
	start := time.Now()
	if err := s.restorers.EnsureRestorer(ctx, nic.Interface); err != nil {
		return fmt.Errorf("attach the restorer to NIC %s (%s): %w", nic.Name, nic.Interface, err)
	}
	if nic.ApplySchedule {
		if err := s.schedules.Apply(ctx, nic); err != nil {
			// Apply left the NIC's qdiscs as they were; the restorer this
			// first claim put on goes too.
			err = fmt.Errorf("apply the TSN schedule of NIC %s (%s): %w", nic.Name, nic.Interface, err)
			if first {
				if rerr := s.restorers.RemoveRestorer(ctx, nic.Interface); rerr != nil {
					err = errors.Join(err, fmt.Errorf("and taking the restorer off again failed: %w", rerr))
				}
			}
			return err
		}
	}
	if users == nil {
		users = map[string]bool{}
		s.claims[nic.Name] = users
	}
	if !users[claimUID] {
		users[claimUID] = true
		logger.Info("Claim uses NIC", "claims", len(users), "first", first)
	}
	s.nics[nic.Name] = nic
	if _, now := s.watchedLocked(nic.Interface); now && !watched {
		// Nothing watched the NIC until now: a stop of its schedule before
		// this call (the daemon was down, the NIC had no claim) sent no
		// event anyone saw. Apply found the schedule in place and kept it,
		// so the guard checks it once.
		for _, f := range s.onWatch {
			f(nic, start)
		}
	}
	return nil
}

// OnWatch registers f to be told of each NIC the setup begins to watch (a
// claim uses it, the driver applies its schedule) and since when: a
// schedule stopped before then was not seen stopping. f runs with the
// setup's lock held: it must not block or call the setup.
func (s *Setup) OnWatch(f func(nic NIC, since time.Time)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onWatch = append(s.onWatch, f)
}

// Release records that claimUID no longer uses the NIC named nicName; the
// last claim to go takes schedule and restorer off if the NIC says so.
// Releasing a claim that is not recorded is a no-op.
func (s *Setup) Release(ctx context.Context, nicName, claimUID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	users := s.claims[nicName]
	if !users[claimUID] {
		return nil
	}
	nic := s.nics[nicName]
	logger := klog.FromContext(ctx).WithValues("nic", nicName, "interface", nic.Interface, "claimUID", claimUID)
	if len(users) == 1 && nic.RemoveOnLastRelease {
		// Take the restorer off first: without the schedule it would still
		// restore priorities, but into a qdisc that no longer means them.
		if err := s.restorers.RemoveRestorer(ctx, nic.Interface); err != nil {
			return fmt.Errorf("detach the restorer from NIC %s (%s): %w", nicName, nic.Interface, err)
		}
		if nic.ApplySchedule {
			if err := s.schedules.Remove(ctx, nic); err != nil {
				return fmt.Errorf("take the TSN schedule off NIC %s (%s): %w", nicName, nic.Interface, err)
			}
		}
		logger.Info("Last claim released: restorer removed", "scheduleRemoved", nic.ApplySchedule)
	}
	delete(users, claimUID)
	if len(users) == 0 {
		delete(s.claims, nicName)
	}
	logger.Info("Claim released NIC", "claims", len(users))
	return nil
}

// Claims returns the UIDs of the claims on the NIC, sorted.
func (s *Setup) Claims(nicName string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.claims[nicName]))
	for uid := range s.claims[nicName] {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out
}
