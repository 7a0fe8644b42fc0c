package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/payload"
	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/tai"
)

// maxTrackedSeq bounds the per-stream bitmap of seen sequence numbers (16 MiB).
// Packets beyond it are counted but not checked for gaps or duplicates.
const maxTrackedSeq = 1 << 27

// maxRanges is how many missing-sequence ranges a stream lists in the summary.
const maxRanges = 16

type config struct {
	listen   string
	count    uint64
	duration time.Duration
	out      string
	rcvbuf   int
}

// report is the JSON summary.
type report struct {
	Listen string `json:"listen"`
	// Packets counts datagrams with a talker header, Foreign those without,
	// Malformed those whose header did not decode.
	Packets   uint64 `json:"packets"`
	Foreign   uint64 `json:"foreign"`
	Malformed uint64 `json:"malformed"`
	// SocketDrops counts datagrams the kernel dropped because the receiver's
	// socket buffer was full (SO_RXQ_OVFL): losses of the receiver, not of the
	// network. The kernel reports the count with the next datagram it queues,
	// so drops after the last one received are not in it.
	SocketDrops uint64 `json:"socket_drops"`
	// RcvBuf is the socket receive buffer the kernel granted, in bytes.
	RcvBuf   int            `json:"rcvbuf"`
	StartTAI int64          `json:"start_tai_ns"`
	EndTAI   int64          `json:"end_tai_ns"`
	Streams  []*streamStats `json:"streams"`
}

// streamStats describes the packets of one talker stream at one priority.
// Arrival times are CLOCK_TAI read when the receiver got the datagram from the
// kernel, so they include the receiver's own scheduling delay.
type streamStats struct {
	Stream   string `json:"stream"`
	Tag      uint32 `json:"tag"`
	Priority uint32 `json:"priority"`
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	FirstSeq uint32 `json:"first_seq"`
	MaxSeq   uint32 `json:"max_seq"`
	// Missing counts sequence numbers between the lowest and highest seen that
	// never arrived; MissingRanges lists the first of them as [from, to].
	Missing       uint64      `json:"missing"`
	MissingRanges [][2]uint32 `json:"missing_ranges,omitempty"`
	Duplicates    uint64      `json:"duplicates"`
	// Reordered counts packets that arrived after one with a higher sequence number.
	Reordered uint64 `json:"reordered"`
	Untracked uint64 `json:"untracked,omitempty"`
	// TxtimePackets carried a launch time; EarlyArrivals of them arrived before it.
	TxtimePackets uint64     `json:"txtime_packets"`
	EarlyArrivals uint64     `json:"early_arrivals"`
	SinceLaunch   *durations `json:"since_launch_ns,omitempty"`
	SinceSent     durations  `json:"since_sent_ns"`

	seen   []uint64 // bitmap of seen sequence numbers
	minSeq uint32
}

// durations summarises signed nanosecond intervals.
type durations struct {
	Min  int64 `json:"min"`
	Mean int64 `json:"mean"`
	Max  int64 `json:"max"`
	n    int64
	sum  int64
}

func (d *durations) add(v int64) {
	if d.n == 0 || v < d.Min {
		d.Min = v
	}
	if d.n == 0 || v > d.Max {
		d.Max = v
	}
	d.n++
	d.sum += v
	d.Mean = d.sum / d.n
}

type streamKey struct {
	stream   string
	tag      uint32
	priority uint32
}

type recorder struct {
	rep     report
	streams map[streamKey]*streamStats
}

func newRecorder(listen string) *recorder {
	return &recorder{rep: report{Listen: listen, StartTAI: tai.Now()}, streams: map[streamKey]*streamStats{}}
}

// record accounts one datagram that arrived at CLOCK_TAI time arrival.
func (r *recorder) record(b []byte, arrival int64) {
	h, err := payload.Parse(b)
	switch {
	case errors.Is(err, payload.ErrNotTalker):
		r.rep.Foreign++
		return
	case err != nil:
		r.rep.Malformed++
		return
	}
	r.rep.Packets++
	k := streamKey{h.Stream, h.Tag, h.Priority}
	s := r.streams[k]
	if s == nil {
		s = &streamStats{Stream: h.Stream, Tag: h.Tag, Priority: h.Priority, FirstSeq: h.Seq, minSeq: h.Seq, MaxSeq: h.Seq}
		r.streams[k] = s
	}
	s.Packets++
	s.Bytes += uint64(len(b))
	s.SinceSent.add(arrival - h.SentTime)
	if h.Txtime() {
		s.TxtimePackets++
		if s.SinceLaunch == nil {
			s.SinceLaunch = &durations{}
		}
		s.SinceLaunch.add(arrival - h.LaunchTime)
		if arrival < h.LaunchTime {
			s.EarlyArrivals++
		}
	}
	if h.Seq >= maxTrackedSeq {
		s.Untracked++
		return
	}
	word, bit := h.Seq/64, uint64(1)<<(h.Seq%64)
	if need := int(word) + 1; need > len(s.seen) {
		s.seen = slices.Grow(s.seen, need-len(s.seen))[:need]
	}
	if s.seen[word]&bit != 0 {
		s.Duplicates++
		return
	}
	s.seen[word] |= bit
	if h.Seq < s.MaxSeq {
		s.Reordered++
	}
	s.MaxSeq = max(s.MaxSeq, h.Seq)
	s.minSeq = min(s.minSeq, h.Seq)
}

