// Package netemu builds an emulated Kubernetes node in network namespaces for
// the data path's root tests, benchmark and demo: pod namespaces with a veth,
// a host namespace with the pod network of a chosen topology, and an emulated
// TSN NIC tsn0 (a multi-queue veth) whose peer lives in a "wire" namespace.
// Every namespace gets a random suffix, so several nodes can exist at once.
package netemu

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
)

// Topology is how pod packets reach tsn0.
type Topology string

const (
	// Routed: pod veth, host routes to tsn0 (calico-like).
	Routed Topology = "routed"
	// Bridge: pod veths on a Linux bridge cni0 with the gateway address (bridge CNI).
	Bridge Topology = "bridge"
	// NAT: routed, masqueraded on tsn0 (iptables).
	NAT Topology = "nat"
	// VXLAN: routed into a VXLAN device whose underlay is tsn0 (flannel-like).
	VXLAN Topology = "vxlan"
	// FloodBridge: pods, tsn0 and another port on one bridge that never learns the
	// destination, so it floods: tsn0 gets clones.
	FloodBridge Topology = "flood-bridge"
	// PacketTap: routed, with an AF_PACKET socket reading the host-side veth.
	PacketTap Topology = "packet-tap"
	// IPv6: routed over IPv6.
	IPv6 Topology = "ipv6"
	// DNAT: pods send to a service IP that iptables DNATs to a remote endpoint (kube-proxy-like).
	DNAT Topology = "dnat"
)

// All lists every topology.
var All = []Topology{Routed, Bridge, NAT, VXLAN, FloodBridge, PacketTap, IPv6, DNAT}

// NIC is the name of the emulated TSN NIC in the host namespace.
const NIC = "tsn0"

// Pod is one pod namespace.
type Pod struct {
	Netns  string // path of its network namespace
	Ifname string // its interface, eth0
	HostIf string // the host side of its veth
	IP     net.IP
	// Local is an address of the host: packets to it never reach tsn0.
	Local net.IP
}

// Node is an emulated node.
type Node struct {
	Topology  Topology
	Suffix    string
	HostNetns string
	WireNetns string
	Pods      []*Pod
	// Dest is where pods send TSN traffic.
	Dest *net.UDPAddr
	// HostDest is where host-originated packets go (through tsn0).
	HostDest *net.UDPAddr

	names   []string
	closers []func()
}

// Available reports why the topology cannot be built here, or nil.
func Available(t Topology) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	if t == NAT || t == DNAT {
		if _, err := exec.LookPath("iptables"); err != nil {
			return errors.New("needs the iptables command (apt-get install iptables)")
		}
	}
	return nil
}

// New builds a node with npods pods.
func New(t Topology, npods int) (n *Node, err error) {
	if err := Available(t); err != nil {
		return nil, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	node := &Node{Topology: t, Suffix: hex.EncodeToString(b)}
	n = node
	// The returns below set n to nil before this runs: clean up through node.
	defer func() {
		if err != nil {
			node.Close()
		}
	}()
	if n.HostNetns, err = n.newNS("host"); err != nil {
		return nil, err
	}
	if n.WireNetns, err = n.newNS("wire"); err != nil {
		return nil, err
	}
	for i := 0; i < npods; i++ {
		p, err := n.newNS(fmt.Sprintf("pod%d", i))
		if err != nil {
			return nil, err
		}
		n.Pods = append(n.Pods, &Pod{Netns: p, Ifname: "eth0", HostIf: fmt.Sprintf("veth%d", i)})
	}
	if err := n.build(); err != nil {
		return nil, fmt.Errorf("build %s node: %w", t, err)
	}
	return n, nil
}

func (n *Node) newNS(role string) (string, error) {
	name := fmt.Sprintf("tsnemu-%s-%s", n.Suffix, role)
	path, err := NewNetns(name)
	if err != nil {
		return "", err
	}
	n.names = append(n.names, name)
	return path, nil
}

// NewNetns creates the named network namespace (/var/run/netns/<name>), as
// `ip netns add` does, and returns its path; netns.DeleteNamed removes it.
func NewNetns(name string) (string, error) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(orig)
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err // thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return "", err
	}
	return filepath.Join("/var/run/netns", name), nil
}

// InNetns runs f on a thread in the network namespace at path ("" runs it
// here); programs f starts inherit the namespace, as under a container runtime.
func InNetns(path string, f func() error) error { return hook.InNetns(path, f) }

// Close removes every namespace (and with them links, routes and rules).
func (n *Node) Close() {
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i]()
	}
	n.closers = nil
	for _, name := range n.names {
		_ = netns.DeleteNamed(name)
	}
	n.names = nil
}

