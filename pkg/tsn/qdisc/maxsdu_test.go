package qdisc

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink/nl"
)

// dump612 lays out a taprio dump as 6.12 does: the running (oper) schedule's
// limits in tc entries with the frame-preemption attribute, and optionally a
// pending admin schedule.
func dump612(t *testing.T, oper *Taprio, sdu []uint32, admin *Taprio) []byte {
	t.Helper()
	q := *oper
	q.MaxSDU = nil
	opts, err := q.options()
	if err != nil {
		t.Fatal(err)
	}
	for tc := range MaxTrafficClasses {
		var v uint32
		if tc < len(sdu) {
			v = sdu[tc]
		}
		e := nl.NewRtAttr(tcaTaprioAttrTCEntry, nil)
		e.AddRtAttr(tcaTaprioTCEntryIndex, u32(uint32(tc)))
		e.AddRtAttr(tcaTaprioTCEntryMaxSDU, u32(v))
		e.AddRtAttr(tcaTaprioTCEntryFP, u32(1))
		opts.AddChild(e)
	}
	if admin != nil {
		a := nl.NewRtAttr(tcaTaprioAttrAdminSched, nil)
		a.AddRtAttr(tcaTaprioAttrSchedBaseTime, s64(admin.BaseTime))
		l := a.AddRtAttr(tcaTaprioAttrSchedEntryList, nil)
		for i, en := range admin.Entries {
			e := l.AddRtAttr(tcaTaprioSchedEntry, nil)
			e.AddRtAttr(tcaTaprioSchedEntryIndex, u32(uint32(i)))
			e.AddRtAttr(tcaTaprioSchedEntryCmd, []byte{byte(en.Command)})
			e.AddRtAttr(tcaTaprioSchedEntryGateMask, u32(en.GateMask))
			e.AddRtAttr(tcaTaprioSchedEntryInterval, u32(en.Interval))
		}
		opts.AddChild(a)
	}
	return opts.Serialize()[4:]
}

func windowTaprio() *Taprio {
	return &Taprio{
		PrioMap: prioMap(3, []uint8{0, 1, 2}, QueueRange{1, 0}, QueueRange{1, 1}, QueueRange{1, 2}),
		Entries: []GateEntry{{GateSet, 0x1, 300000}, {GateSet, 0x2, 300000}, {GateSet, 0x4, 10000}},
		Clock:   ClockTAI, BaseTime: 1000,
	}
}

func TestDecodeMaxSDUReport(t *testing.T) {
	q := windowTaprio()
	// 6.1: tc entries without the frame-preemption attribute, the limits as set.
	q.MaxSDU = []uint32{0, 1500}
	opts, err := q.options()
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeTaprio(opts.Serialize()[4:])
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxSDUReport() != MaxSDUAsSet || len(got.MaxSDU) < 2 || got.MaxSDU[1] != 1500 {
		t.Errorf("6.1 dump: %v %v, want as set [0 1500]", got.MaxSDUReport(), got.MaxSDU)
	}
	// No tc entries at all: unknown.
	q.MaxSDU = nil
	opts, _ = q.options()
	if got, _ = decodeTaprio(opts.Serialize()[4:]); got.MaxSDUReport() != MaxSDUUnknown || got.MaxSDU != nil {
		t.Errorf("dump without tc entries: %v %v, want unknown", got.MaxSDUReport(), got.MaxSDU)
	}
	// 6.12, schedule running: the effective limits.
	if got, err = decodeTaprio(dump612(t, windowTaprio(), []uint32{0, 1500, 12486}, nil)); err != nil {
		t.Fatal(err)
	}
	if got.MaxSDUReport() != MaxSDUEffective || len(got.MaxSDU) < 3 || got.MaxSDU[2] != 12486 {
		t.Errorf("6.12 running: %v %v, want effective [0 1500 12486]", got.MaxSDUReport(), got.MaxSDU)
	}
	// 6.12, a new schedule pending: the limits are the running one's, not the
	// decoded (admin) schedule's.
	next := windowTaprio()
	next.BaseTime = 5000
	if got, err = decodeTaprio(dump612(t, windowTaprio(), []uint32{0, 1500}, next)); err != nil {
		t.Fatal(err)
	}
	if got.BaseTime != 5000 || got.MaxSDUReport() != MaxSDUUnknown || got.MaxSDU != nil {
		t.Errorf("6.12 pending: base %d %v %v, want the admin schedule with unknown limits", got.BaseTime, got.MaxSDUReport(), got.MaxSDU)
	}
}

