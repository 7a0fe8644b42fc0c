package datapath

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
)

// Manager owns the pinned maps, the restorers and the savers of one node.
// It is safe for concurrent use.
type Manager struct {
	opts      options
	features  Features
	mode      AttachMode
	saverMode AttachMode
	spec      *ebpf.CollectionSpec

	maps     map[string]*ebpf.Map // the shared, pinned maps, by name
	records  *ebpf.Map            // pinned saver records, for adoption
	restorer *ebpf.Program

	// Expiry without bpf_timer (PREEMPT_RT): a sweep run from a goroutine.
	sweep     *ebpf.Program
	stopSweep chan struct{}
	sweepDone chan struct{}
	timerErr  error

	mu     sync.Mutex
	closed bool
	savers map[string]*saverState // by pod UID
	// prepared holds a loaded saver program per slot, whether a pod uses
	// the slot or not, until Close: slots are reused without a new load.
	prepared map[uint32]*ebpf.Program
	refill   sync.WaitGroup
}

type saverState struct {
	info SaverInfo
	gen  uint32
}

// bpf map names, as pinned. A map added later (tsn_miss_reasons) is created
// when a manager adopts a pin directory made before it: the layout of the
// others, and so the directory's version, stays.
var sharedMaps = []string{
	bpf.TsnMapTsnTable, bpf.TsnMapTsnWays, bpf.TsnMapTsnPolicies, bpf.TsnMapTsnSlots,
	bpf.TsnMapTsnStats, bpf.TsnMapTsnGcTimer, bpf.TsnMapTsnMissReasons,
}

const (
	prioBuckets = OtherPriorities + 1
	recordsMap  = "tsn_records"
)

// Open loads the data path, creating or adopting the pinned maps under the pin
// directory, arms the expiry timer and adopts savers and restorers a previous
// manager left attached. Already attached programs keep running throughout.
func Open(ctx context.Context, opts ...Option) (*Manager, error) {
	log := klog.FromContext(ctx)
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("datapath options: %w", err)
	}
	for _, d := range []string{o.pinDir, filepath.Join(o.pinDir, "maps"), filepath.Join(o.pinDir, "savers"), filepath.Join(o.pinDir, "restorers")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.pinDir, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", o.pinDir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("pin dir %s is not on bpffs (mount -t bpf bpf /sys/fs/bpf)", o.pinDir)
	}

	feat, err := ProbeFeatures()
	if err != nil {
		return nil, err
	}
	m := &Manager{opts: o, features: feat, savers: map[string]*saverState{}, prepared: map[uint32]*ebpf.Program{}, maps: map[string]*ebpf.Map{}}
	m.mode = o.mode
	if m.mode == "" {
		m.mode = ModeTC
		if feat.TCX {
			m.mode = ModeTCX
		}
	}
	m.saverMode = o.saverMode
	if m.saverMode == "" {
		m.saverMode = m.mode
	}
	if (m.mode == ModeTCX || m.saverMode == ModeTCX) && !feat.TCX {
		return nil, fmt.Errorf("attach mode tcx: the kernel has no TCX (needs >= 6.6)")
	}
	if o.clockTypes != nil {
		if *o.clockTypes && !feat.ClockTypes {
			return nil, fmt.Errorf("clock types forced on: the kernel has no BPF_SKB_CLOCK_TAI (needs >= 6.11)")
		}
		m.features.ClockTypes = *o.clockTypes
	}
	if err := m.load(); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.adopt(ctx); err != nil {
		m.Close()
		return nil, err
	}
	// Open is not on a pod's critical path: prepare the first saver programs
	// now, so that even the first AttachSaver only attaches.
	m.prepare(ctx)
	m.refill.Wait()
	m.upgradeSavers(ctx)
	if m.timerErr != nil {
		log.Info("kernel refuses bpf_timer (PREEMPT_RT?): expiring entries from a goroutine while open", "err", m.timerErr)
	}
	log.Info("eBPF data path ready", "pinDir", o.pinDir, "mode", m.mode, "clockTypes", m.features.ClockTypes,
		"fexit", m.features.Fexit, "timer", m.features.Timer, "maxPods", o.maxPods, "quota", o.quota, "ttl", o.ttl, "adoptedSavers", len(m.savers))
	return m, nil
}

