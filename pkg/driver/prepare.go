package driver

import (
	"fmt"
	"sort"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
)

// planClaim works out the prepared state of a claim from its allocation, its opaque configs and
// the node's devices. It has no side effects.
func planClaim(claim *resourceapi.ResourceClaim, driverName, pool string, inv *inventory) (*PreparedClaim, error) {
	alloc := claim.Status.Allocation
	if alloc == nil {
		return nil, fmt.Errorf("claim is not allocated")
	}
	allocPath := field.NewPath("status", "allocation", "devices")

	// Our devices.
	var devs []PreparedDevice
	byRequest := map[string][]*classDevice{}
	for i, r := range alloc.Devices.Results {
		if r.Driver != driverName {
			continue
		}
		p := allocPath.Child("results").Index(i)
		if r.Pool != pool {
			return nil, field.Invalid(p.Child("pool"), r.Pool, fmt.Sprintf("this node's pool is %q", pool))
		}
		d, ok := inv.devices[r.Device]
		if !ok {
			return nil, field.NotFound(p.Child("device"), r.Device)
		}
		devs = append(devs, PreparedDevice{
			Request: r.Request, Pool: r.Pool, Device: r.Device, ShareID: r.ShareID,
			NIC: d.nic.Name, Interface: d.info.Name, TrafficClass: d.class,
		})
		byRequest[parentRequest(r.Request)] = append(byRequest[parentRequest(r.Request)], d)
	}
	if len(devs) == 0 {
		return nil, fmt.Errorf("claim has no device of driver %s", driverName)
	}

	cfg, origin, err := mergedConfig(alloc.Devices.Config, driverName, byRequest, allocPath.Child("config"))
	if err != nil {
		return nil, err
	}

	// Priorities and remaps per NIC.
	type nicPlan struct {
		nic, iface string
		classes    map[int]bool
		remap      map[uint32]uint32
		devs       []*classDevice
	}
	plans := map[string]*nicPlan{}
	for _, ds := range byRequest {
		for _, d := range ds {
			np := plans[d.nic.Name]
			if np == nil {
				np = &nicPlan{nic: d.nic.Name, iface: d.info.Name, classes: map[int]bool{}, remap: map[uint32]uint32{}}
				plans[d.nic.Name] = np
			}
			np.classes[d.class] = true
			np.devs = append(np.devs, d)
		}
	}
	var errs field.ErrorList
	for i, m := range cfg.PriorityMap {
		p := origin.priorityMap.Child("priorityMap").Index(i)
		req := m.Request
		if req == "" {
			if len(byRequest) != 1 || len(devs) != 1 {
				errs = append(errs, field.Required(p.Child("request"), "the claim has more than one device of this driver: name the request"))
				continue
			}
			for r := range byRequest {
				req = r
			}
		}
		ds, ok := byRequest[req]
		if !ok {
			errs = append(errs, field.Invalid(p.Child("request"), m.Request, "no device of this driver was allocated for this request"))
			continue
		}
		if len(ds) != 1 {
			errs = append(errs, field.Invalid(p.Child("request"), m.Request, "the request was granted more than one device: a priority can map to only one"))
			continue
		}
		d := ds[0]
		prios := d.schedule.Priorities(d.class)
		if len(prios) == 0 {
			errs = append(errs, field.Invalid(p.Child("request"), m.Request,
				fmt.Sprintf("no socket priority maps to traffic class %d of %s", d.class, d.nic.Name)))
			continue
		}
		to := uint32(prios[0])
		// Keep the application's priority when it already belongs to the class.
		if d.schedule.ClassOf(uint32(m.AppPriority)) == d.class {
			to = uint32(m.AppPriority)
		}
		plans[d.nic.Name].remap[uint32(m.AppPriority)] = to
	}
	if cfg.EffectiveLaunchTime() {
		for _, np := range plans {
			for _, d := range np.devs {
				if !d.launchTimeCapable() {
					errs = append(errs, field.Invalid(origin.launchTime.Child("launchTime"), true,
						fmt.Sprintf("device %s has neither launch time (etf) nor txtime-assist configured", d.name)))
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, v1alpha1.Aggregate([]error{errs.ToAggregate()})
	}

	pc := &PreparedClaim{UID: claim.UID, Namespace: claim.Namespace, Name: claim.Name, Devices: devs}
	var pods []resourceapi.ResourceClaimConsumerReference
	for _, ref := range claim.Status.ReservedFor {
		if ref.APIGroup == "" && ref.Resource == "pods" {
			pods = append(pods, ref)
		}
	}
	if len(pods) == 0 {
		return nil, field.Required(field.NewPath("status", "reservedFor"), "the claim is not reserved for any pod")
	}
	nicNames := make([]string, 0, len(plans))
	for n := range plans {
		nicNames = append(nicNames, n)
	}
	sort.Strings(nicNames)
	for _, pod := range pods {
		for _, n := range nicNames {
			np := plans[n]
			pol := PodPolicy{
				ClaimUID: claim.UID, ClaimNamespace: claim.Namespace, ClaimName: claim.Name,
				PodUID: pod.UID, PodName: pod.Name,
				NIC: np.nic, Interface: np.iface,
				PodInterface:   cfg.EffectiveInterfaceName(),
				Ungranted:      cfg.EffectiveUngranted(),
				DemotePriority: 0,
				LaunchTime:     cfg.EffectiveLaunchTime(),
			}
			for c := range np.classes {
				pol.GrantedClasses = append(pol.GrantedClasses, c)
			}
			sort.Ints(pol.GrantedClasses)
			s := np.devs[0].schedule
			for p := 0; p < 16; p++ {
				if np.classes[s.ClassOf(uint32(p))] {
					pol.GrantedPriorities = append(pol.GrantedPriorities, uint32(p))
				}
			}
			if len(np.remap) > 0 {
				pol.Remap = np.remap
			}
			pc.Pods = append(pc.Pods, pol)
		}
	}
	return pc, nil
}

// configOrigin records which config (by path) set the fields whose errors are found later.
type configOrigin struct {
	priorityMap, launchTime *field.Path
}

// mergedConfig decodes the opaque configs of this driver that apply to its requests, class
// configs first, then claim configs, each overriding the fields it sets.
func mergedConfig(configs []resourceapi.DeviceAllocationConfiguration, driverName string, byRequest map[string][]*classDevice, path *field.Path) (*v1alpha1.TSNConfig, configOrigin, error) {
	merged := &v1alpha1.TSNConfig{}
	origin := configOrigin{priorityMap: path, launchTime: path}
	var errs []error
	for _, source := range []resourceapi.AllocationConfigSource{resourceapi.AllocationConfigSourceClass, resourceapi.AllocationConfigSourceClaim} {
		for i, c := range configs {
			if c.Source != source || c.Opaque == nil || c.Opaque.Driver != driverName {
				continue
			}
			if !appliesToUs(c.Requests, byRequest) {
				continue
			}
			p := path.Index(i).Child("opaque", "parameters")
			tc, err := v1alpha1.Decode(c.Opaque.Parameters.Raw, p)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if tc.PriorityMap != nil {
				origin.priorityMap = p
			}
			if tc.LaunchTime != nil {
				origin.launchTime = p
			}
			merged.Merge(tc)
		}
	}
	if len(errs) > 0 {
		// Each config's errors are shortened already; joined, the message stays short too.
		return nil, origin, v1alpha1.Aggregate(errs)
	}
	return merged, origin, nil
}

func appliesToUs(requests []string, byRequest map[string][]*classDevice) bool {
	if len(requests) == 0 {
		return true
	}
	for _, r := range requests {
		if _, ok := byRequest[parentRequest(r)]; ok {
			return true
		}
	}
	return false
}

// parentRequest strips a subrequest name ("req/sub" -> "req").
func parentRequest(r string) string {
	if i := strings.IndexByte(r, '/'); i >= 0 {
		return r[:i]
	}
	return r
}
