package v1alpha1

import (
	"fmt"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
)

// MaxPriorityMappings is the most entries a priorityMap may have: one per socket priority
// (0..15) the NIC maps to a traffic class.
const MaxPriorityMappings = 16

// MaxInterfaceNameLength is the longest pod interface name: IFNAMSIZ (16) less the NUL.
const MaxInterfaceNameLength = 15

// maxValueLength is how much of a bad string value an error message quotes. Parameters come
// from users and can be 10 KiB (more without the API server's cap); the message goes into the
// claim's PrepareResult and an Event, where only the beginning helps.
const maxValueLength = 128

// Decode parses one opaque parameters object strictly: the apiVersion and kind must be this
// API's, and unknown, duplicate or wrongly-cased fields are errors. The result is validated; path
// names where the object came from in error messages. The error lists at most
// MaxReportedErrors problems (see Aggregate).
func Decode(raw []byte, path *field.Path) (*TSNConfig, error) {
	if len(raw) == 0 {
		return nil, field.Required(path, "opaque parameters are empty")
	}
	var c TSNConfig
	strict, err := sigsjson.UnmarshalStrict(raw, &c)
	if err != nil {
		// The decoder's message may quote the input too (a 10 KiB number literal).
		return nil, field.Invalid(path, shorten(string(raw)), "cannot decode: "+shortenTo(err.Error(), maxDecodeMessage))
	}
	if len(strict) > 0 {
		errs := make([]error, 0, len(strict))
		for _, e := range strict {
			errs = append(errs, field.Invalid(path, "", e.Error()))
		}
		return nil, Aggregate(errs)
	}
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(path.Child("apiVersion"), shorten(c.APIVersion), []string{APIVersion}))
	}
	if c.Kind != Kind {
		errs = append(errs, field.NotSupported(path.Child("kind"), shorten(c.Kind), []string{Kind}))
	}
	errs = append(errs, c.Validate(path)...)
	if len(errs) > 0 {
		return nil, Aggregate([]error{errs.ToAggregate()})
	}
	return &c, nil
}

// Validate checks the fields that do not depend on the allocation.
func (c *TSNConfig) Validate(path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if n := len(c.PriorityMap); n > MaxPriorityMappings {
		// Entries beyond the cap are not looked at: checking thousands of them only to report
		// thousands of errors is what a hostile claim wants.
		errs = append(errs, field.TooMany(path.Child("priorityMap"), n, MaxPriorityMappings))
	} else {
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
					errs = append(errs, field.Invalid(p.Child("request"), shorten(m.Request), msg))
				}
			}
		}
	}
	if c.Ungranted != nil {
		switch *c.Ungranted {
		case UngrantedDemote, UngrantedDrop:
		default:
			errs = append(errs, field.NotSupported(path.Child("ungranted"), UngrantedAction(shorten(string(*c.Ungranted))),
				[]UngrantedAction{UngrantedDemote, UngrantedDrop}))
		}
	}
	if c.InterfaceName != nil {
		if n := *c.InterfaceName; !validInterfaceName(n) {
			errs = append(errs, field.Invalid(path.Child("interfaceName"), shorten(n),
				"must be a network interface name: 1-15 bytes, not \".\" or \"..\", without '/', ':', whitespace or control characters"))
		}
	}
	return errs
}

// validInterfaceName applies the kernel's rules for a link name (dev_valid_name: not empty, "."
// or "..", shorter than IFNAMSIZ, no '/', ':' or whitespace) and also refuses control
// characters: the name reaches C strings and netlink, where a NUL ends it early ("eth0\x00x" would
// name eth0) and other control bytes only make logs lie.
func validInterfaceName(n string) bool {
	if n == "" || len(n) > MaxInterfaceNameLength || n == "." || n == ".." {
		return false
	}
	for i := 0; i < len(n); i++ {
		b := n[i]
		if b < 0x21 || b == 0x7f || b == '/' || b == ':' {
			return false
		}
	}
	return true
}

// maxDecodeMessage bounds the JSON decoder's message in an error.
const maxDecodeMessage = 256

// shorten cuts a user's string for quoting in an error message.
func shorten(s string) string { return shortenTo(s, maxValueLength) }

func shortenTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", s[:cut], len(s))
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
