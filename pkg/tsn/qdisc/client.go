package qdisc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Client talks rtnetlink (and ethtool, for channels) in one network namespace.
type Client struct {
	ns    netns.NsHandle // not owned; netns.None() for the caller's namespace
	sock  *nl.SocketHandle
	links *netlink.Handle
}

// Option configures a Client.
type Option func(*Client)

// WithNetNS makes the client work in the network namespace ns instead of the
// caller's. The client does not close ns.
func WithNetNS(ns netns.NsHandle) Option { return func(c *Client) { c.ns = ns } }

// NewClient opens the netlink sockets the client needs.
func NewClient(opts ...Option) (*Client, error) {
	c := &Client{ns: netns.None()}
	for _, o := range opts {
		o(c)
	}
	s, err := nl.GetNetlinkSocketAt(c.ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	// Extended acks carry the kernel's reason ("Invalid 'clockid'") into the error.
	if err := s.SetExtAck(true); err != nil {
		s.Close()
		return nil, fmt.Errorf("enable netlink extended acks: %w", err)
	}
	c.sock = &nl.SocketHandle{Socket: s}
	if c.ns.IsOpen() {
		c.links, err = netlink.NewHandleAt(c.ns, unix.NETLINK_ROUTE)
	} else {
		c.links, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return c, nil
}

// PortID is the netlink port of the socket the client changes qdiscs
// through: the kernel's qdisc notifications for those changes carry it, so a
// watcher can tell them from other processes' changes.
func (c *Client) PortID() (uint32, error) {
	return c.sock.Socket.GetPid()
}

// Close releases the sockets.
func (c *Client) Close() {
	c.links.Close()
	c.sock.Socket.Close()
}

func (c *Client) execute(req *nl.NetlinkRequest, resType uint16) ([][]byte, error) {
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: c.sock}
	return req.Execute(unix.NETLINK_ROUTE, resType)
}

// Link is a network device as the qdisc code needs it.
type Link struct {
	Device
	Index int
}

// Link looks a device up by name. TxQueues is the number of transmit queues in
// use (real_num_tx_queues, what taprio and mqprio check queue maps against), read
// from sysfs; when sysfs cannot be read, the allocated count from netlink.
func (c *Client) Link(name string) (Link, error) {
	l, err := c.links.LinkByName(name)
	if err != nil {
		return Link{}, fmt.Errorf("find link %q: %w", name, err)
	}
	attrs := l.Attrs()
	link := Link{Device: Device{Name: attrs.Name, TxQueues: attrs.NumTxQueues}, Index: attrs.Index}
	if n, err := c.realTxQueues(attrs.Name); err == nil && n > 0 {
		link.TxQueues = n
	}
	return link, nil
}

// realTxQueues counts /sys/class/net/<name>/queues/tx-*. Netlink reports only
// the allocated queues, and ethtool's channel counts overlap on some drivers
// (veth reports the same queues as tx and combined).
func (c *Client) realTxQueues(name string) (int, error) {
	if !c.ns.IsOpen() {
		return countTxQueues("/sys", name)
	}
	// sysfs shows the devices of the namespace that mounted it: mount one in a
	// private mount namespace on a thread that is thrown away afterwards (a
	// goroutine that exits locked to its thread takes the thread with it).
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		n, err := func() (int, error) {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return 0, fmt.Errorf("unshare mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return 0, fmt.Errorf("make mounts private: %w", err)
			}
			if err := netns.Set(c.ns); err != nil {
				return 0, fmt.Errorf("enter netns: %w", err)
			}
			dir, err := os.MkdirTemp("", "qdisc-sysfs-")
			if err != nil {
				return 0, err
			}
			defer os.Remove(dir)
			if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
				return 0, fmt.Errorf("mount sysfs: %w", err)
			}
			defer unix.Unmount(dir, unix.MNT_DETACH)
			return countTxQueues(dir, name)
		}()
		ch <- result{n, err}
	}()
	r := <-ch
	return r.n, r.err
}

func countTxQueues(sysfs, name string) (int, error) {
	m, err := filepath.Glob(filepath.Join(sysfs, "class/net", name, "queues/tx-*"))
	if err != nil {
		return 0, err
	}
	if len(m) == 0 {
		return 0, fmt.Errorf("no tx queues of %s in sysfs", name)
	}
	return len(m), nil
}

// Installed is one qdisc as the kernel reports it.
type Installed struct {
	Handle Handle
	Parent Handle
	Kind   string
	// Qdisc is the decoded model for kinds this package knows, else nil.
	Qdisc Qdisc
	// Options is the payload of TCA_OPTIONS as dumped.
	Options []byte
	// Stats are the qdisc's counters at the time of the dump.
	Stats Stats
}

// Default reports whether the kernel made this qdisc on its own (handle 0):
// deleting what replaced it brings it back.
func (q Installed) Default() bool { return q.Handle == 0 }

func (q Installed) String() string {
	return fmt.Sprintf("%s %s parent %s", q.Kind, q.Handle, q.Parent)
}

