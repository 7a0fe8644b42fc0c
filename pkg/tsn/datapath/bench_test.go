package datapath_test

import (
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// BenchmarkDatapath measures, on the routed topology, in one run:
//   - in-kernel ns per packet of the saver and the restorer (BPF run stats),
//     for packets with metadata and for the skip path (no metadata);
//   - the sending thread's CPU per packet with and without the proxy, in
//     alternating rounds so both see the same machine load;
//   - that every packet was restored right (wrong must be 0).
//
// b.N is the number of packets per phase; make bench-datapath uses 40000.
func BenchmarkDatapath(b *testing.B) {
	datapathtest.NeedRoot(b)
	ctx := testCtx(b)
	n := datapathtest.NewNode(b, netemu.Routed, 1)
	m := openManager(b, n, datapathtest.PinDir(b, pinPrefix), benchOpts()...)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("BPF run statistics: %v", err)
	}
	defer stats.Close()
	obs := datapathtest.AttachObserver(b, n, m.Mode())
	empty := attachEmpty(b, n, m.Mode())
	pod := n.Pods[0]
	s := newSender(b, pod.Netns, n)

	const rounds = 8
	per := max(b.N/rounds, 500)
	var saver, restorer, saverSkip, restorerMiss, overhead datapath.ProgramStats
	var cpuWith, cpuWithout time.Duration
	var sentWith uint64
	unlock := netemu.LockThread()
	defer unlock()

	send := func(tag uint32, count int, meta bool) time.Duration {
		base := netemu.TAINow() + uint64(time.Hour)
		start := netemu.ThreadCPU()
		for i := 0; i < count; i++ {
			var prio uint32
			var tx uint64
			if meta {
				prio = uint32(1 + i%7)
				tx = base + uint64(i)
			}
			if err := s.Send(tag, uint32(i), prio, tx, prio, tx); err != nil {
				b.Fatal(err)
			}
		}
		return netemu.ThreadCPU() - start
	}
	delta := func(before, after datapath.ProgramStats) datapath.ProgramStats {
		return datapath.ProgramStats{RunCount: after.RunCount - before.RunCount, Runtime: after.Runtime - before.Runtime}
	}
	add := func(sum *datapath.ProgramStats, d datapath.ProgramStats) {
		sum.RunCount += d.RunCount
		sum.Runtime += d.Runtime
	}

	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
			b.Fatal(err)
		}
		if err := m.AttachSaver(ctx, "bench", pod.Netns, pod.Ifname, allowAll); err != nil {
			b.Fatal(err)
		}
		s0, _ := m.SaverStats("bench")
		r0, _ := m.RestorerStats(netemu.NIC)
		e0 := programStats(b, empty)
		cpuWith += send(1, per, true)
		sentWith += uint64(per)
		time.Sleep(20 * time.Millisecond) // let the last packets reach tsn0
		s1, _ := m.SaverStats("bench")
		r1, _ := m.RestorerStats(netemu.NIC)
		add(&overhead, delta(e0, programStats(b, empty)))
		send(2, per/4, false)
		time.Sleep(20 * time.Millisecond)
		s2, _ := m.SaverStats("bench")
		r2, _ := m.RestorerStats(netemu.NIC)
		add(&saver, delta(s0, s1))
		add(&restorer, delta(r0, r1))
		add(&saverSkip, delta(s1, s2))
		add(&restorerMiss, delta(r1, r2))

		if err := m.DetachSaver(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
		if err := m.RemoveRestorer(ctx, netemu.NIC); err != nil {
			b.Fatal(err)
		}
		cpuWithout += send(3, per, true)
	}
	b.StopTimer()

	res := datapathtest.WaitTotal(b, obs, 1, sentWith, waitLimit)
	if res.Right != sentWith || res.Wrong != 0 {
		b.Errorf("with the proxy: want %d right and 0 wrong, got %+v", sentWith, res)
	}
	without := datapathtest.WaitTotal(b, obs, 3, sentWith, waitLimit)
	pkts := time.Duration(per * rounds)
	b.ReportMetric(float64(saver.PerRun()), "saver-ns/pkt")
	b.ReportMetric(float64(restorer.PerRun()), "restorer-ns/pkt")
	b.ReportMetric(float64(saver.PerRun()+restorer.PerRun()), "pair-ns/pkt")
	// Run statistics time each program with two sched_clock() reads around it; an empty
	// program on the same packets measures that (and the hook's call) alone. Production runs
	// without statistics, so the pair's own cost is the pair minus one overhead per program.
	ovh := overhead.PerRun()
	b.ReportMetric(float64(ovh), "stats-overhead-ns/run")
	b.ReportMetric(float64(saver.PerRun()+restorer.PerRun()-2*ovh), "pair-net-ns/pkt")
	b.ReportMetric(float64(saverSkip.PerRun()), "saver-skip-ns/pkt")
	b.ReportMetric(float64(restorerMiss.PerRun()), "restorer-miss-ns/pkt")
	b.ReportMetric(float64(cpuWithout/pkts), "cpu-without-ns/pkt")
	b.ReportMetric(float64(cpuWith/pkts), "cpu-with-ns/pkt")
	b.ReportMetric(float64(res.Wrong), "wrong")
	b.ReportMetric(float64(res.Right)/float64(sentWith)*100, "restored-%")
	b.ReportMetric(float64(without.Right)/float64(sentWith)*100, "right-without-proxy-%")
	b.Logf("saver %d runs %v/run, restorer %d runs %v/run; empty program %d runs %v/run; skip path %v, restorer miss %v; sender CPU without %v, with %v per packet; %+v",
		saver.RunCount, saver.PerRun(), restorer.RunCount, restorer.PerRun(), overhead.RunCount, ovh, saverSkip.PerRun(), restorerMiss.PerRun(),
		cpuWithout/pkts, cpuWith/pkts, res)
}

