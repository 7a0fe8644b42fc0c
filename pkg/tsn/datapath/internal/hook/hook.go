// Package hook attaches tc programs to an interface's egress, with TCX links
// where the kernel has them and clsact + cls_bpf (direct action) where it does
// not, and pins them so that a later process can find and remove them. It also
// runs code inside a network namespace on a locked OS thread.
package hook

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Mode is "tcx" or "tc".
type Mode string

const (
	TCX Mode = "tcx"
	TC  Mode = "tc"
)

// Position in the egress chain.
type Position int

const (
	// First runs before every other program (the restorer).
	First Position = iota
	// Last runs after every other program (the test observer).
	Last
)

// cls_bpf filter priorities: lower runs first. The handle tells ours apart.
const (
	tcPrioFirst = 1
	tcPrioLast  = 0xfff0
	tcHandle    = 0x7e5
)

// InNetns runs fn on an OS thread switched into the network namespace at
// path ("" = stay in the current one). Namespace sockets, ifindexes and
// netlink requests made by fn resolve there. bpffs pins are unaffected,
// unlike with `ip netns exec`, which remounts /sys.
func InNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it when this goroutine exits.
			errc <- errors.Join(ferr, fmt.Errorf("return from netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Attach attaches prog at egress of the interface with ifindex (in the calling
// thread's netns) and pins what holds it at pin: the TCX link, or for tc the
// program (the cls_bpf filter holds it in the kernel). If something of ours is
// already pinned at pin, it is switched to prog in place, so traffic never
// runs without a program.
func Attach(mode Mode, prog *ebpf.Program, ifindex int, pos Position, pin string) error {
	switch mode {
	case TCX:
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			defer l.Close()
			if err := l.Update(prog); err != nil {
				return fmt.Errorf("update pinned tcx link %s: %w", pin, err)
			}
			return nil
		}
		anchor := link.Head()
		if pos == Last {
			anchor = link.Tail()
		}
		l, err := link.AttachTCX(link.TCXOptions{
			Interface: ifindex,
			Program:   prog,
			Attach:    ebpf.AttachTCXEgress,
			Anchor:    anchor,
		})
		if err != nil {
			return fmt.Errorf("attach tcx egress ifindex %d: %w", ifindex, err)
		}
		defer l.Close()
		if err := l.Pin(pin); err != nil {
			return errors.Join(fmt.Errorf("pin tcx link at %s: %w", pin, err), l.Unpin())
		}
		return nil
	case TC:
		if err := ensureClsact(ifindex); err != nil {
			return err
		}
		prio := uint16(tcPrioFirst)
		if pos == Last {
			prio = tcPrioLast
		}
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    netlink.HANDLE_MIN_EGRESS,
				Handle:    tcHandle,
				Priority:  prio,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           prog.FD(),
			Name:         "tsn",
			DirectAction: true,
		}
		// Replace is atomic: the old filter's program runs until the new one does.
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("cls_bpf filter on ifindex %d: %w", ifindex, err)
		}
		// Pin through a fresh handle: a *Program remembers where it was pinned
		// and would skip pinning again at the same path.
		c, err := prog.Clone()
		if err != nil {
			return err
		}
		defer c.Close()
		_ = os.Remove(pin)
		if err := c.Pin(pin); err != nil {
			return fmt.Errorf("pin program at %s: %w", pin, err)
		}
		return nil
	}
	return fmt.Errorf("unknown attach mode %q", mode)
}

func ensureClsact(ifindex int) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc on ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Detach removes what Attach pinned at pin. For tc it needs the interface
// (ifindex in the calling thread's netns; <= 0 if the interface or netns is
// gone, in which case the kernel already dropped the filter). Missing pieces
// are not errors.
func Detach(mode Mode, ifindex int, pos Position, pin string) error {
	switch mode {
	case TCX:
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		defer l.Close()
		// Detach stops the program even if another process holds the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, link.ErrNotSupported) {
			return fmt.Errorf("detach tcx link %s: %w", pin, err)
		}
		return l.Unpin()
	case TC:
		if ifindex > 0 {
			prio := uint16(tcPrioFirst)
			if pos == Last {
				prio = tcPrioLast
			}
			f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    netlink.HANDLE_MIN_EGRESS,
				Handle:    tcHandle,
				Priority:  prio,
				Protocol:  unix.ETH_P_ALL,
			}}
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete cls_bpf filter on ifindex %d: %w", ifindex, err)
			}
		}
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", pin, err)
		}
		return nil
	}
	return fmt.Errorf("unknown attach mode %q", mode)
}

// Attached reports whether a program of ours is still attached through pin
// (a TCX link whose interface is gone reports false).
func Attached(mode Mode, pin string) bool {
	switch mode {
	case TCX:
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return false
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return false
		}
		if tcx := info.TCX(); tcx != nil {
			return tcx.Ifindex != 0
		}
		return true
	default:
		_, err := os.Stat(pin)
		return err == nil
	}
}

// ProbeTCX reports whether the kernel has TCX, by attaching a pass-through
// program to the loopback's egress and detaching it at once.
func ProbeTCX() (bool, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: passInsns(),
	})
	if err != nil {
		return false, fmt.Errorf("load probe program: %w", err)
	}
	defer prog.Close()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("find lo: %w", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXEgress, Anchor: link.Tail()})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, l.Close()
}

func passInsns() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, -1), // TCX_NEXT
		asm.Return(),
	}
}

// IsLink reports whether pin holds a bpf link (as opposed to a program).
func IsLink(pin string) bool {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// AttachUnpinned attaches prog at egress without pinning it (the test
// observer): the returned function detaches it.
func AttachUnpinned(mode Mode, prog *ebpf.Program, ifindex int, pos Position) (func() error, error) {
	if mode == TCX {
		anchor := link.Head()
		if pos == Last {
			anchor = link.Tail()
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXEgress, Anchor: anchor})
		if err != nil {
			return nil, fmt.Errorf("attach tcx egress ifindex %d: %w", ifindex, err)
		}
		return l.Close, nil
	}
	dir, err := os.MkdirTemp("/sys/fs/bpf", "tsn-unpinned-")
	if err != nil {
		return nil, err
	}
	pin := dir + "/prog"
	if err := Attach(mode, prog, ifindex, pos, pin); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The filter keeps the program: drop the pin now.
	os.Remove(pin)
	os.Remove(dir)
	return func() error { return Detach(mode, ifindex, pos, pin) }, nil
}
