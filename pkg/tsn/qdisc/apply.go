package qdisc

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/safchain/ethtool"
	"k8s.io/klog/v2"
)

// Config is the qdisc tree the driver wants on a device.
type Config struct {
	// Root is the root qdisc: *Taprio or *MQPrio (or *ETF on a single-queue device).
	Root Qdisc
	// Children go under the root's per-queue classes (etf under taprio or mqprio).
	Children []Child
	// TxQueues, when positive, sets the device's transmit queues through ethtool
	// channels before the qdiscs go on (tx channels, or combined ones when the
	// driver has no separate tx channels).
	TxQueues int
}

// Child is a qdisc on one transmit queue of the root.
type Child struct {
	// Queue is the 0-based transmit queue; the class is root-major:Queue+1.
	Queue uint16
	Qdisc Qdisc
}

// Validate checks the whole tree against the device.
func (cfg *Config) Validate(dev Device) error {
	if cfg.TxQueues > 0 {
		dev.TxQueues = cfg.TxQueues
	}
	var errs []error
	if cfg.Root == nil {
		return &FieldError{Field: "root", Reason: "no root qdisc"}
	}
	if err := cfg.Root.Validate(dev); err != nil {
		errs = append(errs, err)
	}
	if len(cfg.Children) > 0 {
		switch cfg.Root.(type) {
		case *Taprio, *MQPrio:
		default:
			errs = append(errs, &FieldError{Field: "children", Reason: cfg.Root.Kind() + " has no per-queue classes"})
		}
	}
	seen := map[uint16]bool{}
	for i, ch := range cfg.Children {
		field := fmt.Sprintf("children[%d]", i)
		switch {
		case ch.Qdisc == nil:
			errs = append(errs, &FieldError{Field: field + ".qdisc", Reason: "missing"})
			continue
		case dev.TxQueues > 0 && int(ch.Queue) >= dev.TxQueues:
			errs = append(errs, &FieldError{Field: field + ".queue", Reason: fmt.Sprintf("queue %d, but %s has %d tx queues", ch.Queue, dev.Name, dev.TxQueues)})
		case seen[ch.Queue]:
			errs = append(errs, &FieldError{Field: field + ".queue", Reason: fmt.Sprintf("queue %d has two qdiscs", ch.Queue)})
		}
		seen[ch.Queue] = true
		if err := ch.Qdisc.Validate(dev); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
	}
	return errors.Join(errs...)
}

// State is the qdisc tree on a device: its root and the qdiscs that were put
// under the root's classes (kernel defaults, handle 0, are left out).
type State struct {
	Root     *Installed
	Children []Installed
	// Channels are the device's ethtool channel counts, when it reports them.
	Channels *ethtool.Channels
}

// ErrCannotRestore means the device's current root qdisc could not be put back
// if the apply failed, so the apply was refused before touching anything.
var ErrCannotRestore = errors.New("current qdisc could not be restored on failure")

// Kinds that are restored from their dump. Their dump carries their whole
// configuration, and they have no classes or filters that would be lost.
var replayableKinds = []string{"pfifo", "bfifo", "pfifo_fast", "fq_codel", "fq", "sfq", "noqueue"}

// Handles the driver's root qdisc takes, alternately: a handle the device does
// not use makes the kernel build the new qdisc before swapping it in.
var rootHandles = []uint16{0x7a50, 0x7a51}

// Snapshot reads the device's qdisc tree.
func (c *Client) Snapshot(link Link) (State, error) {
	all, err := c.List(link.Index)
	if err != nil {
		return State{}, err
	}
	var s State
	for i := range all {
		if all[i].Parent == HandleRoot {
			s.Root = &all[i]
		}
	}
	if s.Root != nil && !s.Root.Default() {
		for _, q := range all {
			if q.Parent != HandleRoot && q.Handle != 0 && q.Parent.Major() == s.Root.Handle.Major() {
				s.Children = append(s.Children, q)
			}
		}
	}
	if ch, err := c.Channels(link.Name); err == nil {
		s.Channels = &ch
	}
	return s, nil
}

func (s State) restorable() error {
	check := func(q Installed) error {
		if q.Default() || q.Qdisc != nil || slices.Contains(replayableKinds, q.Kind) {
			return nil
		}
		return fmt.Errorf("%w: %s (remove it first)", ErrCannotRestore, q)
	}
	if s.Root == nil {
		return nil
	}
	if err := check(*s.Root); err != nil {
		return err
	}
	for _, q := range s.Children {
		if err := check(q); err != nil {
			return err
		}
	}
	return nil
}

// ApplyOption changes what Apply does.
type ApplyOption func(*applyOptions)

type applyOptions struct {
	recreate bool
	changed  *bool
}

