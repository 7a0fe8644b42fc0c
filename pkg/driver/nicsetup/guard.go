package nicsetup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Guard watches the NICs whose schedule the driver applies for events that
// stop a software taprio, and has the Setup check and repair the schedule
// after them.
//
// Anything that deactivates a device resets its root qdisc, and taprio's
// reset cancels the timer that advances its gate list; nothing starts it
// again, so the gates stay as they were and packets stay queued (measured on
// 6.1 generic and PREEMPT_RT and 6.12: TestKernelTaprioStallEvents). What
// deactivates a device: a qdisc grafted at its root or ingress (a CNI or an
// operator adding clsact, or deleting it), a qdisc grafted under taprio's
// classes, the link set down, the carrier lost while up, and a new transmit
// queue length. The Guard learns of all of them from rtnetlink: qdisc
// notifications (RTNLGRP_TC) and link notifications (RTNLGRP_LINK). Qdisc
// changes the driver made itself (through the qdisc client, whose netlink
// port the notifications carry) are not events: Apply restarts the gates of
// what it builds.
//
// After an event the Guard waits until the link is up with carrier and quiet
// for a moment, then calls Setup.Repair, which re-applies the schedule unless
// packets are seen leaving through it.
//
// A stop nobody watched sends no event: one while the daemon was down
// (restart, crash, upgrade), or while no claim used the NIC. So each NIC is
// also checked once when the Guard begins to watch it (Setup.RepairAdopted):
// those the setup watches when Run subscribes (claims resumed before), and
// each one the setup begins to watch later (Setup.OnWatch: the resumed
// claims of a restart, a checkpoint rebuilt in the background, a NIC
// claimed again).
type Guard struct {
	setup   *Setup
	ns      netns.NsHandle
	own     []uint32
	settle  time.Duration
	metrics *GuardMetrics
	ready   chan struct{}

	amu sync.Mutex
	// adopts are the NICs to check once (by interface), and since when the
	// guard watches them; subscribed is when Run subscribed (zero before).
	adopts     map[string]time.Time
	subscribed time.Time
	wake       chan struct{}
}

// GuardOption configures a Guard.
type GuardOption func(*Guard)

// WithGuardNetNS watches links in ns instead of the caller's namespace. The
// guard does not close ns.
func WithGuardNetNS(ns netns.NsHandle) GuardOption { return func(g *Guard) { g.ns = ns } }

// WithOwnPort makes qdisc notifications caused by netlink port port (the
// driver's qdisc client: qdisc.Client.PortID) the driver's own, not events.
func WithOwnPort(port uint32) GuardOption { return func(g *Guard) { g.own = append(g.own, port) } }

// WithSettle sets how long a NIC must be up, with carrier and without new
// events before its schedule is checked (default 200 ms): a burst (a link
// flap, clsact and its filters) is repaired once.
func WithSettle(d time.Duration) GuardOption { return func(g *Guard) { g.settle = d } }

// WithGuardMetrics counts events and repairs in m.
func WithGuardMetrics(m *GuardMetrics) GuardOption { return func(g *Guard) { g.metrics = m } }

