package qdisc

import (
	"fmt"

	"github.com/safchain/ethtool"
)

// linkRate is what a newer kernel's taprio (6.12) derives per-class max-SDU
// limits from, besides the gate list (net/sched/sch_taprio.c,
// taprio_update_queue_max_sdu).
type linkRate struct {
	// speedMbps is the link speed; 0 when unknown, for which the kernel
	// assumes 10 Mbit/s.
	speedMbps uint32
	// headerLen is the device's link-layer header (hard_header_len).
	headerLen uint32
}

// ethernetRate is an Ethernet link of unknown speed: TSN NICs are Ethernet.
var ethernetRate = linkRate{headerLen: 14}

// Kernel constants of the window-derived limit (sch_taprio.c).
const (
	defaultSpeedMbps  = 10 // SPEED_10, when the driver reports no speed
	minPicosPerByte   = 17 // TAPRIO_PICOS_PER_BYTE_MIN
	picosPerByteAt1Mb = 8_000_000
)

// linkRate reads the link speed through ethtool; on failure (no link, no
// ethtool support) it is unknown, as it is to the kernel.
func (c *Client) linkRate(name string) linkRate {
	r := ethernetRate
	e, err := c.ethtool()
	if err != nil {
		return r
	}
	defer e.Close()
	var cmd ethtool.EthtoolCmd
	if speed, err := e.CmdGet(&cmd, name); err == nil && speed != 0 && speed != ^uint32(0) {
		r.speedMbps = speed
	}
	return r
}

// windowMaxSDU is the largest SDU traffic class tc can send in its longest
// gate window at the link's rate, as the kernel computes it; ok is false when
// the kernel sets no such limit: the class's gate never closes, or never
// opens.
func windowMaxSDU(t *Taprio, tc int, rate linkRate) (sdu uint32, ok bool) {
	bit := uint32(1) << tc
	var longest int64
	n := len(t.Entries)
	for i, e := range t.Entries {
		if e.GateMask&bit == 0 {
			continue
		}
		// The window that opens at entry i lasts while the gate stays open,
		// into the next cycle but at most once around.
		var d int64
		for k := range n {
			x := t.Entries[(i+k)%n]
			if x.GateMask&bit == 0 {
				break
			}
			d += int64(x.Interval)
		}
		longest = max(longest, d)
	}
	if longest == 0 || longest == t.CycleDuration() {
		return 0, false
	}
	speed := int64(rate.speedMbps)
	if speed == 0 {
		speed = defaultSpeedMbps
	}
	ppb := max(picosPerByteAt1Mb/speed, minPicosPerByte)
	frame := longest * 1000 / ppb
	if frame < int64(rate.headerLen) {
		return 0, false // the kernel's unsigned subtraction wraps: no limit
	}
	return uint32(frame - int64(rate.headerLen)), true
}

// maxSDUDiff compares the max-SDU limits of a wanted taprio with a decoded
// one ("" when they agree):
//   - a decoded taprio whose limits the dump does not tell agrees;
//   - limits the kernel reports as set (6.1), or two decoded taprios that
//     report alike, must be equal (a missing class is 0, no limit);
//   - limits the kernel reports as effective (6.12) are, per class, the one
//     asked for or, when smaller, the largest frame the class's longest gate
//     window lets through. A window limit above the device's largest MTU is
//     no limit to the kernel (it reports the one asked for then), so the MTU
//     need not be known.
func maxSDUDiff(want, got *Taprio, rate linkRate) string {
	if want.maxSDU == MaxSDUUnknown || got.maxSDU == MaxSDUUnknown {
		return ""
	}
	at := func(v []uint32, tc int) uint32 {
		if tc < len(v) {
			return v[tc]
		}
		return 0
	}
	for tc := range MaxTrafficClasses {
		w, g := at(want.MaxSDU, tc), at(got.MaxSDU, tc)
		if w == g {
			continue
		}
		if want.maxSDU == MaxSDUAsSet && got.maxSDU == MaxSDUEffective && tc < int(want.PrioMap.NumTC) {
			if win, ok := windowMaxSDU(want, tc, rate); ok && g == win && (w == 0 || win < w) {
				continue
			}
			return fmt.Sprintf("max SDU of class %d is %d, want %d (or the gate window's limit at %s)", tc, g, w, rate)
		}
		return fmt.Sprintf("max SDU of class %d is %d, want %d", tc, g, w)
	}
	return ""
}

func (r linkRate) String() string {
	if r.speedMbps == 0 {
		return fmt.Sprintf("an unknown speed (the kernel assumes %d Mbit/s)", defaultSpeedMbps)
	}
	return fmt.Sprintf("%d Mbit/s", r.speedMbps)
}