// Recreate makes Apply build the tree anew even when the device already has
// cfg. A software taprio whose gates were stopped (a device deactivation
// cancels the timer that advances them) dumps the same as a running one, and
// only a new qdisc runs again.
func Recreate() ApplyOption { return func(o *applyOptions) { o.recreate = true } }

// Changed makes Apply set *changed to whether it put a new tree on the device
// (false when the device already had cfg, or on failure).
func Changed(changed *bool) ApplyOption { return func(o *applyOptions) { o.changed = changed } }

// Apply puts cfg on the device as a transaction: it validates cfg, remembers the
// device's qdisc tree (and channels), applies cfg, reads it back and compares, and
// on any failure puts the remembered tree back. It does nothing when the device
// already has cfg (unless Recreate). The error says what failed and whether the
// restore worked.
func (c *Client) Apply(ctx context.Context, linkName string, cfg Config, opts ...ApplyOption) error {
	var o applyOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.changed != nil {
		*o.changed = false
	}
	logger := klog.FromContext(ctx).WithValues("device", linkName, "qdisc", kindOf(cfg.Root))
	link, err := c.Link(linkName)
	if err != nil {
		return err
	}
	if err := cfg.Validate(link.Device); err != nil {
		return fmt.Errorf("invalid qdisc config for %s: %w", linkName, err)
	}
	prev, err := c.Snapshot(link)
	if err != nil {
		return fmt.Errorf("read qdiscs of %s: %w", linkName, err)
	}
	if !o.recreate && prev.Root != nil && c.matches(prev, prev.Root.Handle, link, cfg) == nil {
		logger.V(4).Info("Qdiscs already as wanted", "handle", prev.Root.Handle)
		return nil
	}
	if err := prev.restorable(); err != nil {
		return fmt.Errorf("apply qdiscs on %s: %w", linkName, err)
	}

	applyErr := c.apply(ctx, link, prev, cfg)
	if applyErr == nil {
		if o.changed != nil {
			*o.changed = true
		}
		return nil
	}
	logger.Info("Applying qdiscs failed, restoring the previous ones", "err", applyErr, "previous", prev.Root)
	if err := c.Restore(ctx, link, prev); err != nil {
		return fmt.Errorf("apply qdiscs on %s: %w; restoring the previous qdiscs failed too, the device's qdiscs are unknown: %w", linkName, applyErr, err)
	}
	return fmt.Errorf("apply qdiscs on %s (previous qdiscs restored): %w", linkName, applyErr)
}

func kindOf(q Qdisc) string {
	if q == nil {
		return ""
	}
	return q.Kind()
}

func (c *Client) apply(ctx context.Context, link Link, prev State, cfg Config) error {
	logger := klog.FromContext(ctx)
	if cfg.TxQueues > 0 && link.TxQueues != cfg.TxQueues {
		if err := c.setTxQueues(link.Name, prev.Channels, cfg.TxQueues); err != nil {
			return err
		}
		logger.Info("Set transmit queues", "device", link.Name, "from", link.TxQueues, "to", cfg.TxQueues)
		link.TxQueues = cfg.TxQueues
	}
	handle := pickRootHandle(prev)
	if prev.Root != nil && resetsTCMap(prev.Root.Kind) {
		// taprio and mqprio clear the device's traffic-class map when they are
		// destroyed, which happens after a new root is grafted in: the new root
		// would run without its map (seen on 6.1, and caught by the read-back).
		// So the old root goes first; the device runs its default qdisc until the
		// new one is in, and gets the old one back if the new one fails.
		if err := c.Delete(link.Index, HandleRoot); err != nil {
			return err
		}
	}
	if err := c.Replace(link.Index, handle, HandleRoot, cfg.Root); err != nil {
		return err
	}
	for _, ch := range cfg.Children {
		if err := c.Replace(link.Index, 0, MakeHandle(handle.Major(), ch.Queue+1), ch.Qdisc); err != nil {
			return err
		}
	}
	if len(cfg.Children) > 0 {
		if err := c.restartGates(link.Index, handle, cfg.Root); err != nil {
			return err
		}
	}
	now, err := c.Snapshot(link)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := c.matches(now, handle, link, cfg); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	logger.Info("Applied qdiscs", "device", link.Name, "root", cfg.Root.Kind(), "handle", handle, "children", len(cfg.Children))
	return nil
}

// restartGates starts the gate schedule of a software taprio at handle again
// after children were grafted under it. Grafting a child under taprio
// deactivates the device (taprio_graft), which resets taprio, and taprio's
// reset cancels the timer that advances its gates; nothing starts it again:
// 6.1 then runs with every gate open, 6.12 with every gate shut
// (TestKernelTaprioRunsWithChildren). Changing the qdisc with the same
// schedule starts the timer at the schedule's next cycle. The timer was
// stopped just now, before or a few milliseconds after the base time, so
// the kernel has (almost) no missed gate entries to step through. Other
// roots, txtime-assist taprio (its gates need no timer) and full offload
// are left alone.
func (c *Client) restartGates(ifindex int, handle Handle, root Qdisc) error {
	t, ok := root.(*Taprio)
	if !ok || !t.NeedsGateTimer() {
		return nil
	}
	if err := c.Replace(ifindex, handle, HandleRoot, t); err != nil {
		return fmt.Errorf("restart the gate schedule after adding child qdiscs: %w", err)
	}
	return nil
}

