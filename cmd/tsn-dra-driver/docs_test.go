package main

import (
	"flag"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/apis/v1alpha1"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/schedule"
)

const configDoc = "../../docs/configuration.md"

// TestConfigurationDocFlags checks the flag table of docs/configuration.md
// against the flags the daemon defines: every flag is listed with its
// default, and every listed flag exists.
func TestConfigurationDocFlags(t *testing.T) {
	doc, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	// | `--name` | `default` | ... |   (an empty default cell, or prose, is allowed)
	row := regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\| ([^|]*)\\|")
	documented := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = strings.TrimSpace(m[2])
	}
	fs := flag.NewFlagSet("tsn-dra-driver", flag.ContinueOnError)
	registerFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		cell, ok := documented[f.Name]
		if !ok {
			t.Errorf("flag --%s (default %q) is not in the flag table of %s", f.Name, f.DefValue, configDoc)
			return
		}
		delete(documented, f.Name)
		// A literal default in the doc must be the real one; prose
		// ("in-cluster", "$NODE_NAME", ".../<driver-name>") describes an
		// empty or derived default.
		if strings.HasPrefix(cell, "`") && f.DefValue != "" {
			if want := "`" + f.DefValue + "`"; cell != want {
				t.Errorf("flag --%s: %s says default %s, the code %s", f.Name, configDoc, cell, want)
			}
		}
	})
	for name := range documented {
		t.Errorf("%s lists --%s, which the daemon does not define", configDoc, name)
	}
}

// TestConfigurationDocFields checks that every field of the node config and
// of the claim config (their JSON names) is described in
// docs/configuration.md.
func TestConfigurationDocFields(t *testing.T) {
	doc, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{config.NodeConfig{}, schedule.Schedule{}, v1alpha1.TSNConfig{}} {
		for _, name := range jsonFields(reflect.TypeOf(v), map[reflect.Type]bool{}) {
			if !strings.Contains(string(doc), name) {
				t.Errorf("%s: field %q (%T) is not described", configDoc, name, v)
			}
		}
	}
}

// jsonFields returns the JSON names of t's fields and of the structs it holds.
func jsonFields(t reflect.Type, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] || t.PkgPath() == "" || !strings.Contains(t.PkgPath(), "tsn-dra-driver") {
		return nil
	}
	seen[t] = true
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name != "" {
			out = append(out, name)
		}
		out = append(out, jsonFields(f.Type, seen)...)
	}
	return out
}
