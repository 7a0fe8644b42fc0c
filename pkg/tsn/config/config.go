// Package config holds the node configuration of the driver: which NICs of a node are TSN NICs,
// the schedule each runs, and which of its traffic classes pods may claim. The file is YAML (or
// JSON), usually mounted from a ConfigMap; it is decoded strictly and validated as a whole, so a
// bad file is rejected before anything uses it.
package config

import (
	"bytes"
	"fmt"
	"os"
	"regexp"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

// APIVersion and Kind identify a node configuration file.
const (
	APIVersion = "tsn.dra.io/v1alpha1"
	Kind       = "NodeConfig"
)

// NodeConfig is the configuration of one node (or of every node that mounts the same file).
type NodeConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// NICs lists the TSN NICs. A node publishes the entries whose match finds a link on it.
	NICs []NIC `json:"nics"`
}

// NIC is one TSN NIC and its schedule.
type NIC struct {
	// Name names the NIC in device names ("<name>-tc<class>") and attributes: a DNS label of at
	// most 20 characters, unique in the file.
	Name string `json:"name"`
	// Match selects the network interface: exactly one of its fields is set.
	Match Match `json:"match"`
	// Schedule is the TSN schedule the NIC runs.
	Schedule schedule.Schedule `json:"schedule"`
	// ClaimableClasses are the traffic classes pods may claim; each becomes a device. Classes not
	// listed (best effort, for instance) are not published.
	ClaimableClasses []int `json:"claimableClasses"`
	// ScheduleOwner says who puts the schedule on the NIC: "driver" (default) applies it as
	// qdiscs when the first claim on the NIC is prepared; "external" leaves the NIC's qdiscs to
	// someone else (a TSN controller, the NIC vendor's tools): the driver publishes the classes
	// of the schedule given here and restores priorities, and never changes a qdisc.
	ScheduleOwner ScheduleOwner `json:"scheduleOwner,omitempty"`
	// OnLastRelease says what happens when the last claim on the NIC is released: "keep"
	// (default) leaves schedule and restorer on the NIC, "remove" takes the restorer off and
	// restores the NIC's previous root qdisc (the qdiscs only if the driver owns the schedule).
	OnLastRelease ReleasePolicy `json:"onLastRelease,omitempty"`
	// BandwidthRequest is the request policy of each class's bandwidth capacity.
	BandwidthRequest BandwidthRequest `json:"bandwidthRequest,omitempty"`
}

// Match selects a network interface by exactly one property.
type Match struct {
	// InterfaceName is the kernel name of the interface (e.g. "enp1s0").
	InterfaceName string `json:"interfaceName,omitempty"`
	// PCIAddress is the PCI address of the NIC in extended BDF notation ("0000:01:00.0").
	PCIAddress string `json:"pciAddress,omitempty"`
	// Driver is the kernel driver (e.g. "igc"); it must match exactly one interface of the node.
	Driver string `json:"driver,omitempty"`
}

// ScheduleOwner says who applies a NIC's schedule.
type ScheduleOwner string

const (
	// ScheduleOwnerDriver: the driver applies the schedule as qdiscs.
	ScheduleOwnerDriver ScheduleOwner = "driver"
	// ScheduleOwnerExternal: the NIC's qdiscs are configured outside the driver.
	ScheduleOwnerExternal ScheduleOwner = "external"
)

// Effective returns the owner with the default applied.
func (o ScheduleOwner) Effective() ScheduleOwner {
	if o == "" {
		return ScheduleOwnerDriver
	}
	return o
}

// ReleasePolicy says what to do with a NIC's schedule when its last claim goes.
type ReleasePolicy string

const (
	// ReleaseKeep leaves the schedule on the NIC.
	ReleaseKeep ReleasePolicy = "keep"
	// ReleaseRemove removes the schedule and restores the previous root qdisc.
	ReleaseRemove ReleasePolicy = "remove"
)

// Effective returns the policy with the default applied.
func (p ReleasePolicy) Effective() ReleasePolicy {
	if p == "" {
		return ReleaseKeep
	}
	return p
}

// BandwidthRequest is the request policy for the "bandwidth" capacity of a traffic class, in bits
// per second. Unset fields take the defaults below.
type BandwidthRequest struct {
	// Default is what a request that names no bandwidth consumes. Default 1M (1 Mbit/s).
	Default *resource.Quantity `json:"default,omitempty"`
	// Min is the smallest request. Default 1M.
	Min *resource.Quantity `json:"min,omitempty"`
	// Step rounds requests up to a multiple of it (from Min). Default 1M.
	Step *resource.Quantity `json:"step,omitempty"`
}

var oneMbit = resource.MustParse("1M")

// Effective returns the policy with defaults applied.
func (b BandwidthRequest) Effective() (def, min, step resource.Quantity) {
	def, min, step = oneMbit.DeepCopy(), oneMbit.DeepCopy(), oneMbit.DeepCopy()
	if b.Default != nil {
		def = b.Default.DeepCopy()
	}
	if b.Min != nil {
		min = b.Min.DeepCopy()
	}
	if b.Step != nil {
		step = b.Step.DeepCopy()
	}
	return
}

// maxNICNameLength keeps "<name>-tc15" within a device name's 63 characters with room to spare.
const maxNICNameLength = 20

var pciAddressRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// Parse decodes a node configuration strictly (unknown or duplicate fields are errors) and
// validates it. Nothing is returned unless the whole file is valid.
func Parse(data []byte) (*NodeConfig, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("node config is empty")
	}
	var c NodeConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("decode node config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid node config: %w", err)
	}
	return &c, nil
}

