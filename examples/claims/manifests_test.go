// Package claims_test checks the example DeviceClasses and claim templates:
// they decode strictly, their opaque TSNConfigs are valid, their CEL compiles
// with the scheduler's DRA CEL environment, names only attributes the driver
// publishes, and selects the devices it says it selects on the shipped node
// config.
package claims_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/scheme"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

const domain = driver.DefaultDriverName

func decodeAll(t *testing.T, pattern string) map[string][]runtime.Object {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests match %s: %v", pattern, err)
	}
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, kjson.SerializerOptions{Yaml: true, Strict: true})
	out := map[string][]runtime.Object{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(data, []byte("\n---\n")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := strict.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out[filepath.Base(f)] = append(out[filepath.Base(f)], obj)
		}
	}
	return out
}

// publishedAttributes reads the attribute names pkg/driver publishes from its source, so an
// attribute renamed there fails this test until the examples follow.
func publishedAttributes(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../../pkg/driver/inventory.go")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`"(\w+)":\s+\{(?:String|Int|Bool)Value`),
		regexp.MustCompile(`attrs\["(\w+)"\]`),
	} {
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			names[m[1]] = true
		}
	}
	for _, want := range []string{"trafficClass", "priority", "gateLengthNs", "cycleTimeNs", "launchTime", "interface"} {
		if !names[want] {
			t.Fatalf("attribute %q not found in pkg/driver/inventory.go (found %v): update this test's parser", want, names)
		}
	}
	return names
}

