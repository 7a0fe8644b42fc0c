// Package observe attaches the test-only observer program last at a NIC's
// egress and reports, per test flow, the priority and launch time every test
// packet really carried. Test packets say in their payload what they should
// carry (see Payload). Used by the data path's tests, benchmark and demo.
package observe

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/internal/hook"
)

// Magic starts every test payload.
const Magic = 0x5453504b

// PayloadLen is the size of a test payload.
const PayloadLen = 32

// Payload builds a test payload: the flow tag, a sequence number, and the
// priority and launch time the packet must leave the NIC with.
func Payload(tag, seq, wantPrio uint32, wantTxTime uint64) []byte {
	b := make([]byte, PayloadLen)
	binary.BigEndian.PutUint32(b[0:], Magic)
	binary.BigEndian.PutUint32(b[4:], tag)
	binary.BigEndian.PutUint32(b[8:], seq)
	binary.BigEndian.PutUint32(b[12:], wantPrio)
	binary.BigEndian.PutUint64(b[16:], wantTxTime)
	return b
}

// Launch time states, as the observer records them.
const (
	TSNone     = 0 // none wanted
	TSRight    = 1 // wanted and carried
	TSMissing  = 2 // wanted, none carried
	TSWrong    = 3 // wanted, another value carried
	TSUnwanted = 4 // none wanted, one carried
)

// Key is one observer bucket.
type Key = bpf.ObserverObsKey

// Observer is attached until Close.
type Observer struct {
	objs   bpf.ObserverObjects
	detach func() error
	netns  string
}

// Attach loads the observer and attaches it last at egress of ifname in the
// netns at netnsPath ("" = current), after the restorer.
func Attach(netnsPath, ifname string, mode datapath.AttachMode) (*Observer, error) {
	o := &Observer{netns: netnsPath}
	if err := bpf.LoadObserverObjects(&o.objs, nil); err != nil {
		return nil, fmt.Errorf("load observer: %w", err)
	}
	err := hook.InNetns(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		o.detach, err = hook.AttachUnpinned(hook.Mode(mode), o.objs.TsnObserver, l.Attrs().Index, hook.Last)
		return err
	})
	if err != nil {
		o.objs.Close()
		return nil, fmt.Errorf("attach observer on %s: %w", ifname, err)
	}
	return o, nil
}

// Counts returns every bucket.
func (o *Observer) Counts() (map[Key]uint64, error) {
	out := map[Key]uint64{}
	var k Key
	var v uint64
	it := o.objs.ObsCounts.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// Result sums one flow.
type Result struct {
	Total uint64
	// Right: the priority and launch time the payload asked for.
	Right uint64
	// Wrong: a priority other than the wanted one and other than 0, or a
	// launch time other than the wanted one. The bar is zero.
	Wrong uint64
	// Missed: neither right nor wrong (metadata lost: priority 0, no launch time).
	Missed uint64
	// ByGot counts packets by the priority they carried.
	ByGot map[uint32]uint64
	// TxTimeRight counts packets whose wanted launch time was carried.
	TxTimeRight, TxTimeWanted uint64
}

// Result of the flow tag.
func (o *Observer) Result(tag uint32) (Result, error) {
	all, err := o.Counts()
	if err != nil {
		return Result{}, err
	}
	return Summarize(all, tag), nil
}

// Summarize classifies the buckets of one flow.
func Summarize(all map[Key]uint64, tag uint32) Result {
	r := Result{ByGot: map[uint32]uint64{}}
	for k, n := range all {
		if k.Tag != tag {
			continue
		}
		r.Total += n
		r.ByGot[k.GotPrio] += n
		if k.TsState != TSNone && k.TsState != TSUnwanted {
			r.TxTimeWanted += n
		}
		if k.TsState == TSRight {
			r.TxTimeRight += n
		}
		prioOK := k.GotPrio == k.WantPrio
		tsOK := k.TsState == TSNone || k.TsState == TSRight
		switch {
		case prioOK && tsOK:
			r.Right += n
		case (!prioOK && k.GotPrio != 0) || k.TsState == TSWrong || k.TsState == TSUnwanted:
			r.Wrong += n
		default:
			r.Missed += n
		}
	}
	return r
}

// Reset forgets all counts.
func (o *Observer) Reset() error {
	var k Key
	var keys []Key
	var v uint64
	it := o.objs.ObsCounts.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := o.objs.ObsCounts.Delete(&k); err != nil {
			return err
		}
	}
	return it.Err()
}

// Program is the observer program (for run statistics).
func (o *Observer) Program() *ebpf.Program { return o.objs.TsnObserver }

// Close detaches the observer.
func (o *Observer) Close() error {
	var err error
	if o.detach != nil {
		err = hook.InNetns(o.netns, o.detach)
	}
	if cerr := o.objs.Close(); err == nil {
		err = cerr
	}
	return err
}
