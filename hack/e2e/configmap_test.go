package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/manifests"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// TestExternalScheduleConfigMap checks, without root or a cluster, that the
// node config the e2e applies where the kernel has no taprio is the shipped
// one with scheduleOwner: external on every NIC, and that the driver's own
// parser accepts it.
func TestExternalScheduleConfigMap(t *testing.T) {
	m, err := manifests.ExternalSchedule("../..")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.UnmarshalStrict([]byte(m), &cm); err != nil {
		t.Fatalf("patched ConfigMap: %v\n%s", err, m)
	}
	if cm.Kind != "ConfigMap" || cm.Metadata.Name != "tsn-dra-driver-config" || cm.Metadata.Namespace != driverNamespace {
		t.Fatalf("patched ConfigMap is %s %s/%s, want ConfigMap %s/tsn-dra-driver-config", cm.Kind, cm.Metadata.Namespace, cm.Metadata.Name, driverNamespace)
	}
	cfg, err := config.Parse([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("the driver rejects the patched node config: %v", err)
	}
	if len(cfg.NICs) == 0 {
		t.Fatal("patched node config has no NIC")
	}
	for _, n := range cfg.NICs {
		if n.ScheduleOwner.Effective() != config.ScheduleOwnerExternal {
			t.Errorf("NIC %s: scheduleOwner %q, want external", n.Name, n.ScheduleOwner)
		}
	}
	shipped, err := configFromFile("../../deployments/" + manifests.ConfigMapFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range shipped.NICs {
		if n.ScheduleOwner.Effective() != config.ScheduleOwnerDriver {
			t.Errorf("shipped deployments/%s: NIC %s has scheduleOwner %q; real clusters default to driver", manifests.ConfigMapFile, n.Name, n.ScheduleOwner)
		}
	}
}

// TestWithExternalSchedule: the directory e2e-cluster -external-schedule
// applies holds every file of deployments/, unchanged but the node config.
func TestWithExternalSchedule(t *testing.T) {
	dir := t.TempDir()
	if err := manifests.WithExternalSchedule("../..", dir); err != nil {
		t.Fatal(err)
	}
	shipped, err := filepath.Glob("../../deployments/*.yaml")
	if err != nil || len(shipped) == 0 {
		t.Fatalf("deployments/*.yaml: %v %v", shipped, err)
	}
	for _, f := range shipped {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		if changed := !bytes.Equal(got, want); changed != (filepath.Base(f) == manifests.ConfigMapFile) {
			t.Errorf("%s: changed %v", filepath.Base(f), changed)
		}
	}
}
