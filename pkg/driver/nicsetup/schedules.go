package nicsetup

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

// QdiscSchedules puts the node config's schedule of a NIC on it through the
// qdisc package (taprio, with etf children where the schedule asks).
type QdiscSchedules struct {
	client *qdisc.Client
	nics   func(name string) (config.NIC, bool)

	mu sync.Mutex
	// prev is each NIC's qdisc tree before this process first changed it,
	// so that Remove can put it back.
	prev map[string]qdisc.State
	// built is when this process last put a new tree on each NIC: an event
	// that stopped a taprio before then did not stop the one there now.
	built map[string]time.Time
}

// NewQdiscSchedules applies schedules through client, looking NICs up in the
// current node config with nics.
func NewQdiscSchedules(client *qdisc.Client, nics func(name string) (config.NIC, bool)) *QdiscSchedules {
	return &QdiscSchedules{client: client, nics: nics, prev: map[string]qdisc.State{}, built: map[string]time.Time{}}
}

// Apply implements Schedules.
func (q *QdiscSchedules) Apply(ctx context.Context, nic NIC) error {
	link, want, cur, err := q.desired(nic)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.prev[nic.Name]; !ok {
		q.prev[nic.Name] = cur
	}
	return q.apply(ctx, nic, link, want)
}

func (q *QdiscSchedules) apply(ctx context.Context, nic NIC, link qdisc.Link, want qdisc.Config, opts ...qdisc.ApplyOption) error {
	var changed bool
	err := q.client.Apply(ctx, link.Name, want, append(opts, qdisc.Changed(&changed))...)
	if changed {
		q.built[nic.Name] = time.Now()
	}
	return err
}

// desired reads the NIC and the tree on it, and builds the tree the node
// config wants there.
func (q *QdiscSchedules) desired(nic NIC) (qdisc.Link, qdisc.Config, qdisc.State, error) {
	cfgNIC, ok := q.nics(nic.Name)
	if !ok {
		return qdisc.Link{}, qdisc.Config{}, qdisc.State{}, fmt.Errorf("NIC %s is not in the node config", nic.Name)
	}
	link, err := q.client.Link(nic.Interface)
	if err != nil {
		return qdisc.Link{}, qdisc.Config{}, qdisc.State{}, err
	}
	now, err := qdisc.NowTAI()
	if err != nil {
		return qdisc.Link{}, qdisc.Config{}, qdisc.State{}, err
	}
	want, err := qdisc.FromSchedule(&cfgNIC.Schedule, link.Device, now)
	if err != nil {
		return qdisc.Link{}, qdisc.Config{}, qdisc.State{}, fmt.Errorf("schedule of NIC %s: %w", nic.Name, err)
	}
	cur, err := q.client.Snapshot(link)
	if err != nil {
		return qdisc.Link{}, qdisc.Config{}, qdisc.State{}, fmt.Errorf("read qdiscs of %s: %w", nic.Interface, err)
	}
	// A base time derived from "now" differs on every call; a taprio that
	// already runs the schedule keeps its base time (and so its phase), or
	// every new claim would restart the gate cycle of every other one.
	if cfgNIC.Schedule.BaseTime.Policy == schedule.BaseTimeNow && cur.Root != nil {
		if have, ok := cur.Root.Qdisc.(*qdisc.Taprio); ok {
			if w, ok := want.Root.(*qdisc.Taprio); ok {
				w.BaseTime = have.BaseTime
			}
		}
	}
	return link, want, cur, nil
}

// Remove implements Schedules: the tree from before this process first
// applied goes back; without one (the schedule was put on by an earlier run
// of the driver), the root is deleted and the kernel's default comes back.
func (q *QdiscSchedules) Remove(ctx context.Context, nic NIC) error {
	logger := klog.FromContext(ctx).WithValues("nic", nic.Name, "interface", nic.Interface)
	link, err := q.client.Link(nic.Interface)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if prev, ok := q.prev[nic.Name]; ok {
		if err := q.client.Restore(ctx, link, prev); err != nil {
			return fmt.Errorf("restore the qdiscs %s had before: %w", nic.Interface, err)
		}
		delete(q.prev, nic.Name)
		return nil
	}
	cur, err := q.client.Snapshot(link)
	if err != nil {
		return err
	}
	if cur.Root == nil || cur.Root.Default() {
		return nil
	}
	if err := q.client.Delete(link.Index, qdisc.HandleRoot); err != nil {
		return fmt.Errorf("delete the root qdisc of %s: %w", nic.Interface, err)
	}
	logger.Info("Previous qdisc unknown (applied by an earlier run): root deleted, kernel default back", "was", cur.Root)
	return nil
}
