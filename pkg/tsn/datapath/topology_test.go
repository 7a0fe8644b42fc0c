package datapath_test

import (
	"testing"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

const packetsPerTopology = 2000

// TestTopologies: on every pod network path, every packet leaves tsn0 with
// the priority and launch time its application set: 100% restored, 0 wrong.
func TestTopologies(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, topo := range netemu.All {
		t.Run(string(topo), func(t *testing.T) { testTopology(t, topo) })
	}
}

// TestTopologiesLegacyAttach runs the kernel < 6.6 path (clsact + cls_bpf) and
// the kernel < 6.11 launch time path on this kernel, on the paths most likely
// to differ.
func TestTopologiesLegacyAttach(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, topo := range []netemu.Topology{netemu.Routed, netemu.VXLAN, netemu.FloodBridge} {
		t.Run(string(topo), func(t *testing.T) {
			testTopology(t, topo, datapath.WithAttachMode(datapath.ModeTC), datapath.WithKernelClockTypes(false))
		})
	}
}

func testTopology(t *testing.T, topo netemu.Topology, opts ...datapath.Option) {
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, topo, 1)
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix), opts...)
	t.Logf("mode %s, features %+v", m.Mode(), m.Features())
	obs, s := restoreOnePod(t, ctx, n, m)
	const tag = 1
	withMeta := sendMix(t, s, obs, tag, packetsPerTopology)
	r := datapathtest.WaitTotal(t, obs, tag, packetsPerTopology, waitLimit)
	t.Logf("%s: total %d right %d missed %d wrong %d, launch times %d/%d, by priority %v",
		topo, r.Total, r.Right, r.Missed, r.Wrong, r.TxTimeRight, r.TxTimeWanted, r.ByGot)
	if r.Total != packetsPerTopology || r.Right != packetsPerTopology || r.Wrong != 0 {
		t.Errorf("want %d packets all right, got total %d right %d missed %d wrong %d",
			packetsPerTopology, r.Total, r.Right, r.Missed, r.Wrong)
	}
	c, err := m.Counters("pod-a")
	if err != nil {
		t.Fatal(err)
	}
	tot := c.Total()
	t.Logf("counters %+v", tot)
	// The pod's kernel may save a few packets of its own (IPv6 ND and MLD use
	// priority 7): they expire, or on a bridge reach tsn0 and are restored too.
	if tot.Restored < uint64(withMeta) || tot.Restored > uint64(withMeta)+8 || tot.Saved < uint64(withMeta) || tot.Saved > uint64(withMeta)+8 ||
		tot.Missed != 0 || tot.Rejected != 0 {
		t.Errorf("counters: want restored = %d, saved about as many, nothing missed or rejected; got %+v", withMeta, tot)
	}
}
