package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// daemonIdleRSS runs the real cmd/tsn-dra-driver binary against an API server that refuses
// connections: it loads the data path, serves /metrics and waits in Start for the API server.
// That is the binary's own idle footprint (no fake API server in the process), a cross-check of
// the subprocess measurement's file-backed part.
func daemonIdleRSS(r *report) error {
	dir, err := os.MkdirTemp("", "tsnbench-daemon")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "tsn-dra-driver")
	build := exec.Command(*goBin, "build", "-o", bin, "./cmd/tsn-dra-driver")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the daemon: %v: %s", err, out)
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(rssConfig), 0o600); err != nil {
		return err
	}
	pin := filepath.Join("/sys/fs/bpf", "tsn-bench-daemon-"+randSuffix())
	defer os.RemoveAll(pin)
	cmd := exec.Command(bin, "--node-name", rssNode, "--kubeconfig", kc, "--config", cfg,
		"--state-dir", filepath.Join(dir, "state"), "--kubelet-plugin-dir", filepath.Join(dir, "p"),
		"--kubelet-registry-dir", filepath.Join(dir, "r"), "--http-address", "127.0.0.1:0",
		"--bpf-pin-dir", filepath.Join(pin, "v1"), "--nri-socket", filepath.Join(dir, "nri.sock"), "-v", "0")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	time.Sleep(8 * time.Second)
	pid := cmd.Process.Pid
	r.daemonRSS, r.daemonAnon, r.daemonFile = procStatus(pid, "VmRSS"), procStatus(pid, "RssAnon"), procStatus(pid, "RssFile")
	if r.daemonRSS == 0 {
		return fmt.Errorf("daemon exited early")
	}
	return nil
}
