package datapath

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
)

// Features are the kernel capabilities the data path chooses between.
type Features struct {
	// TCX: tcx links (>= 6.6). Without: clsact + cls_bpf.
	TCX bool
	// ClockTypes: __sk_buff->tstamp_type says TAI/MONO/REALTIME and
	// bpf_skb_set_tstamp takes BPF_SKB_CLOCK_TAI (>= 6.11). Without: only
	// "mono delivery time" is marked, and other launch times take the clock
	// from the pod's Policy.LaunchTimeClock.
	ClockTypes bool
	// Timer: entries expire by a bpf_timer in a pinned map, which keeps
	// running without the manager. PREEMPT_RT kernels refuse bpf_timer: then
	// the manager sweeps while it is open. Set by Open, not by ProbeFeatures.
	Timer bool
	// Fexit: fexit programs load. Reported for diagnostics only: the
	// content-keyed map needs no clone tracking (docs/datapath.md).
	Fexit bool
}

var (
	probeOnce sync.Once
	probed    Features
	probeErr  error
)

// ProbeFeatures probes the kernel once per process.
func ProbeFeatures() (Features, error) {
	probeOnce.Do(func() {
		probed, probeErr = probe()
	})
	return probed, probeErr
}

func probe() (Features, error) {
	var f Features
	var err error
	if f.TCX, err = hook.ProbeTCX(); err != nil {
		return f, fmt.Errorf("probe tcx: %w", err)
	}
	spec, err := bpf.LoadTsn()
	if err != nil {
		return f, err
	}
	var objs struct {
		Probe *ebpf.Program `ebpf:"tsn_probe_clock_tai"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return f, fmt.Errorf("load clock probe: %w", err)
	}
	defer objs.Probe.Close()
	ret, err := objs.Probe.Run(&ebpf.RunOptions{Data: probePacket()})
	if err != nil {
		return f, fmt.Errorf("run clock probe: %w", err)
	}
	f.ClockTypes = ret == 0

	fexit, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFExit,
		AttachTo:     "skb_clone",
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err == nil {
		f.Fexit = true
		fexit.Close()
	}
	return f, nil
}