// NewGuard returns a guard for the NICs of setup.
func NewGuard(setup *Setup, opts ...GuardOption) *Guard {
	g := &Guard{setup: setup, ns: netns.None(), settle: 200 * time.Millisecond, ready: make(chan struct{}),
		adopts: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	for _, o := range opts {
		o(g)
	}
	setup.OnWatch(g.adopt)
	return g
}

// adopt queues the check of a NIC the guard watches from since on. It runs
// under the setup's lock (Setup.OnWatch): it takes only the guard's own.
func (g *Guard) adopt(nic NIC, since time.Time) {
	g.amu.Lock()
	if cur, ok := g.adopts[nic.Interface]; !ok || since.After(cur) {
		g.adopts[nic.Interface] = since
	}
	g.amu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// takeAdopts returns the queued checks. Nothing was seen before the guard
// subscribed, so none is since an earlier time.
func (g *Guard) takeAdopts() map[string]time.Time {
	g.amu.Lock()
	defer g.amu.Unlock()
	out := g.adopts
	g.adopts = map[string]time.Time{}
	for ifname, since := range out {
		if since.Before(g.subscribed) {
			out[ifname] = g.subscribed
		}
	}
	return out
}

// Ready is closed once Run has subscribed to the events: what happens after
// is seen.
func (g *Guard) Ready() <-chan struct{} { return g.ready }

// GuardMetrics counts what the Guard saw and did.
type GuardMetrics struct {
	events  *prometheus.CounterVec
	repairs *prometheus.CounterVec
}

// NewGuardMetrics registers the guard's metrics with reg.
func NewGuardMetrics(reg prometheus.Registerer) *GuardMetrics {
	m := &GuardMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tsn_dra", Subsystem: "nic", Name: "deactivations_total",
			Help: "Events that deactivate a NIC whose TSN schedule the driver applies (which stops a software taprio's gates), " +
				"by event: qdisc (grafted or deleted by another process), link_down, carrier_lost, txqueuelen, events_lost (netlink overflow).",
		}, []string{"nic", "event"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tsn_dra", Subsystem: "nic", Name: "schedule_repairs_total",
			Help: "Checks of a NIC's TSN schedule after deactivations, by result: repaired (built anew), still_running, " +
				"built_after_event, not_ours (left alone), no_gate_timer, failed; and once when the driver begins to watch a NIC " +
				"(after a restart, or a NIC claimed again: a stop from before sent no event): adopted_repaired (it had stopped), " +
				"adopted_idle_rebuilt (no traffic to tell: built anew, same base time), adopted_still_running, adopted_built " +
				"(built by this process), adopted_not_ours, adopted_no_gate_timer, adopted_failed.",
		}, []string{"nic", "result"}),
	}
	reg.MustRegister(m.events, m.repairs)
	return m
}

func (m *GuardMetrics) event(nic, event string) {
	if m != nil {
		m.events.WithLabelValues(nic, event).Inc()
	}
}

func (m *GuardMetrics) repair(nic string, r Result) {
	if m != nil && r != ResultNotWatched {
		m.repairs.WithLabelValues(nic, string(r)).Inc()
	}
}

// Event kinds, the "event" label.
const (
	eventQdisc      = "qdisc"
	eventLinkDown   = "link_down"
	eventCarrier    = "carrier_lost"
	eventTxQueueLen = "txqueuelen"
	eventLost       = "events_lost"
)

type linkState struct {
	name   string
	flags  uint32
	txqlen int
}

func (l linkState) up() bool      { return l.flags&unix.IFF_UP != 0 }
func (l linkState) carrier() bool { return l.flags&unix.IFF_LOWER_UP != 0 }

// pending is a NIC that saw events, or that the guard began to watch, and
// waits for its check.
type pending struct {
	// since is when the last event was received (or watching began): a
	// schedule built after it was not stopped by anything seen.
	since  time.Time
	last   time.Time // the last event or link change, for the settle time
	events map[string]int
	// adopted: the guard began to watch the NIC (RepairAdopted).
	adopted bool
}

