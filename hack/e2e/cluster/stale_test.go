package cluster

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestReapStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates cgroups")
	}
	// A dead owner: a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	self, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	entry := func(pid int, start string) (dir string, tree *cgroupTree, sleeper *exec.Cmd, file string) {
		dir, err := os.MkdirTemp("", "tsn-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		tree, err = newCgroupTree("/" + filepath.Base(dir))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tree.kill("", 5*time.Second); tree.remove(); os.RemoveAll(dir) })
		if err := tree.mkdir("pods"); err != nil {
			t.Fatal(err)
		}
		// Stands in for a container that outlived its cluster's owner.
		sleeper = exec.Command("sleep", "600")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
		if err := tree.join("pods", sleeper.Process.Pid); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(owner{PID: pid, StartTime: start, Dir: dir, Cgroup: tree.path})
		if err := os.MkdirAll(registryDir, 0o755); err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(registryDir, filepath.Base(dir)+".json")
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(file) })
		return dir, tree, sleeper, file
	}
	staleDir, staleTree, staleProc, staleFile := entry(dead.Process.Pid, "1")
	// The same live pid with another start time is a reused pid: stale too.
	reusedDir, _, _, reusedFile := entry(os.Getpid(), self+"0")
	liveDir, liveTree, liveProc, liveFile := entry(os.Getpid(), self)

	reapStale(t.Logf)

	done := make(chan error, 1)
	go func() { done <- staleProc.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stale cluster's process was not killed")
	}
	for _, p := range []string{staleDir, staleFile, reusedDir, reusedFile} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if _, err := os.Stat(staleTree.mounts[0] + staleTree.path); err == nil {
		t.Errorf("stale cgroup %s left behind", staleTree.path)
	}
	// The live cluster is untouched.
	if err := liveProc.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("live cluster's process killed: %v", err)
	}
	for _, p := range []string{liveDir, liveFile, liveTree.mounts[0] + liveTree.path} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("live cluster's %s removed: %v", p, err)
		}
	}
}
