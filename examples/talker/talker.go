package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/payload"
	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/tai"
)

const (
	minSize   = payload.HeaderLen
	maxSize   = 65507 // largest UDP payload over IPv4
	maxStream = payload.MaxStreamLen

	// Flags of struct sock_txtime (include/uapi/linux/net_tstamp.h); golang.org/x/sys
	// does not define them.
	sofTxtimeDeadlineMode = 1 << 0
	sofTxtimeReportErrors = 1 << 1

	// Below this, the talker sleeps with clock_nanosleep on CLOCK_TAI; above, it
	// waits on a timer first so that SIGTERM is not held up by a long period.
	spinThreshold = 2 * time.Millisecond
)

type config struct {
	dest         string
	period       time.Duration
	count        uint64
	duration     time.Duration
	size         int
	priority     int
	txtime       bool
	txtimeOffset time.Duration
	deadline     bool
	stream       string
	tag          uint32
}

func (c config) validate() error {
	var errs []error
	if c.dest == "" {
		errs = append(errs, errors.New("-dest is required"))
	}
	if c.period <= 0 {
		errs = append(errs, fmt.Errorf("-period %v: must be positive", c.period))
	}
	if c.size < minSize || c.size > maxSize {
		errs = append(errs, fmt.Errorf("-size %d: must be in [%d, %d]", c.size, minSize, maxSize))
	}
	if c.priority < -1 {
		errs = append(errs, fmt.Errorf("-priority %d: must be -1 (unset) or a socket priority >= 0", c.priority))
	}
	if c.txtime && c.txtimeOffset <= 0 {
		errs = append(errs, fmt.Errorf("-txtime-offset %v: must be positive", c.txtimeOffset))
	}
	if c.deadline && !c.txtime {
		errs = append(errs, errors.New("-txtime-deadline needs -txtime"))
	}
	if c.duration < 0 {
		errs = append(errs, fmt.Errorf("-duration %v: must not be negative", c.duration))
	}
	if len(c.stream) > maxStream {
		errs = append(errs, fmt.Errorf("-stream %q: longer than %d bytes", c.stream, maxStream))
	}
	return errors.Join(errs...)
}

// summary is what the talker prints when it stops.
type summary struct {
	Stream      string `json:"stream"`
	Tag         uint32 `json:"tag"`
	Dest        string `json:"dest"`
	Priority    uint32 `json:"priority"`
	PrioritySet bool   `json:"priority_set"`
	Txtime      bool   `json:"txtime"`
	PeriodNs    int64  `json:"period_ns"`
	// Sent counts packets the kernel accepted; SendErrors those it refused
	// (e.g. ECONNREFUSED after an ICMP port unreachable).
	Sent       uint64 `json:"sent"`
	SendErrors uint64 `json:"send_errors"`
	LastError  string `json:"last_error,omitempty"`
	// TxtimeMissed and TxtimeInvalid count SO_TXTIME errors the kernel reported
	// on the error queue (ETF dropped a packet whose launch time had passed, or
	// refused its parameters). Only an ETF or taprio qdisc reports these.
	TxtimeMissed  uint64 `json:"txtime_missed"`
	TxtimeInvalid uint64 `json:"txtime_invalid"`
	// LateWakeups counts sends that happened after the packet's own slot
	// (with -txtime: after its launch time) because the talker was not scheduled in time.
	LateWakeups uint64 `json:"late_wakeups"`
	StartTAI    int64  `json:"start_tai_ns"`
	EndTAI      int64  `json:"end_tai_ns"`
}

