// Package helm_test checks the Helm chart in tsn-dra-driver/: its files parse,
// and, where a helm binary is available, that its default rendering is the same
// set of objects as deployments/*.yaml (so `kubectl apply -f deployments/` and
// `helm install` install the same thing) and that values reach the objects.
package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

const chart = "tsn-dra-driver"

// HelmVersion is the helm release `make helm` installs; keep in step with the Makefile.
const helmCache = "/var/cache/tsn-dra-driver/helm-v4.3.1/helm"

// TestChartFiles parses Chart.yaml, values.yaml (its node config must be valid) and every
// template (with stand-ins for helm's functions: this checks syntax, not output).
func TestChartFiles(t *testing.T) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Name       string `json:"name"`
		Version    string `json:"version"`
	}
	readYAML(t, filepath.Join(chart, "Chart.yaml"), &meta)
	if meta.APIVersion != "v2" || meta.Name != chart || meta.Version == "" {
		t.Errorf("Chart.yaml: %+v", meta)
	}
	var values map[string]any
	readYAML(t, filepath.Join(chart, "values.yaml"), &values)
	nc, err := json.Marshal(values["nodeConfig"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(nc); err != nil {
		t.Errorf("values.yaml nodeConfig: %v", err)
	}
	stub := func(...any) string { return "" }
	funcs := template.FuncMap{"include": stub, "toYaml": stub, "nindent": stub, "indent": stub, "quote": stub, "dir": stub, "default": stub}
	files, _ := filepath.Glob(filepath.Join(chart, "templates", "*"))
	if len(files) < 5 {
		t.Fatalf("templates: %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := template.New(filepath.Base(f)).Funcs(funcs).Parse(string(data)); err != nil {
			t.Errorf("%v", err)
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if _, err := os.Stat(helmCache); err == nil {
		return helmCache
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	t.Skipf("no helm binary (run `make helm`, or set HELM): rendering not checked")
	return ""
}

// objects splits a multi-document YAML stream into objects keyed "Kind/namespace/name", with the
// ConfigMap's config.yaml parsed so formatting and comments do not count.
func objects(t *testing.T, stream []byte) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, doc := range bytes.Split(stream, []byte("\n---")) {
		var o map[string]any
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		if o == nil {
			continue
		}
		md, _ := o["metadata"].(map[string]any)
		if data, ok := o["data"].(map[string]any); ok && o["kind"] == "ConfigMap" {
			if s, ok := data["config.yaml"].(string); ok {
				var parsed any
				if err := yaml.Unmarshal([]byte(s), &parsed); err != nil {
					t.Fatalf("ConfigMap config.yaml: %v", err)
				}
				data["config.yaml"] = parsed
			}
		}
		key := fmt.Sprintf("%v/%v/%v", o["kind"], md["namespace"], md["name"])
		if _, dup := out[key]; dup {
			t.Fatalf("two objects %s", key)
		}
		out[key] = o
	}
	return out
}

func render(t *testing.T, helm string, args ...string) map[string]map[string]any {
	t.Helper()
	cmd := exec.Command(helm, append([]string{"template", "tsn-dra-driver", chart}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	return objects(t, out)
}

func TestChartRendersDeployments(t *testing.T) {
	helm := helmBinary(t)
	if out, err := exec.Command(helm, "lint", "--strict", chart).CombinedOutput(); err != nil && !strings.Contains(string(out), "icon is recommended") {
		t.Errorf("helm lint --strict: %v\n%s", err, out)
	}
	got := render(t, helm)
	files, _ := filepath.Glob("../*.yaml")
	var all []byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(append(all, data...), []byte("\n---\n")...)
	}
	want := objects(t, all)
	keys := func(m map[string]map[string]any) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		sort.Strings(k)
		return k
	}
	if !reflect.DeepEqual(keys(got), keys(want)) {
		t.Fatalf("chart renders %v,\ndeployments/ has %v", keys(got), keys(want))
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			g, _ := yaml.Marshal(got[k])
			wy, _ := yaml.Marshal(w)
			t.Errorf("%s differs:\nchart:\n%s\ndeployments/:\n%s", k, g, wy)
		}
	}

	// Values reach the objects.
	other := render(t, helm, "--set", "driverName=tsn.example.com,namespace.name=tsn-system,image.tag=v1,deviceClass.ungranted=drop")
	ds := other["DaemonSet/tsn-system/tsn-dra-driver"]
	if ds == nil {
		t.Fatalf("no DaemonSet in tsn-system: %v", keys(other))
	}
	b, _ := json.Marshal(ds)
	for _, s := range []string{`--driver-name=tsn.example.com`, `/var/lib/kubelet/plugins/tsn.example.com`, `"image":"tsn-dra-driver:v1"`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("DaemonSet lacks %s", s)
		}
	}
	dc, _ := json.Marshal(other["DeviceClass/<nil>/tsn.example.com"])
	if !strings.Contains(string(dc), `device.driver == \"tsn.example.com\"`) || !strings.Contains(string(dc), `"ungranted":"drop"`) {
		t.Errorf("DeviceClass: %s", dc)
	}
	cr, _ := json.Marshal(other["ClusterRole/<nil>/tsn-dra-driver"])
	if !strings.Contains(string(cr), `"resourceNames":["tsn.example.com"]`) {
		t.Errorf("ClusterRole: %s", cr)
	}
}
