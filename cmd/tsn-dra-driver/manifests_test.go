package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// TestDeploymentManifests decodes every object in deployments/ strictly and checks that the
// pieces agree: the shipped node config and DeviceClass config are valid, and RBAC, DaemonSet
// and DeviceClass use the default driver name.
func TestDeploymentManifests(t *testing.T) {
	files, err := filepath.Glob("../../deployments/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, kjson.SerializerOptions{Yaml: true, Strict: true})
	var objs []runtime.Object
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
			objs = append(objs, obj)
		}
	}
	seen := map[string]bool{}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			seen["ConfigMap"] = true
			if _, err := config.Parse([]byte(o.Data["config.yaml"])); err != nil {
				t.Errorf("shipped node config: %v", err)
			}
		case *resourceapi.DeviceClass:
			seen["DeviceClass"] = true
			if o.Name != driver.DefaultDriverName || !strings.Contains(o.Spec.Selectors[0].CEL.Expression, `"`+driver.DefaultDriverName+`"`) {
				t.Errorf("DeviceClass %s selects %q", o.Name, o.Spec.Selectors[0].CEL.Expression)
			}
			for i, c := range o.Spec.Config {
				if _, err := v1alpha1.Decode(c.Opaque.Parameters.Raw, field.NewPath("spec", "config").Index(i)); err != nil {
					t.Errorf("DeviceClass config: %v", err)
				}
			}
		case *rbacv1.ClusterRole:
			seen["ClusterRole"] = true
			found := false
			for _, r := range o.Rules {
				if slices.Contains(r.Resources, "resourceclaims/driver") {
					found = slices.Equal(r.ResourceNames, []string{driver.DefaultDriverName}) && slices.Contains(r.Verbs, "associated-node:patch")
				}
			}
			if !found {
				t.Errorf("ClusterRole lacks resourceclaims/driver associated-node:patch for %s", driver.DefaultDriverName)
			}
		case *appsv1.DaemonSet:
			seen["DaemonSet"] = true
			c := o.Spec.Template.Spec.Containers[0]
			if !slices.Contains(c.Args, "--driver-name="+driver.DefaultDriverName) || c.Image != "tsn-dra-driver:dev" || !o.Spec.Template.Spec.HostNetwork {
				t.Errorf("DaemonSet container %+v", c)
			}
		}
	}
	for _, k := range []string{"ConfigMap", "DeviceClass", "ClusterRole", "DaemonSet"} {
		if !seen[k] {
			t.Errorf("no %s in deployments/", k)
		}
	}
}
