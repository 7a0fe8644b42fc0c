package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

// The status command reads the data path's pins directly, read-only, instead
// of opening a datapath.Manager: Open would adopt the running daemon's savers,
// re-arm the expiry timer and prepare programs, which is the daemon's job.
// The layout read here is the data path's (pkg/tsn/datapath, slots.go and
// manager.go); TestPinsMatchManager checks the two agree against a real
// Manager.

// recordsMapName and the saver record layout: see datapath's record type.
const (
	recordsMapName = "tsn_records"
	recordSize     = 8 + 64 + 16 + 232
	denied         = 0xff
)

// pinnedSaver is one pod's saver as the pins describe it.
type pinnedSaver struct {
	PodUID    string                    `json:"podUID"`
	Ifname    string                    `json:"interface"`
	NetnsPath string                    `json:"netns"`
	Slot      uint32                    `json:"slot"`
	Mode      datapath.AttachMode       `json:"mode"`
	Attached  bool                      `json:"attached"`
	Allowed   []uint32                  `json:"allowedPriorities"`
	Remap     map[uint32]uint32         `json:"remap,omitempty"`
	Action    string                    `json:"ungranted"`
	Demote    uint32                    `json:"demotePriority"`
	Quota     uint32                    `json:"quota"`
	InFlight  uint32                    `json:"inFlight"`
	Counters  map[string]priorityCounts `json:"counters"` // by application priority ("16+" above 15); zero buckets left out
	countsRaw datapath.Counters
}

type priorityCounts struct {
	Saved, Restored, Missed, Demoted, Dropped, Rejected, Expired uint64
	// MissedBy splits Missed by reason (datapath.MissReason names); zeros left out.
	MissedBy map[string]uint64 `json:",omitempty"`
}

func countsOf(c datapath.PriorityCounters) priorityCounts {
	pc := priorityCounts{Saved: c.Saved, Restored: c.Restored, Missed: c.Missed, Demoted: c.Demoted,
		Dropped: c.Dropped, Rejected: c.Rejected, Expired: c.Expired}
	for _, r := range datapath.MissReasons() {
		if n := c.MissedBy[r]; n != 0 {
			if pc.MissedBy == nil {
				pc.MissedBy = map[string]uint64{}
			}
			pc.MissedBy[r.String()] = n
		}
	}
	return pc
}

// pinnedRestorer is a restorer pinned for a NIC interface.
type pinnedRestorer struct {
	Ifname string              `json:"interface"`
	Mode   datapath.AttachMode `json:"mode"`
}

// pinnedState is everything the status command reads from bpffs.
type pinnedState struct {
	PinDir    string           `json:"pinDir"`
	Savers    []pinnedSaver    `json:"savers"`
	Restorers []pinnedRestorer `json:"restorers"`
	// Expiry: runs of the kernel expiry timer (0 where the daemon sweeps from Go, PREEMPT_RT).
	GCRuns    uint64        `json:"gcRuns"`
	GCLastRun time.Duration `json:"gcLastRunAgo,omitempty"`
	GCExpired uint64        `json:"gcExpired"`
}

var errNoPins = errors.New("no data path pinned")

