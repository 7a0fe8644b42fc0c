package qdisc

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Attribute numbers from include/uapi/linux/pkt_sched.h; the nl package has none of them.
const (
	tcaTaprioAttrPriomap                  = 1
	tcaTaprioAttrSchedEntryList           = 2
	tcaTaprioAttrSchedBaseTime            = 3
	tcaTaprioAttrSchedClockID             = 5
	tcaTaprioAttrAdminSched               = 7
	tcaTaprioAttrSchedCycleTime           = 8
	tcaTaprioAttrSchedCycleTimeExt        = 9
	tcaTaprioAttrFlags                    = 10
	tcaTaprioAttrTxtimeDelay              = 11
	tcaTaprioAttrTCEntry                  = 12
	tcaTaprioSchedEntry                   = 1
	tcaTaprioSchedEntryIndex              = 1
	tcaTaprioSchedEntryCmd                = 2
	tcaTaprioSchedEntryGateMask           = 3
	tcaTaprioSchedEntryInterval           = 4
	tcaTaprioTCEntryIndex                 = 1
	tcaTaprioTCEntryMaxSDU                = 2
	tcaTaprioTCEntryFP                    = 3
	taprioFlagTxtimeAssist         uint32 = 1 << 0
	taprioFlagFullOffload          uint32 = 1 << 1

	tcaETFParms                 = 1
	etfFlagDeadlineMode  uint32 = 1 << 0
	etfFlagOffload       uint32 = 1 << 1
	etfFlagSkipSockCheck uint32 = 1 << 2
	sizeofETFQopt               = 12

	tcaMQPrioMode          = 1
	tcaMQPrioShaper        = 2
	tcaMQPrioMinRate64     = 3
	tcaMQPrioMaxRate64     = 4
	mqprioModeDCB          = 0
	mqprioModeChannel      = 1
	mqprioShaperDCB        = 0
	mqprioShaperBWRlimit   = 1
	sizeofMQPrioQopt       = 82 // struct tc_mqprio_qopt
	sizeofMQPrioQoptPadded = 84 // NLA_ALIGN(sizeof(struct tc_mqprio_qopt))
)

var native = binary.NativeEndian

// encodeMQPrioQopt lays out struct tc_mqprio_qopt.
func encodeMQPrioQopt(m PrioMap, hw uint8) []byte {
	b := make([]byte, sizeofMQPrioQopt)
	b[0] = m.NumTC
	copy(b[1:17], m.PrioTC[:])
	b[17] = hw
	for i, q := range m.Queues {
		if i >= MaxTrafficClasses {
			break
		}
		native.PutUint16(b[18+2*i:], q.Count)
		native.PutUint16(b[50+2*i:], q.Offset)
	}
	return b
}

func decodeMQPrioQopt(b []byte) (PrioMap, uint8, error) {
	if len(b) < sizeofMQPrioQopt {
		return PrioMap{}, 0, fmt.Errorf("tc_mqprio_qopt is %d bytes, want %d", len(b), sizeofMQPrioQopt)
	}
	m := PrioMap{NumTC: b[0]}
	copy(m.PrioTC[:], b[1:17])
	n := min(int(m.NumTC), MaxTrafficClasses)
	for i := range n {
		m.Queues = append(m.Queues, QueueRange{
			Count:  native.Uint16(b[18+2*i:]),
			Offset: native.Uint16(b[50+2*i:]),
		})
	}
	return m, b[17], nil
}

func u32(v uint32) []byte { return nl.Uint32Attr(v) }
func s32(v int32) []byte  { return nl.Uint32Attr(uint32(v)) }
func s64(v int64) []byte  { return nl.Uint64Attr(uint64(v)) }
func u64(v uint64) []byte { return nl.Uint64Attr(v) }
func u16(v uint16) []byte { return nl.Uint16Attr(v) }

