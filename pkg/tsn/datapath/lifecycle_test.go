package datapath_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/datapathtest"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

func modes(t *testing.T) []datapath.AttachMode {
	f, err := datapath.ProbeFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if f.TCX {
		return []datapath.AttachMode{datapath.ModeTCX, datapath.ModeTC}
	}
	t.Log("kernel has no TCX: only the tc mode is tested")
	return []datapath.AttachMode{datapath.ModeTC}
}

// TestRestartMidTraffic: a new manager adopts the pinned maps, restorer and
// savers of one that went away while a pod was sending: no restore is lost.
func TestRestartMidTraffic(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, mode := range modes(t) {
		t.Run(string(mode), func(t *testing.T) {
			ctx := testCtx(t)
			n, _, opts, m1 := firstManager(t, ctx, mode)
			if err := m1.EnsureRestorer(ctx, netemu.NIC); err != nil {
				t.Fatal(err)
			}
			obs := datapathtest.AttachObserver(t, n, mode)
			pod := n.Pods[0]
			policy := datapath.Policy{Allowed: []uint32{1, 2, 3, 4, 5, 6, 7}, Remap: map[uint32]uint32{7: 6}}
			if err := m1.AttachSaver(ctx, "pod-a", pod.Netns, pod.Ifname, allowAll); err != nil {
				t.Fatal(err)
			}
			s := newSender(t, pod.Netns, n)

			const count = 20000
			var sent atomic.Int64
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				base := netemu.TAINow() + uint64(time.Hour)
				p := newPacer(t, obs, 1)
				for i := 0; i < count; i++ {
					prio := uint32(1 + i%7)
					tx := base + uint64(i)
					if err := s.Send(1, uint32(i), prio, tx, prio, tx); err != nil {
						t.Error(err)
						return
					}
					p.add()
					sent.Add(1)
					if i%500 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
				p.log()
			}()
			for sent.Load() < count/5 {
				time.Sleep(time.Millisecond)
			}
			if err := m1.Close(); err != nil {
				t.Fatal(err)
			}
			atClose := sent.Load()
			m2, err := datapath.Open(ctx, opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m2.Uninstall(ctx) })
			savers, err := m2.Savers()
			if err != nil || len(savers) != 1 || savers[0].PodUID != "pod-a" || savers[0].NetnsPath != pod.Netns || savers[0].Mode != mode {
				t.Fatalf("adopted savers = %+v, %v", savers, err)
			}
			// Both are idempotent on adopted attachments and replace programs in place.
			if err := m2.EnsureRestorer(ctx, netemu.NIC); err != nil {
				t.Fatal(err)
			}
			if err := m2.AttachSaver(ctx, "pod-a", pod.Netns, pod.Ifname, allowAll); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			r := datapathtest.WaitTotal(t, obs, 1, count, waitLimit)
			t.Logf("closed after %d packets; %+v", atClose, r)
			c, err := m2.Counters("pod-a")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("counters %+v", c.Total())
			if r.Right != count || r.Wrong != 0 {
				t.Errorf("want %d right and 0 wrong across the restart, got %+v", count, r)
			}
			if tot := c.Total(); tot.Restored < count {
				t.Errorf("counters survive the restart: want >= %d restored, got %+v", count, tot)
			}
			// The adopted policy is readable and a changed one applies.
			if err := m2.AttachSaver(ctx, "pod-a", pod.Netns, pod.Ifname, policy); err != nil {
				t.Fatal(err)
			}
			if got, _ := m2.Savers(); len(got) != 1 || got[0].Policy.Remap[7] != 6 {
				t.Errorf("policy after update: %+v", got)
			}
		})
	}
}

