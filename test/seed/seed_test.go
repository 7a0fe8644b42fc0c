// Package seed holds the seed experiment of the TSN metadata proxy: pod traffic
// with priorities goes through taprio on an emulated TSN NIC, once without the
// eBPF proxy and once with it, and a receiver behind the NIC counts what
// arrives. It needs root, bpffs and a kernel with taprio: it runs under
// `make vmtest` and skips elsewhere.
package seed

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/test/seed/seedtest"
)

const perPriority = 300

func TestSeedExperiment(t *testing.T) {
	datapathtest.NeedRoot(t)
	results := map[bool]result{}
	for _, proxy := range []bool{false, true} {
		name := "without-proxy"
		if proxy {
			name = "with-proxy"
		}
		t.Run(name, func(t *testing.T) { results[proxy] = run(t, proxy) })
	}
	t.Logf("seed experiment, %d packets per priority 0/1/2: without proxy %s; with proxy %s",
		perPriority, results[false], results[true])
}

// result is what one run measured: per taprio child (class c is child c+1),
// packets it sent and packets still queued in it; per socket priority the pod
// set, datagrams that arrived behind the NIC.
type result struct {
	sent, queued map[uint16]uint32
	arrived      [3]int
	restorer     datapath.AttachMode // "" without the proxy
}

func (r result) String() string {
	return fmt.Sprintf("taprio children sent %v, still queued %v, arrived per priority %v (restorer %q)",
		r.sent, r.queued, r.arrived, r.restorer)
}

// run sends the pod's traffic and returns what went where.
func run(t *testing.T, proxy bool) result {
	_, ctx := ktesting.NewTestContext(t)
	node := seedtest.NewNode(t, "run make vmtest")
	if err := node.StaticNeighbour(); err != nil {
		t.Fatal(err)
	}

	var res result
	// In the driver's order (pkg/driver/nicsetup): the restorer first, then
	// the schedule. Without TCX the restorer needs clsact, and clsact grafted
	// onto a NIC that already runs taprio stops taprio's gates.
	if proxy {
		res.restorer = node.OpenProxy(ctx, t, "tsn-seed-", "", "seed-pod").Mode()
	}
	// Priority p in class p (child root:p+1) for p = 0, 1, 2. The gate windows
	// are wide for TCG, and the counts include what is still queued anyway.
	node.Apply(ctx, t, seedtest.Schedule(t))
	state, err := node.Client.Snapshot(node.Link)
	if err != nil {
		t.Fatal(err)
	}
	root := state.Root.Handle

	// The burst of 900 datagrams must fit: SO_RCVBUF is capped by rmem_max
	// (208 KiB), which dropped ~15% on 6.1 under TCG; root may force more.
	rx := node.Listen(t, seedtest.ReceiverOptions{Tag: seqTag, Buffer: 8 << 20, ForceBuffer: true, Poll: 50 * time.Millisecond})

	time.Sleep(60 * time.Millisecond) // past the base time
	before, err := node.Client.QueueStats(node.Link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := netemu.NewSender(node.Pods[0].Netns, node.Dst(), unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for seq := uint32(0); seq < 3*perPriority; seq++ {
		prio := seq % 3
		if err := s.Send(seqTag, seq, prio, 0, prio, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until everything arrived or nothing moves any more: where the NIC
	// stalls, what is queued stays queued.
	last, still := -1, 0
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && still < 10; {
		time.Sleep(50 * time.Millisecond)
		c := rx.PerPriority()
		n := c[0] + c[1] + c[2]
		if n >= 3*perPriority {
			break
		}
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	after, err := node.Client.QueueStats(node.Link.Index, root)
	if err != nil {
		t.Fatal(err)
	}
	rx.Close()
	res.arrived = rx.PerPriority()
	res.sent, res.queued = map[uint16]uint32{}, map[uint16]uint32{}
	for q := range uint16(3) {
		res.sent[q] = after[q].Packets - before[q].Packets
		res.queued[q] = after[q].QLen - before[q].QLen
	}
	t.Logf("taprio %x: %s", root.Major(), res)

	// The host's own packets (ARP, neighbour discovery) may add a few to best effort.
	const noise = 10
	var want [3]uint32 // per class, sent + queued
	if proxy {
		want = [3]uint32{perPriority, perPriority, perPriority}
	} else {
		want = [3]uint32{3 * perPriority, 0, 0}
	}
	// Which class each priority was put in: sent plus still queued, so this
	// holds even where the NIC does not send.
	t.Run("classes", func(t *testing.T) {
		for q := range uint16(3) {
			got := res.sent[q] + res.queued[q]
			if got < want[q] || got > want[q]+noise || (q > 0 && got != want[q]) {
				t.Errorf("taprio child %d: %d packets sent or queued, want %d", q+1, got, want[q])
			}
		}
	})
	// That they left the NIC through their classes and arrived behind it.
	t.Run("arrived", func(t *testing.T) {
		for p := range 3 {
			if res.arrived[p] != perPriority {
				t.Errorf("priority %d: %d of %d packets arrived behind the NIC", p, res.arrived[p], perPriority)
			}
		}
		for q := range uint16(3) {
			if res.sent[q] < want[q] || res.sent[q] > want[q]+noise || (q > 0 && res.sent[q] != want[q]) {
				t.Errorf("taprio child %d sent %d packets, want %d", q+1, res.sent[q], want[q])
			}
		}
	})
	return res
}

// seqTag marks the experiment's datagrams (observe.Payload's tag).
const seqTag = 7