func TestWindowMaxSDU(t *testing.T) {
	tenG := linkRate{speedMbps: 10000, headerLen: 14}
	q := windowTaprio()
	// 10 us at 10 Gbit/s (800 ps per byte) is 12500 bytes, less the header.
	if sdu, ok := windowMaxSDU(q, 2, tenG); !ok || sdu != 12486 {
		t.Errorf("class 2: %d %v, want 12486", sdu, ok)
	}
	// A window that wraps into the next cycle: class 0 is open in entries 3,
	// 0 and 1 (400+100+200 ns), longer than its 300 ns from entry 0.
	w := &Taprio{Entries: []GateEntry{{GateSet, 0x1, 100}, {GateSet, 0x3, 200}, {GateSet, 0x2, 300}, {GateSet, 0x1, 400}}}
	if sdu, ok := windowMaxSDU(w, 0, linkRate{speedMbps: 100000, headerLen: 14}); !ok || sdu != 700*1000/80-14 {
		t.Errorf("wrapping window: %d %v, want %d", sdu, ok, 700*1000/80-14)
	}
	// Above ~470 Gbit/s the kernel's floor of 17 ps per byte applies.
	if sdu, _ := windowMaxSDU(q, 2, linkRate{speedMbps: 800000, headerLen: 14}); sdu != 10000*1000/17-14 {
		t.Errorf("800G: %d, want %d", sdu, 10000*1000/17-14)
	}
	always := &Taprio{Entries: []GateEntry{{GateSet, 0x3, 100}, {GateSet, 0x1, 100}}}
	if _, ok := windowMaxSDU(always, 0, tenG); ok {
		t.Error("a gate that never closes got a window limit")
	}
	if _, ok := windowMaxSDU(always, 2, tenG); ok {
		t.Error("a gate that never opens got a window limit")
	}
	// Unknown speed: 10 Mbit/s; 10 us is 12 bytes, less than a header: no limit.
	if _, ok := windowMaxSDU(q, 2, ethernetRate); ok {
		t.Error("a window shorter than a header got a limit")
	}
}

func TestMaxSDUDiff(t *testing.T) {
	tenG := linkRate{speedMbps: 10000, headerLen: 14}
	asked := func(v ...uint32) *Taprio {
		w := windowTaprio()
		w.MaxSDU = v
		return w
	}
	want := asked(0, 1500)
	effective := func(v ...uint32) *Taprio {
		g := windowTaprio()
		g.MaxSDU, g.maxSDU = v, MaxSDUEffective
		return g
	}
	for _, tc := range []struct {
		name string
		want *Taprio
		got  *Taprio
		ok   bool
	}{
		{"window limit on a class asked unlimited", want, effective(0, 1500, 12486), true},
		{"limits as asked", want, effective(0, 1500), true},
		{"a limit nobody asked for", want, effective(0, 1500, 200), false},
		{"a different limit", want, effective(0, 1400, 12486), false},
		{"window limit below the one asked", asked(0, 1500, 20000), effective(0, 1500, 12486), true},
		{"limit asked below the window", asked(0, 1500, 9000), effective(0, 1500, 9000), true},
		{"unknown", want, func() *Taprio { g := windowTaprio(); g.maxSDU = MaxSDUUnknown; return g }(), true},
		{"as set, different", want, func() *Taprio { g := windowTaprio(); g.MaxSDU = []uint32{0, 1500, 12486}; return g }(), false},
		{"as set, trailing zeros", want, func() *Taprio { g := windowTaprio(); g.MaxSDU = []uint32{0, 1500, 0, 0}; return g }(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := diffAt(tc.want, tc.got, tenG)
			if tc.ok != (d == "") {
				t.Errorf("diff = %q, want ok %v", d, tc.ok)
			}
			if !tc.ok && !strings.Contains(d, "max SDU") {
				t.Errorf("diff %q does not name the max SDU", d)
			}
		})
	}
}