// Features returns what the manager uses of the kernel.
func (m *Manager) Features() Features { return m.features }

// Mode returns how restorers are attached.
func (m *Manager) Mode() AttachMode { return m.mode }

// SaverMode returns how savers are attached.
func (m *Manager) SaverMode() AttachMode { return m.saverMode }

func (m *Manager) load() error {
	spec, err := bpf.LoadTsn()
	if err != nil {
		return fmt.Errorf("load eBPF spec: %w", err)
	}
	o := m.opts
	buckets := tableBuckets(o.maxPods, o.quota)
	spec.Maps[bpf.TsnMapTsnTable].MaxEntries = buckets
	spec.Maps[bpf.TsnMapTsnWays].MaxEntries = buckets * ways
	spec.Maps[bpf.TsnMapTsnPolicies].MaxEntries = o.maxPods
	spec.Maps[bpf.TsnMapTsnSlots].MaxEntries = o.maxPods
	spec.Maps[bpf.TsnMapTsnStats].MaxEntries = o.maxPods * prioBuckets
	spec.Maps[bpf.TsnMapTsnMissReasons].MaxEntries = o.maxPods * prioBuckets
	// Configuration is compiled in as constants: no map lookup per packet.
	for name, v := range map[string]any{
		bpf.TsnVarHaveClockTypes: boolU8(m.features.ClockTypes),
		bpf.TsnVarTtlUnits:       uint32(max(1, o.ttl.Nanoseconds()>>20)),
		bpf.TsnVarGcIntervalNs:   uint64(o.gcInterval.Nanoseconds()),
		bpf.TsnVarVxlanPortA:     o.vxlanPorts[0],
		bpf.TsnVarVxlanPortB:     o.vxlanPorts[1],
		bpf.TsnVarNicClock:       uint8(o.nicClock),
		bpf.TsnVarBucketMask:     buckets - 1,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	m.spec = spec

	mapsDir := filepath.Join(o.pinDir, "maps")
	for _, name := range sharedMaps {
		ms := spec.Maps[name].Copy()
		ms.Pinning = ebpf.PinByName
		mp, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: mapsDir})
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("map %s pinned in %s was made with other sizes (max pods/quota); open with the same options or remove the directory: %w", name, mapsDir, err)
		}
		if err != nil {
			return fmt.Errorf("create or adopt map %s: %w", name, err)
		}
		m.maps[name] = mp
	}
	rec, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: recordsMap, Type: ebpf.Array, KeySize: 4, ValueSize: uint32(recordSize),
		MaxEntries: o.maxPods, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: mapsDir})
	if err != nil {
		return fmt.Errorf("create or adopt map %s: %w", recordsMap, err)
	}
	m.records = rec

	var objs struct {
		Restorer *ebpf.Program `ebpf:"tsn_restorer"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: m.maps}); err != nil {
		return fmt.Errorf("load restorer: %w", err)
	}
	m.restorer = objs.Restorer
	return m.startExpiry()
}

// startExpiry (re)arms the expiry timer, which lives in the pinned map and
// keeps running without us. Kernels that refuse bpf_timer (PREEMPT_RT) get a
// sweep program run from a goroutine instead, while the manager is open.
func (m *Manager) startExpiry() error {
	opts := &ebpf.CollectionOptions{MapReplacements: m.maps}
	if m.opts.timer == nil || *m.opts.timer {
		var arm struct {
			GCArm *ebpf.Program `ebpf:"tsn_gc_arm"`
		}
		err := m.spec.LoadAndAssign(&arm, opts)
		if err == nil {
			defer arm.GCArm.Close()
			ret, err := arm.GCArm.Run(&ebpf.RunOptions{Data: probePacket()})
			if err != nil || ret != 0 {
				return fmt.Errorf("arm expiry timer: ret %d: %v", ret, err)
			}
			m.features.Timer = true
			return nil
		}
		if m.opts.timer != nil {
			return fmt.Errorf("load expiry timer program: %w", err)
		}
		m.timerErr = err
	}
	var sw struct {
		Sweep *ebpf.Program `ebpf:"tsn_gc_sweep"`
	}
	if err := m.spec.LoadAndAssign(&sw, opts); err != nil {
		return fmt.Errorf("load expiry sweep program: %w", err)
	}
	m.sweep = sw.Sweep
	m.stopSweep = make(chan struct{})
	m.sweepDone = make(chan struct{})
	go func() {
		defer close(m.sweepDone)
		t := time.NewTicker(m.opts.gcInterval)
		defer t.Stop()
		for {
			select {
			case <-m.stopSweep:
				return
			case <-t.C:
				_, _ = m.sweep.Run(&ebpf.RunOptions{Data: probePacket()})
			}
		}
	}()
	return nil
}

// loadSaver loads (and verifies) a saver program bound to slot.
func (m *Manager) loadSaver(slot uint32) (*ebpf.Program, error) {
	spec := m.spec.Copy()
	if err := spec.Variables[bpf.TsnVarSaverSlot].Set(slot); err != nil {
		return nil, fmt.Errorf("set saver slot: %w", err)
	}
	var objs struct {
		Saver *ebpf.Program `ebpf:"tsn_saver"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: m.maps}); err != nil {
		return nil, fmt.Errorf("load saver for slot %d: %w", slot, err)
	}
	return objs.Saver, nil
}