// resetsTCMap reports whether destroying a root of this kind clears the
// device's traffic-class map (netdev_reset_tc).
func resetsTCMap(kind string) bool { return kind == "taprio" || kind == "mqprio" }

func pickRootHandle(prev State) Handle {
	used := map[uint16]bool{}
	if prev.Root != nil {
		used[prev.Root.Handle.Major()] = true
	}
	for _, q := range prev.Children {
		used[q.Handle.Major()] = true
	}
	for _, h := range rootHandles {
		if !used[h] {
			return MakeHandle(h, 0)
		}
	}
	return MakeHandle(rootHandles[0], 0)
}

func (c *Client) setTxQueues(name string, cur *ethtool.Channels, n int) error {
	if cur == nil {
		return &FieldError{Field: "txQueues", Reason: fmt.Sprintf("%s does not report ethtool channels", name)}
	}
	ch := *cur
	switch {
	case ch.MaxTx > 0:
		if n > int(ch.MaxTx) {
			return &FieldError{Field: "txQueues", Reason: fmt.Sprintf("%d, but %s has at most %d tx channels", n, name, ch.MaxTx)}
		}
		ch.TxCount = uint32(n)
	case ch.MaxCombined > 0:
		if n > int(ch.MaxCombined) {
			return &FieldError{Field: "txQueues", Reason: fmt.Sprintf("%d, but %s has at most %d combined channels", n, name, ch.MaxCombined)}
		}
		ch.CombinedCount = uint32(n)
	default:
		return &FieldError{Field: "txQueues", Reason: fmt.Sprintf("%s cannot change its channels", name)}
	}
	return c.SetChannels(name, ch)
}

// Restore puts a snapshot back: channels first (the old root's queue map may
// need them), then the root and its children, then checks the result.
func (c *Client) Restore(ctx context.Context, link Link, s State) error {
	if s.Channels != nil {
		if cur, err := c.Channels(link.Name); err == nil && (cur.TxCount != s.Channels.TxCount || cur.CombinedCount != s.Channels.CombinedCount) {
			if err := c.SetChannels(link.Name, *s.Channels); err != nil {
				return err
			}
		}
	}
	cur, err := c.Snapshot(link)
	if err != nil {
		return err
	}
	if sameTree(s, cur) == nil {
		// The kernel refused the new root before swapping it in.
		klog.FromContext(ctx).V(2).Info("Previous qdiscs still in place", "device", link.Name, "root", s.Root)
		return nil
	}
	// Deleting the root gives the device its default qdisc back; re-creating the
	// old root over a default one also keeps a taprio/mqprio map from being
	// cleared by the destruction of the failed root.
	if cur.Root != nil && !cur.Root.Default() {
		if err := c.Delete(link.Index, HandleRoot); err != nil {
			return err
		}
	}
	if s.Root != nil && !s.Root.Default() {
		if err := c.recreate(link.Index, *s.Root); err != nil {
			return err
		}
		for _, q := range s.Children {
			if err := c.recreate(link.Index, q); err != nil {
				return err
			}
		}
		if len(s.Children) > 0 && s.Root.Qdisc != nil {
			if err := c.restartGates(link.Index, s.Root.Handle, s.Root.Qdisc); err != nil {
				return err
			}
		}
	}
	got, err := c.Snapshot(link)
	if err != nil {
		return err
	}
	if err := sameTree(s, got); err != nil {
		return fmt.Errorf("after restore: %w", err)
	}
	klog.FromContext(ctx).Info("Restored previous qdiscs", "device", link.Name, "root", s.Root)
	return nil
}

func (c *Client) recreate(ifindex int, q Installed) error {
	if q.Qdisc != nil {
		return c.Replace(ifindex, q.Handle, q.Parent, q.Qdisc)
	}
	return c.replaceRaw(ifindex, q)
}

// sameTree compares a snapshot with the tree read after restoring it.
func sameTree(want, got State) error {
	switch {
	case want.Root == nil || want.Root.Default():
		if got.Root != nil && !got.Root.Default() {
			return fmt.Errorf("root is %s, want the kernel default", got.Root)
		}
		return nil
	case got.Root == nil:
		return fmt.Errorf("no root qdisc, want %s", want.Root)
	}
	if err := sameInstalled(*want.Root, *got.Root); err != nil {
		return err
	}
	for _, w := range want.Children {
		i := slices.IndexFunc(got.Children, func(g Installed) bool { return g.Parent == w.Parent })
		if i < 0 {
			return fmt.Errorf("missing %s", w)
		}
		if err := sameInstalled(w, got.Children[i]); err != nil {
			return err
		}
	}
	return nil
}