func (p *pending) String() string {
	var out []string
	for e, n := range p.events {
		out = append(out, fmt.Sprintf("%s x%d", e, n))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// received is what the reader hands the loop: messages, or an error, and
// when they were received (the loop may be busy with a repair).
type received struct {
	msgs []syscall.NetlinkMessage
	err  error
	at   time.Time
}

// Run watches until ctx ends. It returns an error when it cannot subscribe
// or the subscription fails; events lost to a socket overflow are handled
// as an event on every watched NIC.
func (g *Guard) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("taprio-guard")
	ctx = klog.NewContext(ctx, logger)
	sock, err := nl.SubscribeAt(g.ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK, unix.RTNLGRP_TC)
	if err != nil {
		return fmt.Errorf("subscribe to link and qdisc events: %w", err)
	}
	defer sock.Close()
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := sock.SetReceiveTimeout(&tv); err != nil {
		return fmt.Errorf("set receive timeout: %w", err)
	}
	_ = sock.SetReceiveBufferSize(1<<20, false)

	links, err := g.listLinks()
	if err != nil {
		return err
	}
	ch := make(chan received, 16)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for ctx.Err() == nil {
			msgs, from, err := sock.Receive()
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err == nil && from.Pid != nl.PidKernel {
				continue
			}
			select {
			case ch <- received{msgs, err, time.Now()}:
			case <-ctx.Done():
				return
			}
			if err != nil && !errors.Is(err, unix.ENOBUFS) {
				return
			}
		}
	}()
	defer func() { <-readerDone }()
	// The NICs the setup already watches (claims resumed before the
	// subscription) are checked once, as are the ones it begins to watch
	// from now on (adopt).
	g.amu.Lock()
	g.subscribed = time.Now()
	g.amu.Unlock()
	watched := g.setup.WatchedNICs()
	for _, nic := range watched {
		g.adopt(nic, time.Time{})
	}
	logger.Info("Watching NICs for events that stop taprio", "settle", g.settle, "nics", len(watched))
	close(g.ready)

	waiting := map[string]*pending{} // by interface name
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-ch:
			switch {
			case errors.Is(r.err, unix.ENOBUFS):
				// The kernel dropped notifications: any of them may have
				// stopped a schedule.
				logger.Info("Netlink events lost (socket overflow): checking every watched NIC")
				if fresh, err := g.listLinks(); err == nil {
					links = fresh
				}
				for _, l := range links {
					g.mark(waiting, l.name, eventLost, r.at)
				}
			case r.err != nil:
				return fmt.Errorf("receive link and qdisc events: %w", r.err)
			}
			for _, m := range r.msgs {
				g.handle(ctx, m, r.at, links, waiting)
			}
		case <-g.wake:
			for ifname, since := range g.takeAdopts() {
				g.markAdopted(ctx, waiting, ifname, since)
			}
		case <-timer.C:
		}
		g.checkDue(ctx, links, waiting)
		resetTimer(timer, g.nextDue(links, waiting))
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

