package payload

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	in := Header{Flags: FlagTxtime, Tag: 0xfeedf00d, Priority: 0xdeadbeef, Seq: 1<<31 + 7, LaunchTime: 1<<62 + 3, SentTime: 42, Stream: "talker-class-2"}
	b := make([]byte, 100)
	for i := range b {
		b[i] = 0xff // Put must not depend on a zeroed buffer
	}
	if err := in.Put(b); err != nil {
		t.Fatal(err)
	}
	out, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("round trip: got %+v, want %+v", out, in)
	}
	if !out.Txtime() {
		t.Error("Txtime() = false with FlagTxtime set")
	}
}

func TestErrors(t *testing.T) {
	if err := (Header{}).Put(make([]byte, HeaderLen-1)); err == nil {
		t.Error("Put into a short buffer succeeded")
	}
	if err := (Header{Stream: "seventeen-bytes!!"}).Put(make([]byte, HeaderLen)); err == nil {
		t.Error("Put of an over-long stream name succeeded")
	}
	if _, err := Parse([]byte("hello, world")); !errors.Is(err, ErrNotTalker) {
		t.Errorf("Parse(foreign) = %v, want ErrNotTalker", err)
	}
	b := make([]byte, HeaderLen)
	if err := (Header{Stream: "s"}).Put(b); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(b[:HeaderLen-1]); err == nil || errors.Is(err, ErrNotTalker) {
		t.Errorf("Parse(truncated) = %v, want a truncation error", err)
	}
	b[24] = 99
	if _, err := Parse(b); err == nil {
		t.Error("Parse accepted an unknown version")
	}
}

// The first 24 bytes are the data path observer's test payload
// (bpf/observer.c struct obs_payload): magic, tag, seq, want_prio, want_tstamp.
func TestObserverLayout(t *testing.T) {
	b := make([]byte, HeaderLen)
	if err := (Header{Tag: 7, Seq: 9, Priority: 3, LaunchTime: 0x0102030405060708, Stream: "s"}).Put(b); err != nil {
		t.Fatal(err)
	}
	want := []byte{'T', 'S', 'P', 'K', 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8}
	if !bytes.Equal(b[:24], want) {
		t.Errorf("observer fields % x, want % x", b[:24], want)
	}
	if TagOf("a") == TagOf("b") || TagOf("a") != TagOf("a") {
		t.Error("TagOf does not tell streams apart")
	}
}
