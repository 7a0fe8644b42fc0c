// Command receiver records the datagrams of example talkers: per stream and
// priority (as written in the talker's payload header) it counts packets,
// missing and duplicate sequence numbers, and how arrival compares with the
// launch time (SO_TXTIME) or the send time the talker wrote.
//
// It stops after -count packets, after -duration, or on SIGTERM/SIGINT, and
// prints a JSON summary on stdout (and to -out if given).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := log.New(os.Stderr, "receiver: ", log.LstdFlags|log.Lmicroseconds)
	rep, err := run(ctx, cfg, logger, nil)
	if rep != nil {
		if werr := emit(cfg, rep); werr != nil && err == nil {
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
	fs.StringVar(&cfg.listen, "listen", ":7788", "UDP address to listen on")
	fs.Uint64Var(&cfg.count, "count", 0, "stop after this many talker packets, 0 for no limit")
	fs.DurationVar(&cfg.duration, "duration", 0, "stop after this long, 0 for no limit")
	fs.StringVar(&cfg.out, "out", "", "also write the JSON summary to this file (written atomically)")
	fs.IntVar(&cfg.rcvbuf, "rcvbuf", 8<<20, "socket receive buffer in bytes (beyond net.core.rmem_max only with CAP_NET_ADMIN), 0 for the default")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if cfg.rcvbuf < 0 {
		return cfg, fmt.Errorf("-rcvbuf %d: must not be negative", cfg.rcvbuf)
	}
	if cfg.duration < 0 {
		return cfg, fmt.Errorf("-duration %v: must not be negative", cfg.duration)
	}
	return cfg, nil
}

func emit(cfg config, rep *report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := os.Stdout.Write(b); err != nil {
		return err
	}
	if cfg.out == "" {
		return nil
	}
	tmp := cfg.out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("writing the summary: %w", err)
	}
	if err := os.Rename(tmp, cfg.out); err != nil {
		return fmt.Errorf("writing the summary: %w", err)
	}
	return nil
}
