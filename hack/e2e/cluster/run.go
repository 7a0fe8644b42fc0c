package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// startProc starts a component inside the node's namespaces, logging to
// logs/<name>.log, and moves it into the cluster's cgroup tree.
func (c *Cluster) startProc(name string, env []string, args ...string) (*proc, error) {
	full := append(c.node.enter(true), args...)
	cmd := exec.Command(full[0], full[1:]...)
	logf, err := os.OpenFile(c.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	c.procs = append(c.procs, p)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := c.cg.join("components", cmd.Process.Pid); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, after grace, SIGKILL.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitFor polls check until it succeeds, ctx ends, timeout passes or one of
// the watched processes exits.
func (c *Cluster) waitFor(ctx context.Context, what string, timeout time.Duration, watch []*proc, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		for _, p := range watch {
			if p.exited() {
				return fmt.Errorf("waiting for %s: %s exited (%v); see %s", what, p.name, p.err, c.path("logs", p.name+".log"))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: timed out after %v: %v", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	p := c.pki
	etcd, err := c.startProc("etcd", nil, c.bin("etcd"),
		"--name=tsn-e2e", "--data-dir="+c.path("etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-cluster=tsn-e2e=http://127.0.0.1:%d", etcdPeerPort),
		"--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	args := []string{c.bin("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=0.0.0.0", fmt.Sprintf("--secure-port=%d", apiPort), "--advertise-address=" + nodeIP,
		// No kube-proxy and one apiserver: the kubernetes Service's address is
		// local to the node (nodeScript) and needs no Endpoints.
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--tls-cert-file=" + p.apiserverCert, "--tls-private-key-file=" + p.apiserver,
		"--client-ca-file=" + p.caCert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub, "--service-account-signing-key-file=" + p.saKey,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + p.adminCert, "--kubelet-client-key=" + p.adminKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true", "--profiling=false", "--v=1"}
	if g := c.featureGates(); g != "" {
		args = append(args, "--feature-gates="+g)
	}
	apiserver, err := c.startProc("kube-apiserver", nil, args...)
	if err != nil {
		return err
	}
	if err := c.startForwarder(); err != nil {
		return err
	}
	client, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "kube-apiserver /readyz", 3*time.Minute, []*proc{etcd, apiserver}, func() error {
		resp, err := client.Get(c.serverURL() + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		return nil
	})
}

func (c *Cluster) startNode(ctx context.Context) error {
	var gates []string
	if g := c.featureGates(); g != "" {
		gates = []string{"--feature-gates=" + g}
	}
	if _, err := c.startProc("kube-controller-manager", nil, append([]string{c.bin("kube-controller-manager"),
		"--kubeconfig=" + c.nodeConfig, "--authentication-kubeconfig=" + c.nodeConfig, "--authorization-kubeconfig=" + c.nodeConfig,
		"--leader-elect=false", "--root-ca-file=" + c.pki.caCert,
		"--service-account-private-key-file=" + c.pki.saKey,
		"--cluster-signing-cert-file=" + c.pki.caCert, "--cluster-signing-key-file=" + c.pki.caKey,
		"--controllers=*", "--v=1"}, gates...)...); err != nil {
		return err
	}
	if _, err := c.startProc("kube-scheduler", nil, append([]string{c.bin("kube-scheduler"),
		"--kubeconfig=" + c.nodeConfig, "--authentication-kubeconfig=" + c.nodeConfig, "--authorization-kubeconfig=" + c.nodeConfig,
		"--leader-elect=false", "--v=1"}, gates...)...); err != nil {
		return err
	}
	containerd, err := c.startProc("containerd", []string{"PATH=" + c.cfg.BinDir + ":" + os.Getenv("PATH")},
		c.bin("containerd"), "--config="+c.path("containerd", "config.toml"))
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "containerd", time.Minute, []*proc{containerd}, func() error {
		_, err := c.node.run(ctx, true, c.bin("ctr"), "--address", c.socket, "version")
		return err
	}); err != nil {
		return err
	}
	kubelet, err := c.startProc("kubelet", []string{"PATH=" + c.cfg.BinDir + ":" + os.Getenv("PATH")}, append([]string{c.bin("kubelet"),
		"--config=" + c.path("kubelet.yaml"), "--kubeconfig=" + c.path("kubelet.kubeconfig"),
		"--hostname-override=" + c.NodeName, "--node-ip=" + nodeIP, "--v=2"}, gates...)...)
	if err != nil {
		return err
	}
	watch := c.procs
	if err := c.waitFor(ctx, "node "+c.NodeName+" Ready", 3*time.Minute, watch, func() error {
		out, err := c.Kubectl(ctx, "get", "node", c.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "True" {
			return fmt.Errorf("Ready=%q", s)
		}
		return nil
	}); err != nil {
		return err
	}
	_ = kubelet
	// Pods cannot be created before the service-account controller made the
	// namespace's default account, nor scheduled while the node keeps the
	// not-ready taint node-lifecycle removes.
	return c.waitFor(ctx, "default service account and untainted node", time.Minute, watch, func() error {
		if _, err := c.Kubectl(ctx, "get", "serviceaccount", "default", "-n", "default"); err != nil {
			return err
		}
		out, err := c.Kubectl(ctx, "get", "node", c.NodeName, "-o", "jsonpath={.spec.taints}")
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("taints %s", s)
		}
		return nil
	})
}

func (c *Cluster) serverURL() string { return "https://" + c.fwd.Addr().String() }

func (c *Cluster) adminHTTPClient() (*http.Client, error) {
	ca, err := os.ReadFile(c.pki.caCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(c.pki.adminCert, c.pki.adminKey)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}, nil
}

// startForwarder listens on a free port of the host's 127.0.0.1 and relays
// each connection to the API server inside the node's network namespace.
func (c *Cluster) startForwarder() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the API server forwarder: %w", err)
	}
	c.fwd = l
	c.Kubeconfig = c.path("admin.kubeconfig")
	if err := render(c.Kubeconfig, kubeconfigTmpl, map[string]string{"Server": c.serverURL(), "CA": c.pki.caCert,
		"User": "e2e-admin", "Cert": c.pki.adminCert, "Key": c.pki.adminKey}); err != nil {
		return err
	}
	c.fwdWG.Add(1)
	go func() {
		defer c.fwdWG.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			c.fwdWG.Add(1)
			go func() {
				defer c.fwdWG.Done()
				defer in.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				out, err := c.node.dial(ctx, fmt.Sprintf("127.0.0.1:%d", apiPort))
				cancel()
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				<-done
				<-done
			}()
		}
	}()
	return nil
}

// Kubectl runs the cached kubectl against the cluster.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bin("kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// ImportImages imports a docker-archive or OCI tarball into containerd's
// k8s.io namespace, where the kubelet finds it (pods need imagePullPolicy: Never
// or IfNotPresent).
func (c *Cluster) ImportImages(ctx context.Context, archive string) error {
	_, err := c.node.run(ctx, true, c.bin("ctr"), "--address", c.socket, "-n", "k8s.io", "images", "import", archive)
	return err
}

// InNode runs a short command in the node's namespaces (e.g. ip, tc).
func (c *Cluster) InNode(ctx context.Context, args ...string) ([]byte, error) {
	return c.node.run(ctx, true, args...)
}

// InWire returns a command that runs in the wire network namespace, where
// tsn0's peer is. The caller starts and waits for it.
func (c *Cluster) InWire(ctx context.Context, args ...string) *exec.Cmd {
	full := append(c.wire.enter(false), args...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Dump writes what debugging a failure needs: nodes, pods, events, resource
// objects, and the tail of every component's log.
func (c *Cluster) Dump(ctx context.Context, w io.Writer) {
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"get", "resourceslices,resourceclaims,deviceclasses", "-A", "-o", "yaml"},
		{"describe", "pods", "-A"},
	} {
		fmt.Fprintf(w, "\n=== kubectl %s\n", strings.Join(args, " "))
		out, err := c.Kubectl(ctx, args...)
		w.Write(out)
		if err != nil {
			fmt.Fprintln(w, err)
		}
	}
	if out, err := c.Kubectl(ctx, "get", "pods", "-A", "-o", `jsonpath={range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}`); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			ns, name, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			logs, err := c.Kubectl(ctx, "logs", "-n", ns, name, "--all-containers", "--tail=100")
			fmt.Fprintf(w, "\n=== logs of pod %s/%s (tail)\n%s", ns, name, logs)
			if err != nil {
				fmt.Fprintln(w, err)
			}
		}
	}
	for _, p := range c.procs {
		b, _ := os.ReadFile(c.path("logs", p.name+".log"))
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		fmt.Fprintf(w, "\n=== %s log (tail)\n%s\n", p.name, b)
	}
}