// prepare loads saver programs for the next free slots in the background, so
// AttachSaver only writes the policy and creates the link.
func (m *Manager) prepare(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var want []uint32
	for _, slot := range m.freeSlotsLocked(m.opts.prepared) {
		if _, ok := m.prepared[slot]; !ok {
			want = append(want, slot)
		}
	}
	if len(want) == 0 {
		return
	}
	m.refill.Add(1)
	go func() {
		defer m.refill.Done()
		for _, slot := range want {
			prog, err := m.loadSaver(slot)
			if err != nil {
				klog.FromContext(ctx).Error(err, "prepare saver program", "slot", slot)
				return
			}
			m.mu.Lock()
			if m.closed || m.prepared[slot] != nil {
				prog.Close()
			} else {
				m.prepared[slot] = prog
			}
			m.mu.Unlock()
		}
	}()
}

// pickSlotLocked returns a free slot, one with a prepared program if any.
func (m *Manager) pickSlotLocked() (uint32, error) {
	free := m.freeSlotsLocked(int(m.opts.maxPods))
	if len(free) == 0 {
		return 0, fmt.Errorf("all %d slots in use (WithMaxPods)", m.opts.maxPods)
	}
	for _, slot := range free {
		if m.prepared[slot] != nil {
			return slot, nil
		}
	}
	return free[0], nil
}

func (m *Manager) freeSlotsLocked(n int) []uint32 {
	used := make(map[uint32]bool, len(m.savers))
	for _, s := range m.savers {
		used[s.info.Slot] = true
	}
	var free []uint32
	for slot := uint32(0); slot < m.opts.maxPods && len(free) < n; slot++ {
		if !used[slot] {
			free = append(free, slot)
		}
	}
	return free
}

func (m *Manager) restorerPin(ifname string) string {
	return filepath.Join(m.opts.pinDir, "restorers", ifname)
}

func (m *Manager) saverPin(slot uint32) string {
	return filepath.Join(m.opts.pinDir, "savers", fmt.Sprintf("slot-%d", slot))
}

// EnsureRestorer implements Interface.
func (m *Manager) EnsureRestorer(ctx context.Context, ifname string) error {
	if err := checkIfname(ifname); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	pin := m.restorerPin(ifname)
	err := hook.InNetns(m.opts.netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find NIC %s: %w", ifname, err)
		}
		mode := m.pinnedMode(pin)
		if mode != "" && !hook.Attached(hook.Mode(mode), pin) {
			// Pinned for an interface that has since gone (and maybe come back).
			if err := hook.Detach(hook.Mode(mode), -1, hook.First, pin); err != nil {
				return err
			}
		} else if mode != "" && mode != m.mode {
			if err := hook.Detach(hook.Mode(mode), l.Attrs().Index, hook.First, pin); err != nil {
				return err
			}
		}
		return hook.Attach(hook.Mode(m.mode), m.restorer, l.Attrs().Index, hook.First, pin)
	})
	if err != nil {
		return fmt.Errorf("restorer on %s: %w", ifname, err)
	}
	klog.FromContext(ctx).V(2).Info("restorer attached", "nic", ifname, "mode", m.mode)
	return nil
}

