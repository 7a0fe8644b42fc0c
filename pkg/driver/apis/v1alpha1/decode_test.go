package v1alpha1

import (
	"testing"

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
			p + `.interfaceName: Invalid value: "eth0:1": must be a network interface name (1-15 characters, no '/', ':' or whitespace)`},
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
