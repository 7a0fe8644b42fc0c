package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net"
	"testing"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/payload"
)

func quiet() *log.Logger { return log.New(io.Discard, "", 0) }

// listen opens a loopback UDP socket and returns the headers it receives.
func listen(t *testing.T) (*net.UDPConn, <-chan payload.Header) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch := make(chan payload.Header, 1024)
	go func() {
		defer close(ch)
		buf := make([]byte, 2048)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			h, err := payload.Parse(buf[:n])
			if err != nil {
				t.Errorf("received a datagram the talker should not send: %v", err)
				continue
			}
			if n != 200 {
				t.Errorf("datagram of %d bytes, want -size 200", n)
			}
			ch <- h
		}
	}()
	return conn, ch
}

func TestSendsPeriodicPacketsWithPriorityAndLaunchTime(t *testing.T) {
	conn, got := listen(t)
	const n = 50
	period := 2 * time.Millisecond
	offset := 20 * time.Millisecond
	cfg := config{dest: conn.LocalAddr().String(), period: period, count: n, size: 200,
		priority: 5, txtime: true, txtimeOffset: offset, stream: "unit", tag: payload.TagOf("unit")}
	sum, err := run(context.Background(), cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != n || sum.SendErrors != 0 || !sum.PrioritySet || sum.Priority != 5 || !sum.Txtime {
		t.Fatalf("summary %+v: want %d sent, no errors, priority 5 set, txtime", sum, n)
	}
	var prev payload.Header
	for i := range n {
		var h payload.Header
		select {
		case h = <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d packets arrived", i, n)
		}
		if h.Seq != uint32(i) || h.Tag != payload.TagOf("unit") || h.Priority != 5 || !h.Txtime() || h.Stream != "unit" {
			t.Fatalf("packet %d: header %+v", i, h)
		}
		// Launch times lie on period boundaries, one period apart, and ahead of the send.
		if h.LaunchTime%period.Nanoseconds() != 0 {
			t.Errorf("seq %d: launch time %d is not a multiple of the period", h.Seq, h.LaunchTime)
		}
		if i > 0 && h.LaunchTime-prev.LaunchTime != period.Nanoseconds() {
			t.Errorf("seq %d: launch %d ns after the previous one, want %v", h.Seq, h.LaunchTime-prev.LaunchTime, period)
		}
		if ahead := h.LaunchTime - h.SentTime; ahead <= 0 || ahead > offset.Nanoseconds() {
			t.Errorf("seq %d: sent %d ns before its launch time, want within (0, %v]", h.Seq, ahead, offset)
		}
		prev = h
	}
	if span := time.Duration(sum.EndTAI - sum.StartTAI); span < (n-1)*period {
		t.Errorf("sent %d packets in %v, faster than the %v period allows", n, span, period)
	}
}

func TestDefaultPriorityIsReadBack(t *testing.T) {
	conn, got := listen(t)
	cfg := config{dest: conn.LocalAddr().String(), period: time.Millisecond, count: 3, size: 200, priority: -1, stream: "unit"}
	sum, err := run(context.Background(), cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if sum.PrioritySet || sum.Priority != 0 || sum.Txtime {
		t.Fatalf("summary %+v: want priority 0 not set, no txtime", sum)
	}
	for range 3 {
		h := <-got
		if h.Txtime() || h.LaunchTime != 0 || h.Priority != 0 {
			t.Errorf("header %+v: want no launch time and priority 0", h)
		}
	}
}

func TestStopsOnCancel(t *testing.T) {
	conn, _ := listen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// A one-minute period: the talker must not sit out the period after the cancel.
	cfg := config{dest: conn.LocalAddr().String(), period: time.Minute, size: 64, priority: -1, stream: "unit"}
	sum, err := run(ctx, cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("run returned %v after the cancel", d)
	}
	if sum.Sent != 0 {
		t.Errorf("sent %d packets, the first slot is a minute away", sum.Sent)
	}
}

func TestCountsSendErrors(t *testing.T) {
	// Nobody listens: the loopback ICMP port unreachable makes later sends fail
	// with ECONNREFUSED, which the talker counts instead of giving up.
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dest := conn.LocalAddr().String()
	conn.Close()
	cfg := config{dest: dest, period: time.Millisecond, count: 10, size: 64, priority: -1, stream: "unit"}
	sum, err := run(context.Background(), cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if sum.SendErrors == 0 || sum.Sent+sum.SendErrors != 10 || sum.LastError == "" {
		t.Errorf("summary %+v: want send errors counted and every packet accounted for", sum)
	}
}

func TestFlagValidation(t *testing.T) {
	for _, args := range [][]string{
		{},                                  // no -dest
		{"-dest", "x:1", "-size", "10"},     // below the header
		{"-dest", "x:1", "-period", "0s"},   // no period
		{"-dest", "x:1", "-priority", "-2"}, // not a priority
		{"-dest", "x:1", "-txtime-deadline"},
		{"-dest", "x:1", "-txtime", "-txtime-offset", "0s"},
		{"-dest", "x:1", "-stream", "a-name-longer-than-16"},
		{"-dest", "x:1", "extra"},
		{"-dest", "x:1", "-tag", "4294967296"},
		{"-dest", "x:1", "-tag", "-2"},
	} {
		fs := flag.NewFlagSet("talker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if _, err := parseFlags(fs, args); err == nil {
			t.Errorf("parseFlags(%q) accepted bad flags", args)
		}
	}
	fs := flag.NewFlagSet("talker", flag.ContinueOnError)
	cfg, err := parseFlags(fs, []string{"-dest", "10.0.0.1:7788", "-priority", "2", "-txtime", "-period", "500us"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.priority != 2 || !cfg.txtime || cfg.period != 500*time.Microsecond || cfg.size != 64 || cfg.tag != payload.TagOf(cfg.stream) {
		t.Errorf("parsed %+v", cfg)
	}
	if _, err := run(context.Background(), config{dest: "no-such-host.invalid:1", period: time.Millisecond, size: 64, priority: -1}, quiet()); err == nil {
		t.Error("run with an unresolvable destination succeeded")
	}
}

func TestExplicitTag(t *testing.T) {
	fs := flag.NewFlagSet("talker", flag.ContinueOnError)
	cfg, err := parseFlags(fs, []string{"-dest", "10.0.0.1:7788", "-tag", "4294967295"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.tag != 4294967295 {
		t.Errorf("tag %d", cfg.tag)
	}
}
