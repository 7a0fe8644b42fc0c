// Command talker is the example time-sensitive application: it sends UDP
// datagrams at a fixed period with a socket priority (SO_PRIORITY) and,
// optionally, SO_TXTIME launch times on CLOCK_TAI, the way an unmodified TSN
// application does. Every payload starts with a header (examples/internal/payload)
// that records the priority and launch time the talker asked for and a sequence
// number, so the receiver or an observer on the wire can check what arrived.
//
// Sequence numbers are 32 bits and wrap after 2^32 packets.
//
// It stops after -count packets, after -duration, or on SIGTERM/SIGINT, and
// prints a JSON summary of what it sent on stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/examples/internal/payload"
)

func main() {
	cfg, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "talker:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := log.New(os.Stderr, "talker: ", log.LstdFlags|log.Lmicroseconds)
	sum, err := run(ctx, cfg, logger)
	if sum != nil {
		if werr := writeSummary(os.Stdout, sum); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		logger.Print(err)
		os.Exit(1)
	}
}

func parseFlags(fs *flag.FlagSet, args []string) (config, error) {
	var cfg config
	host, _ := os.Hostname()
	fs.StringVar(&cfg.dest, "dest", "", "destination host:port (required)")
	fs.DurationVar(&cfg.period, "period", time.Millisecond, "interval between packets")
	fs.Uint64Var(&cfg.count, "count", 0, "packets to send, 0 for no limit")
	fs.DurationVar(&cfg.duration, "duration", 0, "stop after this long, 0 for no limit")
	fs.IntVar(&cfg.size, "size", 64, fmt.Sprintf("UDP payload size in bytes (at least %d)", minSize))
	fs.IntVar(&cfg.priority, "priority", -1, "socket priority (SO_PRIORITY) to set, -1 to leave the socket default")
	fs.BoolVar(&cfg.txtime, "txtime", false, "give every packet an SO_TXTIME launch time on CLOCK_TAI (needs CAP_NET_ADMIN)")
	fs.DurationVar(&cfg.txtimeOffset, "txtime-offset", 500*time.Microsecond, "with -txtime: how far ahead of the send call the launch time lies")
	fs.BoolVar(&cfg.deadline, "txtime-deadline", false, "with -txtime: set SOF_TXTIME_DEADLINE_MODE (launch time is a deadline)")
	fs.StringVar(&cfg.stream, "stream", truncate(host, maxStream), fmt.Sprintf("stream name written into every payload (at most %d bytes)", maxStream))
	tag := fs.Int64("tag", -1, "stream tag written into every payload (the data path observer's flow), -1 for a hash of -stream")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	switch {
	case *tag == -1:
		cfg.tag = payload.TagOf(cfg.stream)
	case *tag < 0 || *tag > math.MaxUint32:
		return cfg, fmt.Errorf("-tag %d: must be -1 or in [0, %d]", *tag, uint32(math.MaxUint32))
	default:
		cfg.tag = uint32(*tag)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return cfg, cfg.validate()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func writeSummary(w io.Writer, s *summary) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