// RemoveRestorer implements Interface.
func (m *Manager) RemoveRestorer(ctx context.Context, ifname string) error {
	if err := checkIfname(ifname); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	if err := m.removeRestorerLocked(ifname); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("restorer detached", "nic", ifname)
	return nil
}

func (m *Manager) removeRestorerLocked(ifname string) error {
	pin := m.restorerPin(ifname)
	mode := m.pinnedMode(pin)
	if mode == "" {
		return nil
	}
	err := hook.InNetns(m.opts.netnsPath, func() error {
		idx := -1
		if l, err := netlink.LinkByName(ifname); err == nil {
			idx = l.Attrs().Index
		}
		return hook.Detach(hook.Mode(mode), idx, hook.First, pin)
	})
	if err != nil {
		return fmt.Errorf("remove restorer from %s: %w", ifname, err)
	}
	return nil
}

// Restorers lists the NICs with a restorer pinned.
func (m *Manager) Restorers() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(m.opts.pinDir, "restorers"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// pinnedMode tells what is pinned at pin: a TCX link, a tc program, or nothing.
func (m *Manager) pinnedMode(pin string) AttachMode {
	if _, err := os.Stat(pin); err != nil {
		return ""
	}
	if hook.IsLink(pin) {
		return ModeTCX
	}
	return ModeTC
}

// AttachSaver implements Interface.
func (m *Manager) AttachSaver(ctx context.Context, podUID, netnsPath, ifname string, p Policy) error {
	start := time.Now()
	log := klog.FromContext(ctx).WithValues("pod", podUID, "netns", netnsPath, "interface", ifname)
	if err := p.Validate(); err != nil {
		return fmt.Errorf("saver policy for pod %s: %w", podUID, err)
	}
	if podUID == "" || len(podUID) >= len(record{}.UID) {
		return fmt.Errorf("pod UID %q: want 1..%d bytes", podUID, len(record{}.UID)-1)
	}
	if len(netnsPath) >= len(record{}.Netns) || netnsPath == "" {
		return fmt.Errorf("netns path %q: want 1..%d bytes", netnsPath, len(record{}.Netns)-1)
	}
	if err := checkIfname(ifname); err != nil {
		return err
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	if s, ok := m.savers[podUID]; ok {
		pin := m.saverPin(s.info.Slot)
		if s.info.NetnsPath == netnsPath && s.info.Ifname == ifname && hook.Attached(hook.Mode(s.info.Mode), pin) {
			if err := m.writePolicy(s.info.Slot, p); err != nil {
				return err
			}
			s.info.Policy = p
			log.V(2).Info("saver policy updated", "slot", s.info.Slot)
			return nil
		}
		// Moved (or its interface went away): start over in the same slot.
		if err := m.detachSaverLocked(s); err != nil {
			return err
		}
	}

	slot, err := m.pickSlotLocked()
	if err != nil {
		return fmt.Errorf("attach saver for pod %s: %w", podUID, err)
	}
	// The slot's program stays in m.prepared after the attach: when the pod
	// goes, the next pod in this slot reuses it, so after warm-up no hook
	// waits for the verifier (a load takes 0.1-1 s on a busy node).
	prog, ok := m.prepared[slot]
	if !ok {
		if prog, err = m.loadSaver(slot); err != nil {
			return err
		}
		m.prepared[slot] = prog
		log.Info("no prepared saver program: loaded one inline", "slot", slot)
	}

	gen, err := m.resetSlot(slot)
	if err != nil {
		return err
	}
	if err := m.writePolicy(slot, p); err != nil {
		return err
	}
	pin := m.saverPin(slot)
	err = hook.InNetns(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find pod interface %s: %w", ifname, err)
		}
		return hook.Attach(hook.Mode(m.saverMode), prog, l.Attrs().Index, hook.First, pin)
	})
	if err == nil {
		err = m.writeRecord(slot, record{Used: 1, Mode: modeByte(m.saverMode)}.with(podUID, ifname, netnsPath))
	}
	if err != nil {
		_ = m.deactivate(slot, gen)
		_ = hook.InNetns(netnsPath, func() error {
			idx := -1
			if l, err := netlink.LinkByName(ifname); err == nil {
				idx = l.Attrs().Index
			}
			return hook.Detach(hook.Mode(m.saverMode), idx, hook.First, pin)
		})
		return fmt.Errorf("attach saver for pod %s on %s in %s: %w", podUID, ifname, netnsPath, err)
	}
	m.savers[podUID] = &saverState{gen: gen, info: SaverInfo{PodUID: podUID, NetnsPath: netnsPath, Ifname: ifname, Slot: slot, Mode: m.saverMode, Policy: p}}
	log.Info("saver attached", "slot", slot, "mode", m.saverMode, "prepared", ok, "took", time.Since(start))
	m.mu.Unlock()
	m.prepare(ctx)
	m.mu.Lock()
	return nil
}