func (g *Guard) listLinks() (map[int]linkState, error) {
	h, err := netlink.NewHandleAt(g.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[int]linkState{}
	for _, l := range ls {
		a := l.Attrs()
		out[a.Index] = linkState{name: a.Name, flags: a.RawFlags, txqlen: a.TxQLen}
	}
	return out, nil
}

// handle turns one notification into events on watched NICs.
func (g *Guard) handle(ctx context.Context, m syscall.NetlinkMessage, at time.Time, links map[int]linkState, waiting map[string]*pending) {
	logger := klog.FromContext(ctx)
	switch m.Header.Type {
	case unix.RTM_NEWLINK:
		hdr := unix.NlMsghdr{Len: m.Header.Len, Type: m.Header.Type, Flags: m.Header.Flags, Seq: m.Header.Seq, Pid: m.Header.Pid}
		l, err := netlink.LinkDeserialize(&hdr, m.Data)
		if err != nil {
			logger.V(2).Info("Undecodable link notification", "err", err)
			return
		}
		a := l.Attrs()
		now := linkState{name: a.Name, flags: a.RawFlags, txqlen: a.TxQLen}
		was, known := links[a.Index]
		links[a.Index] = now
		if !known {
			return
		}
		switch {
		case was.up() && !now.up():
			g.mark(waiting, now.name, eventLinkDown, at)
		case was.up() && now.up() && was.carrier() && !now.carrier():
			g.mark(waiting, now.name, eventCarrier, at)
		case was.up() && now.up() && was.txqlen != now.txqlen:
			g.mark(waiting, now.name, eventTxQueueLen, at)
		}
		if p := waiting[now.name]; p != nil && now.up() && now.carrier() {
			p.last = time.Now() // settle from when it came back
		}
	case unix.RTM_DELLINK:
		if len(m.Data) >= unix.SizeofIfInfomsg {
			msg := nl.DeserializeIfInfomsg(m.Data)
			if l, ok := links[int(msg.Index)]; ok {
				delete(waiting, l.name)
			}
			delete(links, int(msg.Index))
		}
	case unix.RTM_NEWQDISC, unix.RTM_DELQDISC:
		if len(m.Data) < nl.SizeofTcMsg {
			return
		}
		for _, p := range g.own {
			if m.Header.Pid == p {
				return // the driver's own change
			}
		}
		tcm := nl.DeserializeTcMsg(m.Data)
		l, ok := links[int(tcm.Ifindex)]
		if !ok {
			return
		}
		if _, watched := g.setup.Watched(l.name); watched {
			logger.V(2).Info("Qdisc changed by another process", "interface", l.name, "op", qdiscOp(m.Header.Type),
				"handle", fmt.Sprintf("%x:%x", tcm.Handle>>16, tcm.Handle&0xffff), "parent", fmt.Sprintf("%x:%x", tcm.Parent>>16, tcm.Parent&0xffff),
				"port", m.Header.Pid)
		}
		g.mark(waiting, l.name, eventQdisc, at)
	}
}

func qdiscOp(t uint16) string {
	if t == unix.RTM_DELQDISC {
		return "delete"
	}
	return "add/change"
}

// mark records an event received at on a watched NIC. Watched may wait
// for a claim's Acquire to finish; at is from before, so a schedule that
// Acquire built after the event counts as built after it.
func (g *Guard) mark(waiting map[string]*pending, ifname, event string, at time.Time) {
	nic, ok := g.setup.Watched(ifname)
	if !ok {
		return
	}
	g.metrics.event(nic.Name, event)
	p := waiting[ifname]
	if p == nil {
		p = &pending{events: map[string]int{}}
		waiting[ifname] = p
	}
	if at.After(p.since) {
		p.since = at
	}
	p.last = time.Now()
	p.events[event]++
}

// markAdopted queues the one check of a NIC the guard began to watch at
// since; it runs once the NIC is up with carrier and settled, like the
// check after an event (and is that check too, if events came meanwhile).
func (g *Guard) markAdopted(ctx context.Context, waiting map[string]*pending, ifname string, since time.Time) {
	nic, ok := g.setup.Watched(ifname)
	if !ok {
		return
	}
	klog.FromContext(ctx).V(2).Info("Began to watch a NIC: its schedule will be checked once", "nic", nic.Name, "interface", ifname, "since", since)
	p := waiting[ifname]
	if p == nil {
		p = &pending{events: map[string]int{}}
		waiting[ifname] = p
	}
	if since.After(p.since) {
		p.since = since
	}
	p.last = time.Now()
	p.adopted = true
}

// ready reports whether the NIC's link is up with carrier, and since when
// the NIC has been quiet.
func ready(links map[int]linkState, ifname string) bool {
	for _, l := range links {
		if l.name == ifname {
			return l.up() && l.carrier()
		}
	}
	return false
}

// checkDue has the setup repair every NIC that is ready and settled.
func (g *Guard) checkDue(ctx context.Context, links map[int]linkState, waiting map[string]*pending) {
	for ifname, p := range waiting {
		if !ready(links, ifname) || time.Since(p.last) < g.settle {
			continue
		}
		delete(waiting, ifname)
		nic, _ := g.setup.Watched(ifname)
		var res Result
		if p.adopted {
			res, _ = g.setup.RepairAdopted(ctx, ifname, p.since, p.String())
		} else {
			res, _ = g.setup.Repair(ctx, ifname, p.since, p.String())
		}
		g.metrics.repair(nic.Name, res)
	}
}

// nextDue is how long until the next NIC settles; an hour when none waits
// (a NIC whose link is down waits for its link notification).
func (g *Guard) nextDue(links map[int]linkState, waiting map[string]*pending) time.Duration {
	next := time.Hour
	for ifname, p := range waiting {
		if ready(links, ifname) {
			next = min(next, max(g.settle-time.Since(p.last), time.Millisecond))
		}
	}
	return next
}