// options encodes TCA_OPTIONS for taprio in the order iproute2's tc uses, so the
// request is byte-for-byte what tc would send for the same schedule.
func (t *Taprio) options() (*nl.RtAttr, error) {
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	if t.Clock != ClockNone {
		id, ok := t.Clock.id()
		if !ok {
			return nil, fmt.Errorf("clock: unknown clock %q", t.Clock)
		}
		opts.AddRtAttr(tcaTaprioAttrSchedClockID, s32(id))
	}
	if f := t.flags(); f != 0 {
		opts.AddRtAttr(tcaTaprioAttrFlags, u32(f))
	}
	opts.AddRtAttr(tcaTaprioAttrPriomap, encodeMQPrioQopt(t.PrioMap, 0))
	if t.TxTimeDelay != 0 {
		opts.AddRtAttr(tcaTaprioAttrTxtimeDelay, u32(t.TxTimeDelay))
	}
	if t.BaseTime != 0 {
		opts.AddRtAttr(tcaTaprioAttrSchedBaseTime, s64(t.BaseTime))
	}
	if t.CycleTime != 0 {
		opts.AddRtAttr(tcaTaprioAttrSchedCycleTime, s64(t.CycleTime))
	}
	if t.CycleTimeExtension != 0 {
		opts.AddRtAttr(tcaTaprioAttrSchedCycleTimeExt, s64(t.CycleTimeExtension))
	}
	for tc, sdu := range t.MaxSDU {
		e := opts.AddRtAttr(tcaTaprioAttrTCEntry|unix.NLA_F_NESTED, nil)
		e.AddRtAttr(tcaTaprioTCEntryIndex, u32(uint32(tc)))
		e.AddRtAttr(tcaTaprioTCEntryMaxSDU, u32(sdu))
	}
	if len(t.Entries) > 0 {
		list := opts.AddRtAttr(tcaTaprioAttrSchedEntryList|unix.NLA_F_NESTED, nil)
		for _, e := range t.Entries {
			a := list.AddRtAttr(tcaTaprioSchedEntry, nil)
			a.AddRtAttr(tcaTaprioSchedEntryCmd, []byte{uint8(e.Command)})
			a.AddRtAttr(tcaTaprioSchedEntryGateMask, u32(e.GateMask))
			a.AddRtAttr(tcaTaprioSchedEntryInterval, u32(e.Interval))
		}
	}
	return opts, nil
}

func (t *Taprio) flags() uint32 {
	var f uint32
	if t.TxTimeAssist {
		f |= taprioFlagTxtimeAssist
	}
	if t.FullOffload {
		f |= taprioFlagFullOffload
	}
	return f
}

func (e *ETF) options() (*nl.RtAttr, error) {
	id, ok := e.Clock.id()
	if !ok {
		return nil, fmt.Errorf("clock: unknown clock %q", e.Clock)
	}
	b := make([]byte, sizeofETFQopt)
	native.PutUint32(b[0:], uint32(e.Delta))
	native.PutUint32(b[4:], uint32(id))
	native.PutUint32(b[8:], e.flags())
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	opts.AddRtAttr(tcaETFParms, b)
	return opts, nil
}

func (e *ETF) flags() uint32 {
	var f uint32
	if e.DeadlineMode {
		f |= etfFlagDeadlineMode
	}
	if e.Offload {
		f |= etfFlagOffload
	}
	if e.SkipSockCheck {
		f |= etfFlagSkipSockCheck
	}
	return f
}

// options encodes mqprio's TCA_OPTIONS: the struct, padded to 4 bytes as tc does,
// followed by attributes (nla_nest_compat layout).
func (m *MQPrio) options() (*nl.RtAttr, error) {
	data := make([]byte, sizeofMQPrioQoptPadded)
	copy(data, encodeMQPrioQopt(m.PrioMap, m.HW))
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, data)
	switch m.Mode {
	case MQPrioModeUnset:
	case MQPrioModeDCB:
		opts.AddRtAttr(tcaMQPrioMode, u16(mqprioModeDCB))
	case MQPrioModeChannel:
		opts.AddRtAttr(tcaMQPrioMode, u16(mqprioModeChannel))
	default:
		return nil, fmt.Errorf("mode: unknown mqprio mode %q", m.Mode)
	}
	switch m.Shaper {
	case MQPrioShaperUnset:
	case MQPrioShaperDCB:
		opts.AddRtAttr(tcaMQPrioShaper, u16(mqprioShaperDCB))
	case MQPrioShaperBWRlimit:
		opts.AddRtAttr(tcaMQPrioShaper, u16(mqprioShaperBWRlimit))
	default:
		return nil, fmt.Errorf("shaper: unknown mqprio shaper %q", m.Shaper)
	}
	// Like tc, send a value for every possible class once any rate is given.
	for _, r := range []struct {
		typ   int
		rates []uint64
	}{{tcaMQPrioMinRate64, m.MinRate}, {tcaMQPrioMaxRate64, m.MaxRate}} {
		if len(r.rates) == 0 {
			continue
		}
		nest := opts.AddRtAttr(r.typ|unix.NLA_F_NESTED, nil)
		for i := range MaxTrafficClasses {
			var v uint64
			if i < len(r.rates) {
				v = r.rates[i]
			}
			nest.AddRtAttr(r.typ, u64(v))
		}
	}
	return opts, nil
}

// newQdiscRequest builds the RTM_NEWQDISC request that creates q under parent
// with the given handle, or replaces the qdisc there.
func newQdiscRequest(ifindex int, handle, parent Handle, q Qdisc) (*nl.NetlinkRequest, error) {
	opts, err := q.options()
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", q.Kind(), err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	msg := &nl.TcMsg{}
	msg.Ifindex = int32(ifindex)
	msg.Handle = uint32(handle)
	msg.Parent = uint32(parent)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated(q.Kind())))
	req.AddData(opts)
	return req, nil
}