// DetachSaver implements Interface.
func (m *Manager) DetachSaver(ctx context.Context, podUID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	s, ok := m.savers[podUID]
	if !ok {
		return nil
	}
	if err := m.detachSaverLocked(s); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("saver detached", "pod", podUID, "slot", s.info.Slot)
	return nil
}

func (m *Manager) detachSaverLocked(s *saverState) error {
	pin := m.saverPin(s.info.Slot)
	mode := hook.Mode(s.info.Mode)
	err := hook.InNetns(s.info.NetnsPath, func() error {
		idx := -1
		if l, err := netlink.LinkByName(s.info.Ifname); err == nil {
			idx = l.Attrs().Index
		}
		return hook.Detach(mode, idx, hook.First, pin)
	})
	if err != nil {
		// The pod's netns is gone: so are its interface and any cls_bpf
		// filter; a TCX link is detached by the kernel. Drop the pin.
		if derr := hook.Detach(mode, -1, hook.First, pin); derr != nil {
			return fmt.Errorf("detach saver of pod %s: %w", s.info.PodUID, errors.Join(err, derr))
		}
	}
	if err := m.deactivate(s.info.Slot, s.gen); err != nil {
		return err
	}
	if err := m.writeRecord(s.info.Slot, record{}); err != nil {
		return err
	}
	delete(m.savers, s.info.PodUID)
	return nil
}

// Savers implements Interface.
func (m *Manager) Savers() ([]SaverInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	out := make([]SaverInfo, 0, len(m.savers))
	for _, s := range m.savers {
		out = append(out, s.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PodUID < out[j].PodUID })
	return out, nil
}

// Counters implements Interface.
func (m *Manager) Counters(podUID string) (Counters, error) {
	m.mu.Lock()
	s, ok := m.savers[podUID]
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return Counters{}, errClosed
	}
	if !ok {
		return Counters{}, fmt.Errorf("counters of pod %s: no saver attached", podUID)
	}
	return m.slotCounters(s.info.Slot)
}

func (m *Manager) slotCounters(slot uint32) (Counters, error) {
	var c Counters
	for b := uint32(0); b < prioBuckets; b++ {
		// Reasons first: the saver counts missed before the reason, so read
		// in this order they never add up to more than missed.
		by, err := ReadMissReasons(m.maps[bpf.TsnMapTsnMissReasons], slot*prioBuckets+b)
		if err != nil {
			return c, fmt.Errorf("read miss reasons of slot %d: %w", slot, err)
		}
		c.ByPriority[b].MissedBy = by
		var per []bpf.TsnTsnCounters
		if err := m.maps[bpf.TsnMapTsnStats].Lookup(slot*prioBuckets+b, &per); err != nil {
			return c, fmt.Errorf("read counters of slot %d: %w", slot, err)
		}
		for _, v := range per {
			c.ByPriority[b].add(PriorityCounters{
				Saved: v.Saved, Restored: v.Restored, Missed: v.Missed, Demoted: v.Demoted,
				Dropped: v.Dropped, Rejected: v.Rejected, Expired: v.Expired,
			})
		}
	}
	return c, nil
}

// ReadMissReasons sums the per-CPU miss reasons at index idx (slot *
// (OtherPriorities+1) + application priority) of the map tsn_miss_reasons.
// The status command reads the pinned map with it.
func ReadMissReasons(reasons *ebpf.Map, idx uint32) ([NumMissReasons]uint64, error) {
	var by [NumMissReasons]uint64
	var per []bpf.TsnTsnMisses
	if err := reasons.Lookup(idx, &per); err != nil {
		return by, err
	}
	for _, v := range per {
		for r := range by {
			by[r] += v.ByReason[r]
		}
	}
	return by, nil
}

