package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupTree is one cgroup path (e.g. /tsn-e2e-1a2b3c) created in every mounted
// hierarchy. The kubelet's cgroupRoot, the components and through them every
// shim and container live below it, so stopping the cluster can find and kill
// every process it started, whatever happened, and then remove the cgroups.
type cgroupTree struct {
	path   string   // e.g. /tsn-e2e-1a2b3c
	mounts []string // hierarchy mount points, e.g. /sys/fs/cgroup/memory
}

func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, fsFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(fsFields) < 1 {
			continue
		}
		if fsFields[0] == "cgroup" || fsFields[0] == "cgroup2" {
			mounts = append(mounts, fields[4])
		}
	}
	if len(mounts) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted")
	}
	return mounts, s.Err()
}

func newCgroupTree(path string) (*cgroupTree, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	t := &cgroupTree{path: path, mounts: mounts}
	if err := t.mkdir(""); err != nil {
		t.remove()
		return nil, err
	}
	return t, nil
}

// mkdir creates t.path/sub in every hierarchy. cpuset v1 cgroups start with no
// CPUs and no memory nodes: copy the parent's or nothing can join them.
func (t *cgroupTree) mkdir(sub string) error {
	for _, m := range t.mounts {
		dir := filepath.Join(m, t.path, sub)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				continue
			}
			if err := copyCpuset(dir, f); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyCpuset(dir, file string) error {
	// Fill from the top: a child may only hold what its parent holds.
	var chain []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(filepath.Dir(d), file)); err != nil {
			break
		}
		chain = append(chain, d)
	}
	slices.Reverse(chain)
	for _, d := range chain {
		cur, _ := os.ReadFile(filepath.Join(d, file))
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(filepath.Dir(d), file))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, file), v, 0o644); err != nil {
			return fmt.Errorf("setting %s/%s: %w", d, file, err)
		}
	}
	return nil
}

// join moves pid into t.path/sub in every hierarchy.
func (t *cgroupTree) join(sub string, pid int) error {
	for _, m := range t.mounts {
		f := filepath.Join(m, t.path, sub, "cgroup.procs")
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving pid %d into %s: %w", pid, f, err)
		}
	}
	return nil
}

// pids lists every process in the tree below sub ("" for all), in any hierarchy.
func (t *cgroupTree) pids(sub string) []int {
	seen := map[int]bool{}
	for _, m := range t.mounts {
		filepath.WalkDir(filepath.Join(m, t.path, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for p := range seen {
		pids = append(pids, p)
	}
	slices.Sort(pids)
	return pids
}

// kill SIGKILLs every process in the tree below sub ("" for all) until none is left.
func (t *cgroupTree) kill(sub string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := t.pids(sub)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still in cgroup %s after %v: %v", t.path, timeout, pids)
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove deletes the tree's cgroups, deepest first, in every hierarchy.
func (t *cgroupTree) remove() error {
	var errs []error
	for _, m := range t.mounts {
		root := filepath.Join(m, t.path)
		var dirs []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs) // children after parents in a walk: reversed, children first
		for _, d := range dirs {
			var err error
			for range 50 { // a just-killed cgroup can be busy for a moment
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}
