// Package payload is the header the example talker writes at the start of every
// UDP payload and the example receiver reads back. It carries what the talker
// asked the kernel for (socket priority, launch time) so that whoever sees the
// packet later (the receiver, a tc or BPF observer on the wire) can check what
// the network did with it. Multi-byte fields are big-endian.
//
//	offset size field
//	0      4    magic "TSNT"
//	4      1    version (1)
//	5      1    flags (FlagTxtime)
//	6      2    reserved, zero
//	8      4    socket priority the talker set (SO_PRIORITY)
//	12     8    sequence number, from 0
//	20     8    launch time, ns on CLOCK_TAI (0 without SO_TXTIME)
//	28     8    time of the send call, ns on CLOCK_TAI
//	36     16   stream name, NUL-padded
package payload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic starts every talker payload.
const Magic = "TSNT"

// Version is the header layout written by this package.
const Version = 1

// HeaderLen is the size of the header: the smallest payload a talker sends.
const HeaderLen = 52

// MaxStreamLen is the longest stream name a header can carry.
const MaxStreamLen = 16

// FlagTxtime says the packet was sent with an SO_TXTIME launch time.
const FlagTxtime = 1 << 0

// ErrNotTalker is returned by Parse for data that does not start with Magic.
var ErrNotTalker = errors.New("not a talker payload")

// Header is the decoded talker header.
type Header struct {
	Flags    uint8
	Priority uint32
	Seq      uint64
	// LaunchTime is the SO_TXTIME launch time in ns on CLOCK_TAI, 0 if none.
	LaunchTime int64
	// SentTime is CLOCK_TAI in ns when the talker handed the packet to the kernel.
	SentTime int64
	// Stream names the sender, so one receiver can tell several talkers apart.
	Stream string
}

// Txtime reports whether the packet carried a launch time.
func (h Header) Txtime() bool { return h.Flags&FlagTxtime != 0 }

// Put writes h into the start of b, which must hold at least HeaderLen bytes.
func (h Header) Put(b []byte) error {
	if len(b) < HeaderLen {
		return fmt.Errorf("payload of %d bytes cannot hold the %d-byte header", len(b), HeaderLen)
	}
	if len(h.Stream) > MaxStreamLen {
		return fmt.Errorf("stream name %q is longer than %d bytes", h.Stream, MaxStreamLen)
	}
	copy(b[0:4], Magic)
	b[4] = Version
	b[5] = h.Flags
	b[6], b[7] = 0, 0
	binary.BigEndian.PutUint32(b[8:], h.Priority)
	binary.BigEndian.PutUint64(b[12:], h.Seq)
	binary.BigEndian.PutUint64(b[20:], uint64(h.LaunchTime))
	binary.BigEndian.PutUint64(b[28:], uint64(h.SentTime))
	clear(b[36:52])
	copy(b[36:52], h.Stream)
	return nil
}

// Parse decodes the header at the start of b.
func Parse(b []byte) (Header, error) {
	if len(b) < 4 || string(b[0:4]) != Magic {
		return Header{}, ErrNotTalker
	}
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("talker payload truncated: %d bytes, header needs %d", len(b), HeaderLen)
	}
	if b[4] != Version {
		return Header{}, fmt.Errorf("talker payload version %d, want %d", b[4], Version)
	}
	return Header{
		Flags:      b[5],
		Priority:   binary.BigEndian.Uint32(b[8:]),
		Seq:        binary.BigEndian.Uint64(b[12:]),
		LaunchTime: int64(binary.BigEndian.Uint64(b[20:])),
		SentTime:   int64(binary.BigEndian.Uint64(b[28:])),
		Stream:     string(bytes.TrimRight(b[36:52], "\x00")),
	}, nil
}
