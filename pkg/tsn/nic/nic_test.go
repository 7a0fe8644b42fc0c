package nic

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// testNS makes a fresh, unnamed network namespace (gone when the last handle closes) and a
// netlink handle in it.
func testNS(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	if os.Getuid() != 0 || os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err2 := netns.Set(orig); err2 != nil {
		t.Fatalf("restore netns: %v", err2)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		links, _ := h.LinkList()
		for _, l := range links {
			if l.Type() != "device" {
				h.LinkDel(l)
			}
		}
		h.Close()
		ns.Close()
	})
	return ns, h
}

func suffix() string { return fmt.Sprintf("%05x", rand.IntN(1<<20)) }

func TestDiscoverVeth(t *testing.T) {
	ns, h := testNS(t)
	peerNS, _ := testNS(t)
	sfx := suffix()
	// One veth end in ns, its peer elsewhere: ns then holds exactly one veth.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tv" + sfx, NumTxQueues: 4, NumRxQueues: 4},
		PeerName: "tp" + sfx, PeerNamespace: netlink.NsFd(peerNS)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	l, _ := h.LinkByName("tv" + sfx)
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT})
	if err := h.QdiscAdd(htb); err != nil {
		t.Fatalf("add htb: %v", err)
	}

	d, err := New(InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	v, err := d.Link("tv" + sfx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Driver != "veth" || v.TxQueues != 4 || v.SpeedMbps != 10000 || v.PHCIndex != -1 || v.HWTxTimestamping || v.RootQdisc != "htb" || v.PCIAddress != "" {
		t.Errorf("veth: %+v", v)
	}
	// The peer is in another namespace, so the carrier is down until it is up too.
	if v.Up {
		t.Errorf("veth with a down peer reported up: %+v", v)
	}
	// All also lists the namespace's fallback tunnel devices (sit0, ...) when their modules are loaded.
	all, err := d.All()
	found := false
	for _, i := range all {
		found = found || i.Name == "tv"+sfx
		if i.Name == "lo" {
			t.Errorf("All lists loopback")
		}
	}
	if err != nil || !found {
		t.Errorf("All: %v %v", all, err)
	}

	// Selectors.
	if got, err := d.Resolve(config.Match{Driver: "veth"}); err != nil || got.Name != "tv"+sfx {
		t.Errorf("resolve by driver: %v %v", got, err)
	}
	if _, err := d.Resolve(config.Match{PCIAddress: "0000:99:00.0"}); !errors.Is(err, ErrNotFound) || err.Error() != "pciAddress 0000:99:00.0: no matching network interface" {
		t.Errorf("pci: %v", err)
	}
	if _, err := d.Resolve(config.Match{InterfaceName: "nothere" + sfx}); !errors.Is(err, ErrNotFound) {
		t.Errorf("name: %v", err)
	}

	// A second veth makes the driver selector ambiguous.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tx" + sfx}, PeerName: "ty" + sfx}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Resolve(config.Match{Driver: "veth"}); !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "driver veth: more than one network interface matches: ") {
		t.Errorf("three veths: %v", err)
	}
	// Both ends up: operationally up.
	for _, n := range []string{"tx" + sfx, "ty" + sfx} {
		l, _ := h.LinkByName(n)
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		x, err := d.Link("tx" + sfx)
		if err != nil {
			t.Fatal(err)
		}
		if x.Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("veth pair never came up: %+v", x)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWatchSeesLinkDisappear(t *testing.T) {
	ns, h := testNS(t)
	name := "tw" + suffix()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "tz" + suffix()}); err != nil {
		t.Fatal(err)
	}
	d, err := New(InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Link(name); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan Change, 64)
	werr := make(chan error, 1)
	go func() { werr <- d.Watch(ctx, func(c Change) { changes <- c }) }()
	time.Sleep(100 * time.Millisecond) // let the subscription open

	l, _ := h.LinkByName(name)
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, func(c Change) bool { return c.Name == name && !c.Deleted })
	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, func(c Change) bool { return c.Name == name && c.Deleted })
	if _, err := d.Link(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted link: %v", err)
	}
	if _, err := d.Resolve(config.Match{Driver: "veth"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted link (and its peer) by driver: %v", err)
	}
	cancel()
	select {
	case err := <-werr:
		if err != nil {
			t.Errorf("Watch: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Watch did not return after cancel")
	}
}

func waitFor(t *testing.T, ch <-chan Change, ok func(Change) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case c := <-ch:
			if ok(c) {
				return
			}
		case <-deadline:
			t.Fatal("expected link change not seen")
		}
	}
}

func TestIsPCIAddress(t *testing.T) {
	for s, want := range map[string]bool{"0000:01:00.0": true, "0000:af:1f.7": true, "01:00.0": false, "": false, "virtio0": false, "0000:01:00.0x": false} {
		if got := isPCIAddress(s); got != want {
			t.Errorf("%q: %v", s, got)
		}
	}
}
