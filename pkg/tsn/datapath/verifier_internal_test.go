package datapath

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
)

// verifierBudget is half of the kernel's limit on instructions the verifier
// may process per program (BPF_COMPLEXITY_LIMIT_INSNS, 1,000,000). Older
// verifiers prune less: a saver change that 6.18 took easily once went over
// the limit on 6.1 and no pod there got a saver. Staying under half leaves
// room for the next change and for kernels that prune even less.
const verifierBudget = 500_000

var processedInsns = regexp.MustCompile(`processed (\d+) insns`)

// TestVerifierHeadroom loads every program the way the manager does, with the
// verifier's statistics, and fails when one of them needs more than half of
// the kernel's budget. It runs on the host and in the VM's 6.1 kernels.
func TestVerifierHeadroom(t *testing.T) {
	m := openForSweep(t)
	for _, name := range []string{"tsn_saver", "tsn_restorer", "tsn_gc_sweep"} {
		spec := m.spec.Copy()
		if name == "tsn_saver" {
			if err := spec.Variables[bpf.TsnVarSaverSlot].Set(uint32(1)); err != nil {
				t.Fatal(err)
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
			Maps: spec.Maps, Variables: spec.Variables, Types: spec.Types,
			Programs: map[string]*ebpf.ProgramSpec{name: spec.Programs[name]},
		}, ebpf.CollectionOptions{MapReplacements: m.maps, Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			t.Fatalf("load %s: %v", name, err)
		}
		prog := coll.Programs[name]
		got := processedInsns.FindStringSubmatch(prog.VerifierLog)
		coll.Close()
		if got == nil {
			t.Fatalf("%s: no instruction count in the verifier's statistics: %q", name, prog.VerifierLog)
		}
		n, _ := strconv.Atoi(got[1])
		t.Logf("%s: the verifier processed %d instructions (budget %d, kernel limit 1,000,000)", name, n, verifierBudget)
		if n > verifierBudget {
			t.Errorf("%s: the verifier processed %d instructions, over half of the kernel's limit: simplify the program (fewer branches on unknown values)", name, n)
		}
	}
}
