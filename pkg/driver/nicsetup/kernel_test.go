package nicsetup

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

// Wide gate windows: under qemu's TCG, narrow ones leave packets queued.
const kernelSchedule = `{
  "numTrafficClasses": 3,
  "priorityMap": [0, 1, 2],
  "queues": ["1@0", "1@1", "2@2"],
  "gateControlList": [
    {"gateMask": 1, "interval": "400us"},
    {"gateMask": 2, "interval": "300us"},
    {"gateMask": 4, "interval": "300us"}
  ],
  "baseTime": {"policy": "now", "margin": "10ms"},
  "clock": "CLOCK_TAI",
  "mode": "software"
}`

// kernelNIC makes a 4-queue veth in a new network namespace with an fq_codel root
// (the "previous" qdisc) and returns a qdisc client for that namespace.
func kernelNIC(t *testing.T) *qdisc.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace and qdiscs")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's netns: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close(); orig.Close() })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tsn0", NumTxQueues: 4, NumRxQueues: 4}, PeerName: "wire0"}); err != nil {
		t.Fatalf("veth: %v", err)
	}
	l, err := h.LinkByName("tsn0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := qdisc.NewClient(qdisc.WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if ok, err := c.HasKind(l.Attrs().Index, "taprio"); err != nil || !ok {
		t.Skipf("the kernel has no taprio (%v): runs in `make vmtest`", err)
	}
	prev := netlink.NewFqCodel(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0x10, 0), Parent: netlink.HANDLE_ROOT})
	if err := h.QdiscReplace(prev); err != nil {
		t.Fatalf("fq_codel root: %v", err)
	}
	return c
}

func rootOf(t *testing.T, c *qdisc.Client) *qdisc.Installed {
	t.Helper()
	l, err := c.Link("tsn0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Snapshot(l)
	if err != nil {
		t.Fatal(err)
	}
	return s.Root
}

func TestKernelScheduleKeptAcrossClaimsAndRemoved(t *testing.T) {
	c := kernelNIC(t)
	var sched schedule.Schedule
	if err := json.Unmarshal([]byte(kernelSchedule), &sched); err != nil {
		t.Fatal(err)
	}
	cfg := config.NIC{Name: "tsn0", Schedule: sched, OnLastRelease: config.ReleaseRemove}
	qs := NewQdiscSchedules(c, func(n string) (config.NIC, bool) { return cfg, n == "tsn0" })
	nic := NIC{Name: "tsn0", Interface: "tsn0", ApplySchedule: true, RemoveOnLastRelease: true}
	ctx := context.Background()

	if err := qs.Apply(ctx, nic); err != nil {
		t.Fatalf("apply: %v", err)
	}
	first := rootOf(t, c)
	tp, ok := first.Qdisc.(*qdisc.Taprio)
	if !ok {
		t.Fatalf("root after apply = %v, want taprio", first)
	}
	// A second claim on the NIC: the running schedule, base time included,
	// stays (a new base time would restart every other claim's gate cycle).
	if err := qs.Apply(ctx, nic); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	second := rootOf(t, c)
	tp2, ok := second.Qdisc.(*qdisc.Taprio)
	if !ok || second.Handle != first.Handle || tp2.BaseTime != tp.BaseTime {
		t.Fatalf("second apply changed the schedule: %v base %d -> %v base %d", first, tp.BaseTime, second, tp2.BaseTime)
	}

	if err := qs.Remove(ctx, nic); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if r := rootOf(t, c); r == nil || r.Kind != "fq_codel" || r.Handle != qdisc.MakeHandle(0x10, 0) {
		t.Fatalf("root after remove = %v, want the fq_codel 10: that was there before", r)
	}
}
