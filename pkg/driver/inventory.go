package driver

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/utils/ptr"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

// Discoverer finds the interface a node-config selector names. *nic.Discoverer implements it.
type Discoverer interface {
	Resolve(m config.Match) (*nic.Info, error)
}

// BandwidthCapacity is the name of the consumable capacity of a traffic-class device, in bits
// per second.
const BandwidthCapacity resourceapi.QualifiedName = "bandwidth"

// classDevice is one published device: a claimable traffic class of a present NIC.
type classDevice struct {
	name      string
	nic       *config.NIC
	info      *nic.Info
	class     int
	schedule  *schedule.Schedule
	launch    *schedule.LaunchTime
	maxSDU    int
	bandwidth uint64
}

// nicStatus is what became of one configured NIC on this node.
type nicStatus struct {
	cfg  *config.NIC
	info *nic.Info // nil when not usable
	err  error     // why not usable
}

// inventory is the node's devices for one node config and one look at the links.
type inventory struct {
	nics    []nicStatus
	devices map[string]*classDevice
}

// deviceName is the device of class tc on the NIC called nicName in the node config.
func deviceName(nicName string, tc int) string { return fmt.Sprintf("%s-tc%d", nicName, tc) }

func buildInventory(cfg *config.NodeConfig, d Discoverer) *inventory {
	inv := &inventory{devices: map[string]*classDevice{}}
	for i := range cfg.NICs {
		n := &cfg.NICs[i]
		st := nicStatus{cfg: n}
		info, err := d.Resolve(n.Match)
		switch {
		case err != nil:
			st.err = err
		default:
			if errs := n.Schedule.ValidateForDevice(nil, info.TxQueues); len(errs) > 0 {
				st.err = fmt.Errorf("schedule does not fit interface %s: %w", info.Name, errs.ToAggregate())
				break
			}
			st.info = info
			for _, tc := range n.ClaimableClasses {
				dev := &classDevice{
					name:     deviceName(n.Name, tc),
					nic:      n,
					info:     info,
					class:    tc,
					schedule: &n.Schedule,
				}
				if s := n.Schedule.Settings(tc); s != nil {
					dev.launch, dev.maxSDU = s.LaunchTime, s.MaxSDU
				}
				dev.bandwidth = n.Schedule.Bandwidth(tc, uint64(info.SpeedMbps)*1_000_000)
				inv.devices[dev.name] = dev
			}
		}
		inv.nics = append(inv.nics, st)
	}
	return inv
}

// sortedDevices returns the devices ordered by name.
func (inv *inventory) sortedDevices() []*classDevice {
	out := make([]*classDevice, 0, len(inv.devices))
	for _, d := range inv.devices {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// launchTimeCapable says whether packets of the class can carry launch times to the wire: an
// etf on the class, or taprio in txtime-assist mode.
func (d *classDevice) launchTimeCapable() bool {
	return d.launch != nil || d.schedule.Mode == schedule.ModeTxtimeAssist
}

// resourceDevice renders the device for a ResourceSlice.
func (d *classDevice) resourceDevice() resourceapi.Device {
	s := d.schedule
	prios := s.Priorities(d.class)
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"nic":                  {StringValue: ptr.To(d.nic.Name)},
		"interface":            {StringValue: ptr.To(d.info.Name)},
		"trafficClass":         {IntValue: ptr.To(int64(d.class))},
		"priorities":           {StringValue: ptr.To(joinInts(prios))},
		"cycleTimeNs":          {IntValue: ptr.To(int64(s.Cycle()))},
		"gateOpenPercent":      {IntValue: ptr.To(int64(s.OpenShare(d.class) * 100))},
		"mode":                 {StringValue: ptr.To(string(s.Mode))},
		"hardwareOffload":      {BoolValue: ptr.To(s.Mode == schedule.ModeFullOffload || (d.launch != nil && d.launch.Offload))},
		"launchTime":           {BoolValue: ptr.To(d.launchTimeCapable())},
		"hardwareTimestamping": {BoolValue: ptr.To(d.info.HWTxTimestamping)},
		"driver":               {StringValue: ptr.To(d.info.Driver)},
		"txQueues":             {IntValue: ptr.To(int64(s.Queues[d.class].Count))},
	}
	if len(prios) > 0 {
		attrs["priority"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(prios[0]))}
	}
	if w := s.Windows(d.class); len(w) > 0 {
		// The first window; gateWindows says whether there are more.
		attrs["gateOffsetNs"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(w[0].Offset))}
		attrs["gateLengthNs"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(w[0].Length))}
		attrs["gateWindows"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(len(w)))}
	}
	if d.info.SpeedMbps > 0 {
		attrs["linkSpeedMbps"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.info.SpeedMbps))}
	}
	if d.info.PHCIndex >= 0 {
		attrs["ptpClock"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.info.PHCIndex))}
	}
	if d.maxSDU > 0 {
		attrs["maxSDU"] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.maxSDU))}
	}
	if d.info.PCIAddress != "" {
		attrs["pciAddress"] = resourceapi.DeviceAttribute{StringValue: ptr.To(d.info.PCIAddress)}
		if a, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(d.info.PCIAddress); err == nil {
			attrs[a.Name] = a.Value
		}
		if a, err := deviceattribute.GetNUMANodeAttributeByPCIBusID(d.info.PCIAddress, deviceattribute.ScalarAttribute); err == nil {
			attrs[a.Name] = a.Value
		}
	}
	dev := resourceapi.Device{
		Name:                     d.name,
		Attributes:               attrs,
		AllowMultipleAllocations: ptr.To(true),
	}
	if d.bandwidth > 0 {
		dev.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			BandwidthCapacity: bandwidthCapacity(d.bandwidth, d.nic.BandwidthRequest),
		}
	}
	return dev
}

// bandwidthCapacity is the class's bandwidth with its request policy. The API server requires
// min <= default <= max <= capacity, min+step <= capacity, and default and max on the step grid
// from min, so max is the capacity rounded down to the grid and default is capped at max. A
// class slower than min+step gets a fixed policy: every request consumes the whole class.
func bandwidthCapacity(bps uint64, p config.BandwidthRequest) resourceapi.DeviceCapacity {
	value := int64(min(bps, uint64(math.MaxInt64)))
	q := func(v int64) *resource.Quantity { return resource.NewQuantity(v, resource.DecimalSI) }
	def, mn, step := p.Effective()
	d, lo, st := def.Value(), mn.Value(), step.Value()
	if lo+st > value {
		return resourceapi.DeviceCapacity{
			Value:         *q(value),
			RequestPolicy: &resourceapi.CapacityRequestPolicy{Default: q(value), ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: q(value)}},
		}
	}
	hi := lo + (value-lo)/st*st
	if d > hi {
		d = hi
	}
	return resourceapi.DeviceCapacity{
		Value: *q(value),
		RequestPolicy: &resourceapi.CapacityRequestPolicy{
			Default:    q(d),
			ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: q(lo), Max: q(hi), Step: q(st)},
		},
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