// finish computes the gap statistics and returns the report.
func (r *recorder) finish() *report {
	r.rep.EndTAI = tai.Now()
	r.rep.Streams = make([]*streamStats, 0, len(r.streams))
	for _, s := range r.streams {
		s.Missing, s.MissingRanges = 0, nil
		hi := min(s.MaxSeq, maxTrackedSeq-1)
		for seq64 := uint64(s.minSeq); seq64 <= uint64(hi) && len(s.seen) > 0; seq64++ {
			seq := uint32(seq64)
			if s.seen[seq/64]&(1<<(seq%64)) != 0 {
				continue
			}
			s.Missing++
			if n := len(s.MissingRanges); n > 0 && s.MissingRanges[n-1][1] == seq-1 {
				s.MissingRanges[n-1][1] = seq
			} else if n < maxRanges {
				s.MissingRanges = append(s.MissingRanges, [2]uint32{seq, seq})
			}
		}
		r.rep.Streams = append(r.rep.Streams, s)
	}
	slices.SortFunc(r.rep.Streams, func(a, b *streamStats) int {
		return cmp.Or(cmp.Compare(a.Stream, b.Stream), cmp.Compare(a.Tag, b.Tag), cmp.Compare(a.Priority, b.Priority))
	})
	return &r.rep
}

// run receives until the count, the duration or ctx ends, then returns the
// report. ready, if set, is called with the bound address before the first read.
func run(ctx context.Context, cfg config, logger *log.Logger, ready func(net.Addr)) (*report, error) {
	pc, err := net.ListenPacket("udp", cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %q: %w", cfg.listen, err)
	}
	conn := pc.(*net.UDPConn)
	defer conn.Close()
	rcvbuf, err := configureSocket(conn, cfg.rcvbuf)
	if err != nil {
		return nil, err
	}
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	rec := newRecorder(conn.LocalAddr().String())
	rec.rep.RcvBuf = rcvbuf
	logger.Printf("listening on %v", conn.LocalAddr())
	if ready != nil {
		ready(conn.LocalAddr())
	}
	buf := make([]byte, 65536)
	oob := make([]byte, 128)
	for cfg.count == 0 || rec.rep.Packets < cfg.count {
		n, oobn, _, _, err := conn.ReadMsgUDP(buf, oob)
		arrival := tai.Now()
		if err == nil {
			if drops, ok := parseDrops(oob[:oobn]); ok {
				rec.rep.SocketDrops = uint64(drops)
			}
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			return rec.finish(), fmt.Errorf("receiving: %w", err)
		}
		rec.record(buf[:n], arrival)
	}
	rep := rec.finish()
	logger.Printf("received %d talker packets in %d streams, %d foreign, %d malformed, %d dropped by a full socket buffer",
		rep.Packets, len(rep.Streams), rep.Foreign, rep.Malformed, rep.SocketDrops)
	return rep, nil
}

// configureSocket asks for a receive buffer of rcvbuf bytes (as root beyond
// net.core.rmem_max, with SO_RCVBUFFORCE) and for the drop counter
// (SO_RXQ_OVFL). It returns the buffer size the kernel granted.
func configureSocket(conn *net.UDPConn, rcvbuf int) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var granted int
	var serr error
	err = rc.Control(func(fd uintptr) {
		if rcvbuf > 0 {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
				// Without CAP_NET_ADMIN: capped at net.core.rmem_max.
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
					serr = fmt.Errorf("setting SO_RCVBUF %d: %w", rcvbuf, err)
					return
				}
			}
		}
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
			serr = fmt.Errorf("setting SO_RXQ_OVFL: %w", err)
			return
		}
		granted, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	if err != nil {
		return 0, err
	}
	return granted, serr
}

// parseDrops returns the SO_RXQ_OVFL counter of a datagram's control messages:
// the socket's drops so far.
func parseDrops(oob []byte) (uint32, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_RXQ_OVFL && len(m.Data) >= 4 {
			return binary.NativeEndian.Uint32(m.Data), true
		}
	}
	return 0, false
}
