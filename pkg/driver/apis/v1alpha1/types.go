// Package v1alpha1 is the opaque configuration API of the driver (group tsn.dra.io, version
// v1alpha1). A DeviceClass or a ResourceClaim carries a TSNConfig in
// spec.config[].opaque.parameters to say how the pod's traffic meets the traffic classes it was
// granted.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group, Version and Kind of the configuration.
const (
	GroupName  = "tsn.dra.io"
	Version    = "v1alpha1"
	APIVersion = GroupName + "/" + Version
	Kind       = "TSNConfig"
)

// TSNConfig says how a pod uses the traffic classes it claimed. Every field is optional; a
// DeviceClass's config is applied first and a claim's config overrides the fields it sets.
type TSNConfig struct {
	metav1.TypeMeta `json:",inline"`

	// PriorityMap lists the socket priorities the application sets and the granted device (by
	// request name) their packets belong to. The driver rewrites each such priority to one that the
	// NIC maps to the granted traffic class. Without a map, the application must use the NIC's own
	// priorities of the granted classes, which pass unchanged.
	PriorityMap []PriorityMapping `json:"priorityMap,omitempty"`
	// Ungranted is what happens to packets whose priority belongs to no granted class:
	// "demote" (default) sends them as best effort (priority 0) and counts them, "drop" drops and
	// counts them.
	Ungranted *UngrantedAction `json:"ungranted,omitempty"`
	// LaunchTime says the application sets launch times (SO_TXTIME); the granted classes must
	// then have launch time (etf) configured on the node, or the schedule must run txtime-assist.
	LaunchTime *bool `json:"launchTime,omitempty"`
	// InterfaceName is the pod's network interface whose traffic is handled. Default "eth0".
	InterfaceName *string `json:"interfaceName,omitempty"`
}

// PriorityMapping maps one application priority onto a granted device.
type PriorityMapping struct {
	// AppPriority is the socket priority (SO_PRIORITY) the application sets, 0..15.
	AppPriority int `json:"appPriority"`
	// Request names the claim's request whose device (traffic class) the packets use. It may be
	// omitted when the claim was granted exactly one device of this driver.
	Request string `json:"request,omitempty"`
}

// UngrantedAction is what happens to traffic of priorities the pod was not granted.
type UngrantedAction string

const (
	// UngrantedDemote sends the packet as best effort (priority 0).
	UngrantedDemote UngrantedAction = "demote"
	// UngrantedDrop drops the packet.
	UngrantedDrop UngrantedAction = "drop"
)

// DefaultInterfaceName is the pod interface used when a config names none.
const DefaultInterfaceName = "eth0"

// EffectiveUngranted returns the action with the default applied.
func (c *TSNConfig) EffectiveUngranted() UngrantedAction {
	if c.Ungranted == nil {
		return UngrantedDemote
	}
	return *c.Ungranted
}

// EffectiveInterfaceName returns the interface name with the default applied.
func (c *TSNConfig) EffectiveInterfaceName() string {
	if c.InterfaceName == nil {
		return DefaultInterfaceName
	}
	return *c.InterfaceName
}

// EffectiveLaunchTime returns LaunchTime with the default (false) applied.
func (c *TSNConfig) EffectiveLaunchTime() bool {
	return c.LaunchTime != nil && *c.LaunchTime
}
