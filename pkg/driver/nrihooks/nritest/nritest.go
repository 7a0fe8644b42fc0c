// Package nritest is the container runtime's side of NRI for tests: what
// containerd embeds (github.com/containerd/nri/pkg/adaptation), serving
// plugins on a unix socket and listing its pod sandboxes to each plugin that
// connects, so that tests drive the driver's NRI plugin the way a runtime does.
//
// Like containerd, the runtime sends one request at a time: a plugin that
// blocks in a hook holds back every other pod's events.
package nritest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// Runtime serves NRI on a unix socket until the end of the test (or Stop).
type Runtime struct {
	t      testing.TB
	r      *adaptation.Adaptation
	socket string
	synced chan struct{}

	mu   sync.Mutex
	pods []*api.PodSandbox // what Synchronize lists, in the order the pods came
}

// StartRuntime serves NRI on socket; pods are the sandboxes the runtime
// already has, listed to a plugin when it connects (Synchronize). It returns
// once the runtime's own start-up sync is done; a plugin's comes later
// (WaitSynced).
func StartRuntime(t testing.TB, socket string, pods ...*api.PodSandbox) *Runtime {
	t.Helper()
	rt := &Runtime{t: t, socket: socket, synced: make(chan struct{}, 8)}
	for _, p := range pods {
		rt.setPod(p)
	}
	dir := t.TempDir()
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		rt.mu.Lock()
		pods := append([]*api.PodSandbox(nil), rt.pods...)
		rt.mu.Unlock()
		_, err := cb(ctx, pods, nil)
		rt.synced <- struct{}{}
		return err
	}
	update := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	r, err := adaptation.New("nritest-runtime", "v0", syncFn, update,
		adaptation.WithSocketPath(socket),
		adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf")))
	if err != nil {
		t.Fatalf("create NRI runtime: %v", err)
	}
	if err := r.Start(); err != nil {
		t.Fatalf("start NRI runtime: %v", err)
	}
	// Start synchronizes the runtime's pre-installed plugins (none here);
	// only the syncs of connecting plugins count.
	<-rt.synced
	rt.r = r
	t.Cleanup(r.Stop)
	return rt
}

// Socket is the path the runtime serves NRI on.
func (rt *Runtime) Socket() string { return rt.socket }

// Stop stops serving and closes the plugins' connections, as a runtime that
// exits does. A new runtime may then serve on the same socket.
func (rt *Runtime) Stop() { rt.r.Stop() }

// WaitSynced waits for a plugin to connect and synchronize (20s at most),
// and for the runtime to list it among the plugins it sends events to.
func (rt *Runtime) WaitSynced() {
	rt.t.Helper()
	select {
	case <-rt.synced:
	case <-time.After(20 * time.Second):
		rt.t.Fatal("plugin did not connect and synchronize within 20s")
	}
	// The runtime adds the plugin to its list after the sync callback
	// returns, under its plugin sync lock: events sent before that skip the
	// plugin. Taking the lock the way containerd does around pod events
	// waits for the end of the registration.
	rt.r.BlockPluginSync().Unblock()
}

// RunPod sends RunPodSandbox to the plugins; the pod is listed in later
// syncs.
func (rt *Runtime) RunPod(p *api.PodSandbox) error {
	rt.setPod(p)
	return rt.r.RunPodSandbox(context.Background(), &adaptation.RunPodSandboxRequest{Pod: p})
}

// CreateContainer sends CreateContainer for a container named name of pod p
// to the plugins (Container). An error is the one containerd would fail the
// container with.
func (rt *Runtime) CreateContainer(p *api.PodSandbox, name string) error {
	_, err := rt.r.CreateContainer(context.Background(), &adaptation.CreateContainerRequest{Pod: p, Container: Container(p, name)})
	return err
}

// StartPod runs the pod and creates its container "app", as a runtime does
// before the pod's application runs: when it returns nil, the plugins had
// their say on both (the driver's saver is attached to a pod that claims TSN).
func (rt *Runtime) StartPod(p *api.PodSandbox) error {
	if err := rt.RunPod(p); err != nil {
		return err
	}
	return rt.CreateContainer(p, "app")
}

// StopPod sends StopPodSandbox to the plugins.
func (rt *Runtime) StopPod(p *api.PodSandbox) error {
	return rt.r.StopPodSandbox(context.Background(), &adaptation.StopPodSandboxRequest{Pod: p})
}

// RemovePod sends RemovePodSandbox to the plugins; the pod is no longer
// listed in syncs.
func (rt *Runtime) RemovePod(p *api.PodSandbox) error {
	rt.mu.Lock()
	for i, q := range rt.pods {
		if q.Uid == p.Uid {
			rt.pods = append(rt.pods[:i], rt.pods[i+1:]...)
			break
		}
	}
	rt.mu.Unlock()
	return rt.r.RemovePodSandbox(context.Background(), &adaptation.RemovePodSandboxRequest{Pod: p})
}

// setPod lists p in syncs, in place of an earlier sandbox with its UID.
func (rt *Runtime) setPod(p *api.PodSandbox) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for i, q := range rt.pods {
		if q.Uid == p.Uid {
			rt.pods[i] = p
			return
		}
	}
	rt.pods = append(rt.pods, p)
}

// Container is the NRI view of container name (ID <sandbox ID>-<name>) in
// pod p.
func Container(p *api.PodSandbox, name string) *api.Container {
	return &api.Container{Id: p.GetId() + "-" + name, PodSandboxId: p.GetId(), Name: name}
}

// Sandbox is the NRI view of pod default/pod-<uid> (sandbox sb-<uid>) with
// its network namespace at netnsPath; "" is a host network pod.
func Sandbox(uid, netnsPath string) *api.PodSandbox {
	p := &api.PodSandbox{Id: "sb-" + uid, Uid: uid, Name: "pod-" + uid, Namespace: "default", Linux: &api.LinuxPodSandbox{}}
	if netnsPath != "" {
		p.Linux.Namespaces = []*api.LinuxNamespace{{Type: "ipc"}, {Type: "network", Path: netnsPath}}
	}
	return p
}