// InFlight returns how many entries the pod holds now (its quota use), and how
// many entries of the shared table are live.
func (m *Manager) InFlight(podUID string) (pod uint32, total int, err error) {
	m.mu.Lock()
	s, ok := m.savers[podUID]
	m.mu.Unlock()
	if !ok {
		return 0, 0, fmt.Errorf("pod %s: no saver attached", podUID)
	}
	var st bpf.TsnTsnSlot
	if err := m.maps[bpf.TsnMapTsnSlots].Lookup(s.info.Slot, &st); err != nil {
		return 0, 0, err
	}
	var k uint32
	var b bpf.TsnTsnBucket
	it := m.maps[bpf.TsnMapTsnTable].Iterate()
	for it.Next(&k, &b) {
		for _, s := range b.State {
			if s&stateMask == stateReady {
				total++
			}
		}
	}
	return st.Inflight, total, it.Err()
}

// Close implements Interface: handles are released, attachments and pins stay.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.refill.Wait()
	if m.stopSweep != nil {
		close(m.stopSweep)
		<-m.sweepDone
		m.stopSweep = nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for slot, p := range m.prepared {
		errs = append(errs, p.Close())
		delete(m.prepared, slot)
	}
	if m.restorer != nil {
		errs = append(errs, m.restorer.Close())
	}
	if m.sweep != nil {
		errs = append(errs, m.sweep.Close())
	}
	for _, mp := range m.maps {
		errs = append(errs, mp.Close())
	}
	if m.records != nil {
		errs = append(errs, m.records.Close())
	}
	return errors.Join(errs...)
}

// Uninstall detaches every saver and restorer, removes all pins (which stops
// the expiry timer once nothing holds the maps) and closes the manager.
func (m *Manager) Uninstall(ctx context.Context) error {
	var errs []error
	m.mu.Lock()
	for _, s := range m.savers {
		errs = append(errs, m.detachSaverLocked(s))
	}
	names, _ := m.Restorers()
	for _, n := range names {
		errs = append(errs, m.removeRestorerLocked(n))
	}
	m.mu.Unlock()
	errs = append(errs, m.Close())
	for _, name := range append(sharedMaps, recordsMap) {
		if err := os.Remove(filepath.Join(m.opts.pinDir, "maps", name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{"maps", "savers", "restorers", ""} {
		if err := os.Remove(filepath.Join(m.opts.pinDir, d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		klog.FromContext(ctx).Info("eBPF data path uninstalled", "pinDir", m.opts.pinDir)
	}
	return err
}

var errClosed = errors.New("datapath manager is closed")

func checkIfname(ifname string) error {
	if ifname == "" || len(ifname) >= unix.IFNAMSIZ || strings.ContainsAny(ifname, "/ ") {
		return fmt.Errorf("interface name %q: invalid", ifname)
	}
	return nil
}

func boolU8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// probePacket is an Ethernet + IPv4 header for BPF_PROG_TEST_RUN.
func probePacket() []byte {
	p := make([]byte, 14+20)
	p[12], p[13] = 0x08, 0x00
	p[14] = 0x45
	p[16], p[17] = 0, 20
	p[22] = 64
	p[23] = 17
	return p
}

// Entry states in tsn_bucket.state (see bpf/tsn.c).
const (
	stateMask  = 3
	stateReady = 2
)

// ways per bucket, as in bpf/tsn.c.
const ways = 4

// tableBuckets sizes the shared table: room for twice the sum of all quotas
// (four ways per bucket), in a power of two of buckets, so that a packet
// rarely finds its bucket full (a counted miss, never a wrong restore): at most
// half of the entries can be live, and one pod at its quota fills a small
// fraction. The table's footprint is what the per-packet cost depends on most
// (cache and TLB misses): see docs/datapath.md.
func tableBuckets(maxPods, quota uint32) uint32 {
	want := uint64(maxPods) * uint64(quota) * 2 / ways
	n := uint32(1)
	for uint64(n) < want {
		n <<= 1
	}
	return n
}
