package nicsetup

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// fake records calls to the data path and the qdisc side in one log.
type fake struct {
	log       []string
	applyErr  error
	ensureErr error
}

func (f *fake) EnsureRestorer(_ context.Context, ifname string) error {
	f.log = append(f.log, "ensure-restorer "+ifname)
	return f.ensureErr
}

func (f *fake) RemoveRestorer(_ context.Context, ifname string) error {
	f.log = append(f.log, "remove-restorer "+ifname)
	return nil
}

func (f *fake) Apply(_ context.Context, nic NIC) error {
	f.log = append(f.log, "apply "+nic.Interface)
	return f.applyErr
}

func (f *fake) Remove(_ context.Context, nic NIC) error {
	f.log = append(f.log, "remove "+nic.Interface)
	return nil
}

func (f *fake) take() []string { l := f.log; f.log = nil; return l }

var (
	keep     = NIC{Name: "tsn0", Interface: "eth1", ApplySchedule: true}
	remove   = NIC{Name: "tsn0", Interface: "eth1", ApplySchedule: true, RemoveOnLastRelease: true}
	external = NIC{Name: "tsn0", Interface: "eth1", RemoveOnLastRelease: true}
)

func TestSharedNICConfiguredOnceRemovedWithLastClaim(t *testing.T) {
	ctx := context.Background()
	f := &fake{}
	s := New(f, f)
	for _, uid := range []string{"c1", "c2", "c1"} {
		if err := s.Acquire(ctx, remove, uid); err != nil {
			t.Fatalf("Acquire(%s): %v", uid, err)
		}
	}
	if got := s.Claims("tsn0"); !slices.Equal(got, []string{"c1", "c2"}) {
		t.Fatalf("claims = %v, want [c1 c2]", got)
	}
	f.take()
	if err := s.Release(ctx, "tsn0", "c1"); err != nil {
		t.Fatal(err)
	}
	if got := f.take(); len(got) != 0 {
		t.Fatalf("release of a non-last claim touched the NIC: %v", got)
	}
	for i := 0; i < 2; i++ { // the second release is a no-op
		if err := s.Release(ctx, "tsn0", "c2"); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := f.take(), []string{"remove-restorer eth1", "remove eth1"}; !slices.Equal(got, want) {
		t.Fatalf("last release = %v, want %v", got, want)
	}
	if got := s.Claims("tsn0"); len(got) != 0 {
		t.Fatalf("claims after last release = %v", got)
	}
}

func TestKeepPolicyLeavesScheduleAndRestorer(t *testing.T) {
	ctx := context.Background()
	f := &fake{}
	s := New(f, f)
	if err := s.Acquire(ctx, keep, "c1"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"ensure-restorer eth1", "apply eth1"}; !slices.Equal(got, want) {
		t.Fatalf("acquire = %v, want %v (restorer first: clsact grafted after taprio stops its gates)", got, want)
	}
	if err := s.Release(ctx, "tsn0", "c1"); err != nil {
		t.Fatal(err)
	}
	if got := f.take(); len(got) != 0 {
		t.Fatalf("release with onLastRelease=keep touched the NIC: %v", got)
	}
}

func TestExternalScheduleIsNeverTouched(t *testing.T) {
	ctx := context.Background()
	f := &fake{}
	s := New(f, f)
	if err := s.Acquire(ctx, external, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "tsn0", "c1"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"ensure-restorer eth1", "remove-restorer eth1"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (no qdisc change with an external schedule)", got, want)
	}
}

func TestFailedAcquireRecordsNothingAndUndoes(t *testing.T) {
	ctx := context.Background()
	f := &fake{applyErr: errors.New("taprio refused")}
	s := New(f, f)
	err := s.Acquire(ctx, remove, "c1")
	if err == nil || !strings.Contains(err.Error(), "apply the TSN schedule of NIC tsn0 (eth1): taprio refused") {
		t.Fatalf("Acquire with a failing schedule = %v", err)
	}
	if got, want := f.take(), []string{"ensure-restorer eth1", "apply eth1", "remove-restorer eth1"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (the first claim's restorer taken off again)", got, want)
	}

	f.applyErr, f.ensureErr = nil, errors.New("no bpffs")
	err = s.Acquire(ctx, remove, "c1")
	if err == nil || !strings.Contains(err.Error(), "attach the restorer to NIC tsn0 (eth1): no bpffs") {
		t.Fatalf("Acquire with a failing restorer = %v", err)
	}
	if got, want := f.take(), []string{"ensure-restorer eth1"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v (no schedule without a restorer)", got, want)
	}
	if got := s.Claims("tsn0"); len(got) != 0 {
		t.Fatalf("a failed acquire recorded claims %v", got)
	}
}

func TestClaimHooksAcquireEveryNICOrNone(t *testing.T) {
	ctx := context.Background()
	f := &fake{}
	nics := map[string]config.NIC{
		"tsn0": {Name: "tsn0", OnLastRelease: config.ReleaseRemove},
		"tsn1": {Name: "tsn1", ScheduleOwner: config.ScheduleOwnerDriver},
	}
	h := ClaimHooks{Setup: New(f, f), NICs: func(n string) (config.NIC, bool) { c, ok := nics[n]; return c, ok }}
	claim := driver.PreparedClaim{UID: "c1", Devices: []driver.PreparedDevice{
		{Device: "tsn0-tc1", NIC: "tsn0", Interface: "eth1"},
		{Device: "tsn0-tc2", NIC: "tsn0", Interface: "eth1"},
		{Device: "tsn1-tc1", NIC: "tsn1", Interface: "eth2"},
	}}
	if err := h.ClaimPrepared(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"ensure-restorer eth1", "apply eth1", "ensure-restorer eth2", "apply eth2"}; !slices.Equal(got, want) {
		t.Fatalf("prepare = %v, want %v (each NIC once)", got, want)
	}
	if err := h.ClaimUnprepared(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"remove-restorer eth1", "remove eth1"}; !slices.Equal(got, want) {
		t.Fatalf("unprepare = %v, want %v (tsn1 keeps its schedule)", got, want)
	}

	// tsn1's restorer fails: tsn0, acquired first, is released again.
	f.ensureErr = nil
	h.Setup.restorers = &failOn{fake: f, ifname: "eth2"}
	err := h.ClaimPrepared(ctx, claim)
	if err == nil || !strings.Contains(err.Error(), "attach the restorer to NIC tsn1 (eth2)") {
		t.Fatalf("prepare with a failing second NIC = %v", err)
	}
	if got := h.Setup.Claims("tsn0"); len(got) != 0 {
		t.Fatalf("tsn0 still holds %v after the claim failed", got)
	}

	unknown := driver.PreparedClaim{UID: "c2", Devices: []driver.PreparedDevice{{Device: "x-tc1", NIC: "x"}}}
	if err := h.ClaimPrepared(ctx, unknown); err == nil || !strings.Contains(err.Error(), "device x-tc1: NIC x is not in the node config") {
		t.Fatalf("prepare on an unknown NIC = %v", err)
	}
}

// failOn fails EnsureRestorer for one interface.
type failOn struct {
	*fake
	ifname string
}

func (f *failOn) EnsureRestorer(ctx context.Context, ifname string) error {
	if ifname == f.ifname {
		return errors.New("boom")
	}
	return f.fake.EnsureRestorer(ctx, ifname)
}