type nsh struct {
	h  *netlink.Handle
	ns netns.NsHandle
}

func open(path string) (*nsh, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, err
	}
	return &nsh{h: h, ns: ns}, nil
}

func (x *nsh) close() { x.h.Close(); x.ns.Close() }

func (x *nsh) up(name string) error {
	l, err := x.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	return x.h.LinkSetUp(l)
}

func (x *nsh) addr(name, cidr string) error {
	l, err := x.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	a.Flags = unix.IFA_F_NODAD
	if err := x.h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", cidr, name, err)
	}
	return nil
}

func (x *nsh) defaultRoute(gw string) error {
	ip := net.ParseIP(gw)
	r := &netlink.Route{Gw: ip}
	if ip.To4() == nil {
		r.Family = unix.AF_INET6
	}
	if err := x.h.RouteAdd(r); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}

func sysctl(nsPath, key, val string) error {
	return hook.InNetns(nsPath, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")), []byte(val), 0o644)
	})
}

func iptables(nsPath string, args ...string) error {
	cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath, "iptables", "-w"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (n *Node) build() error {
	host, err := open(n.HostNetns)
	if err != nil {
		return err
	}
	defer host.close()
	wire, err := open(n.WireNetns)
	if err != nil {
		return err
	}
	defer wire.close()

	// The emulated TSN NIC: 4 queues, like a small i210/i225.
	nic := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: NIC, NumTxQueues: 4, NumRxQueues: 4},
		PeerName:      "wire0",
		PeerNamespace: netlink.NsFd(wire.ns),
	}
	if err := host.h.LinkAdd(nic); err != nil {
		return fmt.Errorf("create %s: %w", NIC, err)
	}
	for _, x := range []struct {
		h    *nsh
		name string
	}{{host, "lo"}, {wire, "lo"}, {wire, "wire0"}} {
		if err := x.h.up(x.name); err != nil {
			return err
		}
	}

	v6 := n.Topology == IPv6
	for i, p := range n.Pods {
		pod, err := open(p.Netns)
		if err != nil {
			return err
		}
		err = host.h.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostIf},
			PeerName:      p.Ifname,
			PeerNamespace: netlink.NsFd(pod.ns),
		})
		if err == nil {
			err = pod.up("lo")
		}
		if err == nil {
			err = pod.up(p.Ifname)
		}
		if err == nil {
			err = host.up(p.HostIf)
		}
		if err == nil {
			err = n.podAddrs(i, p, pod, host, v6)
		}
		pod.close()
		if err != nil {
			return err
		}
	}
	if err := host.up(NIC); err != nil {
		return err
	}

	switch n.Topology {
	case FloodBridge:
		return n.buildFlood(host, wire)
	case IPv6:
		for _, s := range []error{
			host.addr(NIC, "fd00:2::1/64"), wire.addr("wire0", "fd00:2::2/64"),
			sysctl(n.HostNetns, "net.ipv6.conf.all.forwarding", "1"),
		} {
			if s != nil {
				return s
			}
		}
		// Static neighbours: link-local addresses are still tentative (DAD)
		// right after creation, and ND would drop the first packets.
		if err := n.staticNeighbors6(host, wire); err != nil {
			return err
		}
		n.Dest = &net.UDPAddr{IP: net.ParseIP("fd00:2::2"), Port: 9000}
		n.HostDest = n.Dest
		return n.sink("[fd00:2::2]:9000")
	}

	if err := host.addr(NIC, "10.2.0.1/24"); err != nil {
		return err
	}
	if err := wire.addr("wire0", "10.2.0.2/24"); err != nil {
		return err
	}
	if err := sysctl(n.HostNetns, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	n.Dest = &net.UDPAddr{IP: net.ParseIP("10.2.0.2"), Port: 9000}
	n.HostDest = n.Dest
	if err := n.sink("10.2.0.2:9000"); err != nil {
		return err
	}
	switch n.Topology {
	case NAT:
		return iptables(n.HostNetns, "-t", "nat", "-A", "POSTROUTING", "-o", NIC, "-j", "MASQUERADE")
	case DNAT:
		n.Dest = &net.UDPAddr{IP: net.ParseIP("10.96.0.10"), Port: 80}
		return iptables(n.HostNetns, "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10", "-p", "udp", "--dport", "80",
			"-j", "DNAT", "--to-destination", "10.2.0.2:9000")
	case VXLAN:
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: "flannel.1"},
			VxlanId:      1,
			SrcAddr:      net.ParseIP("10.2.0.1"),
			Group:        net.ParseIP("10.2.0.2"),
			Port:         4789,
			VtepDevIndex: mustIndex(host, NIC),
			Learning:     false,
		}
		if err := host.h.LinkAdd(vx); err != nil {
			return fmt.Errorf("create vxlan: %w", err)
		}
		if err := host.up("flannel.1"); err != nil {
			return err
		}
		if err := host.addr("flannel.1", "10.3.0.1/24"); err != nil {
			return err
		}
		l, err := host.h.LinkByName("flannel.1")
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC("02:00:00:00:03:02")
		if err := host.h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("10.3.0.2"), HardwareAddr: mac, Family: unix.AF_INET}); err != nil {
			return fmt.Errorf("neighbour on vxlan: %w", err)
		}
		n.Dest = &net.UDPAddr{IP: net.ParseIP("10.3.0.2"), Port: 9000}
	case PacketTap:
		return n.tap(n.Pods[0].HostIf)
	}
	return nil
}

