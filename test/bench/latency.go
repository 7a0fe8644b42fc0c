package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

func quietCtx() context.Context {
	return klog.NewContext(context.Background(), klog.Background().V(10))
}

func randSuffix() string { return fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff) }

// inNetns runs f on a locked thread in the network namespace at path.
func inNetns(path string, f func() error) error { return netemu.InNetns(path, f) }

// benchLatency measures pod -> wire one-way latency with and without the proxy.
func benchLatency(r *report) error {
	node, err := netemu.New(netemu.Routed, 1)
	if err != nil {
		return err
	}
	defer node.Close()
	pin := filepath.Join("/sys/fs/bpf", "tsn-bench-"+randSuffix())
	defer os.RemoveAll(pin)
	ctx := quietCtx()
	m, err := datapath.Open(ctx, datapath.WithPinDir(filepath.Join(pin, "v1")), datapath.WithNetns(node.HostNetns),
		datapath.WithSaverAttachMode(datapath.ModeTC))
	if err != nil {
		return err
	}
	defer m.Uninstall(ctx)
	pod := node.Pods[0]
	dst := &net.UDPAddr{IP: node.Dest.IP, Port: 9100}

	// Receiver in the wire netns with kernel receive timestamps.
	var rfd int
	if err := inNetns(node.WireNetns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		rfd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		sa := &unix.SockaddrInet4{Port: dst.Port}
		copy(sa.Addr[:], dst.IP.To4())
		return unix.Bind(fd, sa)
	}); err != nil {
		return fmt.Errorf("receiver: %w", err)
	}
	defer unix.Close(rfd)
	_ = unix.SetsockoptTimeval(rfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})

	// Sender in the pod: priority 3 and a launch time, as a TSN talker.
	var sfd int
	if err := inNetns(pod.Netns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		sfd = fd
		return err
	}); err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	defer unix.Close(sfd)
	if err := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PRIORITY, 3); err != nil {
		return err
	}
	txt := make([]byte, 8)
	binary.NativeEndian.PutUint32(txt, uint32(unix.CLOCK_TAI))
	if err := unix.SetsockoptString(sfd, unix.SOL_SOCKET, unix.SO_TXTIME, string(txt)); err != nil {
		return fmt.Errorf("SO_TXTIME: %w", err)
	}
	oob := make([]byte, unix.CmsgSpace(8))
	h := (*unix.Cmsghdr)(unsafePtr(&oob[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_TXTIME
	h.SetLen(unix.CmsgLen(8))
	sa := &unix.SockaddrInet4{Port: dst.Port}
	copy(sa.Addr[:], dst.IP.To4())

	// Short alternating rounds, so that both modes see the same load drift.
	per, rounds := 500, 40
	if *quick {
		per, rounds = 250, 4
	}
	gap := 50 * time.Microsecond
	var with, without []time.Duration
	buf := make([]byte, 64)
	rbuf := make([]byte, 256)
	roob := make([]byte, 128)
	round := func(proxy bool) ([]time.Duration, error) {
		if proxy {
			if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
				return nil, err
			}
			if err := m.AttachSaver(ctx, "bench", pod.Netns, pod.Ifname, datapath.Policy{Allowed: []uint32{1, 2, 3}}); err != nil {
				return nil, err
			}
		} else {
			if err := m.DetachSaver(ctx, "bench"); err != nil {
				return nil, err
			}
			if err := m.RemoveRestorer(ctx, netemu.NIC); err != nil {
				return nil, err
			}
		}
		time.Sleep(20 * time.Millisecond)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var lat []time.Duration
		for i := 0; i < per; i++ {
			launch := netemu.TAINow() + uint64(time.Millisecond)
			binary.NativeEndian.PutUint64(oob[unix.CmsgLen(0):], launch)
			now := time.Now().UnixNano()
			binary.BigEndian.PutUint64(buf[0:], uint64(now))
			if err := unix.Sendmsg(sfd, buf, oob, sa, 0); err != nil {
				return nil, fmt.Errorf("send: %w", err)
			}
			n, oobn, _, _, err := unix.Recvmsg(rfd, rbuf, roob, 0)
			if err != nil {
				return nil, fmt.Errorf("receive: %w", err)
			}
			if n < 8 {
				continue
			}
			sent := int64(binary.BigEndian.Uint64(rbuf[0:]))
			cms, err := unix.ParseSocketControlMessage(roob[:oobn])
			if err != nil {
				return nil, err
			}
			for _, c := range cms {
				if c.Header.Level == unix.SOL_SOCKET && c.Header.Type == unix.SO_TIMESTAMPNS {
					ts := (*unix.Timespec)(unsafePtr(&c.Data[0]))
					lat = append(lat, time.Duration(ts.Nano()-sent))
				}
			}
			for t0 := time.Now(); time.Since(t0) < gap; {
			}
		}
		return lat, nil
	}
	// Warm-up, then alternate.
	if _, err := round(true); err != nil {
		return err
	}
	for i := 0; i < rounds; i++ {
		l, err := round(false)
		if err != nil {
			return err
		}
		without = append(without, l...)
		l, err = round(true)
		if err != nil {
			return err
		}
		with = append(with, l...)
	}
	c, err := m.Counters("bench")
	if err == nil {
		tot := c.Total()
		r.latNote = fmt.Sprintf("The proxy restored %d of %d packets it saved in this section (the last round), rejected %d.", tot.Restored, tot.Saved, tot.Rejected)
	}
	r.latWithout, r.latWith = summarize(without), summarize(with)
	return nil
}

func summarize(l []time.Duration) latencyResult {
	sortDur(l)
	var sum time.Duration
	for _, d := range l {
		sum += d
	}
	res := latencyResult{n: len(l), p50: pct(l, 50), p99: pct(l, 99), p999: pct(l, 99.9)}
	if len(l) > 0 {
		res.max = l[len(l)-1]
		res.mean = sum / time.Duration(len(l))
	}
	return res
}
