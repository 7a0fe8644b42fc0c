package v1alpha1

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// FuzzDecode feeds arbitrary bytes to the claim parameter decoder. Opaque parameters come from
// any user who can create a ResourceClaim, so they are hostile input: the decoder must reject
// what it does not understand with an error that names the field path, and never panic.
// Properties:
//   - Decode never panics, and returns a config or an error, never both or neither;
//   - every error names the path it was given (so the claim's user sees where) and is short;
//   - an accepted config validates again and survives a JSON round trip unchanged.
//
// The committed corpus (testdata/fuzz/FuzzDecode) runs with every `go test`.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig"}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":5},{"appPriority":6,"request":"tsn"}],"ungranted":"drop","launchTime":true,"interfaceName":"net1"}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","bogus":1}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":-1},{"appPriority":99999999999999999999}]}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"../../etc"}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"eth0\u0000x"}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","Ungranted":"drop","ungranted":"demote"}`,
		`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":null}`,
		`[]`, `null`, ``, `{"kind":"TSNConfig","kind":"TSNConfig"}`,
	} {
		f.Add([]byte(s))
	}
	path := field.NewPath("status", "allocation", "devices", "config").Index(0).Child("opaque", "parameters")
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Decode(raw, path)
		if (c == nil) == (err == nil) {
			t.Fatalf("Decode returned config %v and error %v", c, err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), path.String()) {
				t.Fatalf("error does not name the field path %s: %q", path, err)
			}
			// The message goes into a PrepareResult and an Event: at most MaxReportedErrors
			// problems, each quoting a bounded part of the input.
			if n := len(err.Error()); n > 8<<10 {
				t.Fatalf("error is %d bytes long", n)
			}
			return
		}
		if errs := c.Validate(path); len(errs) > 0 {
			t.Fatalf("accepted config fails validation: %v", errs)
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal accepted config: %v", err)
		}
		c2, err := Decode(out, path)
		if err != nil {
			t.Fatalf("accepted config does not decode after a JSON round trip: %v\n%s", err, out)
		}
		// An empty priorityMap encodes as none (omitempty); both map nothing.
		if len(c.PriorityMap) == 0 && len(c2.PriorityMap) == 0 {
			c.PriorityMap, c2.PriorityMap = nil, nil
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("JSON round trip changed the config:\nbefore %+v\nafter  %+v", c, c2)
		}
		// Merging onto an accepted config keeps it valid.
		base := &TSNConfig{TypeMeta: c.TypeMeta}
		base.Merge(c)
		if errs := base.Validate(path); len(errs) > 0 {
			t.Fatalf("merged config fails validation: %v", errs)
		}
	})
}
