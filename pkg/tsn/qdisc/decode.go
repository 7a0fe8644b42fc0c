package qdisc

import (
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Decode turns a dumped qdisc (its TCA_KIND and the payload of its TCA_OPTIONS)
// into a model. Kinds other than taprio, etf and mqprio return (nil, nil).
func Decode(kind string, options []byte) (Qdisc, error) {
	var (
		q   Qdisc
		err error
	)
	switch kind {
	case "taprio":
		var t *Taprio
		t, err = decodeTaprio(options)
		q = t
	case "etf":
		var e *ETF
		e, err = decodeETF(options)
		q = e
	case "mqprio":
		var m *MQPrio
		m, err = decodeMQPrio(options)
		q = m
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return q, nil
}

const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

func attrType(a syscall.NetlinkRouteAttr) uint16 { return a.Attr.Type & nlaTypeMask }

func need(a syscall.NetlinkRouteAttr, n int, name string) error {
	if len(a.Value) < n {
		return fmt.Errorf("%s: attribute is %d bytes, want %d", name, len(a.Value), n)
	}
	return nil
}

func decodeTaprio(b []byte) (*Taprio, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return nil, fmt.Errorf("parse taprio options: %w", err)
	}
	t := &Taprio{}
	var oper, admin []syscall.NetlinkRouteAttr
	sawPriomap, sawTCEntry, perSchedule := false, false, false
	for _, a := range attrs {
		switch attrType(a) {
		case tcaTaprioAttrPriomap:
			m, _, err := decodeMQPrioQopt(a.Value)
			if err != nil {
				return nil, fmt.Errorf("taprio priomap: %w", err)
			}
			t.PrioMap, sawPriomap = m, true
		case tcaTaprioAttrSchedClockID:
			if err := need(a, 4, "taprio clockid"); err != nil {
				return nil, err
			}
			t.Clock = clockFromID(int32(native.Uint32(a.Value)))
		case tcaTaprioAttrFlags:
			if err := need(a, 4, "taprio flags"); err != nil {
				return nil, err
			}
			f := native.Uint32(a.Value)
			t.TxTimeAssist = f&taprioFlagTxtimeAssist != 0
			t.FullOffload = f&taprioFlagFullOffload != 0
		case tcaTaprioAttrTxtimeDelay:
			if err := need(a, 4, "taprio txtime-delay"); err != nil {
				return nil, err
			}
			t.TxTimeDelay = native.Uint32(a.Value)
		case tcaTaprioAttrTCEntry:
			fp, err := t.decodeTCEntry(a.Value)
			if err != nil {
				return nil, err
			}
			sawTCEntry, perSchedule = true, perSchedule || fp
		case tcaTaprioAttrAdminSched:
			admin, err = nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, fmt.Errorf("parse taprio admin schedule: %w", err)
			}
		case tcaTaprioAttrSchedBaseTime, tcaTaprioAttrSchedCycleTime, tcaTaprioAttrSchedCycleTimeExt, tcaTaprioAttrSchedEntryList:
			oper = append(oper, a)
		}
	}
	if !sawPriomap {
		return nil, fmt.Errorf("taprio dump has no priomap")
	}
	// A schedule that has not reached its base time yet is the admin schedule; the
	// one running is the oper schedule. The admin schedule is what was asked for last.
	sched := oper
	if len(admin) > 0 {
		sched = admin
	}
	t.running = len(admin) == 0 && len(oper) > 0
	if err := t.decodeSchedule(sched); err != nil {
		return nil, err
	}
	// 6.1 dumps the qdisc's limits as set. Kernels whose tc entries carry
	// the frame-preemption attribute (6.12) keep limits per schedule and dump
	// only the running (oper) schedule's, after lowering them to what its
	// gate windows let through: nothing before the base time, and the old
	// schedule's while a new one is pending.
	switch {
	case !sawTCEntry || (perSchedule && len(admin) > 0):
		t.maxSDU, t.MaxSDU = MaxSDUUnknown, nil
	case perSchedule:
		t.maxSDU = MaxSDUEffective
	}
	if allZero(t.MaxSDU) {
		t.MaxSDU = nil
	}
	return t, nil
}

// decodeTCEntry reads one TCA_TAPRIO_ATTR_TC_ENTRY into MaxSDU; fp reports
// whether it carries the frame-preemption attribute (kernels that keep
// limits per schedule).
func (t *Taprio) decodeTCEntry(b []byte) (fp bool, err error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return false, fmt.Errorf("parse taprio tc entry: %w", err)
	}
	index, sdu := -1, uint32(0)
	for _, a := range attrs {
		switch attrType(a) {
		case tcaTaprioTCEntryIndex:
			if err := need(a, 4, "taprio tc entry index"); err != nil {
				return false, err
			}
			index = int(native.Uint32(a.Value))
		case tcaTaprioTCEntryMaxSDU:
			if err := need(a, 4, "taprio tc entry max-sdu"); err != nil {
				return false, err
			}
			sdu = native.Uint32(a.Value)
		case tcaTaprioTCEntryFP:
			fp = true
		}
	}
	if index < 0 || index >= MaxTrafficClasses {
		return false, fmt.Errorf("taprio tc entry: bad index %d", index)
	}
	for len(t.MaxSDU) <= index {
		t.MaxSDU = append(t.MaxSDU, 0)
	}
	t.MaxSDU[index] = sdu
	return fp, nil
}

