package qdisc

import (
	"errors"
	"testing"
)

func TestPickRootHandle(t *testing.T) {
	cases := []struct {
		name string
		prev State
		want Handle
	}{
		{"no root", State{}, MakeHandle(0x7a50, 0)},
		{"default root", State{Root: &Installed{Kind: "mq"}}, MakeHandle(0x7a50, 0)},
		{"ours", State{Root: &Installed{Kind: "taprio", Handle: MakeHandle(0x7a50, 0)}}, MakeHandle(0x7a51, 0)},
		{"ours, other", State{Root: &Installed{Kind: "taprio", Handle: MakeHandle(0x7a51, 0)}}, MakeHandle(0x7a50, 0)},
		{"child uses one", State{Root: &Installed{Kind: "taprio", Handle: MakeHandle(0x7a51, 0)},
			Children: []Installed{{Kind: "etf", Handle: MakeHandle(0x7a50, 0), Parent: MakeHandle(0x7a51, 1)}}}, MakeHandle(0x7a50, 0)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := pickRootHandle(tc.prev)
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			if tc.prev.Root != nil && tc.prev.Root.Handle != 0 && got == tc.prev.Root.Handle {
				t.Errorf("picked the current root's handle %s: the kernel would change it in place", got)
			}
		})
	}
}

func TestRestorable(t *testing.T) {
	taprio := &Installed{Kind: "taprio", Handle: MakeHandle(1, 0), Qdisc: goodTaprio()}
	cases := []struct {
		name string
		s    State
		ok   bool
	}{
		{"nothing", State{}, true},
		{"kernel default", State{Root: &Installed{Kind: "mq"}}, true},
		{"modelled root", State{Root: taprio}, true},
		{"modelled root, default children", State{Root: taprio, Children: nil}, true},
		{"replayable root", State{Root: &Installed{Kind: "fq_codel", Handle: MakeHandle(2, 0)}}, true},
		{"classful root", State{Root: &Installed{Kind: "htb", Handle: MakeHandle(1, 0)}}, false},
		{"unknown child", State{Root: taprio, Children: []Installed{{Kind: "cbs", Handle: MakeHandle(3, 0), Parent: MakeHandle(1, 1)}}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.restorable()
			if tc.ok != (err == nil) {
				t.Fatalf("restorable() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrCannotRestore) {
				t.Fatalf("error %v is not ErrCannotRestore", err)
			}
		})
	}
}

// What the kernel fills in does not count as a difference; anything else does.
func TestDiffNormalizes(t *testing.T) {
	want := goodTaprio()
	got := goodTaprio()
	got.CycleTime = 1000000                        // the kernel's sum of the intervals
	got.MaxSDU = make([]uint32, MaxTrafficClasses) // all classes unlimited
	if d := diff(want, got); d != "" {
		t.Errorf("equal after normalization, got %s", d)
	}
	got.MaxSDU[1] = 1500
	if d := diff(want, got); d == "" {
		t.Error("a max SDU the model does not have went unnoticed")
	}
	got = goodTaprio()
	got.Entries[1].Interval++
	if d := diff(want, got); d == "" {
		t.Error("a different interval went unnoticed")
	}
	if want.CycleTime != 0 || want.MaxSDU != nil {
		t.Error("normalize changed its argument")
	}
	hw := &MQPrio{PrioMap: prioMap(2, []uint8{1, 0}, QueueRange{1, 0}, QueueRange{1, 1}), HW: 1}
	hwGot := &MQPrio{PrioMap: prioMap(2, []uint8{1, 0}, QueueRange{4, 0}, QueueRange{4, 4}), HW: 1}
	if d := diff(hw, hwGot); d != "" {
		t.Errorf("hardware mqprio: the NIC chooses the queues, got %s", d)
	}
}

func TestSameTree(t *testing.T) {
	root := &Installed{Kind: "taprio", Handle: MakeHandle(1, 0), Parent: HandleRoot, Qdisc: goodTaprio()}
	child := Installed{Kind: "etf", Handle: MakeHandle(0x8001, 0), Parent: MakeHandle(1, 2), Qdisc: skipSockETF()}
	want := State{Root: root, Children: []Installed{child}}
	if err := sameTree(want, State{Root: root, Children: []Installed{child}}); err != nil {
		t.Fatal(err)
	}
	if err := sameTree(want, State{Root: root}); err == nil {
		t.Error("a missing child went unnoticed")
	}
	other := *root
	other.Handle = MakeHandle(2, 0)
	if err := sameTree(want, State{Root: &other, Children: []Installed{child}}); err == nil {
		t.Error("a different root handle went unnoticed")
	}
	if err := sameTree(State{Root: &Installed{Kind: "mq"}}, State{Root: root}); err == nil {
		t.Error("a leftover root went unnoticed where the default was wanted")
	}
	if err := sameTree(State{Root: &Installed{Kind: "noqueue"}}, State{Root: &Installed{Kind: "noqueue"}}); err != nil {
		t.Error(err)
	}
}