func mustIndex(x *nsh, name string) int {
	l, err := x.h.LinkByName(name)
	if err != nil {
		return 0
	}
	return l.Attrs().Index
}

func (n *Node) podAddrs(i int, p *Pod, pod, host *nsh, v6 bool) error {
	var steps []error
	switch {
	case v6:
		p.IP = net.ParseIP(fmt.Sprintf("fd00:1:%x::2", i+1))
		p.Local = net.ParseIP(fmt.Sprintf("fd00:1:%x::1", i+1))
		steps = []error{
			pod.addr(p.Ifname, fmt.Sprintf("fd00:1:%x::2/64", i+1)),
			host.addr(p.HostIf, fmt.Sprintf("fd00:1:%x::1/64", i+1)),
			pod.defaultRoute(p.Local.String()),
		}
	case n.Topology == Bridge:
		if i == 0 {
			if err := host.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0"}}); err != nil {
				return fmt.Errorf("create cni0: %w", err)
			}
			steps = append(steps, host.up("cni0"), host.addr("cni0", "10.1.0.1/16"))
		}
		p.IP = net.ParseIP(fmt.Sprintf("10.1.0.%d", i+2))
		p.Local = net.ParseIP("10.1.0.1")
		steps = append(steps, host.master(p.HostIf, "cni0"),
			pod.addr(p.Ifname, fmt.Sprintf("10.1.0.%d/16", i+2)),
			pod.defaultRoute("10.1.0.1"))
	case n.Topology == FloodBridge:
		p.IP = net.ParseIP(fmt.Sprintf("10.2.0.%d", i+10))
		p.Local = net.ParseIP("10.2.0.1")
		steps = []error{pod.addr(p.Ifname, fmt.Sprintf("10.2.0.%d/24", i+10))}
	default:
		p.IP = net.ParseIP(fmt.Sprintf("10.1.%d.2", i+1))
		p.Local = net.ParseIP(fmt.Sprintf("10.1.%d.1", i+1))
		steps = []error{
			pod.addr(p.Ifname, fmt.Sprintf("10.1.%d.2/24", i+1)),
			host.addr(p.HostIf, fmt.Sprintf("10.1.%d.1/24", i+1)),
			pod.defaultRoute(p.Local.String()),
		}
	}
	return errors.Join(steps...)
}

func (x *nsh) master(port, bridge string) error {
	l, err := x.h.LinkByName(port)
	if err != nil {
		return err
	}
	b, err := x.h.LinkByName(bridge)
	if err != nil {
		return err
	}
	return x.h.LinkSetMasterByIndex(l, b.Attrs().Index)
}

// buildFlood puts the pods, tsn0 and a second port on br0, all in one L2
// subnet with the wire. Learning is off on tsn0, so the bridge never learns
// the wire's MAC and floods every frame: tsn0 receives a clone or the original.
func (n *Node) buildFlood(host, wire *nsh) error {
	if err := host.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		return fmt.Errorf("create br0: %w", err)
	}
	sinkNS, err := n.newNS("sink")
	if err != nil {
		return err
	}
	sink, err := open(sinkNS)
	if err != nil {
		return err
	}
	defer sink.close()
	if err := host.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "sink0", PeerNamespace: netlink.NsFd(sink.ns)}); err != nil {
		return fmt.Errorf("create other0: %w", err)
	}
	steps := []error{sink.up("sink0"), host.up("other0"), host.up("br0"),
		host.master("other0", "br0"), host.master(NIC, "br0"), wire.addr("wire0", "10.2.0.2/24")}
	for _, p := range n.Pods {
		steps = append(steps, host.master(p.HostIf, "br0"))
	}
	if err := errors.Join(steps...); err != nil {
		return err
	}
	nic, err := host.h.LinkByName(NIC)
	if err != nil {
		return err
	}
	if err := host.h.LinkSetLearning(nic, false); err != nil {
		return fmt.Errorf("learning off on %s: %w", NIC, err)
	}
	w, err := wire.h.LinkByName("wire0")
	if err != nil {
		return err
	}
	for _, p := range n.Pods {
		pod, err := open(p.Netns)
		if err != nil {
			return err
		}
		l, err := pod.h.LinkByName(p.Ifname)
		if err == nil {
			err = pod.h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
				IP: net.ParseIP("10.2.0.2"), HardwareAddr: w.Attrs().HardwareAddr, Family: unix.AF_INET})
		}
		pod.close()
		if err != nil {
			return fmt.Errorf("static neighbour in pod: %w", err)
		}
	}
	n.Dest = &net.UDPAddr{IP: net.ParseIP("10.2.0.2"), Port: 9000}
	// The host has no address on this L2: host traffic is not part of this topology.
	return n.sink("10.2.0.2:9000")
}