// List dumps the qdiscs of a device.
func (c *Client) List(ifindex int) ([]Installed, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETQDISC, unix.NLM_F_DUMP)
	req.AddData(&nl.TcMsg{Ifindex: int32(ifindex)})
	msgs, err := c.execute(req, unix.RTM_NEWQDISC)
	if err != nil {
		return nil, fmt.Errorf("dump qdiscs of ifindex %d: %w", ifindex, err)
	}
	var out []Installed
	for _, m := range msgs {
		if len(m) < nl.SizeofTcMsg {
			return nil, fmt.Errorf("short qdisc message (%d bytes)", len(m))
		}
		tcm := nl.DeserializeTcMsg(m)
		if int(tcm.Ifindex) != ifindex {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofTcMsg:])
		if err != nil {
			return nil, fmt.Errorf("parse qdisc attributes: %w", err)
		}
		q := Installed{Handle: Handle(tcm.Handle), Parent: Handle(tcm.Parent)}
		for _, a := range attrs {
			switch a.Attr.Type {
			case nl.TCA_KIND:
				q.Kind = unix.ByteSliceToString(a.Value)
			case nl.TCA_OPTIONS:
				q.Options = append([]byte(nil), a.Value...)
			case tcaStats2:
				if q.Stats, err = decodeStats2(a.Value); err != nil {
					return nil, fmt.Errorf("decode stats of %s: %w", q, err)
				}
			}
		}
		q.Qdisc, err = Decode(q.Kind, q.Options)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", q, err)
		}
		out = append(out, q)
	}
	return out, nil
}

// Replace creates q at parent with handle, replacing what is there. When the
// handle is new to the device the kernel builds the new qdisc first and swaps it
// in, so a refused request leaves the old qdisc in place.
func (c *Client) Replace(ifindex int, handle, parent Handle, q Qdisc) error {
	req, err := newQdiscRequest(ifindex, handle, parent, q)
	if err != nil {
		return err
	}
	if _, err := c.execute(req, 0); err != nil {
		return fmt.Errorf("replace %s %s parent %s: %w", q.Kind(), handle, parent, err)
	}
	return nil
}

// replaceRaw re-creates a dumped qdisc from its kind and options.
func (c *Client) replaceRaw(ifindex int, q Installed) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{Ifindex: int32(ifindex), Handle: uint32(q.Handle), Parent: uint32(q.Parent)})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated(q.Kind)))
	if q.Options != nil {
		req.AddData(nl.NewRtAttr(nl.TCA_OPTIONS, q.Options))
	}
	if _, err := c.execute(req, 0); err != nil {
		return fmt.Errorf("re-create %s: %w", q, err)
	}
	return nil
}

// Delete removes the qdisc at parent (HandleRoot for the root qdisc).
func (c *Client) Delete(ifindex int, parent Handle) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELQDISC, unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{Ifindex: int32(ifindex), Parent: uint32(parent)})
	if _, err := c.execute(req, 0); err != nil {
		return fmt.Errorf("delete qdisc at %s: %w", parent, err)
	}
	return nil
}

// Channels reads the device's queue counts (ethtool -l).
func (c *Client) Channels(name string) (ethtool.Channels, error) {
	e, err := c.ethtool()
	if err != nil {
		return ethtool.Channels{}, err
	}
	defer e.Close()
	ch, err := e.GetChannels(name)
	if err != nil {
		return ethtool.Channels{}, fmt.Errorf("get channels of %s: %w", name, err)
	}
	return ch, nil
}

// SetChannels sets the device's queue counts (ethtool -L).
func (c *Client) SetChannels(name string, ch ethtool.Channels) error {
	e, err := c.ethtool()
	if err != nil {
		return err
	}
	defer e.Close()
	if _, err := e.SetChannels(name, ch); err != nil {
		return fmt.Errorf("set channels of %s: %w", name, err)
	}
	return nil
}

// ethtool opens the ethtool ioctl socket in the client's namespace: a socket
// keeps the namespace it was made in, so only its creation needs the thread moved.
func (c *Client) ethtool() (*ethtool.Ethtool, error) {
	if !c.ns.IsOpen() {
		return ethtool.NewEthtool()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(c.ns); err != nil {
		return nil, fmt.Errorf("enter netns: %w", err)
	}
	e, eerr := ethtool.NewEthtool()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: let it die with the goroutine.
		runtime.LockOSThread()
		return nil, errors.Join(eerr, fmt.Errorf("return to original netns: %w", err))
	}
	if eerr != nil {
		return nil, fmt.Errorf("open ethtool socket: %w", eerr)
	}
	return e, nil
}

// probeKinds are the kinds HasKind may probe: the kernel refuses each of them
// without options, so the probe never changes the device.
var probeKinds = []string{"taprio", "etf", "mqprio", "cbs", "htb", "tbf"}

// HasKind reports whether the kernel knows the qdisc kind (one of taprio, etf,
// mqprio, cbs, htb, tbf), without changing the device: a request without options
// is refused with ENOENT ("Specified qdisc kind is unknown") when the kind is
// missing, and with another error (no options) when it is there. The kernel
// autoloads a module it can find.
func (c *Client) HasKind(ifindex int, kind string) (bool, error) {
	if !slices.Contains(probeKinds, kind) {
		return false, fmt.Errorf("cannot probe qdisc kind %q: only %v", kind, probeKinds)
	}
	err := c.replaceRaw(ifindex, Installed{Kind: kind, Handle: MakeHandle(0x7fff, 0), Parent: HandleRoot})
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err == nil:
		return true, fmt.Errorf("probing %s without options created a qdisc on ifindex %d", kind, ifindex)
	}
	return true, nil
}
