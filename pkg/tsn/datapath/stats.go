package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ProgramStats are the kernel's run statistics of one attached program. The
// kernel only counts while statistics are enabled (ebpf.EnableStats or the
// kernel.bpf_stats_enabled sysctl).
type ProgramStats struct {
	RunCount uint64
	Runtime  time.Duration
}

// PerRun is the mean time per run.
func (s ProgramStats) PerRun() time.Duration {
	if s.RunCount == 0 {
		return 0
	}
	return s.Runtime / time.Duration(s.RunCount)
}

// Stats returns the run statistics of the pod's saver.
func (m *Manager) SaverStats(podUID string) (ProgramStats, error) {
	m.mu.Lock()
	s, ok := m.savers[podUID]
	m.mu.Unlock()
	if !ok {
		return ProgramStats{}, fmt.Errorf("pod %s: no saver attached", podUID)
	}
	return pinnedStats(m.saverPin(s.info.Slot))
}

// RestorerStats returns the run statistics of the restorer on ifname.
func (m *Manager) RestorerStats(ifname string) (ProgramStats, error) {
	return pinnedStats(m.restorerPin(ifname))
}

func pinnedStats(pin string) (ProgramStats, error) {
	prog, err := pinnedProgram(pin)
	if err != nil {
		return ProgramStats{}, err
	}
	defer prog.Close()
	st, err := prog.Stats()
	if err != nil {
		return ProgramStats{}, fmt.Errorf("program stats at %s: %w", pin, err)
	}
	return ProgramStats{RunCount: st.RunCount, Runtime: st.Runtime}, nil
}

// pinnedProgram opens the program behind a pinned link or pinned program.
func pinnedProgram(pin string) (*ebpf.Program, error) {
	if _, err := os.Stat(pin); err != nil {
		return nil, fmt.Errorf("nothing pinned at %s: %w", filepath.Base(pin), err)
	}
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return nil, err
		}
		return ebpf.NewProgramFromID(info.Program)
	}
	return ebpf.LoadPinnedProgram(pin, nil)
}