// shippedDevices builds tsn0's devices from the node config in deployments/, with the
// attributes pkg/driver derives from a schedule (what the CEL here reads).
func shippedDevices(t *testing.T) map[string]dracel.Device {
	t.Helper()
	objs := decodeAll(t, "../../deployments/20-configmap.yaml")
	cm := objs["20-configmap.yaml"][0].(*corev1.ConfigMap)
	cfg, err := config.Parse([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	devs := map[string]dracel.Device{}
	for _, n := range cfg.NICs {
		s := &n.Schedule
		for _, tc := range n.ClaimableClasses {
			prios := s.Priorities(tc)
			w := s.Windows(tc)
			var ps []string
			for _, p := range prios {
				ps = append(ps, strconv.Itoa(p))
			}
			launch := s.Mode == schedule.ModeTxtimeAssist
			if cs := s.Settings(tc); cs != nil && cs.LaunchTime != nil {
				launch = true
			}
			attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				"nic":             {StringValue: ptr.To(n.Name)},
				"interface":       {StringValue: ptr.To(n.Match.InterfaceName)},
				"trafficClass":    {IntValue: ptr.To(int64(tc))},
				"priority":        {IntValue: ptr.To(int64(prios[0]))},
				"priorities":      {StringValue: ptr.To(strings.Join(ps, ","))},
				"cycleTimeNs":     {IntValue: ptr.To(int64(s.Cycle()))},
				"gateOpenPercent": {IntValue: ptr.To(int64(s.OpenShare(tc) * 100))},
				"gateOffsetNs":    {IntValue: ptr.To(int64(w[0].Offset))},
				"gateLengthNs":    {IntValue: ptr.To(int64(w[0].Length))},
				"gateWindows":     {IntValue: ptr.To(int64(len(w)))},
				"mode":            {StringValue: ptr.To(string(s.Mode))},
				"launchTime":      {BoolValue: ptr.To(launch)},
				"hardwareOffload": {BoolValue: ptr.To(false)},
			}
			devs[fmt.Sprintf("%s-tc%d", n.Name, tc)] = dracel.Device{Driver: domain, Attributes: attrs}
		}
	}
	return devs
}

var attrRef = regexp.MustCompile(`device\.attributes\["` + regexp.QuoteMeta(domain) + `"\]\.(\w+)`)

// matching returns the devices that every expression selects.
func matching(t *testing.T, devs map[string]dracel.Device, published map[string]bool, exprs []string) []string {
	t.Helper()
	var out []string
	var compiled []dracel.CompilationResult
	for _, e := range exprs {
		for _, m := range attrRef.FindAllStringSubmatch(e, -1) {
			if !published[m[1]] {
				t.Errorf("CEL %q reads attribute %q, which the driver does not publish", e, m[1])
			}
		}
		r := dracel.GetCompiler(dracel.Features{}).CompileCELExpression(e, dracel.Options{})
		if r.Error != nil {
			t.Fatalf("CEL %q: %v", e, r.Error)
		}
		compiled = append(compiled, r)
	}
	for name, d := range devs {
		all := true
		for _, r := range compiled {
			ok, _, err := r.DeviceMatches(context.Background(), d)
			if err != nil {
				t.Fatalf("CEL %q on %s: %v", r.Expression, name, err)
			}
			all = all && ok
		}
		if all {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func TestExampleClaims(t *testing.T) {
	published := publishedAttributes(t)
	devs := shippedDevices(t)
	objs := decodeAll(t, "*.yaml")
	// The DeviceClasses the examples may use: their own and the one deployments/ installs.
	classes := map[string]*resourceapi.DeviceClass{}
	for _, o := range decodeAll(t, "../../deployments/30-deviceclass.yaml")["30-deviceclass.yaml"] {
		dc := o.(*resourceapi.DeviceClass)
		classes[dc.Name] = dc
	}
	for _, list := range objs {
		for _, o := range list {
			if dc, ok := o.(*resourceapi.DeviceClass); ok {
				classes[dc.Name] = dc
			}
		}
	}
	checkConfig := func(where string, cfgs []resourceapi.DeviceConfiguration) {
		for i, c := range cfgs {
			if c.Opaque == nil || c.Opaque.Driver != domain {
				t.Errorf("%s config[%d]: not an opaque config for %s", where, i, domain)
				continue
			}
			if _, err := v1alpha1.Decode(c.Opaque.Parameters.Raw, field.NewPath("config").Index(i)); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	}
	// What each claim template must select on the shipped config.
	want := map[string][]string{
		"tsn-priority-3":   {"tsn0-tc1"}, // priority 3 -> class 1
		"tsn-window-250us": {"tsn0-tc2"}, // both windows are 300 us, only class 2 has etf
		"tsn-class1-50m":   {"tsn0-tc1"},
	}
	seen := map[string]bool{}
	for file, list := range objs {
		for _, o := range list {
			switch o := o.(type) {
			case *resourceapi.DeviceClass:
				var cfgs []resourceapi.DeviceConfiguration
				for _, c := range o.Spec.Config {
					cfgs = append(cfgs, c.DeviceConfiguration)
				}
				checkConfig(file+" DeviceClass "+o.Name, cfgs)
			case *resourceapi.ResourceClaimTemplate:
				seen[o.Name] = true
				checkConfig(file+" ResourceClaimTemplate "+o.Name, deviceConfigs(o.Spec.Spec.Devices.Config))
				for _, r := range o.Spec.Spec.Devices.Requests {
					dc := classes[r.Exactly.DeviceClassName]
					if dc == nil {
						t.Fatalf("%s: request %s names DeviceClass %q, defined nowhere", file, r.Name, r.Exactly.DeviceClassName)
					}
					var exprs []string
					for _, s := range dc.Spec.Selectors {
						exprs = append(exprs, s.CEL.Expression)
					}
					for _, s := range r.Exactly.Selectors {
						exprs = append(exprs, s.CEL.Expression)
					}
					got := matching(t, devs, published, exprs)
					if !slices.Equal(got, want[o.Name]) {
						t.Errorf("%s: claim template %s selects %v on the shipped config, want %v", file, o.Name, got, want[o.Name])
					}
					if r.Exactly.Capacity == nil {
						continue
					}
					for name := range r.Exactly.Capacity.Requests {
						if name != driver.BandwidthCapacity {
							t.Errorf("%s: capacity %q is not the driver's (%s)", file, name, driver.BandwidthCapacity)
						}
					}
				}
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("claim template %s missing from the examples", name)
		}
	}
}

func deviceConfigs(cs []resourceapi.DeviceClaimConfiguration) []resourceapi.DeviceConfiguration {
	var out []resourceapi.DeviceConfiguration
	for _, c := range cs {
		out = append(out, c.DeviceConfiguration)
	}
	return out
}

// TestKindConfig checks the kind cluster config mounts bpffs on every node and turns NRI on.
func TestKindConfig(t *testing.T) {
	data, err := os.ReadFile("../kind/kind-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Kind  string `json:"kind"`
		Nodes []struct {
			Role        string `json:"role"`
			ExtraMounts []struct {
				HostPath      string `json:"hostPath"`
				ContainerPath string `json:"containerPath"`
			} `json:"extraMounts"`
		} `json:"nodes"`
		ContainerdConfigPatches []string `json:"containerdConfigPatches"`
	}
	if err := yaml.UnmarshalStrict(data, &c, yaml.DisallowUnknownFields); err != nil {
		// kind's own fields not modelled here are fine; only ours must parse.
		if err := yaml.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
	}
	if c.Kind != "Cluster" || len(c.Nodes) == 0 {
		t.Fatalf("not a kind cluster config: %+v", c)
	}
	for i, n := range c.Nodes {
		ok := false
		for _, m := range n.ExtraMounts {
			ok = ok || m.HostPath == "/sys/fs/bpf" && m.ContainerPath == "/sys/fs/bpf"
		}
		if !ok {
			t.Errorf("node %d (%s) does not mount bpffs at /sys/fs/bpf", i, n.Role)
		}
	}
	if !strings.Contains(strings.Join(c.ContainerdConfigPatches, "\n"), `[plugins."io.containerd.nri.v1.nri"]`) {
		t.Errorf("containerd NRI not configured")
	}
}
