package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const validConfig = `
apiVersion: tsn.dra.io/v1alpha1
kind: NodeConfig
nics:
- name: tsn0
  match: {interfaceName: enp1s0}
  claimableClasses: [1, 2]
  onLastRelease: remove
  bandwidthRequest: {default: 10M, min: 1M, step: 500k}
  schedule:
    numTrafficClasses: 3
    priorityMap: [0, 0, 2, 1]
    queues: ["1@0", "1@1", "1@2"]
    gateControlList:
    - {gateMask: 0x1, interval: 500us}
    - {gateMask: 0x2, interval: 250us}
    - {gateMask: 0x4, interval: 250us}
    clock: CLOCK_TAI
    mode: software
- name: tsn1
  match: {pciAddress: "0000:03:00.0"}
  claimableClasses: [1]
  schedule:
    numTrafficClasses: 2
    priorityMap: [0, 1]
    queues: ["1@0", "1@1"]
    gateControlList:
    - {gateMask: 0x3, interval: 1ms}
    mode: full-offload
`

func TestParseValid(t *testing.T) {
	c, err := Parse([]byte(validConfig))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(c.NICs) != 2 || c.NICs[0].OnLastRelease.Effective() != ReleaseRemove || c.NICs[1].OnLastRelease.Effective() != ReleaseKeep {
		t.Fatalf("unexpected config %+v", c)
	}
	def, min, step := c.NICs[0].BandwidthRequest.Effective()
	if def.Value() != 10_000_000 || min.Value() != 1_000_000 || step.Value() != 500_000 {
		t.Errorf("bandwidth policy %v %v %v", def, min, step)
	}
	def, _, _ = c.NICs[1].BandwidthRequest.Effective()
	if def.Value() != 1_000_000 {
		t.Errorf("default bandwidth %v", def)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string
		want     string
	}{
		{"empty", validConfig, "  \n", "node config is empty"},
		{"unknown field", "  onLastRelease: remove", "  onLastRelease: remove\n  colour: red",
			`decode node config: error unmarshaling JSON: while decoding JSON: json: unknown field "colour"`},
		{"wrong kind", "kind: NodeConfig", "kind: Config",
			`invalid node config: kind: Unsupported value: "Config": supported values: "NodeConfig"`},
		{"wrong version", "apiVersion: tsn.dra.io/v1alpha1", "apiVersion: v1",
			`invalid node config: apiVersion: Unsupported value: "v1": supported values: "tsn.dra.io/v1alpha1"`},
		{"no name", "- name: tsn1\n", "- name: \"\"\n",
			"invalid node config: nics[1].name: Required value: names the NIC in device names"},
		{"bad name", "- name: tsn1\n", "- name: TSN_1\n",
			`invalid node config: nics[1].name: Invalid value: "TSN_1": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"long name", "- name: tsn1\n", "- name: a-very-long-nic-name-indeed\n",
			`invalid node config: nics[1].name: Too long: may not be more than 20 bytes`},
		{"duplicate name", "- name: tsn1\n", "- name: tsn0\n",
			`invalid node config: nics[1].name: Duplicate value: "tsn0 (also nics[0])"`},
		{"duplicate match", `match: {pciAddress: "0000:03:00.0"}`, "match: {interfaceName: enp1s0}",
			`invalid node config: nics[1].match: Duplicate value: "same interface as nics[0]"`},
		{"two selectors", "match: {interfaceName: enp1s0}", "match: {interfaceName: enp1s0, driver: igc}",
			"invalid node config: nics[0].match: Invalid value: 2: set exactly one of interfaceName, pciAddress, driver"},
		{"no selector", "match: {interfaceName: enp1s0}", "match: {}",
			"invalid node config: nics[0].match: Invalid value: 0: set exactly one of interfaceName, pciAddress, driver"},
		{"bad interface name", "match: {interfaceName: enp1s0}", "match: {interfaceName: enp1s0-too-long-name}",
			`invalid node config: nics[0].match.interfaceName: Invalid value: "enp1s0-too-long-name": must be shorter than 16 characters`},
		{"bad pci address", `pciAddress: "0000:03:00.0"`, `pciAddress: "03:00.0"`,
			`invalid node config: nics[1].match.pciAddress: Invalid value: "03:00.0": must be a PCI address like 0000:01:00.0 (lower-case hex)`},
		{"schedule error is prefixed", "interval: 1ms", "interval: 0s",
			`invalid node config: nics[1].schedule.gateControlList[0].interval: Invalid value: "0s": must be positive`},
		{"no claimable classes", "claimableClasses: [1]\n", "claimableClasses: []\n",
			"invalid node config: nics[1].claimableClasses: Required value: list the traffic classes pods may claim"},
		{"claimable class out of range", "claimableClasses: [1]\n", "claimableClasses: [2]\n",
			"invalid node config: nics[1].claimableClasses[0]: Invalid value: 2: must be a traffic class between 0 and 1"},
		{"claimable class twice", "claimableClasses: [1, 2]", "claimableClasses: [1, 1]",
			"invalid node config: nics[0].claimableClasses[1]: Duplicate value: 1"},
		{"claimable class never open", "- {gateMask: 0x2, interval: 250us}", "- {gateMask: 0x1, interval: 250us}",
			"invalid node config: nics[0].claimableClasses[0]: Invalid value: 1: the gate control list never opens this class's gate"},
		{"release policy", "onLastRelease: remove", "onLastRelease: delete",
			`invalid node config: nics[0].onLastRelease: Unsupported value: "delete": supported values: "keep", "remove"`},
		{"schedule owner", "onLastRelease: remove", "onLastRelease: remove\n  scheduleOwner: nobody",
			`invalid node config: nics[0].scheduleOwner: Unsupported value: "nobody": supported values: "driver", "external"`},
		{"zero step", "step: 500k", "step: 0",
			`invalid node config: nics[0].bandwidthRequest.step: Invalid value: "0": must be positive`},
		{"default off the step grid", "default: 10M, min: 1M, step: 500k", "default: 10200k, min: 1M, step: 500k",
			`invalid node config: nics[0].bandwidthRequest.default: Invalid value: "10200k": must be min (1M) plus a multiple of step (500k)`},
		{"fractional bandwidth", "step: 500k", "step: 500m",
			`invalid node config: nics[0].bandwidthRequest.step: Invalid value: "500m": must be a whole number of bits per second`},
		{"default below min", "default: 10M, min: 1M", "default: 1M, min: 10M",
			`invalid node config: nics[0].bandwidthRequest.default: Invalid value: "1M": must not be below min (10M)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := validConfig
			if tc.old == validConfig {
				in = tc.new
			} else {
				if !strings.Contains(in, tc.old) {
					t.Fatalf("test bug: %q not in config", tc.old)
				}
				in = strings.Replace(in, tc.old, tc.new, 1)
			}
			c, err := Parse([]byte(in))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if c != nil {
				t.Errorf("a config was returned with the error")
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got %q\nwant %q", err.Error(), tc.want)
			}
		})
	}
}