// BenchmarkAttachSaver measures AttachSaver for a new pod (the NRI hook's
// cost) with prepared programs, for TCX and tc attachment of the saver.
func BenchmarkAttachSaver(b *testing.B) {
	datapathtest.NeedRoot(b)
	for _, mode := range []datapath.AttachMode{datapath.ModeTCX, datapath.ModeTC} {
		b.Run(string(mode), func(b *testing.B) {
			f, err := datapath.ProbeFeatures()
			if err != nil {
				b.Fatal(err)
			}
			if mode == datapath.ModeTCX && !f.TCX {
				b.Skip("kernel has no TCX")
			}
			ctx := testCtx(b)
			n := datapathtest.NewNode(b, netemu.Routed, 1)
			m := openManager(b, n, datapathtest.PinDir(b, pinPrefix), datapath.WithSaverAttachMode(mode))
			pod := n.Pods[0]
			var took []time.Duration
			for i := 0; i < max(b.N, 20); i++ {
				time.Sleep(30 * time.Millisecond) // the next program is prepared in the background
				start := time.Now()
				if err := m.AttachSaver(ctx, "pod", pod.Netns, pod.Ifname, allowAll); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
				if err := m.DetachSaver(ctx, "pod"); err != nil {
					b.Fatal(err)
				}
			}
			sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
			p50, p99 := took[len(took)/2], took[(len(took)*99)/100]
			b.ReportMetric(float64(p50.Microseconds()), "p50-us")
			b.ReportMetric(float64(p99.Microseconds()), "p99-us")
			b.Logf("%s: AttachSaver p50 %v p99 %v max %v over %d", mode, p50, p99, took[len(took)-1], len(took))
		})
	}
}

func benchOpts() []datapath.Option {
	var o []datapath.Option
	if v := os.Getenv("TSN_BENCH_MAX_PODS"); v != "" {
		n, _ := strconv.Atoi(v)
		o = append(o, datapath.WithMaxPods(uint32(n)))
	}
	return o
}

// attachEmpty attaches, last at egress of tsn0, a program that only returns
// "next": its run time under BPF statistics is what the statistics add to
// every program run.
func attachEmpty(b *testing.B, n *netemu.Node, mode datapath.AttachMode) *ebpf.Program {
	b.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "tsn_empty", Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
		// -1 is TCX_NEXT and TC_ACT_UNSPEC alike.
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		b.Fatalf("load the empty program: %v", err)
	}
	b.Cleanup(func() { prog.Close() })
	var detach func() error
	err = netemu.InNetns(n.HostNetns, func() error {
		l, err := netlink.LinkByName(netemu.NIC)
		if err != nil {
			return err
		}
		detach, err = hook.AttachUnpinned(hook.Mode(mode), prog, l.Attrs().Index, hook.Last)
		return err
	})
	if err != nil {
		b.Fatalf("attach the empty program: %v", err)
	}
	b.Cleanup(func() { _ = detach() })
	return prog
}

func programStats(b *testing.B, p *ebpf.Program) datapath.ProgramStats {
	b.Helper()
	st, err := p.Stats()
	if err != nil {
		b.Fatalf("empty program stats: %v", err)
	}
	return datapath.ProgramStats{RunCount: st.RunCount, Runtime: st.Runtime}
}
