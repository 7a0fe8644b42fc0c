package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// benchMapSize measures per-packet cost and the expiry sweep against the table size.
func benchMapSize(r *report) error {
	sizes := []int{16, 64, 256, 1024, 4096}
	if *quick {
		sizes = []int{16, 1024}
	}
	for _, maxPods := range sizes {
		row := mapRow{maxPods: maxPods}
		buckets := 1
		for buckets < maxPods*256*2/4 {
			buckets <<= 1
		}
		row.entries = buckets * 4
		n := "16000x"
		if *quick {
			n = "4000x"
		}
		outp, err := goTest([]string{fmt.Sprintf("TSN_BENCH_MAX_PODS=%d", maxPods)}, "-run", "^$", "-bench", "^BenchmarkDatapath$", "-benchtime", n, "./pkg/tsn/datapath/")
		if err != nil {
			return err
		}
		m, err := benchMetrics(outp, "BenchmarkDatapath")
		if err != nil {
			return err
		}
		row.pairNs, row.cpuWithNs, row.cpuWithoutNs = m["pair-ns/pkt"], m["cpu-with-ns/pkt"], m["cpu-without-ns/pkt"]
		if err := sweepCost(&row); err != nil {
			return fmt.Errorf("sweep with %d pods: %w", maxPods, err)
		}
		r.maps = append(r.maps, row)
	}
	return nil
}

// sweepCost opens a data path whose expiry runs as the sweep program (WithKernelTimer(false)),
// lets the manager run it every 20 ms for a second with run statistics on, and reads them.
func sweepCost(row *mapRow) error {
	node, err := netemu.New(netemu.Routed, 0)
	if err != nil {
		return err
	}
	defer node.Close()
	pin := filepath.Join("/sys/fs/bpf", "tsn-bench-map-"+randSuffix())
	defer os.RemoveAll(pin)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return err
	}
	defer stats.Close()
	ctx := quietCtx()
	m, err := datapath.Open(ctx, datapath.WithPinDir(filepath.Join(pin, "v1")), datapath.WithNetns(node.HostNetns),
		datapath.WithMaxPods(uint32(row.maxPods)), datapath.WithKernelTimer(false), datapath.WithGCInterval(20*time.Millisecond))
	if err != nil {
		return err
	}
	defer m.Uninstall(ctx)
	table, err := ebpf.LoadPinnedMap(filepath.Join(pin, "v1", "maps", bpf.TsnMapTsnTable), nil)
	if err != nil {
		return err
	}
	defer table.Close()
	ways, err := ebpf.LoadPinnedMap(filepath.Join(pin, "v1", "maps", bpf.TsnMapTsnWays), nil)
	if err != nil {
		return err
	}
	defer ways.Close()
	row.tableBytes = int(table.MaxEntries()*table.ValueSize() + ways.MaxEntries()*ways.ValueSize())
	ti, err := table.Info()
	if err != nil {
		return err
	}
	tid, _ := ti.ID()
	time.Sleep(time.Second)
	// Find our sweep program: named tsn_gc_sweep and using our table.
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err == nil && info.Name == "tsn_gc_sweep" {
			if mids, ok := info.MapIDs(); ok && slices.Contains(mids, tid) {
				if st, err := p.Stats(); err == nil && st.RunCount > 0 {
					row.sweeps = st.RunCount
					row.sweepNs = float64(st.Runtime.Nanoseconds()) / float64(st.RunCount)
				}
			}
		}
		p.Close()
	}
	if row.sweeps == 0 {
		return fmt.Errorf("sweep program not found or never ran")
	}
	return nil
}
