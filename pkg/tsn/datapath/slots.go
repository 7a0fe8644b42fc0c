package datapath

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
)

// record is what a slot's saver needs to be found and removed again by a
// later manager: kept in a pinned array map, since bpffs holds no plain files.
type record struct {
	Used   uint8
	Mode   uint8
	_      [6]uint8
	UID    [64]byte
	Ifname [16]byte
	Netns  [232]byte
}

const recordSize = 8 + 64 + 16 + 232

func (r record) with(uid, ifname, netns string) record {
	copy(r.UID[:], uid)
	copy(r.Ifname[:], ifname)
	copy(r.Netns[:], netns)
	return r
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func modeByte(m AttachMode) uint8 {
	if m == ModeTC {
		return 2
	}
	return 1
}

func byteMode(b uint8) AttachMode {
	if b == 2 {
		return ModeTC
	}
	return ModeTCX
}

func (m *Manager) writeRecord(slot uint32, r record) error {
	if err := m.records.Put(slot, &r); err != nil {
		return fmt.Errorf("write record of slot %d: %w", slot, err)
	}
	return nil
}

func (m *Manager) writePolicy(slot uint32, p Policy) error {
	clock := p.LaunchTimeClock
	if clock == 0 {
		clock = ClockTAI
	}
	v := bpf.TsnTsnPolicy{
		Grant:       p.grants(),
		Action:      uint8(p.Action),
		DemotePrio:  uint8(p.DefaultPriority),
		UnspecClock: uint8(clock),
		Active:      1,
		Quota:       m.opts.quota,
	}
	if err := m.maps[bpf.TsnMapTsnPolicies].Put(slot, &v); err != nil {
		return fmt.Errorf("write policy of slot %d: %w", slot, err)
	}
	return nil
}

func policyFrom(v bpf.TsnTsnPolicy) Policy {
	p := Policy{Action: Action(v.Action), DefaultPriority: uint32(v.DemotePrio), LaunchTimeClock: Clock(v.UnspecClock)}
	for app, g := range v.Grant {
		if g == denied || app == 0 && g == 0 {
			continue
		}
		if app != 0 {
			p.Allowed = append(p.Allowed, uint32(app))
		}
		if uint32(g) != uint32(app) {
			if p.Remap == nil {
				p.Remap = map[uint32]uint32{}
			}
			p.Remap[uint32(app)] = uint32(g)
		}
	}
	return p
}

// resetSlot prepares a slot for a new pod: a new generation (entries of an
// earlier pod in the slot are never applied, and are freed by the restorer or
// the expiry timer), zero counters and quota.
func (m *Manager) resetSlot(slot uint32) (uint32, error) {
	var old bpf.TsnTsnSlot
	if err := m.maps[bpf.TsnMapTsnSlots].Lookup(slot, &old); err != nil {
		return 0, fmt.Errorf("read slot %d: %w", slot, err)
	}
	if err := m.maps[bpf.TsnMapTsnPolicies].Put(slot, &bpf.TsnTsnPolicy{}); err != nil {
		return 0, fmt.Errorf("reset policy of slot %d: %w", slot, err)
	}
	zero := make([]bpf.TsnTsnCounters, ebpf.MustPossibleCPU())
	zeroReasons := make([]bpf.TsnTsnMisses, ebpf.MustPossibleCPU())
	for b := uint32(0); b < prioBuckets; b++ {
		if err := m.maps[bpf.TsnMapTsnStats].Put(slot*prioBuckets+b, zero); err != nil {
			return 0, fmt.Errorf("reset counters of slot %d: %w", slot, err)
		}
		if err := m.maps[bpf.TsnMapTsnMissReasons].Put(slot*prioBuckets+b, zeroReasons); err != nil {
			return 0, fmt.Errorf("reset miss reasons of slot %d: %w", slot, err)
		}
	}
	gen := (old.Gen + 1) & 0xffff
	if err := m.maps[bpf.TsnMapTsnSlots].Put(slot, &bpf.TsnTsnSlot{Gen: gen}); err != nil {
		return 0, fmt.Errorf("reset slot %d: %w", slot, err)
	}
	return gen, nil
}

// deactivate stops a slot's saver from saving and makes its entries stale.
func (m *Manager) deactivate(slot, gen uint32) error {
	if err := m.maps[bpf.TsnMapTsnPolicies].Put(slot, &bpf.TsnTsnPolicy{}); err != nil {
		return fmt.Errorf("deactivate slot %d: %w", slot, err)
	}
	if err := m.maps[bpf.TsnMapTsnSlots].Put(slot, &bpf.TsnTsnSlot{Gen: (gen + 1) & 0xffff}); err != nil {
		return fmt.Errorf("release slot %d: %w", slot, err)
	}
	return nil
}

// adopt reads the savers a previous manager attached.
func (m *Manager) adopt(ctx context.Context) error {
	log := klog.FromContext(ctx)
	for slot := uint32(0); slot < m.opts.maxPods; slot++ {
		var r record
		if err := m.records.Lookup(slot, &r); err != nil {
			return fmt.Errorf("read record of slot %d: %w", slot, err)
		}
		if r.Used == 0 {
			continue
		}
		var pol bpf.TsnTsnPolicy
		if err := m.maps[bpf.TsnMapTsnPolicies].Lookup(slot, &pol); err != nil {
			return fmt.Errorf("read policy of slot %d: %w", slot, err)
		}
		var st bpf.TsnTsnSlot
		if err := m.maps[bpf.TsnMapTsnSlots].Lookup(slot, &st); err != nil {
			return fmt.Errorf("read slot %d: %w", slot, err)
		}
		info := SaverInfo{
			PodUID: cstr(r.UID[:]), Ifname: cstr(r.Ifname[:]), NetnsPath: cstr(r.Netns[:]),
			Slot: slot, Mode: byteMode(r.Mode), Policy: policyFrom(pol),
		}
		m.savers[info.PodUID] = &saverState{info: info, gen: st.Gen}
		log.V(2).Info("adopted saver", "pod", info.PodUID, "slot", slot,
			"attached", hook.Attached(hook.Mode(info.Mode), m.saverPin(slot)))
	}
	return nil
}

// upgradeSavers gives adopted savers this manager's program when theirs is
// another one (a driver upgrade). The restorer is replaced in place by
// EnsureRestorer, and a restorer and savers from different builds may not
// agree on where an entry lives: without this, the pods running across an
// upgrade would keep their old savers, and lose their restores, until they
// were recreated. A plain restart finds the same program (the kernel's tag
// covers the instructions, not the slot, which is in a map) and loads nothing.
func (m *Manager) upgradeSavers(ctx context.Context) {
	log := klog.FromContext(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	want := ""
	for _, s := range m.savers {
		pin := m.saverPin(s.info.Slot)
		if !hook.Attached(hook.Mode(s.info.Mode), pin) {
			continue
		}
		old, err := pinnedProgram(pin)
		if err != nil {
			log.Error(err, "cannot read an adopted saver's program", "pod", s.info.PodUID, "slot", s.info.Slot)
			continue
		}
		oldInfo, err := old.Info()
		old.Close()
		if err != nil {
			log.Error(err, "cannot read an adopted saver's program", "pod", s.info.PodUID, "slot", s.info.Slot)
			continue
		}
		if want == "" {
			if want, err = m.saverTagLocked(); err != nil {
				log.Error(err, "cannot tell whether adopted savers are current; they keep their programs")
				return
			}
		}
		if oldInfo.Tag == want {
			continue
		}
		prog, ok := m.prepared[s.info.Slot]
		if !ok {
			if prog, err = m.loadSaver(s.info.Slot); err != nil {
				log.Error(err, "cannot load the current saver for an adopted pod; it keeps its old program", "pod", s.info.PodUID, "slot", s.info.Slot)
				continue
			}
			m.prepared[s.info.Slot] = prog
		}
		info := s.info
		err = hook.InNetns(info.NetnsPath, func() error {
			l, err := netlink.LinkByName(info.Ifname)
			if err != nil {
				return fmt.Errorf("find pod interface %s: %w", info.Ifname, err)
			}
			// In place (a link update, or a filter replace): the pod's
			// packets never pass without a saver.
			return hook.Attach(hook.Mode(info.Mode), prog, l.Attrs().Index, hook.First, pin)
		})
		if err != nil {
			// Its pod may be gone (the runtime's Synchronize detaches it then).
			log.Error(err, "cannot replace an adopted saver's program; it keeps the old one", "pod", info.PodUID, "slot", info.Slot, "netns", info.NetnsPath)
			continue
		}
		log.Info("Replaced an adopted saver's program with this build's", "pod", info.PodUID, "slot", info.Slot, "oldTag", oldInfo.Tag, "tag", want)
	}
}

// saverTagLocked is the kernel's tag of this build's saver program.
func (m *Manager) saverTagLocked() (string, error) {
	for _, p := range m.prepared {
		info, err := p.Info()
		if err != nil {
			return "", err
		}
		return info.Tag, nil
	}
	p, err := m.loadSaver(0)
	if err != nil {
		return "", err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", err
	}
	return info.Tag, nil
}
