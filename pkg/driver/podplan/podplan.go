// Package podplan turns a pod's prepared claims into the one saver plan the
// NRI hooks attach: the data path has one saver per pod, while a pod may hold
// several claims (one per traffic class, or classes on several NICs).
package podplan

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

// Source implements nrihooks.PlanSource over the driver's claim state.
type Source struct {
	Claims driver.ClaimStore
	// Logger reports pods whose claims cannot be combined.
	Logger klog.Logger
}

var _ nrihooks.PlanSource = Source{}

// PodPlan implements nrihooks.PlanSource. A pod whose claims contradict each
// other gets a plan that cannot be attached (Merge's error is in Plan.Err), so
// the hook fails the pod loudly instead of guessing.
func (s Source) PodPlan(podUID string) (nrihooks.PodPlan, bool) {
	policies := s.Claims.PodPolicies(types.UID(podUID))
	if len(policies) == 0 {
		return nrihooks.PodPlan{}, false
	}
	plan, err := Merge(policies)
	if err != nil {
		s.Logger.Error(err, "Pod's claims cannot be combined into one saver policy", "podUID", podUID)
		plan.Err = err
	}
	return plan, true
}

// Merge combines the policies of one pod's claims. The pod may use the union
// of what its claims grant; ungranted priorities are dropped if any claim says
// drop (the stricter wins); claims must agree on the pod interface, on the
// demotion priority and on where an application priority is remapped to.
func Merge(policies []driver.PodPolicy) (nrihooks.PodPlan, error) {
	var plan nrihooks.PodPlan
	if len(policies) == 0 {
		return plan, fmt.Errorf("no policies")
	}
	first := policies[0]
	plan.Interface = first.PodInterface
	plan.Policy.Action = datapath.ActionDemote
	plan.Policy.DefaultPriority = first.DemotePriority
	plan.Policy.LaunchTimeClock = datapath.ClockTAI
	allowed := map[uint32]bool{}
	for _, p := range policies {
		claim := p.ClaimNamespace + "/" + p.ClaimName
		if !slices.Contains(plan.Claims, claim) {
			plan.Claims = append(plan.Claims, claim)
		}
		if p.PodInterface != plan.Interface {
			return plan, fmt.Errorf("claims %s and %s/%s name different pod interfaces (%q, %q): one saver per pod covers one interface",
				plan.Claims[0], p.ClaimNamespace, p.ClaimName, plan.Interface, p.PodInterface)
		}
		if p.Ungranted == v1alpha1.UngrantedDrop {
			plan.Policy.Action = datapath.ActionDrop
		}
		if p.DemotePriority != plan.Policy.DefaultPriority {
			return plan, fmt.Errorf("claims %s and %s/%s demote to different priorities (%d, %d)",
				plan.Claims[0], p.ClaimNamespace, p.ClaimName, plan.Policy.DefaultPriority, p.DemotePriority)
		}
		for _, g := range p.GrantedPriorities {
			allowed[g] = true
		}
		for from, to := range p.Remap {
			if prev, ok := plan.Policy.Remap[from]; ok && prev != to {
				return plan, fmt.Errorf("claim %s/%s remaps priority %d to %d, another claim of the pod to %d", p.ClaimNamespace, p.ClaimName, from, to, prev)
			}
			if plan.Policy.Remap == nil {
				plan.Policy.Remap = map[uint32]uint32{}
			}
			plan.Policy.Remap[from] = to
			allowed[from] = true
		}
	}
	for a := range allowed {
		plan.Policy.Allowed = append(plan.Policy.Allowed, a)
	}
	slices.Sort(plan.Policy.Allowed)
	slices.Sort(plan.Claims)
	if err := plan.Policy.Validate(); err != nil {
		return plan, fmt.Errorf("saver policy of claims %v: %w", plan.Claims, err)
	}
	return plan, nil
}
