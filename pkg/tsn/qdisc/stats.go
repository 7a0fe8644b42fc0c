package qdisc

import (
	"fmt"

	"github.com/vishvananda/netlink/nl"
)

// Stats are the counters of a qdisc or class (TCA_STATS2).
type Stats struct {
	// Bytes and Packets sent (dequeued) through the class.
	Bytes   uint64
	Packets uint32
	// QLen packets and Backlog bytes are still queued (behind a closed gate, say).
	QLen    uint32
	Backlog uint32
	Drops   uint32
}

const (
	tcaStats2        = 7 // TCA_STATS2
	tcaStatsBasic    = 1
	tcaStatsQueue    = 3
	sizeofStatsBasic = 12 // u64 bytes, u32 packets (the kernel may pad to 16)
	sizeofStatsQueue = 20
)

// QueueStats returns, per transmit queue (0-based), the counters of the qdisc
// under class root:queue+1: for taprio and mqprio, what each queue carried.
// The per-class dump (tc -s class) is no substitute: for a software taprio on
// 6.1 every class reports the root's counters.
func (c *Client) QueueStats(ifindex int, root Handle) (map[uint16]Stats, error) {
	qs, err := c.List(ifindex)
	if err != nil {
		return nil, err
	}
	out := map[uint16]Stats{}
	for _, q := range qs {
		if q.Parent != HandleRoot && q.Parent.Major() == root.Major() && q.Parent.Minor() > 0 {
			out[q.Parent.Minor()-1] = q.Stats
		}
	}
	return out, nil
}

func decodeStats2(b []byte) (Stats, error) {
	var st Stats
	stats, err := nl.ParseRouteAttr(b)
	if err != nil {
		return st, fmt.Errorf("parse stats: %w", err)
	}
	for _, s := range stats {
		switch attrType(s) {
		case tcaStatsBasic:
			if len(s.Value) >= sizeofStatsBasic {
				st.Bytes = native.Uint64(s.Value[0:])
				st.Packets = native.Uint32(s.Value[8:])
			}
		case tcaStatsQueue:
			if len(s.Value) >= sizeofStatsQueue {
				st.QLen = native.Uint32(s.Value[0:])
				st.Backlog = native.Uint32(s.Value[4:])
				st.Drops = native.Uint32(s.Value[8:])
			}
		}
	}
	return st, nil
}
