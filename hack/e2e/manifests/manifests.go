// Package manifests derives the variants of deployments/ that the e2e cluster
// installs where the shipped files do not fit its node.
package manifests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ConfigMapFile is the node config that deployments/ ships.
const ConfigMapFile = "20-configmap.yaml"

// ExternalSchedule returns deployments/20-configmap.yaml with
// `scheduleOwner: external` on every NIC: the driver then publishes the
// classes of the configured schedule and restores priorities, but never
// touches the NIC's qdiscs. It is what an admin whose NIC is scheduled by
// something else (or whose kernel has no taprio) applies instead of the
// shipped file; the e2e uses it where the node kernel has no taprio.
func ExternalSchedule(repo string) (string, error) {
	b, err := os.ReadFile(filepath.Join(repo, "deployments", ConfigMapFile))
	if err != nil {
		return "", err
	}
	if bytes.Contains(b, []byte("scheduleOwner:")) {
		return "", fmt.Errorf("deployments/%s already sets scheduleOwner: update hack/e2e/manifests", ConfigMapFile)
	}
	var out []string
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		out = append(out, line)
		trimmed := strings.TrimLeft(line, " ")
		if strings.HasPrefix(trimmed, "claimableClasses:") {
			out = append(out, line[:len(line)-len(trimmed)]+"scheduleOwner: external")
			n++
		}
	}
	if n == 0 {
		return "", fmt.Errorf("deployments/%s: no NIC with claimableClasses to mark scheduleOwner: external", ConfigMapFile)
	}
	return strings.Join(out, "\n"), nil
}

// WithExternalSchedule writes deployments/*.yaml into dir with the node
// config replaced by ExternalSchedule's, for one `kubectl apply -f dir`.
func WithExternalSchedule(repo, dir string) error {
	cm, err := ExternalSchedule(repo)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(repo, "deployments", "*.yaml"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if filepath.Base(f) == ConfigMapFile {
			b = []byte(cm)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
