package main

import (
	"context"
	"io"
	"log"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/payload"
)

func packet(t *testing.T, h payload.Header) []byte {
	t.Helper()
	b := make([]byte, 100)
	if err := h.Put(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRecorderGapsDuplicatesReorderAndTimes(t *testing.T) {
	r := newRecorder("test")
	// stream a, priority 1: 0 1 2 5 4 4 9 (missing 3, 6-8; 4 reordered; one duplicate)
	for _, seq := range []uint32{0, 1, 2, 5, 4, 4, 9} {
		r.record(packet(t, payload.Header{Priority: 1, Seq: seq, SentTime: 1000, Stream: "a"}), 1500)
	}
	// stream a, priority 2 with launch times: one early, one late.
	r.record(packet(t, payload.Header{Flags: payload.FlagTxtime, Priority: 2, Seq: 7, LaunchTime: 2000, SentTime: 1000, Stream: "a"}), 1900)
	r.record(packet(t, payload.Header{Flags: payload.FlagTxtime, Priority: 2, Seq: 8, LaunchTime: 3000, SentTime: 2000, Stream: "a"}), 3300)
	r.record([]byte("not a talker"), 1)
	bad := packet(t, payload.Header{Stream: "a"})
	r.record(bad[:payload.HeaderLen-1], 1)
	rep := r.finish()

	if rep.Packets != 9 || rep.Foreign != 1 || rep.Malformed != 1 || len(rep.Streams) != 2 {
		t.Fatalf("report %+v", rep)
	}
	s := rep.Streams[0]
	if s.Stream != "a" || s.Priority != 1 || s.Packets != 7 || s.FirstSeq != 0 || s.MaxSeq != 9 {
		t.Fatalf("stream %+v", s)
	}
	if s.Missing != 4 || len(s.MissingRanges) != 2 || s.MissingRanges[0] != [2]uint32{3, 3} || s.MissingRanges[1] != [2]uint32{6, 8} {
		t.Errorf("missing %d %v, want 4 in [3 3] [6 8]", s.Missing, s.MissingRanges)
	}
	if s.Duplicates != 1 || s.Reordered != 1 {
		t.Errorf("duplicates %d reordered %d, want 1 and 1", s.Duplicates, s.Reordered)
	}
	if s.SinceLaunch != nil || s.TxtimePackets != 0 || s.SinceSent.Min != 500 || s.SinceSent.Max != 500 {
		t.Errorf("times %+v / %+v", s.SinceLaunch, s.SinceSent)
	}
	s = rep.Streams[1]
	if s.Priority != 2 || s.Packets != 2 || s.Missing != 0 || s.FirstSeq != 7 || s.TxtimePackets != 2 || s.EarlyArrivals != 1 {
		t.Fatalf("stream %+v", s)
	}
	if l := s.SinceLaunch; l == nil || l.Min != -100 || l.Max != 300 || l.Mean != 100 {
		t.Errorf("since launch %+v, want min -100 mean 100 max 300", l)
	}
	if s.SinceSent.Min != 900 || s.SinceSent.Max != 1300 {
		t.Errorf("since sent %+v", s.SinceSent)
	}
}

func TestRecorderBounds(t *testing.T) {
	r := newRecorder("test")
	r.record(packet(t, payload.Header{Seq: maxTrackedSeq + 5, Stream: "big"}), 0)
	r.record(packet(t, payload.Header{Seq: 0, Stream: "many"}), 0)
	r.record(packet(t, payload.Header{Seq: 100, Stream: "many"}), 0)
	for seq := uint32(200); seq < 300; seq += 2 {
		r.record(packet(t, payload.Header{Seq: seq, Stream: "many"}), 0)
	}
	rep := r.finish()
	if s := rep.Streams[0]; s.Stream != "big" || s.Untracked != 1 || s.Missing != 0 {
		t.Errorf("untracked stream %+v", s)
	}
	s := rep.Streams[1]
	if s.Missing != 99+99+49 || len(s.MissingRanges) != maxRanges {
		t.Errorf("missing %d in %d ranges, want %d in %d", s.Missing, len(s.MissingRanges), 99+99+49, maxRanges)
	}
}

func TestReceivesUntilCount(t *testing.T) {
	addr := make(chan net.Addr, 1)
	type result struct {
		rep *report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := run(context.Background(), config{listen: "127.0.0.1:0", count: 3}, log.New(io.Discard, "", 0),
			func(a net.Addr) { addr <- a })
		done <- result{rep, err}
	}()
	conn, err := net.Dial("udp", (<-addr).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("foreign datagrams do not count"))
	for seq := range uint32(5) {
		conn.Write(packet(t, payload.Header{Priority: 3, Seq: seq, Stream: "c"}))
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.rep.Packets != 3 || r.rep.Foreign != 1 || len(r.rep.Streams) != 1 || r.rep.Streams[0].Priority != 3 {
			t.Errorf("report %+v", r.rep)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not stop after -count packets")
	}
}

func TestStopsAfterDuration(t *testing.T) {
	start := time.Now()
	rep, err := run(context.Background(), config{listen: "127.0.0.1:0", duration: 100 * time.Millisecond}, log.New(io.Discard, "", 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("stopped after %v, want about 100ms", d)
	}
	if rep.Packets != 0 || rep.Streams == nil || len(rep.Streams) != 0 {
		t.Errorf("report %+v", rep)
	}
	if _, err := run(context.Background(), config{listen: "256.0.0.1:0"}, log.New(io.Discard, "", 0), nil); err == nil {
		t.Error("listening on a bad address succeeded")
	}
}

func TestStreamsAreKeyedByTagToo(t *testing.T) {
	r := newRecorder("test")
	r.record(packet(t, payload.Header{Tag: 1, Stream: "same"}), 0)
	r.record(packet(t, payload.Header{Tag: 2, Stream: "same"}), 0)
	rep := r.finish()
	if len(rep.Streams) != 2 || rep.Streams[0].Tag != 1 || rep.Streams[1].Tag != 2 {
		t.Errorf("streams %+v, want one per tag", rep.Streams)
	}
}

func TestSocketDropsAreCounted(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn := pc.(*net.UDPConn)
	defer conn.Close()
	granted, err := configureSocket(conn, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if granted <= 0 {
		t.Fatalf("granted receive buffer %d", granted)
	}
	out, err := net.Dial("udp", conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// Nobody reads: a few KiB of buffer cannot hold 200 datagrams.
	for seq := range uint32(200) {
		out.Write(packet(t, payload.Header{Seq: seq, Stream: "flood"}))
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf, oob := make([]byte, 2048), make([]byte, 128)
	var drops uint32
	for range 200 {
		_, oobn, _, _, err := conn.ReadMsgUDP(buf, oob)
		if err != nil {
			break
		}
		if d, ok := parseDrops(oob[:oobn]); ok {
			drops = d
		}
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	}
	// The kernel reports the drop count with the next datagram it queues.
	out.Write(packet(t, payload.Header{Seq: 200, Stream: "flood"}))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, oobn, _, _, err := conn.ReadMsgUDP(buf, oob); err != nil {
		t.Fatal(err)
	} else if d, ok := parseDrops(oob[:oobn]); ok {
		drops = d
	}
	if drops == 0 {
		t.Errorf("no socket drops reported for 200 datagrams into a %d-byte buffer", granted)
	}
}

func TestLargeBufferGranted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SO_RCVBUFFORCE beyond net.core.rmem_max needs CAP_NET_ADMIN")
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	granted, err := configureSocket(pc.(*net.UDPConn), 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel reports twice the request (it accounts for skb overhead).
	if granted < 8<<20 {
		t.Errorf("granted %d bytes, asked for %d", granted, 8<<20)
	}
}
