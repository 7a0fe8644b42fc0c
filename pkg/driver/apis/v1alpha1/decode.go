package v1alpha1

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
)

// Decode parses one opaque parameters object strictly: the apiVersion and kind must be this
// API's, and unknown, duplicate or wrongly-cased fields are errors. The result is validated; path
// names where the object came from in error messages.
func Decode(raw []byte, path *field.Path) (*TSNConfig, error) {
	if len(raw) == 0 {
		return nil, field.Required(path, "opaque parameters are empty")
	}
	var c TSNConfig
	strict, err := sigsjson.UnmarshalStrict(raw, &c)
	if err != nil {
		return nil, field.Invalid(path, string(raw), fmt.Sprintf("cannot decode: %v", err))
	}
	if len(strict) > 0 {
		var errs field.ErrorList
		for _, e := range strict {
			errs = append(errs, field.Invalid(path, "", e.Error()))
		}
		return nil, errs.ToAggregate()
	}
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(path.Child("apiVersion"), c.APIVersion, []string{APIVersion}))
	}
	if c.Kind != Kind {
		errs = append(errs, field.NotSupported(path.Child("kind"), c.Kind, []string{Kind}))
	}
	errs = append(errs, c.Validate(path)...)
	if len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	return &c, nil
}

// Validate checks the fields that do not depend on the allocation.
func (c *TSNConfig) Validate(path *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[int]int{}
	for i, m := range c.PriorityMap {
		p := path.Child("priorityMap").Index(i)
		if m.AppPriority < 0 || m.AppPriority > 15 {
			errs = append(errs, field.Invalid(p.Child("appPriority"), m.AppPriority, "must be between 0 and 15"))
		} else if j, dup := seen[m.AppPriority]; dup {
			errs = append(errs, field.Duplicate(p.Child("appPriority"), fmt.Sprintf("%d (also priorityMap[%d])", m.AppPriority, j)))
		} else {
			seen[m.AppPriority] = i
		}
		if m.Request != "" {
			for _, msg := range validation.IsDNS1123Label(m.Request) {
				errs = append(errs, field.Invalid(p.Child("request"), m.Request, msg))
			}
		}
	}
	if c.Ungranted != nil {
		switch *c.Ungranted {
		case UngrantedDemote, UngrantedDrop:
		default:
			errs = append(errs, field.NotSupported(path.Child("ungranted"), *c.Ungranted,
				[]UngrantedAction{UngrantedDemote, UngrantedDrop}))
		}
	}
	if c.InterfaceName != nil {
		n := *c.InterfaceName
		if n == "" || len(n) >= 16 || n == "." || n == ".." || containsAny(n, "/: \t\n") {
			errs = append(errs, field.Invalid(path.Child("interfaceName"), n,
				"must be a network interface name (1-15 characters, no '/', ':' or whitespace)"))
		}
	}
	return errs
}

func containsAny(s, chars string) bool {
	for _, r := range s {
		for _, c := range chars {
			if r == c {
				return true
			}
		}
	}
	return false
}

// Merge overlays the fields that o sets onto c (a later config wins field by field; a
// priority map is replaced as a whole).
func (c *TSNConfig) Merge(o *TSNConfig) {
	if o.PriorityMap != nil {
		c.PriorityMap = o.PriorityMap
	}
	if o.Ungranted != nil {
		c.Ungranted = o.Ungranted
	}
	if o.LaunchTime != nil {
		c.LaunchTime = o.LaunchTime
	}
	if o.InterfaceName != nil {
		c.InterfaceName = o.InterfaceName
	}
}
