// Package nic discovers what the driver needs to know about a node's network interfaces: tx
// queues, link state and speed, PCI address, kernel driver, PTP hardware clock and the root qdisc
// already installed. It reads netlink (vishvananda/netlink) and the ethtool ioctls
// (safchain/ethtool), both opened in one network namespace, so results do not depend on which
// namespace /sys was mounted from. It also follows link changes through a netlink subscription.
package nic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// ErrNotFound says no interface matched.
var ErrNotFound = errors.New("no matching network interface")

// ErrAmbiguous says more than one interface matched a selector that must name one.
var ErrAmbiguous = errors.New("more than one network interface matches")

// Info is what discovery found about one interface.
type Info struct {
	Name  string
	Index int
	// Up is true when the interface is administratively up and its operational state is up (or
	// unknown, as virtual links without carrier handling report).
	Up        bool
	OperState string
	MAC       string
	MTU       int
	// TxQueues is the number of tx queues (IFLA_NUM_TX_QUEUES).
	TxQueues int
	// SpeedMbps is the link speed in Mbit/s; 0 when unknown (link down, or not reported).
	SpeedMbps uint32
	// Driver is the kernel driver ("igc", "veth").
	Driver string
	// PCIAddress is the PCI address ("0000:01:00.0") for PCI NICs, empty otherwise.
	PCIAddress string
	// PHCIndex is the PTP hardware clock (/dev/ptpN), -1 when the NIC has none.
	PHCIndex int
	// HWTxTimestamping is true when the NIC timestamps transmitted packets in hardware.
	HWTxTimestamping bool
	// RootQdisc is the kind of the root qdisc ("mq", "taprio", "noqueue", ...), empty if none.
	RootQdisc string
}

// Discoverer reads interface properties in one network namespace.
type Discoverer struct {
	ns  *netns.NsHandle
	nl  *netlink.Handle
	eth *ethtool.Ethtool
}

// Option configures a Discoverer.
type Option func(*Discoverer)

// InNamespace makes the Discoverer look at the network namespace ns instead of the caller's.
func InNamespace(ns netns.NsHandle) Option {
	return func(d *Discoverer) { d.ns = &ns }
}

// New opens the netlink and ethtool sockets.
func New(opts ...Option) (*Discoverer, error) {
	d := &Discoverer{}
	for _, o := range opts {
		o(d)
	}
	var err error
	if d.ns == nil {
		if d.nl, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		if d.eth, err = ethtool.NewEthtool(); err != nil {
			d.nl.Close()
			return nil, fmt.Errorf("open ethtool socket: %w", err)
		}
		return d, nil
	}
	if d.nl, err = netlink.NewHandleAt(*d.ns); err != nil {
		return nil, fmt.Errorf("open netlink in namespace: %w", err)
	}
	// The ethtool socket belongs to the namespace of the thread that creates it.
	err = inNamespace(*d.ns, func() error {
		var err error
		d.eth, err = ethtool.NewEthtool()
		return err
	})
	if err != nil {
		d.nl.Close()
		return nil, fmt.Errorf("open ethtool socket in namespace: %w", err)
	}
	return d, nil
}

// Close releases the sockets.
func (d *Discoverer) Close() {
	d.nl.Close()
	d.eth.Close()
}

// Link returns the properties of the interface called name, or an error wrapping ErrNotFound.
func (d *Discoverer) Link(name string) (*Info, error) {
	l, err := d.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %q: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("look up interface %q: %w", name, err)
	}
	return d.info(l)
}

// All returns every interface of the namespace except loopback.
func (d *Discoverer) All() ([]*Info, error) {
	links, err := d.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []*Info
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		i, err := d.info(l)
		if err != nil {
			// The link may have gone between the dump and the query.
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, i)
	}
	return out, nil
}