func sameInstalled(want, got Installed) error {
	if want.Kind != got.Kind || want.Handle != got.Handle || want.Parent != got.Parent {
		return fmt.Errorf("found %s, want %s", got, want)
	}
	if want.Qdisc != nil && !reflect.DeepEqual(normalize(want.Qdisc), normalize(got.Qdisc)) {
		return fmt.Errorf("%s is %+v, want %+v", want, got.Qdisc, want.Qdisc)
	}
	return nil
}

// Matches reports whether the tree s read from link is cfg (nil), or how it
// differs: what Apply checks before doing nothing and after applying.
func (c *Client) Matches(link Link, s State, cfg Config) error {
	if cfg.Root == nil {
		return errors.New("no root qdisc wanted")
	}
	if s.Root == nil {
		return errors.New("no root qdisc")
	}
	return c.matches(s, s.Root.Handle, link, cfg)
}

// matches compares the device's tree with cfg, the root at handle.
func (c *Client) matches(s State, handle Handle, link Link, cfg Config) error {
	if s.Root == nil {
		return errors.New("no root qdisc")
	}
	if s.Root.Handle != handle || s.Root.Kind != cfg.Root.Kind() {
		return fmt.Errorf("root is %s, want %s %s", s.Root, cfg.Root.Kind(), handle)
	}
	if cfg.TxQueues > 0 && link.TxQueues != cfg.TxQueues {
		return fmt.Errorf("%d tx queues, want %d", link.TxQueues, cfg.TxQueues)
	}
	rate := ethernetRate
	if t, ok := s.Root.Qdisc.(*Taprio); ok && t.maxSDU == MaxSDUEffective {
		// The kernel lowered the limits to what the gate windows let
		// through at the link speed: the comparison needs the speed.
		rate = c.linkRate(link.Name)
	}
	if d := diffAt(cfg.Root, s.Root.Qdisc, rate); d != "" {
		return fmt.Errorf("root %s differs: %s", s.Root, d)
	}
	if len(s.Children) != len(cfg.Children) {
		return fmt.Errorf("%d child qdiscs, want %d", len(s.Children), len(cfg.Children))
	}
	for _, ch := range cfg.Children {
		parent := MakeHandle(handle.Major(), ch.Queue+1)
		i := slices.IndexFunc(s.Children, func(q Installed) bool { return q.Parent == parent })
		if i < 0 {
			return fmt.Errorf("no qdisc at %s, want %s", parent, ch.Qdisc.Kind())
		}
		got := s.Children[i]
		if got.Kind != ch.Qdisc.Kind() {
			return fmt.Errorf("%s, want %s", got, ch.Qdisc.Kind())
		}
		if d := diff(ch.Qdisc, got.Qdisc); d != "" {
			return fmt.Errorf("%s differs: %s", got, d)
		}
	}
	return nil
}

// diff compares a wanted model with a decoded one, and describes the first
// difference ("" when equal); max-SDU limits the kernel lowered are checked
// for an Ethernet link of unknown speed (see diffAt).
func diff(want, got Qdisc) string { return diffAt(want, got, ethernetRate) }

// diffAt is diff for a link of the given rate: what the kernel fills in
// (normalize) is no difference, and neither is a taprio max SDU the kernel
// does not report or lowered to what a gate window lets through (maxSDUDiff).
func diffAt(want, got Qdisc, rate linkRate) string {
	if wt, ok := want.(*Taprio); ok {
		if gt, ok := got.(*Taprio); ok {
			if d := maxSDUDiff(wt, gt, rate); d != "" {
				return d
			}
		}
	}
	w, g := normalize(want), normalize(got)
	if reflect.DeepEqual(w, g) {
		return ""
	}
	return fmt.Sprintf("have %+v, want %+v", g, w)
}

// normalize fills in what the kernel fills in, so a model compares equal with
// its dump: the cycle time taprio computes and for hardware mqprio the queues
// the NIC chose. A taprio's max SDU is left out: maxSDUDiff compares it.
func normalize(q Qdisc) Qdisc {
	switch v := q.(type) {
	case *Taprio:
		t := *v
		t.CycleTime = v.CycleDuration()
		t.Entries = slices.Clone(v.Entries)
		t.MaxSDU, t.maxSDU, t.running = nil, MaxSDUAsSet, false
		t.PrioMap.Queues = slices.Clone(v.PrioMap.Queues)
		return &t
	case *MQPrio:
		m := *v
		if m.HW != 0 {
			m.PrioMap.Queues = nil
		}
		return &m
	}
	return q
}