func TestMultipleErrorsAllReported(t *testing.T) {
	in := strings.Replace(validConfig, "kind: NodeConfig", "kind: X", 1)
	in = strings.Replace(in, "claimableClasses: [1]\n", "claimableClasses: [5]\n", 1)
	_, err := Parse([]byte(in))
	if err == nil || !strings.Contains(err.Error(), "kind: Unsupported") || !strings.Contains(err.Error(), "nics[1].claimableClasses[0]") {
		t.Errorf("want both errors, got %v", err)
	}
}

func TestWatcherKeepsOldConfigOnBadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(validConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWatcher(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Errorf("missing file accepted")
	}
	w, err := NewWatcher(path)
	if err != nil {
		t.Fatal(err)
	}
	first := w.Current()

	changes := make(chan *NodeConfig, 4)
	errs := make(chan error, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx, 10*time.Millisecond, func(c *NodeConfig) { changes <- c }, func(err error) { errs <- err })

	// A bad file is reported once and changes nothing.
	if err := os.WriteFile(path, []byte(strings.Replace(validConfig, "mode: software", "mode: fast", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), `nics[0].schedule.mode: Unsupported value: "fast"`) {
			t.Errorf("error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bad file not reported")
	}
	if w.Current() != first {
		t.Errorf("bad file replaced the config")
	}
	// A valid change is taken.
	if err := os.WriteFile(path, []byte(strings.Replace(validConfig, "name: tsn1", "name: tsn9", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-changes:
		if c.NICs[1].Name != "tsn9" || w.Current() != c {
			t.Errorf("new config not current: %+v", c.NICs[1].Name)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("change not seen")
	}
	select {
	case err := <-errs:
		t.Errorf("unexpected error %v", err)
	default:
	}
	// Removing the file keeps the config too.
	os.Remove(path)
	if changed, err := w.Reload(); changed || err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reload of a missing file: %v %v", changed, err)
	}
	if w.Current().NICs[1].Name != "tsn9" {
		t.Errorf("config lost")
	}
}