// Resolve finds the one interface a node-config selector names. A PCI address or driver
// that matches several interfaces is an error wrapping ErrAmbiguous.
func (d *Discoverer) Resolve(m config.Match) (*Info, error) {
	if m.InterfaceName != "" {
		return d.Link(m.InterfaceName)
	}
	all, err := d.All()
	if err != nil {
		return nil, err
	}
	var found []*Info
	for _, i := range all {
		if (m.PCIAddress != "" && i.PCIAddress == m.PCIAddress) || (m.Driver != "" && i.Driver == m.Driver) {
			found = append(found, i)
		}
	}
	what := "pciAddress " + m.PCIAddress
	if m.Driver != "" {
		what = "driver " + m.Driver
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%s: %w", what, ErrNotFound)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, f := range found {
		names[i] = f.Name
	}
	return nil, fmt.Errorf("%s: %w: %s", what, ErrAmbiguous, strings.Join(names, ", "))
}

func (d *Discoverer) info(l netlink.Link) (*Info, error) {
	a := l.Attrs()
	i := &Info{
		Name:      a.Name,
		Index:     a.Index,
		OperState: a.OperState.String(),
		MAC:       a.HardwareAddr.String(),
		MTU:       a.MTU,
		TxQueues:  a.NumTxQueues,
		PHCIndex:  -1,
	}
	i.Up = a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)

	if drv, err := d.eth.DriverInfo(a.Name); err == nil {
		i.Driver = drv.Driver
		if isPCIAddress(drv.BusInfo) {
			i.PCIAddress = drv.BusInfo
		}
	} else if errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("interface %q: %w", a.Name, ErrNotFound)
	}
	// ETHTOOL_GSET rather than the library's GetLinkSettings, which writes to stdout during the
	// kernel's GLINKSETTINGS size handshake. The kernel serves GSET for every driver.
	var cmd ethtool.EthtoolCmd
	if speed, err := d.eth.CmdGet(&cmd, a.Name); err == nil && speed != 0 && speed != ^uint32(0) {
		i.SpeedMbps = speed
	}
	if ts, err := d.eth.GetTimestampingInformation(a.Name); err == nil {
		i.PHCIndex = int(ts.PhcIndex)
		i.HWTxTimestamping = ts.SoTimestamping&unix.SOF_TIMESTAMPING_TX_HARDWARE != 0
	}
	qdiscs, err := d.nl.QdiscList(l)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("interface %q: %w", a.Name, ErrNotFound)
		}
		return nil, fmt.Errorf("list qdiscs of %q: %w", a.Name, err)
	}
	for _, q := range qdiscs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			i.RootQdisc = q.Type()
			break
		}
	}
	return i, nil
}

// isPCIAddress reports whether s is an extended BDF address ("0000:01:00.0").
func isPCIAddress(s string) bool {
	var dom, bus, dev, fn int
	n, err := fmt.Sscanf(s, "%04x:%02x:%02x.%1d", &dom, &bus, &dev, &fn)
	return err == nil && n == 4 && len(s) == 12
}

// Change is one link event.
type Change struct {
	// Name is the interface's name.
	Name string
	// Deleted is true when the interface went away (or left the namespace).
	Deleted bool
}

// Watch calls onChange for every link change (new link, state change, deletion) until ctx ends.
// It returns when the subscription cannot be opened; later subscription errors are logged and
// the subscription is reopened, since missing link events would leave stale devices published.
func (d *Discoverer) Watch(ctx context.Context, onChange func(Change)) error {
	logger := klog.FromContext(ctx)
	for {
		ch := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		failed := make(chan error, 1)
		opts := netlink.LinkSubscribeOptions{
			Namespace: d.ns,
			ErrorCallback: func(err error) {
				select {
				case failed <- err:
				default:
				}
			},
		}
		if err := netlink.LinkSubscribeWithOptions(ch, done, opts); err != nil {
			return fmt.Errorf("subscribe to link changes: %w", err)
		}
	loop:
		for {
			select {
			case <-ctx.Done():
				close(done)
				return nil
			case err := <-failed:
				logger.Error(err, "Link subscription failed, resubscribing")
				close(done)
				// Something may have been missed: tell the caller to look again.
				onChange(Change{})
				break loop
			case u, ok := <-ch:
				if !ok {
					close(done)
					onChange(Change{})
					break loop
				}
				onChange(Change{Name: u.Attrs().Name, Deleted: u.Header.Type == unix.RTM_DELLINK})
			}
		}
	}
}

// inNamespace runs fn on a thread switched to ns and switches back.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so the runtime retires it with this goroutine instead of
		// reusing a thread in the wrong namespace.
		return fmt.Errorf("switch back to the original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