// readPins reads the data path's pinned maps and links under pinDir without
// changing anything.
func readPins(pinDir string) (*pinnedState, error) {
	maps := filepath.Join(pinDir, "maps")
	if _, err := os.Stat(filepath.Join(maps, recordsMapName)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w under %s (is the driver running, and --bpf-pin-dir right?)", errNoPins, pinDir)
	}
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(maps, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		return m, nil
	}
	records, err := open(recordsMapName)
	if err != nil {
		return nil, err
	}
	defer records.Close()
	if records.ValueSize() != recordSize {
		return nil, fmt.Errorf("pinned %s has %d-byte values, this binary reads %d: driver and status command differ in version", recordsMapName, records.ValueSize(), recordSize)
	}
	var ms [3]*ebpf.Map
	for i, name := range []string{bpf.TsnMapTsnPolicies, bpf.TsnMapTsnSlots, bpf.TsnMapTsnStats} {
		if ms[i], err = open(name); err != nil {
			return nil, err
		}
		defer ms[i].Close()
	}
	policies, slots, stats := ms[0], ms[1], ms[2]
	// Pins of a driver from before the miss reasons lack this map: counters
	// without the split then.
	reasons, err := open(bpf.TsnMapTsnMissReasons)
	if err == nil {
		defer reasons.Close()
	} else {
		reasons = nil
	}

	st := &pinnedState{PinDir: pinDir}
	buf := make([]byte, recordSize)
	for slot := uint32(0); slot < records.MaxEntries(); slot++ {
		if err := records.Lookup(slot, &buf); err != nil {
			return nil, fmt.Errorf("read record of slot %d: %w", slot, err)
		}
		if buf[0] == 0 { // unused slot
			continue
		}
		s := pinnedSaver{
			PodUID: cstr(buf[8:72]), Ifname: cstr(buf[72:88]), NetnsPath: cstr(buf[88:320]),
			Slot: slot, Mode: datapath.ModeTCX,
		}
		if buf[1] == 2 {
			s.Mode = datapath.ModeTC
		}
		_, err := os.Stat(filepath.Join(pinDir, "savers", fmt.Sprintf("slot-%d", slot)))
		s.Attached = err == nil
		var pol bpf.TsnTsnPolicy
		if err := policies.Lookup(slot, &pol); err != nil {
			return nil, fmt.Errorf("read policy of slot %d: %w", slot, err)
		}
		s.Action = datapath.Action(pol.Action).String()
		s.Demote, s.Quota = uint32(pol.DemotePrio), pol.Quota
		for app, g := range pol.Grant {
			if g == denied {
				continue
			}
			if app != 0 {
				s.Allowed = append(s.Allowed, uint32(app))
			}
			if int(g) != app {
				if s.Remap == nil {
					s.Remap = map[uint32]uint32{}
				}
				s.Remap[uint32(app)] = uint32(g)
			}
		}
		var sl bpf.TsnTsnSlot
		if err := slots.Lookup(slot, &sl); err != nil {
			return nil, fmt.Errorf("read slot %d: %w", slot, err)
		}
		s.InFlight = sl.Inflight
		if s.countsRaw, err = readCounters(stats, reasons, slot); err != nil {
			return nil, err
		}
		s.Counters = map[string]priorityCounts{}
		for p, c := range s.countsRaw.ByPriority {
			if c == (datapath.PriorityCounters{}) {
				continue
			}
			s.Counters[prioLabel(p)] = countsOf(c)
		}
		st.Savers = append(st.Savers, s)
	}
	sort.Slice(st.Savers, func(i, j int) bool { return st.Savers[i].PodUID < st.Savers[j].PodUID })

	entries, err := os.ReadDir(filepath.Join(pinDir, "restorers"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list pinned restorers: %w", err)
	}
	for _, e := range entries {
		r := pinnedRestorer{Ifname: e.Name(), Mode: datapath.ModeTC}
		if l, err := link.LoadPinnedLink(filepath.Join(pinDir, "restorers", e.Name()), nil); err == nil {
			r.Mode = datapath.ModeTCX
			l.Close()
		}
		st.Restorers = append(st.Restorers, r)
	}

	if gc, err := open(bpf.TsnMapTsnGcTimer); err == nil {
		defer gc.Close()
		// The value holds a struct bpf_timer, which user space cannot read:
		// read the bytes and take the counters after it.
		raw := make([]byte, gc.ValueSize())
		if err := gc.Lookup(uint32(0), &raw); err == nil && len(raw) >= 40 {
			st.GCRuns = binary.LittleEndian.Uint64(raw[16:24])
			if last := binary.LittleEndian.Uint64(raw[24:32]); last != 0 {
				if now, err := monotonicNow(); err == nil && now > last {
					st.GCLastRun = time.Duration(now - last)
				}
			}
			st.GCExpired = binary.LittleEndian.Uint64(raw[32:40])
		}
	}
	return st, nil
}

// readCounters sums a slot's per-CPU counters, per application priority, and
// the miss reasons if reasons is not nil.
func readCounters(stats, reasons *ebpf.Map, slot uint32) (datapath.Counters, error) {
	var c datapath.Counters
	const buckets = datapath.OtherPriorities + 1
	for b := uint32(0); b < buckets; b++ {
		if reasons != nil {
			// Before the counters, as the manager does: the sum never exceeds missed.
			by, err := datapath.ReadMissReasons(reasons, slot*buckets+b)
			if err != nil {
				return c, fmt.Errorf("read miss reasons of slot %d: %w", slot, err)
			}
			c.ByPriority[b].MissedBy = by
		}
		var per []bpf.TsnTsnCounters
		if err := stats.Lookup(slot*buckets+b, &per); err != nil {
			return c, fmt.Errorf("read counters of slot %d: %w", slot, err)
		}
		pc := &c.ByPriority[b]
		for _, v := range per {
			pc.Saved += v.Saved
			pc.Restored += v.Restored
			pc.Missed += v.Missed
			pc.Demoted += v.Demoted
			pc.Dropped += v.Dropped
			pc.Rejected += v.Rejected
			pc.Expired += v.Expired
		}
	}
	return c, nil
}

func prioLabel(p int) string {
	if p == datapath.OtherPriorities {
		return "16+"
	}
	return fmt.Sprint(p)
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