// sink binds the destination port in the wire namespace so that packets are
// absorbed (no ICMP port unreachable back to the senders).
func (n *Node) sink(addr string) error {
	return hook.InNetns(n.WireNetns, func() error {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("sink %s: %w", addr, err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
		n.closers = append(n.closers, func() { c.Close() })
		return nil
	})
}

// tap opens an AF_PACKET socket on the host-side veth and reads it, as a
// packet capture on the node would.
func (n *Node) tap(ifname string) error {
	return hook.InNetns(n.HostNetns, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket: %w", err)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		f := os.NewFile(uintptr(fd), "packet-tap")
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := f.Read(buf); err != nil {
					return
				}
			}
		}()
		n.closers = append(n.closers, func() { f.Close() })
		return nil
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (n *Node) staticNeighbors6(host, wire *nsh) error {
	add := func(x *nsh, ifname string, ip net.IP, mac net.HardwareAddr) error {
		l, err := x.h.LinkByName(ifname)
		if err != nil {
			return err
		}
		return x.h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: ip, HardwareAddr: mac, Family: unix.AF_INET6})
	}
	w, err := wire.h.LinkByName("wire0")
	if err != nil {
		return err
	}
	if err := add(host, NIC, net.ParseIP("fd00:2::2"), w.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("neighbour on %s: %w", NIC, err)
	}
	for _, p := range n.Pods {
		pod, err := open(p.Netns)
		if err != nil {
			return err
		}
		hv, err1 := host.h.LinkByName(p.HostIf)
		pv, err2 := pod.h.LinkByName(p.Ifname)
		err = errors.Join(err1, err2)
		if err == nil {
			err = add(pod, p.Ifname, p.Local, hv.Attrs().HardwareAddr)
		}
		if err == nil {
			err = add(host, p.HostIf, p.IP, pv.Attrs().HardwareAddr)
		}
		pod.close()
		if err != nil {
			return fmt.Errorf("neighbours of a pod: %w", err)
		}
	}
	return nil
}

// DeletePod removes pod i's namespace, as the container runtime does when a
// pod sandbox goes away.
func (n *Node) DeletePod(i int) error {
	name := filepath.Base(n.Pods[i].Netns)
	if err := netns.DeleteNamed(name); err != nil {
		return err
	}
	for j, x := range n.names {
		if x == name {
			n.names = append(n.names[:j], n.names[j+1:]...)
			break
		}
	}
	return nil
}

// StaticNeighbour gives the host a permanent neighbour entry for Dest on the
// NIC, so no packet waits for ARP: under taprio the ARP request itself may wait
// behind a closed gate, and 6.1's software taprio does not wake the queue when
// a gate opens (under qemu's TCG the held packets can then be dropped).
func (n *Node) StaticNeighbour() error {
	wire, err := open(n.WireNetns)
	if err != nil {
		return err
	}
	defer wire.close()
	peer, err := wire.h.LinkByName("wire0")
	if err != nil {
		return err
	}
	host, err := open(n.HostNetns)
	if err != nil {
		return err
	}
	defer host.close()
	nic, err := host.h.LinkByName(NIC)
	if err != nil {
		return err
	}
	family := unix.AF_INET
	if n.Dest.IP.To4() == nil {
		family = unix.AF_INET6
	}
	err = host.h.NeighSet(&netlink.Neigh{LinkIndex: nic.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: n.Dest.IP, HardwareAddr: peer.Attrs().HardwareAddr, Family: family})
	if err != nil {
		return fmt.Errorf("static neighbour %s: %w", n.Dest.IP, err)
	}
	return nil
}
