// Command tsn-demo builds an emulated TSN node in network namespaces (a pod,
// the host's pod network, and an emulated TSN NIC tsn0) and shows, per
// priority, what leaves tsn0 without and with the TSN metadata proxy. It needs
// root (sudo make demo-netns) and cleans up everything it creates.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

func main() {
	topo := flag.String("topology", string(netemu.Routed), "pod network: "+topologies())
	packets := flag.Int("packets", 500, "packets per priority")
	flag.Parse()
	if err := run(netemu.Topology(*topo), *packets); err != nil {
		fmt.Fprintln(os.Stderr, "tsn-demo:", err)
		os.Exit(1)
	}
}

func topologies() string {
	var s []string
	for _, t := range netemu.All {
		s = append(s, string(t))
	}
	return strings.Join(s, ", ")
}

// The demo pod claimed traffic classes for priorities 2, 3 and 5; its
// application priority 3 is remapped to 4 (say, the claimed class's priority
// on this NIC); everything else is demoted to best effort.
var policy = datapath.Policy{
	Allowed:         []uint32{2, 3, 5},
	Remap:           map[uint32]uint32{3: 4},
	Action:          datapath.ActionDemote,
	DefaultPriority: 0,
}

func granted(app uint32) (uint32, string) {
	if app == 0 {
		return 0, "best effort"
	}
	for _, a := range policy.Allowed {
		if a == app {
			if to, ok := policy.Remap[app]; ok {
				return to, fmt.Sprintf("claimed, remapped to %d", to)
			}
			return app, "claimed"
		}
	}
	return policy.DefaultPriority, "not claimed: demoted"
}

func run(topo netemu.Topology, perPrio int) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, eBPF): run sudo make demo-netns")
	}
	if err := netemu.Available(topo); err != nil {
		return fmt.Errorf("topology %s: %w", topo, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
			return fmt.Errorf("mount bpffs on /sys/fs/bpf: %w", err)
		}
	}
	ctx := klog.NewContext(context.Background(), klog.Background().V(10)) // quiet

	node, err := netemu.New(topo, 1)
	if err != nil {
		return err
	}
	defer node.Close()
	pod := node.Pods[0]
	feat, err := datapath.ProbeFeatures()
	if err != nil {
		return err
	}
	mode := datapath.ModeTC
	if feat.TCX {
		mode = datapath.ModeTCX
	}
	obs, err := observe.Attach(node.HostNetns, netemu.NIC, mode)
	if err != nil {
		return err
	}
	defer obs.Close()
	sender, err := netemu.NewSender(pod.Netns, node.Dest, unix.CLOCK_TAI)
	if err != nil {
		return err
	}
	defer sender.Close()

	fmt.Printf("Emulated node (%s): pod %s -> %s -> tsn0 (4-queue veth) -> wire\n", topo, pod.IP, topo)
	fmt.Printf("The pod's application sends %d UDP packets per priority (SO_PRIORITY), each with an\n", perPrio)
	fmt.Printf("SO_TXTIME launch time on CLOCK_TAI. An observer after the restorer records what every\n")
	fmt.Printf("packet carries when it leaves tsn0. Kernel: TCX %v, clock types %v, fexit %v.\n\n", feat.TCX, feat.ClockTypes, feat.Fexit)

	send := func(tagBase uint32, withProxy bool) error {
		base := netemu.TAINow() + uint64(time.Hour)
		for p := uint32(0); p < 8; p++ {
			want := p
			if withProxy {
				want, _ = granted(p)
			}
			for i := 0; i < perPrio; i++ {
				tx := base + uint64(p)*1e9 + uint64(i)*1000
				if err := sender.Send(tagBase+p, uint32(i), p, tx, want, tx); err != nil {
					return err
				}
			}
		}
		return waitAll(obs, tagBase, uint64(perPrio))
	}

	// Without the proxy.
	if err := send(1000, false); err != nil {
		return err
	}

	// With the proxy: restorer on tsn0, saver on the pod's interface.
	dir, err := os.MkdirTemp("/sys/fs/bpf", "tsn-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := datapath.Open(ctx, datapath.WithPinDir(filepath.Join(dir, "v1")), datapath.WithNetns(node.HostNetns))
	if err != nil {
		return err
	}
	defer m.Uninstall(ctx)
	if err := m.EnsureRestorer(ctx, netemu.NIC); err != nil {
		return err
	}
	start := time.Now()
	if err := m.AttachSaver(ctx, "demo-pod", pod.Netns, pod.Ifname, policy); err != nil {
		return err
	}
	attachTook := time.Since(start)
	if err := send(2000, true); err != nil {
		return err
	}
	counts, err := obs.Counts()
	if err != nil {
		return err
	}
	c, err := m.Counters("demo-pod")
	if err != nil {
		return err
	}

	fmt.Printf("%-5s | %-27s | %-27s | %s\n", "app", "WITHOUT proxy at tsn0", "WITH proxy at tsn0", "policy (pod claimed 2, 3->4, 5)")
	fmt.Printf("%-5s | %-16s %-10s | %-16s %-10s | %s\n", "prio", "priority", "launch t.", "priority", "launch t.", "")
	fmt.Println(strings.Repeat("-", 100))
	var wrong uint64
	for p := uint32(0); p < 8; p++ {
		without := observe.Summarize(counts, 1000+p)
		with := observe.Summarize(counts, 2000+p)
		wrong += with.Wrong
		_, why := granted(p)
		fmt.Printf("%-5d | %-16s %-10s | %-16s %-10s | %s\n", p,
			byGot(without.ByGot), fmt.Sprintf("%d/%d", without.TxTimeRight, without.TxTimeWanted),
			byGot(with.ByGot), fmt.Sprintf("%d/%d", with.TxTimeRight, with.TxTimeWanted), why)
	}
	fmt.Println()
	fmt.Println("Pod counters (per application priority):")
	fmt.Printf("  %-5s %8s %9s %7s %8s %8s %9s %8s\n", "prio", "saved", "restored", "missed", "demoted", "dropped", "rejected", "expired")
	for p := 0; p < 8; p++ {
		x := c.ByPriority[p]
		fmt.Printf("  %-5d %8d %9d %7d %8d %8d %9d %8d\n", p, x.Saved, x.Restored, x.Missed, x.Demoted, x.Dropped, x.Rejected, x.Expired)
	}
	fmt.Printf("\nWrong restores: %d. Saver attached in %v (%s).\n", wrong, attachTook.Round(time.Microsecond), m.SaverMode())
	if wrong != 0 {
		return fmt.Errorf("%d packets left tsn0 with metadata that was not theirs", wrong)
	}
	return nil
}

// byGot renders "prio (count)" for the priorities packets carried.
func byGot(m map[uint32]uint64) string {
	var ps []uint32
	for p := range m {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%d (%d)", p, m[p]))
	}
	if len(s) == 0 {
		return "none arrived"
	}
	return strings.Join(s, ", ")
}

func waitAll(obs *observe.Observer, tagBase uint32, per uint64) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		counts, err := obs.Counts()
		if err != nil {
			return err
		}
		done := true
		for p := uint32(0); p < 8; p++ {
			if observe.Summarize(counts, tagBase+p).Total < per {
				done = false
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("not every packet reached tsn0 within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