// Load reads and parses the node configuration at path.
func Load(path string) (*NodeConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read node config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks the whole configuration and names the field of every problem.
func (c *NodeConfig) Validate() error {
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), c.APIVersion, []string{APIVersion}))
	}
	if c.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), c.Kind, []string{Kind}))
	}
	names := map[string]int{}
	matches := map[Match]int{}
	for i := range c.NICs {
		p := field.NewPath("nics").Index(i)
		n := &c.NICs[i]
		errs = append(errs, n.validate(p)...)
		if j, dup := names[n.Name]; dup && n.Name != "" {
			errs = append(errs, field.Duplicate(p.Child("name"), fmt.Sprintf("%s (also nics[%d])", n.Name, j)))
		} else {
			names[n.Name] = i
		}
		if j, dup := matches[n.Match]; dup && n.Match != (Match{}) {
			errs = append(errs, field.Duplicate(p.Child("match"), fmt.Sprintf("same interface as nics[%d]", j)))
		} else {
			matches[n.Match] = i
		}
	}
	return errs.ToAggregate()
}

func (n *NIC) validate(p *field.Path) field.ErrorList {
	var errs field.ErrorList
	np := p.Child("name")
	switch {
	case n.Name == "":
		errs = append(errs, field.Required(np, "names the NIC in device names"))
	case len(n.Name) > maxNICNameLength:
		errs = append(errs, field.TooLong(np, n.Name, maxNICNameLength))
	default:
		for _, msg := range validation.IsDNS1123Label(n.Name) {
			errs = append(errs, field.Invalid(np, n.Name, msg))
		}
	}

	mp := p.Child("match")
	set := 0
	if n.Match.InterfaceName != "" {
		set++
		for _, msg := range validateInterfaceName(n.Match.InterfaceName) {
			errs = append(errs, field.Invalid(mp.Child("interfaceName"), n.Match.InterfaceName, msg))
		}
	}
	if n.Match.PCIAddress != "" {
		set++
		if !pciAddressRE.MatchString(n.Match.PCIAddress) {
			errs = append(errs, field.Invalid(mp.Child("pciAddress"), n.Match.PCIAddress,
				"must be a PCI address like 0000:01:00.0 (lower-case hex)"))
		}
	}
	if n.Match.Driver != "" {
		set++
	}
	if set != 1 {
		errs = append(errs, field.Invalid(mp, set, "set exactly one of interfaceName, pciAddress, driver"))
	}

	sp := p.Child("schedule")
	schedErrs := n.Schedule.ValidateAt(sp)
	errs = append(errs, schedErrs...)

	cp := p.Child("claimableClasses")
	if len(n.ClaimableClasses) == 0 {
		errs = append(errs, field.Required(cp, "list the traffic classes pods may claim"))
	}
	seen := map[int]bool{}
	ntc := n.Schedule.NumTrafficClasses
	for i, tc := range n.ClaimableClasses {
		switch {
		case tc < 0 || tc >= ntc:
			errs = append(errs, field.Invalid(cp.Index(i), tc,
				fmt.Sprintf("must be a traffic class between 0 and %d", max(ntc-1, 0))))
		case seen[tc]:
			errs = append(errs, field.Duplicate(cp.Index(i), tc))
		case len(schedErrs) == 0 && n.Schedule.OpenTime(tc) == 0:
			errs = append(errs, field.Invalid(cp.Index(i), tc, "the gate control list never opens this class's gate"))
		}
		seen[tc] = true
	}

	switch n.ScheduleOwner {
	case "", ScheduleOwnerDriver, ScheduleOwnerExternal:
	default:
		errs = append(errs, field.NotSupported(p.Child("scheduleOwner"), n.ScheduleOwner,
			[]ScheduleOwner{ScheduleOwnerDriver, ScheduleOwnerExternal}))
	}

	switch n.OnLastRelease {
	case "", ReleaseKeep, ReleaseRemove:
	default:
		errs = append(errs, field.NotSupported(p.Child("onLastRelease"), n.OnLastRelease,
			[]ReleasePolicy{ReleaseKeep, ReleaseRemove}))
	}

	bp := p.Child("bandwidthRequest")
	def, min, step := n.BandwidthRequest.Effective()
	for _, f := range []struct {
		name string
		q    resource.Quantity
	}{{"default", def}, {"min", min}, {"step", step}} {
		if f.q.Sign() <= 0 {
			errs = append(errs, field.Invalid(bp.Child(f.name), f.q.String(), "must be positive"))
		}
	}
	whole := true
	for _, f := range []struct {
		name string
		q    resource.Quantity
	}{{"default", def}, {"min", min}, {"step", step}} {
		if f.q.Cmp(*resource.NewQuantity(f.q.Value(), resource.DecimalSI)) != 0 {
			errs = append(errs, field.Invalid(bp.Child(f.name), f.q.String(), "must be a whole number of bits per second"))
			whole = false
		}
	}
	switch {
	case def.Cmp(min) < 0:
		errs = append(errs, field.Invalid(bp.Child("default"), def.String(), fmt.Sprintf("must not be below min (%s)", min.String())))
	case whole && step.Sign() > 0 && (def.Value()-min.Value())%step.Value() != 0:
		errs = append(errs, field.Invalid(bp.Child("default"), def.String(),
			fmt.Sprintf("must be min (%s) plus a multiple of step (%s)", min.String(), step.String())))
	}
	return errs
}

// validateInterfaceName applies the kernel's rules (dev_valid_name).
func validateInterfaceName(name string) []string {
	if len(name) >= 16 {
		return []string{"must be shorter than 16 characters"}
	}
	if name == "." || name == ".." {
		return []string{"must not be . or .."}
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return []string{"must not contain '/', ':', whitespace or control characters"}
		}
	}
	return nil
}