// Stop tears the cluster down: the kubelet and containerd first (so nothing
// restarts what is killed next), then every process left in the cluster's
// cgroup tree (shims, containers), the control plane, the namespaces, the
// cgroups and the state directory. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	var errs []error
	byName := map[string]*proc{}
	for _, p := range c.procs {
		byName[p.name] = p
	}
	for _, n := range []string{"kubelet", "containerd"} {
		if p := byName[n]; p != nil {
			t := time.Now()
			p.stop(10 * time.Second)
			c.cfg.Logf("cluster: stopped %s in %v", n, time.Since(t).Round(time.Millisecond))
		}
	}
	if c.cg != nil {
		// Containers live under the kubelet's cgroup root ("pods"): kill them
		// before the control plane stops, or the API server waits for their
		// watches (the driver's) to end. Shims and the components are in
		// "components".
		t := time.Now()
		if err := c.cg.kill("pods", 30*time.Second); err != nil {
			errs = append(errs, err)
		}
		c.cfg.Logf("cluster: killed the containers in %v", time.Since(t).Round(time.Millisecond))
		for _, n := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
			if p := byName[n]; p != nil {
				t := time.Now()
				p.stop(10 * time.Second)
				c.cfg.Logf("cluster: stopped %s in %v", n, time.Since(t).Round(time.Millisecond))
			}
		}
		t = time.Now()
		if err := c.cg.kill("", 30*time.Second); err != nil {
			errs = append(errs, err)
		}
		c.cfg.Logf("cluster: killed what was left in the cgroups in %v", time.Since(t).Round(time.Millisecond))
	}
	for _, p := range c.procs {
		p.stop(time.Second)
	}
	if c.fwd != nil {
		c.fwd.Close()
	}
	c.wire.stop()
	c.node.stop()
	if c.cg != nil {
		if err := c.cg.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.cg != nil && len(errs) == 0 {
		os.Remove(c.registryFile())
	}
	if !c.cfg.KeepDir && c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", c.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// WirePID is a process in the wire network namespace: enter it with
// nsenter --net=/proc/<pid>/ns/net.
func (c *Cluster) WirePID() int { return c.wire.pid() }

// Leftovers lists what the cluster created that still exists: after Stop it
// should be empty. It checks the namespace holders, the cgroup tree, mounts
// of the state directory and the state directory itself.
func (c *Cluster) Leftovers() []string {
	var left []string
	for _, h := range []*holder{c.node, c.wire} {
		if h != nil && h.cmd.ProcessState == nil {
			left = append(left, fmt.Sprintf("%s namespace holder (pid %d) not reaped", h.name, h.pid()))
		}
		if h != nil {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", h.pid())); err == nil {
				left = append(left, fmt.Sprintf("%s namespace holder pid %d still exists", h.name, h.pid()))
			}
		}
	}
	for _, p := range c.procs {
		if !p.exited() {
			left = append(left, fmt.Sprintf("%s (pid %d) still running", p.name, p.cmd.Process.Pid))
		}
	}
	if c.cg != nil {
		for _, m := range c.cg.mounts {
			if _, err := os.Stat(m + c.cg.path); err == nil {
				left = append(left, "cgroup "+m+c.cg.path)
			}
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if c.Dir != "" && strings.Contains(l, c.Dir) {
				left = append(left, "mount: "+l)
			}
		}
	}
	if c.cg != nil {
		if _, err := os.Stat(c.registryFile()); err == nil {
			left = append(left, "registry entry "+c.registryFile())
		}
	}
	if !c.cfg.KeepDir {
		if _, err := os.Stat(c.Dir); err == nil {
			left = append(left, "state directory "+c.Dir)
		}
	}
	return left
}

// NodePID is a process in the node's namespaces: enter them with
// nsenter --target <pid> --net --mount.
func (c *Cluster) NodePID() int { return c.node.pid() }

// NodePath returns the host path under which the node's file system view
// shows path (e.g. its bpffs at /sys/fs/bpf): /proc/<pid>/root/<path>.
func (c *Cluster) NodePath(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", c.node.pid(), path)
}

// HTTPGet fetches url from inside the node's network namespace, where
// hostNetwork pods (the driver's /metrics) listen.
func (c *Cluster) HTTPGet(ctx context.Context, url string) ([]byte, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return c.node.dial(ctx, addr) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s in the node: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s in the node: %s", url, resp.Status)
	}
	return b, err
}