// TestDetachAndUninstall: detaching leaves nothing behind, tolerates a pod
// namespace that is gone, and a failed attach changes nothing.
func TestDetachAndUninstall(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, mode := range modes(t) {
		t.Run(string(mode), func(t *testing.T) {
			ctx := testCtx(t)
			n := datapathtest.NewNode(t, netemu.Routed, 2)
			dir := datapathtest.PinDir(t, pinPrefix)
			m, err := datapath.Open(ctx, datapath.WithPinDir(dir), datapath.WithNetns(n.HostNetns), datapath.WithAttachMode(mode))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
				t.Fatal(err)
			}
			if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
				t.Fatalf("second EnsureRestorer: %v", err)
			}
			if got := programsOn(t, n.HostNetns, netemu.NIC, mode); got != 1 {
				t.Fatalf("programs on %s after EnsureRestorer twice: %d, want 1", netemu.NIC, got)
			}
			a, b := n.Pods[0], n.Pods[1]

			// Bad input: nothing half-applied.
			if err := m.AttachSaver(ctx, "bad", a.Netns, "nosuchif0", allowAll); err == nil {
				t.Fatal("attach to a missing interface succeeded")
			}
			if err := m.AttachSaver(ctx, "bad", "/nonexistent/netns", a.Ifname, allowAll); err == nil {
				t.Fatal("attach in a missing netns succeeded")
			}
			if err := m.AttachSaver(ctx, "bad", a.Netns, a.Ifname, datapath.Policy{Allowed: []uint32{99}}); err == nil {
				t.Fatal("attach with an invalid policy succeeded")
			}
			if s, _ := m.Savers(); len(s) != 0 {
				t.Fatalf("failed attaches left savers: %+v", s)
			}

			for i, p := range []*netemu.Pod{a, b} {
				if err := m.AttachSaver(ctx, []string{"pod-a", "pod-b"}[i], p.Netns, p.Ifname, allowAll); err != nil {
					t.Fatal(err)
				}
			}
			if s, _ := m.Savers(); len(s) != 2 || s[0].Slot != 0 || s[1].Slot != 1 {
				t.Fatalf("savers: %+v", s)
			}
			if got := programsOn(t, a.Netns, a.Ifname, mode); got != 1 {
				t.Fatalf("programs on pod interface: %d, want 1", got)
			}
			if err := m.DetachSaver(ctx, "pod-a"); err != nil {
				t.Fatal(err)
			}
			if got := programsOn(t, a.Netns, a.Ifname, mode); got != 0 {
				t.Fatalf("programs on pod interface after detach: %d", got)
			}
			if err := m.DetachSaver(ctx, "pod-a"); err != nil {
				t.Fatalf("second detach: %v", err)
			}
			if _, err := m.Counters("pod-a"); err == nil {
				t.Error("counters of a detached pod")
			}
			// The pod sandbox is gone before the driver hears of it.
			if err := n.DeletePod(1); err != nil {
				t.Fatal(err)
			}
			if err := m.DetachSaver(ctx, "pod-b"); err != nil {
				t.Fatalf("detach with the netns gone: %v", err)
			}
			if err := m.RemoveRestorer(ctx, netemu.NIC); err != nil {
				t.Fatal(err)
			}
			if got := programsOn(t, n.HostNetns, netemu.NIC, mode); got != 0 {
				out, _ := exec.Command("nsenter", "--net="+n.HostNetns, "tc", "filter", "show", "dev", "tsn0", "egress").CombinedOutput()
				t.Fatalf("programs on %s after RemoveRestorer: %d\n%s", netemu.NIC, got, out)
			}
			if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
				t.Fatal(err)
			}
			if err := m.AttachSaver(ctx, "pod-c", a.Netns, a.Ifname, allowAll); err != nil {
				t.Fatal(err)
			}
			if err := m.Uninstall(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				ents, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
				t.Errorf("pin dir left after Uninstall: %v %v", err, ents)
			}
			if programsOn(t, n.HostNetns, netemu.NIC, mode)+programsOn(t, a.Netns, a.Ifname, mode) != 0 {
				t.Error("programs left after Uninstall")
			}
		})
	}
}

// programsOn counts the programs at egress of ifname.
func programsOn(t *testing.T, netnsPath, ifname string, mode datapath.AttachMode) int {
	t.Helper()
	count := 0
	err := hook.InNetns(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		if mode == datapath.ModeTCX {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				return err
			}
			count = len(res.Programs)
			return nil
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			return nil // no clsact qdisc
		}
		count = len(fs)
		return nil
	})
	if err != nil {
		t.Fatalf("query programs on %s: %v", ifname, err)
	}
	return count
}

// firstManager opens the first of two managers over one pin directory (a
// restart, an upgrade) on a one-pod routed node, and returns what the second
// one needs to open the same.
func firstManager(t *testing.T, ctx context.Context, mode datapath.AttachMode) (*netemu.Node, string, []datapath.Option, *datapath.Manager) {
	t.Helper()
	n := datapathtest.NewNode(t, netemu.Routed, 1)
	dir := datapathtest.PinDir(t, pinPrefix)
	opts := []datapath.Option{datapath.WithPinDir(dir), datapath.WithNetns(n.HostNetns), datapath.WithAttachMode(mode)}
	m, err := datapath.Open(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return n, dir, opts, m
}

// TestUpgradeReplacesOldSavers: a saver attached by another build of the
// driver (here a program that saves nothing) is replaced in place when a
// manager of this build adopts it, so a pod running across a driver upgrade
// keeps its restores without being recreated.
func TestUpgradeReplacesOldSavers(t *testing.T) {
	datapathtest.NeedRoot(t)
	for _, mode := range modes(t) {
		t.Run(string(mode), func(t *testing.T) {
			ctx := testCtx(t)
			n, dir, opts, m1 := firstManager(t, ctx, mode)
			pod := n.Pods[0]
			if err := m1.AttachSaver(ctx, "pod-a", pod.Netns, pod.Ifname, allowAll); err != nil {
				t.Fatal(err)
			}
			savers, err := m1.Savers()
			if err != nil || len(savers) != 1 {
				t.Fatalf("savers = %+v, %v", savers, err)
			}
			old, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Name: "tsn_old_saver", Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // pass, save nothing
			})
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			pin := filepath.Join(dir, "savers", fmt.Sprintf("slot-%d", savers[0].Slot))
			if err := netemu.InNetns(pod.Netns, func() error {
				l, err := netlink.LinkByName(pod.Ifname)
				if err != nil {
					return err
				}
				return hook.Attach(hook.Mode(mode), old, l.Attrs().Index, hook.First, pin)
			}); err != nil {
				t.Fatalf("put the other build's saver in place: %v", err)
			}
			if err := m1.Close(); err != nil {
				t.Fatal(err)
			}

			m2, err := datapath.Open(ctx, opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m2.Uninstall(ctx) })
			obs := restoreAndObserve(t, ctx, n, m2)
			s := newSender(t, pod.Netns, n)
			const count = 1000
			sendMix(t, s, obs, 1, count)
			res := datapathtest.WaitTotal(t, obs, 1, count, 5*time.Second)
			if res.Right != count || res.Wrong != 0 {
				t.Errorf("after the upgrade: want %d right and 0 wrong, got %+v", count, res)
			}
			c, _ := m2.Counters("pod-a")
			t.Logf("after the upgrade: %+v; counters %+v", res, c.Total())
		})
	}
}
