package payload

import (
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	in := Header{Flags: FlagTxtime, Priority: 0xdeadbeef, Seq: 1<<40 + 7, LaunchTime: 1<<62 + 3, SentTime: 42, Stream: "talker-class-2"}
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
	b[4] = 99
	if _, err := Parse(b); err == nil {
		t.Error("Parse accepted an unknown version")
	}
}
