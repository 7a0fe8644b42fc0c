package podplan

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

func policy(name string, prios ...uint32) driver.PodPolicy {
	return driver.PodPolicy{
		ClaimUID: "uid-" + types.UID(name), ClaimNamespace: "ns", ClaimName: name, PodUID: "pod",
		NIC: "tsn0", Interface: "eth1", PodInterface: "eth0",
		GrantedPriorities: prios, Ungranted: v1alpha1.UngrantedDemote,
	}
}

func TestMergeUnionsGrantsAndTakesTheStricterAction(t *testing.T) {
	a := policy("a", 1)
	b := policy("b", 2, 3)
	b.Remap = map[uint32]uint32{5: 2}
	b.Ungranted = v1alpha1.UngrantedDrop
	plan, err := Merge([]driver.PodPolicy{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint32{1, 2, 3, 5}; !slices.Equal(plan.Policy.Allowed, want) {
		t.Errorf("allowed = %v, want %v", plan.Policy.Allowed, want)
	}
	if plan.Policy.Remap[5] != 2 || len(plan.Policy.Remap) != 1 {
		t.Errorf("remap = %v, want 5->2", plan.Policy.Remap)
	}
	if plan.Policy.Action != datapath.ActionDrop {
		t.Errorf("action = %v, want drop (one claim says drop)", plan.Policy.Action)
	}
	if plan.Interface != "eth0" || !slices.Equal(plan.Claims, []string{"ns/a", "ns/b"}) {
		t.Errorf("interface %q claims %v", plan.Interface, plan.Claims)
	}
}

func TestMergeRefusesContradictions(t *testing.T) {
	otherIf := policy("b", 2)
	otherIf.PodInterface = "net1"
	otherDemote := policy("b", 2)
	otherDemote.DemotePriority = 1
	remapA, remapB := policy("a", 1), policy("b", 2)
	remapA.Remap = map[uint32]uint32{7: 1}
	remapB.Remap = map[uint32]uint32{7: 2}
	tooHigh := policy("a", 16)
	for _, tc := range []struct {
		name string
		in   []driver.PodPolicy
		want string
	}{
		{"interfaces", []driver.PodPolicy{policy("a", 1), otherIf}, `claims ns/a and ns/b name different pod interfaces ("eth0", "net1")`},
		{"demote", []driver.PodPolicy{policy("a", 1), otherDemote}, "claims ns/a and ns/b demote to different priorities (0, 1)"},
		{"remap", []driver.PodPolicy{remapA, remapB}, "claim ns/b remaps priority 7 to 2, another claim of the pod to 1"},
		{"invalid", []driver.PodPolicy{tooHigh}, "saver policy of claims [ns/a]: allowed priority 16: above 15"},
		{"none", nil, "no policies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Merge(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Merge = %v, want %q", err, tc.want)
			}
		})
	}
}
