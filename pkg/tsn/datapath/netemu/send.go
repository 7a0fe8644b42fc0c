package netemu

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

// Sender sends test packets from one namespace, the way a TSN application
// does: SO_PRIORITY on the socket and a per-packet SCM_TXTIME launch time.
type Sender struct {
	fd   int
	dst  unix.Sockaddr
	prio uint32
	oob  []byte
	// raw senders build the IPv4 and UDP headers themselves, with a fixed IP ID.
	raw     bool
	ipID    uint16
	dstPort int
}

// NewRawSender opens a raw IPv4 socket (IP_HDRINCL) in the namespace at
// netnsPath that sends UDP packets to dst with the given IP identification
// and DF: packets from different senders with equal payloads are then equal
// byte for byte in every field the data path fingerprints.
func NewRawSender(netnsPath string, dst *net.UDPAddr, ipID uint16) (*Sender, error) {
	ip4 := dst.IP.To4()
	if ip4 == nil {
		return nil, fmt.Errorf("raw sender: IPv4 only")
	}
	s := &Sender{fd: -1, raw: true, ipID: ipID, dstPort: dst.Port}
	err := hook.InNetns(netnsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		s.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raw sender socket: %w", err)
	}
	sa := &unix.SockaddrInet4{}
	copy(sa.Addr[:], ip4)
	s.dst = sa
	return s, nil
}

func (s *Sender) rawPacket(payload []byte, dst [4]byte) []byte {
	b := make([]byte, 20+8+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], s.ipID)
	binary.BigEndian.PutUint16(b[6:], 0x4000) // DF
	b[8] = 64
	b[9] = unix.IPPROTO_UDP
	copy(b[16:20], dst[:]) // source 0: filled in by the kernel; checksum too
	binary.BigEndian.PutUint16(b[20:], 40000)
	binary.BigEndian.PutUint16(b[22:], uint16(s.dstPort))
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload) // UDP checksum 0: none
	return b
}

// NewSender opens a UDP socket in the namespace at netnsPath ("" = current)
// with SO_TXTIME on clock (unix.CLOCK_TAI, CLOCK_MONOTONIC, ...).
func NewSender(netnsPath string, dst *net.UDPAddr, clock int32) (*Sender, error) {
	s := &Sender{fd: -1}
	err := hook.InNetns(netnsPath, func() error {
		family := unix.AF_INET
		if dst.IP.To4() == nil {
			family = unix.AF_INET6
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sender socket: %w", err)
	}
	if ip4 := dst.IP.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: dst.Port}
		copy(sa.Addr[:], ip4)
		s.dst = sa
	} else {
		sa := &unix.SockaddrInet6{Port: dst.Port}
		copy(sa.Addr[:], dst.IP.To16())
		s.dst = sa
	}
	// struct sock_txtime { clockid_t clockid; __u32 flags; }
	txt := make([]byte, 8)
	binary.NativeEndian.PutUint32(txt[0:], uint32(clock))
	if err := unix.SetsockoptString(s.fd, unix.SOL_SOCKET, unix.SO_TXTIME, string(txt)); err != nil {
		s.Close()
		return nil, fmt.Errorf("SO_TXTIME: %w", err)
	}
	_ = unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	s.oob = make([]byte, unix.CmsgSpace(8))
	h := (*unix.Cmsghdr)(unsafePointer(&s.oob[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_TXTIME
	h.SetLen(unix.CmsgLen(8))
	return s, nil
}

// Send sends one packet with priority prio (SO_PRIORITY) and launch time txtime
// (0: none), carrying in its payload what it must leave the NIC with.
func (s *Sender) Send(tag, seq, prio uint32, txtime uint64, wantPrio uint32, wantTxTime uint64) error {
	if prio != s.prio {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_PRIORITY, int(prio)); err != nil {
			return fmt.Errorf("SO_PRIORITY %d: %w", prio, err)
		}
		s.prio = prio
	}
	payload := observe.Payload(tag, seq, wantPrio, wantTxTime)
	if s.raw {
		payload = s.rawPacket(payload, s.dst.(*unix.SockaddrInet4).Addr)
	}
	var oob []byte
	if txtime != 0 {
		binary.NativeEndian.PutUint64(s.oob[unix.CmsgLen(0):], txtime)
		oob = s.oob
	}
	for {
		err := unix.Sendmsg(s.fd, payload, oob, s.dst, 0)
		switch err {
		case nil:
			return nil
		case unix.ENOBUFS, unix.EAGAIN:
			time.Sleep(50 * time.Microsecond)
		case unix.ECONNREFUSED:
			// An ICMP error from an earlier packet: this one was not sent.
		default:
			return fmt.Errorf("send: %w", err)
		}
	}
}

// Close closes the socket.
func (s *Sender) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// TAINow returns CLOCK_TAI now, in ns.
func TAINow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_TAI, &ts)
	return uint64(ts.Nano())
}

// ThreadCPU returns the calling OS thread's CPU time (user+system); callers
// lock the thread.
func ThreadCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// LockThread pins the calling goroutine to its thread (for ThreadCPU).
func LockThread() func() {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}
