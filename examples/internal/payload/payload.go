// Package payload is the header the example talker writes at the start of every
// UDP payload and the example receiver reads back. It carries what the talker
// asked the kernel for (socket priority, launch time) so that whoever sees the
// packet later (the receiver, a tc or BPF observer on the wire) can check what
// the network did with it. Multi-byte fields are big-endian.
//
// The first 24 bytes are the test payload of the data path's observer
// (pkg/tsn/datapath/observe, bpf/observer.c): an observer attached at the TSN
// NIC's egress counts talker packets by the priority and launch time they
// really leave with.
//
//	offset size field
//	0      4    magic "TSPK"
//	4      4    tag: a number naming the stream (the observer's flow)
//	8      4    sequence number, from 0
//	12     4    socket priority the talker set (SO_PRIORITY)
//	16     8    launch time, ns on CLOCK_TAI (0 without SO_TXTIME)
//	24     1    version (1)
//	25     1    flags (FlagTxtime)
//	26     6    reserved, zero
//	32     8    time of the send call, ns on CLOCK_TAI
//	40     16   stream name, NUL-padded
package payload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
)

// Magic starts every talker payload.
const Magic = "TSPK"

// Version is the header layout written by this package.
const Version = 1

// HeaderLen is the size of the header: the smallest payload a talker sends.
const HeaderLen = 56

// MaxStreamLen is the longest stream name a header can carry.
const MaxStreamLen = 16

// FlagTxtime says the packet was sent with an SO_TXTIME launch time.
const FlagTxtime = 1 << 0

// ErrNotTalker is returned by Parse for data that does not start with Magic.
var ErrNotTalker = errors.New("not a talker payload")

// Header is the decoded talker header.
type Header struct {
	Flags uint8
	// Tag names the stream with a number (see TagOf).
	Tag      uint32
	Priority uint32
	Seq      uint32
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
	binary.BigEndian.PutUint32(b[4:], h.Tag)
	binary.BigEndian.PutUint32(b[8:], h.Seq)
	binary.BigEndian.PutUint32(b[12:], h.Priority)
	binary.BigEndian.PutUint64(b[16:], uint64(h.LaunchTime))
	b[24] = Version
	b[25] = h.Flags
	clear(b[26:32])
	binary.BigEndian.PutUint64(b[32:], uint64(h.SentTime))
	clear(b[40:56])
	copy(b[40:56], h.Stream)
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
	if b[24] != Version {
		return Header{}, fmt.Errorf("talker payload version %d, want %d", b[24], Version)
	}
	return Header{
		Tag:        binary.BigEndian.Uint32(b[4:]),
		Seq:        binary.BigEndian.Uint32(b[8:]),
		Priority:   binary.BigEndian.Uint32(b[12:]),
		LaunchTime: int64(binary.BigEndian.Uint64(b[16:])),
		Flags:      b[25],
		SentTime:   int64(binary.BigEndian.Uint64(b[32:])),
		Stream:     string(bytes.TrimRight(b[40:56], "\x00")),
	}, nil
}

// TagOf is the default tag of a stream name: its 32-bit FNV-1a hash.
func TagOf(stream string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(stream))
	return h.Sum32()
}
