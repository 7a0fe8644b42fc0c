package driver

import (
	"sort"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
)

// PodPolicy is what one pod may send through one NIC, derived from one prepared claim. The NRI
// side (saver on the pod, restorer on the NIC) enforces it.
type PodPolicy struct {
	ClaimUID       types.UID `json:"claimUID"`
	ClaimNamespace string    `json:"claimNamespace"`
	ClaimName      string    `json:"claimName"`
	PodUID         types.UID `json:"podUID"`
	PodName        string    `json:"podName,omitempty"`
	// NIC is the node-config name of the NIC ("tsn0"), Interface its kernel name on the node.
	NIC       string `json:"nic"`
	Interface string `json:"interface"`
	// PodInterface is the pod's interface whose egress traffic the policy covers ("eth0").
	PodInterface string `json:"podInterface"`
	// GrantedClasses are the traffic classes of the NIC the pod was granted (ascending).
	GrantedClasses []int `json:"grantedClasses"`
	// GrantedPriorities are the socket priorities that map to granted classes; packets with
	// these priorities pass unchanged (ascending).
	GrantedPriorities []uint32 `json:"grantedPriorities"`
	// Remap rewrites application priorities to granted ones (from the claim's priorityMap).
	Remap map[uint32]uint32 `json:"remap,omitempty"`
	// Ungranted is what happens to any other priority.
	Ungranted v1alpha1.UngrantedAction `json:"ungranted"`
	// DemotePriority is the priority demoted packets get.
	DemotePriority uint32 `json:"demotePriority"`
	// LaunchTime says the pod sets launch times that must reach the NIC.
	LaunchTime bool `json:"launchTime"`
}

// PreparedDevice is one device of a prepared claim.
type PreparedDevice struct {
	Request      string     `json:"request"`
	Pool         string     `json:"pool"`
	Device       string     `json:"device"`
	ShareID      *types.UID `json:"shareID,omitempty"`
	NIC          string     `json:"nic"`
	Interface    string     `json:"interface"`
	TrafficClass int        `json:"trafficClass"`
}

// PreparedClaim is the checkpointed result of preparing one claim.
type PreparedClaim struct {
	UID       types.UID        `json:"uid"`
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Devices   []PreparedDevice `json:"devices"`
	Pods      []PodPolicy      `json:"pods"`
}

// ClaimStore is the read side of the prepared state, for the NRI plugin (pod lifecycle) and the
// NIC configuration that follow claim preparation. It is safe for concurrent use; returned
// values are copies.
type ClaimStore interface {
	// PodPolicies returns the policies of every prepared claim reserved for the pod, one per
	// (claim, NIC); empty for a pod without a claim of this driver.
	PodPolicies(podUID types.UID) []PodPolicy
	// NICClaims returns the UIDs of the prepared claims with a device on the NIC (node-config
	// name), sorted. The first claim on a NIC means "configure it", none means "release it".
	NICClaims(nic string) []types.UID
	// PreparedClaims returns every prepared claim, sorted by UID.
	PreparedClaims() []PreparedClaim
}

// claimState is the in-memory prepared state, written through to a checkpoint on every change.
type claimState struct {
	mu     sync.RWMutex
	claims map[types.UID]PreparedClaim
	cp     *checkpoint
}

var _ ClaimStore = (*claimState)(nil)

// replace sets the whole state (a rebuild); the checkpoint is written first.
func (s *claimState) replace(claims map[types.UID]PreparedClaim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cp.store(claims); err != nil {
		return err
	}
	s.claims = claims
	return nil
}

func (s *claimState) get(uid types.UID) (PreparedClaim, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.claims[uid]
	return c, ok
}

// put stores a claim; the checkpoint is written first, so a failed write changes nothing.
func (s *claimState) put(c PreparedClaim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[types.UID]PreparedClaim, len(s.claims)+1)
	for k, v := range s.claims {
		next[k] = v
	}
	next[c.UID] = c
	if err := s.cp.store(next); err != nil {
		return err
	}
	s.claims = next
	return nil
}

// remove deletes a claim (no error if absent); the checkpoint is written first.
func (s *claimState) remove(uid types.UID) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.claims[uid]; !ok {
		return false, nil
	}
	next := make(map[types.UID]PreparedClaim, len(s.claims))
	for k, v := range s.claims {
		if k != uid {
			next[k] = v
		}
	}
	if err := s.cp.store(next); err != nil {
		return false, err
	}
	s.claims = next
	return true, nil
}

func (s *claimState) count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.claims)
}

// PodPolicies implements ClaimStore.
func (s *claimState) PodPolicies(podUID types.UID) []PodPolicy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []PodPolicy
	for _, c := range s.claims {
		for _, p := range c.Pods {
			if p.PodUID == podUID {
				out = append(out, copyPolicy(p))
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ClaimUID != out[j].ClaimUID {
			return out[i].ClaimUID < out[j].ClaimUID
		}
		return out[i].NIC < out[j].NIC
	})
	return out
}

// NICClaims implements ClaimStore.
func (s *claimState) NICClaims(nic string) []types.UID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []types.UID
	for uid, c := range s.claims {
		for _, d := range c.Devices {
			if d.NIC == nic {
				out = append(out, uid)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// PreparedClaims implements ClaimStore.
func (s *claimState) PreparedClaims() []PreparedClaim {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]PreparedClaim, 0, len(s.claims))
	for _, c := range s.claims {
		cc := c
		cc.Devices = append([]PreparedDevice(nil), c.Devices...)
		cc.Pods = make([]PodPolicy, len(c.Pods))
		for i, p := range c.Pods {
			cc.Pods[i] = copyPolicy(p)
		}
		out = append(out, cc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

func copyPolicy(p PodPolicy) PodPolicy {
	p.GrantedClasses = append([]int(nil), p.GrantedClasses...)
	p.GrantedPriorities = append([]uint32(nil), p.GrantedPriorities...)
	if p.Remap != nil {
		m := make(map[uint32]uint32, len(p.Remap))
		for k, v := range p.Remap {
			m[k] = v
		}
		p.Remap = m
	}
	return p
}