func (t *Taprio) decodeSchedule(attrs []syscall.NetlinkRouteAttr) error {
	for _, a := range attrs {
		switch attrType(a) {
		case tcaTaprioAttrSchedBaseTime:
			if err := need(a, 8, "taprio base-time"); err != nil {
				return err
			}
			t.BaseTime = int64(native.Uint64(a.Value))
		case tcaTaprioAttrSchedCycleTime:
			if err := need(a, 8, "taprio cycle-time"); err != nil {
				return err
			}
			t.CycleTime = int64(native.Uint64(a.Value))
		case tcaTaprioAttrSchedCycleTimeExt:
			if err := need(a, 8, "taprio cycle-time-extension"); err != nil {
				return err
			}
			t.CycleTimeExtension = int64(native.Uint64(a.Value))
		case tcaTaprioAttrSchedEntryList:
			list, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return fmt.Errorf("parse taprio entry list: %w", err)
			}
			for _, e := range list {
				if attrType(e) != tcaTaprioSchedEntry {
					continue
				}
				entry, err := decodeGateEntry(e.Value)
				if err != nil {
					return err
				}
				t.Entries = append(t.Entries, entry)
			}
		}
	}
	return nil
}

func decodeGateEntry(b []byte) (GateEntry, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return GateEntry{}, fmt.Errorf("parse taprio entry: %w", err)
	}
	var e GateEntry
	for _, a := range attrs {
		switch attrType(a) {
		case tcaTaprioSchedEntryCmd:
			if err := need(a, 1, "taprio entry command"); err != nil {
				return e, err
			}
			e.Command = GateCommand(a.Value[0])
		case tcaTaprioSchedEntryGateMask:
			if err := need(a, 4, "taprio entry gate mask"); err != nil {
				return e, err
			}
			e.GateMask = native.Uint32(a.Value)
		case tcaTaprioSchedEntryInterval:
			if err := need(a, 4, "taprio entry interval"); err != nil {
				return e, err
			}
			e.Interval = native.Uint32(a.Value)
		}
	}
	return e, nil
}

func decodeETF(b []byte) (*ETF, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return nil, fmt.Errorf("parse etf options: %w", err)
	}
	for _, a := range attrs {
		if attrType(a) != tcaETFParms {
			continue
		}
		if err := need(a, sizeofETFQopt, "etf parms"); err != nil {
			return nil, err
		}
		f := native.Uint32(a.Value[8:])
		return &ETF{
			Delta:         int32(native.Uint32(a.Value[0:])),
			Clock:         clockFromID(int32(native.Uint32(a.Value[4:]))),
			DeadlineMode:  f&etfFlagDeadlineMode != 0,
			Offload:       f&etfFlagOffload != 0,
			SkipSockCheck: f&etfFlagSkipSockCheck != 0,
		}, nil
	}
	return nil, fmt.Errorf("etf dump has no parms")
}

func decodeMQPrio(b []byte) (*MQPrio, error) {
	pm, hw, err := decodeMQPrioQopt(b)
	if err != nil {
		return nil, fmt.Errorf("mqprio: %w", err)
	}
	m := &MQPrio{PrioMap: pm, HW: hw}
	if len(b) <= sizeofMQPrioQoptPadded {
		return m, nil
	}
	attrs, err := nl.ParseRouteAttr(b[sizeofMQPrioQoptPadded:])
	if err != nil {
		return nil, fmt.Errorf("parse mqprio attributes: %w", err)
	}
	for _, a := range attrs {
		switch attrType(a) {
		case tcaMQPrioMode:
			if err := need(a, 2, "mqprio mode"); err != nil {
				return nil, err
			}
			switch native.Uint16(a.Value) {
			case mqprioModeDCB:
				m.Mode = MQPrioModeDCB
			case mqprioModeChannel:
				m.Mode = MQPrioModeChannel
			default:
				m.Mode = MQPrioMode(fmt.Sprintf("mode(%d)", native.Uint16(a.Value)))
			}
		case tcaMQPrioShaper:
			if err := need(a, 2, "mqprio shaper"); err != nil {
				return nil, err
			}
			switch native.Uint16(a.Value) {
			case mqprioShaperDCB:
				m.Shaper = MQPrioShaperDCB
			case mqprioShaperBWRlimit:
				m.Shaper = MQPrioShaperBWRlimit
			default:
				m.Shaper = MQPrioShaper(fmt.Sprintf("shaper(%d)", native.Uint16(a.Value)))
			}
		case tcaMQPrioMinRate64, tcaMQPrioMaxRate64:
			rates, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, fmt.Errorf("parse mqprio rates: %w", err)
			}
			var vs []uint64
			for _, r := range rates {
				if err := need(r, 8, "mqprio rate"); err != nil {
					return nil, err
				}
				vs = append(vs, native.Uint64(r.Value))
			}
			vs = vs[:min(len(vs), int(m.PrioMap.NumTC))]
			if attrType(a) == tcaMQPrioMinRate64 {
				m.MinRate = vs
			} else {
				m.MaxRate = vs
			}
		}
	}
	return m, nil
}

func allZero(v []uint32) bool {
	for _, x := range v {
		if x != 0 {
			return false
		}
	}
	return true
}
