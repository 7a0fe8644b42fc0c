package cluster

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := newPKI(dir, "node-a", net.ParseIP(nodeIP), net.ParseIP(serviceIP))
	if err != nil {
		t.Fatal(err)
	}
	load := func(f string) *x509.Certificate {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	roots := x509.NewCertPool()
	roots.AddCert(load(p.caCert))
	// In-cluster clients reach the API server by the Service's address and
	// name, the forwarder by 127.0.0.1: the serving cert must cover all.
	api := load(p.apiserverCert)
	for _, host := range []string{"127.0.0.1", serviceIP, nodeIP, "kubernetes.default.svc", "localhost"} {
		if _, err := api.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("API server certificate for %s: %v", host, err)
		}
	}
	node := load(p.nodeCert)
	if node.Subject.CommonName != "system:node:node-a" || len(node.Subject.Organization) != 1 || node.Subject.Organization[0] != "system:nodes" {
		t.Errorf("kubelet client certificate subject %v: the Node authorizer needs system:node:<name> in system:nodes", node.Subject)
	}
	if _, err := node.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	if admin := load(p.adminCert); admin.Subject.Organization[0] != "system:masters" {
		t.Errorf("admin subject %v", admin.Subject)
	}
	for _, f := range []string{p.caKey, p.apiserver, p.adminKey, p.nodeKey, p.kubeletKey, p.saKey} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("key %s: %v, mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
}

func TestRender(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "kubelet.yaml")
	data := map[string]any{"CgroupRoot": "/tsn-e2e-x/pods", "Socket": "/s", "CA": "/ca", "KubeletCert": "/c", "KubeletKey": "/k",
		"ClusterDNS": clusterDNS, "Dir": dir, "FeatureGates": map[string]bool{"DRAConsumableCapacity": true}}
	if err := render(f, kubeletTmpl, data); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f)
	for _, want := range []string{"cgroupRoot: /tsn-e2e-x/pods", "failCgroupV1: false", "failSwapOn: false",
		"cgroupDriver: cgroupfs", "featureGates:\n  DRAConsumableCapacity: true"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, b)
		}
	}
	// A missing key is an error, not "<no value>" in a config file.
	delete(data, "Socket")
	if err := render(f, kubeletTmpl, data); err == nil {
		t.Error("render with a missing key succeeded")
	}
	if err := render(filepath.Join(dir, "c.toml"), containerdTmpl, map[string]string{"Dir": dir, "Socket": "/s", "Bin": "/b", "Pause": PauseImage}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "c.toml"))
	for _, want := range []string{"restrict_oom_score_adj = true", "[plugins.'io.containerd.nri.v1.nri']\n    disable = false",
		`socket_path = "/var/run/nri/nri.sock"`, `sandbox = "` + PauseImage + `"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("containerd config lacks %q:\n%s", want, b)
		}
	}
}
