package datapath_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

func TestPolicyValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		p  datapath.Policy
		ok bool
	}{
		"empty":              {datapath.Policy{}, true},
		"allowed and remap":  {datapath.Policy{Allowed: []uint32{2, 3}, Remap: map[uint32]uint32{3: 5}, DefaultPriority: 1}, true},
		"drop":               {datapath.Policy{Action: datapath.ActionDrop}, true},
		"priority too high":  {datapath.Policy{Allowed: []uint32{16}}, false},
		"remap not allowed":  {datapath.Policy{Allowed: []uint32{2}, Remap: map[uint32]uint32{3: 5}}, false},
		"remap target":       {datapath.Policy{Allowed: []uint32{2}, Remap: map[uint32]uint32{2: 300}}, false},
		"unknown action":     {datapath.Policy{Action: 7}, false},
		"default too high":   {datapath.Policy{DefaultPriority: 255}, false},
		"realtime launch ts": {datapath.Policy{LaunchTimeClock: datapath.ClockRealtime}, true}, // zero value means TAI
		"bad clock":          {datapath.Policy{LaunchTimeClock: 9}, false},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", name, err, tc.ok)
		}
	}
}

// TestPolicyDemoteRemapDrop: a pod is held to what it claimed; the rest is
// demoted (or dropped) and counted, per application priority.
func TestPolicyDemoteRemapDrop(t *testing.T) {
	datapathtest.NeedRoot(t)
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix))
	obs := restoreAndObserve(t, ctx, n, m)

	demote := datapath.Policy{Allowed: []uint32{2, 3}, Remap: map[uint32]uint32{3: 5}, Action: datapath.ActionDemote, DefaultPriority: 1}
	drop := datapath.Policy{Allowed: []uint32{2}, Action: datapath.ActionDrop}
	a, b := n.Pods[0], n.Pods[1]
	if err := m.AttachSaver(ctx, "pod-demote", a.Netns, a.Ifname, demote); err != nil {
		t.Fatal(err)
	}
	if err := m.AttachSaver(ctx, "pod-drop", b.Netns, b.Ifname, drop); err != nil {
		t.Fatal(err)
	}
	sa, sb := newSender(t, a.Netns, n), newSender(t, b.Netns, n)
	const per = 200
	// app priority -> what must leave tsn0
	wantA := map[uint32]uint32{2: 2, 3: 5, 4: 1, 6: 1, 20: 1}
	tagA := func(p uint32) uint32 { return 100 + p }
	pa := newPacer(t, obs)
	for p, want := range wantA {
		pa.tags[tagA(p)] = true
		for i := 0; i < per; i++ {
			if err := sa.Send(tagA(p), uint32(i), p, 0, want, 0); err != nil {
				t.Fatal(err)
			}
			pa.add()
		}
	}
	for _, p := range []uint32{2, 4} {
		for i := 0; i < per; i++ {
			if err := sb.Send(200+p, uint32(i), p, 0, p, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p := range wantA {
		r := datapathtest.WaitTotal(t, obs, tagA(p), per, waitLimit)
		if r.Right != per || r.Wrong != 0 {
			t.Errorf("demote pod, priority %d: want %d right, got %+v", p, per, r)
		}
	}
	if r := datapathtest.WaitTotal(t, obs, 202, per, waitLimit); r.Right != per {
		t.Errorf("drop pod, allowed priority 2: want %d right, got %+v", per, r)
	}
	time.Sleep(100 * time.Millisecond)
	if r, _ := obs.Result(204); r.Total != 0 {
		t.Errorf("drop pod, priority 4: want every packet dropped, %d reached tsn0", r.Total)
	}

	ca, err := m.Counters("pod-demote")
	if err != nil {
		t.Fatal(err)
	}
	// (Priority 7 is avoided: the pod's kernel sends IPv6 ND/MLD with it.)
	for _, p := range []uint32{4, 6} {
		if c := ca.ByPriority[p]; c.Demoted != per || c.Restored != per {
			t.Errorf("demote pod, priority %d: want %d demoted and restored, got %+v", p, per, c)
		}
	}
	if c := ca.ByPriority[datapath.OtherPriorities]; c.Demoted != per {
		t.Errorf("demote pod, priority 20: want %d demoted in the >15 bucket, got %+v", per, c)
	}
	if c := ca.ByPriority[3]; c.Demoted != 0 || c.Restored != per {
		t.Errorf("demote pod, remapped priority 3: want %d restored, none demoted, got %+v", per, c)
	}
	cb, err := m.Counters("pod-drop")
	if err != nil {
		t.Fatal(err)
	}
	if c := cb.ByPriority[4]; c.Dropped != per || c.Saved != 0 {
		t.Errorf("drop pod, priority 4: want %d dropped, got %+v", per, c)
	}

	// Re-attaching updates the policy in place: now 4 is allowed.
	if err := m.AttachSaver(ctx, "pod-drop", b.Netns, b.Ifname, datapath.Policy{Allowed: []uint32{2, 4}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < per; i++ {
		if err := sb.Send(304, uint32(i), 4, 0, 4, 0); err != nil {
			t.Fatal(err)
		}
	}
	if r := datapathtest.WaitTotal(t, obs, 304, per, waitLimit); r.Right != per {
		t.Errorf("after policy update, priority 4: want %d right, got %+v", per, r)
	}
	savers, err := m.Savers()
	if err != nil || len(savers) != 2 {
		t.Fatalf("Savers() = %v, %v; want 2", savers, err)
	}
}

// TestOtherTrafficUntouched: packets of the host and of pods without a saver,
// sent at the same time as a claimed pod's, never carry its metadata at tsn0.
func TestOtherTrafficUntouched(t *testing.T) {
	datapathtest.NeedRoot(t)
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix))
	obs := restoreAndObserve(t, ctx, n, m)
	claimed, other := n.Pods[0], n.Pods[1]
	if err := m.AttachSaver(ctx, "claimed", claimed.Netns, claimed.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}
	sc, so, sh := newSender(t, claimed.Netns, n), newSender(t, other.Netns, n), newSender(t, n.HostNetns, n)
	const count = 2000
	base := netemu.TAINow() + uint64(time.Hour)
	p := newPacer(t, obs, 1, 2, 3)
	for i := 0; i < count; i++ {
		prio := uint32(1 + i%7)
		tx := base + uint64(i)*1000
		if err := sc.Send(1, uint32(i), prio, tx, prio, tx); err != nil {
			t.Fatal(err)
		}
		p.add()
		if err := so.Send(2, uint32(i), prio, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		p.add()
		if err := sh.Send(3, uint32(i), 0, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		p.add()
	}
	for tag, name := range map[uint32]string{1: "claimed pod", 2: "pod without saver", 3: "host"} {
		r := datapathtest.WaitTotal(t, obs, tag, count, waitLimit)
		t.Logf("%s: %+v", name, r)
		if r.Total != count || r.Right != count || r.Wrong != 0 {
			t.Errorf("%s: want %d right and 0 wrong, got %+v", name, count, r)
		}
	}
}

// TestMapBounded: a pod flooding local destinations (packets that never reach
// the NIC) holds at most its quota of entries, they expire, and another pod
// keeps every restore meanwhile.
//
// Expiry runs on a bpf_timer where the kernel allows it, and on a sweep the
// manager runs where it does not (PREEMPT_RT): the "sweep" subtest forces it.
func TestMapBounded(t *testing.T) {
	datapathtest.NeedRoot(t)
	t.Run("default", func(t *testing.T) { testMapBounded(t) })
	t.Run("sweep", func(t *testing.T) { testMapBounded(t, datapath.WithKernelTimer(false)) })
}

func testMapBounded(t *testing.T, opts ...datapath.Option) {
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	const quota = 128
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix), append([]datapath.Option{datapath.WithQuota(quota), datapath.WithMaxPods(8),
		datapath.WithTTL(300 * time.Millisecond), datapath.WithGCInterval(100 * time.Millisecond)}, opts...)...)
	t.Logf("features %+v", m.Features())
	obs := restoreAndObserve(t, ctx, n, m)
	flood, good := n.Pods[0], n.Pods[1]
	if err := m.AttachSaver(ctx, "flooder", flood.Netns, flood.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}
	if err := m.AttachSaver(ctx, "good", good.Netns, good.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}
	local, err := netemu.NewSender(flood.Netns, &net.UDPAddr{IP: flood.Local, Port: 9}, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	sg := newSender(t, good.Netns, n)

	const floodCount = 100000
	base := netemu.TAINow() + uint64(24*time.Hour) // far-future launch times
	maxPod, maxTotal := uint32(0), 0
	goodSent := 0
	for i := 0; i < floodCount; i++ {
		if err := local.Send(9, uint32(i), uint32(1+i%7), base+uint64(i), 0, 0); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := sg.Send(10, uint32(goodSent), 5, 0, 5, 0); err != nil {
				t.Fatal(err)
			}
			goodSent++
		}
		if i%10000 == 0 {
			pod, total, err := m.InFlight("flooder")
			if err != nil {
				t.Fatal(err)
			}
			maxPod, maxTotal = max(maxPod, pod), max(maxTotal, total)
		}
	}
	c, _ := m.Counters("flooder")
	tot := c.Total()
	t.Logf("after %d local packets: max in-flight of the pod %d, max map entries %d, counters %+v", floodCount, maxPod, maxTotal, tot)
	if maxPod > quota || maxTotal > quota+8 {
		t.Errorf("map not bounded: pod held %d (quota %d), map had %d entries", maxPod, quota, maxTotal)
	}
	// (+ a few packets of the pod's own kernel, IPv6 ND/MLD with priority 7)
	if tot.Missed == 0 || tot.Saved+tot.Missed < floodCount || tot.Saved+tot.Missed > floodCount+8 {
		t.Errorf("want the flood past the quota counted as missed: %+v", tot)
	}
	var reasons uint64
	for _, n := range tot.MissedBy {
		reasons += n
	}
	if reasons != tot.Missed || tot.MissedBy[datapath.MissQuota] == 0 {
		t.Errorf("want the misses counted by reason, mostly quota: missed %d, by reason %v", tot.Missed, tot.MissedBy)
	}
	r := datapathtest.WaitTotal(t, obs, 10, uint64(goodSent), waitLimit)
	gc, _ := m.Counters("good")
	t.Logf("other pod during the flood: %+v, its counters %+v", r, gc.Total())
	if r.Right != uint64(goodSent) || r.Wrong != 0 {
		t.Errorf("other pod during the flood: want %d right, got %+v (its counters %+v)", goodSent, r, gc.Total())
	}

	// Everything the flooder saved expires (TTL 300ms, GC every 100ms).
	deadline := time.Now().Add(3 * time.Second)
	for {
		pod, total, err := m.InFlight("flooder")
		if err != nil {
			t.Fatal(err)
		}
		if pod == 0 && total == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entries did not expire: pod %d, map %d", pod, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c, _ = m.Counters("flooder")
	// Expired counts entries, saved counts packets: a packet that shares an
	// entry (same bytes and metadata, e.g. the kernel's repeated MLD reports)
	// expires with it.
	if tot := c.Total(); tot.Expired > tot.Saved || tot.Expired+8 < tot.Saved {
		t.Errorf("want every saved entry expired, got %+v", tot)
	}
}

// TestIdenticalBytes: packets with byte-for-byte the same fingerprint as a
// claimed pod's live entry (raw sockets with a fixed IP ID and equal payloads)
// never get its metadata: not from the host, not from another pod. The same
// bytes from the same pod with other metadata poison the entry (a counted
// miss, no restore); with the same metadata they share it.
func TestIdenticalBytes(t *testing.T) {
	datapathtest.NeedRoot(t)
	ctx := testCtx(t)
	n := datapathtest.NewNode(t, netemu.Routed, 2)
	m := openManager(t, n, datapathtest.PinDir(t, pinPrefix), datapath.WithQuota(1024), datapath.WithMaxPods(4))
	obs := restoreAndObserve(t, ctx, n, m)
	a, b := n.Pods[0], n.Pods[1]
	if err := m.AttachSaver(ctx, "a", a.Netns, a.Ifname, allowAll); err != nil {
		t.Fatal(err)
	}
	raw := func(netnsPath string, dst *net.UDPAddr) *netemu.Sender {
		s, err := netemu.NewRawSender(netnsPath, dst, 0x1234)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	toLocal := raw(a.Netns, &net.UDPAddr{IP: a.Local, Port: 9})
	sa, sb, sh := raw(a.Netns, n.Dest), raw(b.Netns, n.Dest), raw(n.HostNetns, n.HostDest)
	const tag, count = 77, 200
	send := func(s *netemu.Sender, first, prio, want uint32) {
		t.Helper()
		for i := first; i < first+count; i++ {
			if err := s.Send(tag, i, prio, 0, want, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	phase := func(name string, s *netemu.Sender, first, prio, want uint32) {
		t.Helper()
		if err := obs.Reset(); err != nil {
			t.Fatal(err)
		}
		send(s, first, prio, want)
		r := datapathtest.WaitTotal(t, obs, tag, count, waitLimit)
		t.Logf("%s: %+v", name, r)
		if r.Total != count || r.ByGot[want] != count {
			t.Errorf("%s: want %d packets with priority %d at tsn0, got %+v", name, count, want, r)
		}
	}
	// Live entries of pod a (priority 5) for packets that never reach tsn0.
	send(toLocal, 0, 5, 0)
	phase("host, same bytes", sh, 0, 0, 0)
	phase("pod without saver, same bytes", sb, 0, 0, 0)
	phase("pod a, same bytes, priority 3", sa, 0, 3, 0)
	c, _ := m.Counters("a")
	if c.ByPriority[3].Missed != count || c.ByPriority[3].MissedBy[datapath.MissAmbiguous] != count ||
		c.ByPriority[5].Rejected != count || c.ByPriority[3].Restored != 0 {
		t.Errorf("want the collisions counted (priority 3 missed, priority 5 rejected): 3: %+v, 5: %+v",
			c.ByPriority[3], c.ByPriority[5])
	}
	// Same bytes and same metadata: the entry serves both packets.
	send(toLocal, count, 5, 5)
	phase("pod a, same bytes, same priority", sa, count, 5, 5)
	c, _ = m.Counters("a")
	if c.ByPriority[5].Saved != 3*count || c.ByPriority[5].Restored != count {
		t.Errorf("same metadata: want %d saved (the local copies, twice, and the shared ones) and %d restored, got %+v", 3*count, count, c.ByPriority[5])
	}
}
