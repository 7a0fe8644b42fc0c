package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// registryDir records the running clusters of this machine (a tmpfs: it does
// not outlive a reboot, and neither do the clusters).
const registryDir = "/run/tsn-e2e"

// owner identifies the process that started a cluster, and what to clean up
// if that process died without stopping it (a test binary killed on timeout).
type owner struct {
	PID       int    `json:"pid"`
	StartTime string `json:"startTime"` // /proc/<pid>/stat field 22: tells a reused pid apart
	Dir       string `json:"dir"`
	Cgroup    string `json:"cgroup"`
}

func procStartTime(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may hold spaces: count fields after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return f[19], nil // field 22 overall
}

func (c *Cluster) register() error {
	st, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	b, err := json.Marshal(owner{PID: os.Getpid(), StartTime: st, Dir: c.Dir, Cgroup: c.cg.path})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(c.registryFile(), b, 0o644)
}

func (c *Cluster) registryFile() string {
	return filepath.Join(registryDir, strings.TrimPrefix(c.cg.path, "/")+".json")
}

// reapStale cleans up after clusters whose owner died without stopping them:
// their shims and containers (which outlive the owner), cgroups and state
// directories. Clusters whose owner lives are left alone.
func reapStale(logf func(string, ...any)) {
	files, _ := filepath.Glob(filepath.Join(registryDir, "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var o owner
		if json.Unmarshal(b, &o) != nil || o.Cgroup == "" || !strings.HasPrefix(o.Cgroup, "/tsn-e2e-") {
			continue
		}
		if st, err := procStartTime(o.PID); err == nil && st == o.StartTime {
			continue // still running
		}
		logf("cluster: cleaning up after a cluster whose owner (pid %d) is gone: %s", o.PID, o.Dir)
		var errs []error
		if mounts, err := cgroupMounts(); err == nil {
			t := &cgroupTree{path: o.Cgroup, mounts: mounts}
			errs = append(errs, t.kill("", 30*time.Second), t.remove())
		}
		if o.Dir != "" && strings.Contains(filepath.Base(o.Dir), "tsn-e2e-") {
			errs = append(errs, os.RemoveAll(o.Dir))
		}
		if err := errors.Join(errs...); err != nil {
			logf("cluster: cleaning up %s: %v", o.Dir, err)
			continue
		}
		os.Remove(f)
	}
}
