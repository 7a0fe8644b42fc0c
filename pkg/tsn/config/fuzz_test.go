package config

import (
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse feeds arbitrary bytes to the node config parser. A node config comes from a
// ConfigMap anyone with edit rights on it can write, and a bad edit must be rejected with an
// error, never crash the daemon. Properties:
//   - Parse never panics, and returns a config or an error, never both or neither;
//   - an accepted config validates again, and survives a round trip through YAML unchanged;
//   - an error names what it was doing (decode or validation).
//
// The committed corpus (testdata/fuzz/FuzzParse) runs with every `go test`; `go test -fuzz
// FuzzParse` explores further (make test-reliability runs it briefly).
func FuzzParse(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte(""))
	f.Add([]byte("apiVersion: tsn.dra.io/v1alpha1\nkind: NodeConfig\nnics: []\n"))
	f.Add([]byte("apiVersion: tsn.dra.io/v1alpha1\nkind: NodeConfig\nnics:\n- name: tsn0\n  match: {interfaceName: tsn0}\n  claimableClasses: [1]\n  schedule: {numTrafficClasses: 2, priorityMap: [0, 1], queues: [\"1@0\", \"1@1\"], gateControlList: [{gateMask: 0x3, interval: 1ms}], clock: CLOCK_TAI, mode: software}\n"))
	f.Add([]byte("apiVersion: tsn.dra.io/v1alpha1\nkind: NodeConfig\nnics:\n- name: tsn0\n  name: tsn1\n"))
	f.Add([]byte("nics: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse returned config %v and error %v", c, err)
		}
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "node config is empty") && !strings.HasPrefix(msg, "decode node config: ") && !strings.HasPrefix(msg, "invalid node config: ") {
				t.Fatalf("error does not say what failed: %q", msg)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal accepted config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("accepted config does not parse after a YAML round trip: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalize(t, c), normalize(t, c2)) {
			t.Fatalf("YAML round trip changed the config:\nbefore %+v\nafter  %+v", c, c2)
		}
	})
}

// normalize re-encodes a config as a generic tree, so that values with several in-memory forms
// for one meaning (resource.Quantity's cached string) compare equal.
func normalize(t *testing.T, c *NodeConfig) any {
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}
