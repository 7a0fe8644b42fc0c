package v1alpha1

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

var path = field.NewPath("spec", "devices", "config").Index(1).Child("opaque", "parameters")

func TestDecodeValid(t *testing.T) {
	c, err := Decode([]byte(`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig",
		"priorityMap":[{"appPriority":5,"request":"ctrl"},{"appPriority":6}],
		"ungranted":"drop","launchTime":true,"interfaceName":"net1"}`), path)
	if err != nil {
		t.Fatal(err)
	}
	if c.EffectiveUngranted() != UngrantedDrop || !c.EffectiveLaunchTime() || c.EffectiveInterfaceName() != "net1" || len(c.PriorityMap) != 2 || c.PriorityMap[0].Request != "ctrl" {
		t.Errorf("decoded %+v", c)
	}
	d, err := Decode([]byte(`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig"}`), path)
	if err != nil {
		t.Fatal(err)
	}
	if d.EffectiveUngranted() != UngrantedDemote || d.EffectiveLaunchTime() || d.EffectiveInterfaceName() != "eth0" {
		t.Errorf("defaults %+v", d)
	}
}

const ifnameMsg = `must be a network interface name: 1-15 bytes, not "." or "..", without '/', ':', whitespace or control characters`

func TestDecodeErrors(t *testing.T) {
	const p = "spec.devices.config[1].opaque.parameters"
	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, p + ": Required value: opaque parameters are empty"},
		{"not json", `{`, p + `: Invalid value: "{": cannot decode: unexpected end of JSON input`},
		{"unknown field", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorities":[1]}`,
			p + `: Invalid value: "": unknown field "priorities"`},
		{"unknown nested field", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":1,"class":2}]}`,
			p + `: Invalid value: "": unknown field "priorityMap[0].class"`},
		{"wrong case", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","LaunchTime":true}`,
			p + `: Invalid value: "": unknown field "LaunchTime"`},
		{"duplicate field", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"drop","ungranted":"demote"}`,
			p + `: Invalid value: "": duplicate field "ungranted"`},
		{"wrong type", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","launchTime":"yes"}`,
			p + `: Invalid value: "{\"apiVersion\":\"tsn.dra.io/v1alpha1\",\"kind\":\"TSNConfig\",\"launchTime\":\"yes\"}": cannot decode: json: cannot unmarshal string into Go struct field TSNConfig.launchTime of type bool`},
		{"wrong version", `{"apiVersion":"tsn.dra.io/v1","kind":"TSNConfig"}`,
			p + `.apiVersion: Unsupported value: "tsn.dra.io/v1": supported values: "tsn.dra.io/v1alpha1"`},
		{"wrong kind", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"GpuConfig"}`,
			p + `.kind: Unsupported value: "GpuConfig": supported values: "TSNConfig"`},
		{"priority range", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":16}]}`,
			p + `.priorityMap[0].appPriority: Invalid value: 16: must be between 0 and 15`},
		{"duplicate priority", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":3},{"appPriority":3}]}`,
			p + `.priorityMap[1].appPriority: Duplicate value: "3 (also priorityMap[0])"`},
		{"bad request name", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":3,"request":"Big_Req"}]}`,
			p + `.priorityMap[0].request: Invalid value: "Big_Req": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"ungranted", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"allow"}`,
			p + `.ungranted: Unsupported value: "allow": supported values: "demote", "drop"`},
		{"interface name", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"eth0:1"}`,
			p + `.interfaceName: Invalid value: "eth0:1": ` + ifnameMsg},
		{"NUL in interface name", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"eth0\u0000x"}`,
			p + `.interfaceName: Invalid value: "eth0\x00x": ` + ifnameMsg},
		{"interface name too long", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","interfaceName":"` + strings.Repeat("e", 300) + `"}`,
			p + `.interfaceName: Invalid value: "` + strings.Repeat("e", 128) + `... (300 bytes)": ` + ifnameMsg},
		{"too many mappings", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[` +
			strings.TrimSuffix(strings.Repeat(`{"appPriority":1},`, 17), ",") + `]}`,
			p + `.priorityMap: Too many: 17: must have at most 16 items`},
		{"first errors and a count", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[` +
			strings.TrimSuffix(strings.Repeat(`{"appPriority":1},`, 16), ",") + `]}`,
			"[" + p + `.priorityMap[1].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				p + `.priorityMap[2].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				p + `.priorityMap[3].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				p + `.priorityMap[4].appPriority: Duplicate value: "1 (also priorityMap[0])", ` +
				p + `.priorityMap[5].appPriority: Duplicate value: "1 (also priorityMap[0])", and 10 more]`},
		{"unknown fields counted", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[` +
			strings.TrimSuffix(strings.Repeat(`{"x":1},`, 1000), ",") + `]}`,
			"[" + p + `: Invalid value: "": unknown field "priorityMap[0].x", ` +
				p + `: Invalid value: "": unknown field "priorityMap[1].x", ` +
				p + `: Invalid value: "": unknown field "priorityMap[2].x", ` +
				p + `: Invalid value: "": unknown field "priorityMap[3].x", ` +
				p + `: Invalid value: "": unknown field "priorityMap[4].x", and 95 more]`}, // sigs.k8s.io/json stops at 100
		{"long raw input quoted in part", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","launchTime":"` + strings.Repeat("y", 200) + `"}`,
			p + `: Invalid value: "{\"apiVersion\":\"tsn.dra.io/v1alpha1\",\"kind\":\"TSNConfig\",\"launchTime\":\"` + strings.Repeat("y", 128-69) +
				`... (271 bytes)": cannot decode: json: cannot unmarshal string into Go struct field TSNConfig.launchTime of type bool`},
		{"decoder message cut", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":` + strings.Repeat("9", 300) + `}]}`,
			p + `: Invalid value: "{\"apiVersion\":\"tsn.dra.io/v1alpha1\",\"kind\":\"TSNConfig\",\"priorityMap\":[{\"appPriority\":` + strings.Repeat("9", 128-85) +
				`... (388 bytes)": cannot decode: json: cannot unmarshal number ` + strings.Repeat("9", 256-30) + `... (403 bytes)`},
		{"ungranted quoted in part", `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","ungranted":"` + strings.Repeat("z", 129) + `"}`,
			p + `.ungranted: Unsupported value: "` + strings.Repeat("z", 128) + `... (129 bytes)": supported values: "demote", "drop"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Decode([]byte(tc.in), path)
			if err == nil || c != nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got %q\nwant %q", err.Error(), tc.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	drop, demote := UngrantedDrop, UngrantedDemote
	yes := true
	ifc := "net1"
	class := &TSNConfig{Ungranted: &drop, LaunchTime: &yes, PriorityMap: []PriorityMapping{{AppPriority: 1}}}
	claim := &TSNConfig{Ungranted: &demote, InterfaceName: &ifc}
	class.Merge(claim)
	if class.EffectiveUngranted() != UngrantedDemote || !class.EffectiveLaunchTime() || class.EffectiveInterfaceName() != "net1" || len(class.PriorityMap) != 1 {
		t.Errorf("merged %+v", class)
	}
}

// Without the API server's 10 KiB cap on opaque parameters (an old or misconfigured server), a
// huge map must still be refused at once with a short error.
func TestDecodeHugePriorityMap(t *testing.T) {
	raw := `{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[` +
		strings.TrimSuffix(strings.Repeat(`{"appPriority":1,"request":"Bad_Name"},`, 60000), ",") + `]}`
	start := time.Now()
	_, err := Decode([]byte(raw), path)
	took := time.Since(start)
	const want = "spec.devices.config[1].opaque.parameters.priorityMap: Too many: 60000: must have at most 16 items"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	// Decoding 2.3 MB of JSON takes 50-120 ms here, over 1 s under -race; before the cap it
	// took minutes.
	if took > 10*time.Second {
		t.Errorf("refusing took %v", took)
	}
	t.Logf("%d bytes of parameters refused in %v with a %d-byte error", len(raw), took, len(err.Error()))
}

func TestAggregate(t *testing.T) {
	e := func(i int) error { return fmt.Errorf("e%d", i) }
	var many []error
	for i := 0; i < 12; i++ {
		many = append(many, e(i))
	}
	for _, tc := range []struct {
		name string
		in   []error
		want string
	}{
		{"one", []error{e(1)}, "e1"},
		{"few", []error{e(1), e(2)}, "[e1, e2]"},
		{"duplicates count once", []error{e(1), e(1), e(2)}, "[e1, e2]"},
		{"many", many, "[e0, e1, e2, e3, e4, and 7 more]"},
		// Shortened errors aggregated again (the driver joins the errors of several configs)
		// keep the total.
		{"nested", []error{Aggregate(many), e(20), Aggregate([]error{e(21), field.ErrorList{field.Required(path, "x")}.ToAggregate()})},
			"[e0, e1, e2, e3, e4, and 10 more]"},
		{"nils", []error{nil, nil}, "<nil>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fmt.Sprint(Aggregate(tc.in)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if err := Aggregate(nil); err != nil {
		t.Errorf("Aggregate(nil) = %#v, want nil", err)
	}
}