// run sends until the count, the duration or ctx ends. It returns a summary
// whenever the socket was opened, also with an error.
func run(ctx context.Context, cfg config, logger *log.Logger) (*summary, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", cfg.dest)
	if err != nil {
		return nil, fmt.Errorf("resolving -dest %q: %w", cfg.dest, err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket to %v: %w", raddr, err)
	}
	defer conn.Close()
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	sum := &summary{Stream: cfg.stream, Tag: cfg.tag, Dest: raddr.String(), Txtime: cfg.txtime, PeriodNs: cfg.period.Nanoseconds()}
	if err := configureSocket(rc, cfg, sum); err != nil {
		return nil, err
	}
	logger.Printf("sending to %v: period %v, size %d, priority %d (set %v), txtime %v (offset %v)",
		raddr, cfg.period, cfg.size, sum.Priority, sum.PrioritySet, cfg.txtime, cfg.txtimeOffset)

	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}

	period := cfg.period.Nanoseconds()
	offset := int64(0)
	if cfg.txtime {
		offset = cfg.txtimeOffset.Nanoseconds()
	}
	// Slots lie on multiples of the period on CLOCK_TAI, so several talkers with
	// the same period line up with a gate schedule whose cycle is that period.
	now := tai.Now()
	first := (now+offset)/period*period + period
	if first-offset < now {
		first += period
	}
	sum.StartTAI = now

	buf := make([]byte, cfg.size)
	oob := make([]byte, unix.CmsgSpace(8))
	for seq := uint64(0); cfg.count == 0 || seq < cfg.count; seq++ {
		slot := first + int64(seq)*period
		wake := slot - offset
		if err := sleepUntil(ctx, wake); err != nil {
			break
		}
		sent := tai.Now()
		if sent > slot {
			sum.LateWakeups++
		}
		h := payload.Header{Tag: cfg.tag, Priority: sum.Priority, Seq: uint32(seq), SentTime: sent, Stream: cfg.stream}
		var cmsg []byte
		if cfg.txtime {
			h.Flags |= payload.FlagTxtime
			h.LaunchTime = slot
			cmsg = txtimeCmsg(oob, slot)
		}
		if err := h.Put(buf); err != nil {
			return sum, err
		}
		if _, _, err := conn.WriteMsgUDP(buf, cmsg, nil); err != nil {
			sum.SendErrors++
			sum.LastError = err.Error()
			if sum.SendErrors == 1 {
				logger.Printf("send of seq %d failed (further failures only counted): %v", seq, err)
			}
		} else {
			sum.Sent++
		}
		if cfg.txtime {
			drainErrQueue(rc, sum)
		}
	}
	if cfg.txtime {
		// ETF reports a missed launch time when it dequeues the packet: give the
		// last ones time to come back.
		time.Sleep(cfg.txtimeOffset + 20*time.Millisecond)
		drainErrQueue(rc, sum)
	}
	sum.EndTAI = tai.Now()
	logger.Printf("sent %d packets, %d send errors, %d txtime missed, %d txtime invalid, %d late wake-ups",
		sum.Sent, sum.SendErrors, sum.TxtimeMissed, sum.TxtimeInvalid, sum.LateWakeups)
	return sum, nil
}

// sleepUntil waits until CLOCK_TAI reaches t or ctx ends (then it returns ctx's error).
func sleepUntil(ctx context.Context, t int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d := time.Duration(t - tai.Now()); d > spinThreshold {
		timer := time.NewTimer(d - spinThreshold/2)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
	return tai.SleepUntil(t)
}

func configureSocket(rc syscall.RawConn, cfg config, sum *summary) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if cfg.priority >= 0 {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY, cfg.priority); err != nil {
				serr = fmt.Errorf("setting SO_PRIORITY %d (above 6 needs CAP_NET_ADMIN): %w", cfg.priority, err)
				return
			}
			sum.PrioritySet = true
		}
		prio, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY)
		if err != nil {
			serr = fmt.Errorf("reading SO_PRIORITY back: %w", err)
			return
		}
		sum.Priority = uint32(prio)
		if cfg.txtime {
			flags := uint32(sofTxtimeReportErrors)
			if cfg.deadline {
				flags |= sofTxtimeDeadlineMode
			}
			// struct sock_txtime { clockid_t clockid; __u32 flags; }
			var st [8]byte
			binary.NativeEndian.PutUint32(st[0:], unix.CLOCK_TAI)
			binary.NativeEndian.PutUint32(st[4:], flags)
			if err := unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_TXTIME, string(st[:])); err != nil {
				serr = fmt.Errorf("setting SO_TXTIME (CLOCK_TAI, flags %#x; clocks other than CLOCK_MONOTONIC need CAP_NET_ADMIN): %w", flags, err)
			}
		}
	})
	if err != nil {
		return fmt.Errorf("configuring the socket: %w", err)
	}
	return serr
}

// txtimeCmsg fills oob with an SCM_TXTIME control message for launch time t.
func txtimeCmsg(oob []byte, t int64) []byte {
	h := cmsgHeader(oob)
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_TXTIME
	h.SetLen(unix.CmsgLen(8))
	binary.NativeEndian.PutUint64(oob[unix.CmsgLen(0):], uint64(t))
	return oob[:unix.CmsgSpace(8)]
}

// drainErrQueue reads the socket's error queue without blocking and counts the
// SO_TXTIME reports in it.
func drainErrQueue(rc syscall.RawConn, sum *summary) {
	buf := make([]byte, 64)
	oob := make([]byte, 512)
	_ = rc.Control(func(fd uintptr) {
		for {
			_, oobn, _, _, err := unix.Recvmsg(int(fd), buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err != nil {
				return // EAGAIN: queue empty
			}
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if !(m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR) &&
					!(m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
					continue
				}
				if len(m.Data) < 8 || m.Data[4] != unix.SO_EE_ORIGIN_TXTIME {
					continue
				}
				// struct sock_extended_err: errno u32, origin u8, type u8, code u8, ...
				switch m.Data[6] {
				case unix.SO_EE_CODE_TXTIME_MISSED:
					sum.TxtimeMissed++
				case unix.SO_EE_CODE_TXTIME_INVALID_PARAM:
					sum.TxtimeInvalid++
				}
			}
		}
	})
}
