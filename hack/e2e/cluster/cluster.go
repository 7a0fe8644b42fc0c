// Package cluster starts and stops a real single-node Kubernetes for the
// end-to-end tests: etcd, kube-apiserver, kube-scheduler,
// kube-controller-manager, kubelet, containerd with NRI, runc and the CNI
// bridge, all from binaries built by hack/e2e/build.sh.
//
// The node lives in network and mount namespaces of its own (see nodeScript):
// its ports, links (cni0, tsn0), pod addresses, netns and overlay mounts
// cannot collide with another cluster or test on the machine, and they vanish
// with the namespaces. From the host, the API server is reached through a
// forwarder on a port of 127.0.0.1 chosen at run time (Cluster.Kubeconfig).
// Every process the cluster starts, and through the kubelet and containerd
// every shim and container, is kept in one cgroup tree, which Stop empties and
// removes.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config says where the binaries are and how to run the cluster.
type Config struct {
	// BinDir holds the binaries of hack/e2e/build.sh (required).
	BinDir string
	// Dir is where the cluster's state directory is created; default os.TempDir().
	Dir string
	// KeepDir keeps the state directory (logs, configs) after Stop.
	KeepDir bool
	// TSNQueues is the number of TX/RX queues of tsn0 and its peer (default 8).
	TSNQueues int
	// FeatureGates are set on every component (apiserver, scheduler,
	// controller-manager, kubelet).
	FeatureGates map[string]bool
	// Logf receives progress messages; default log.Printf.
	Logf func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	cfg Config
	// Dir is the state directory: logs/ has one file per component.
	Dir string
	// Kubeconfig is an admin kubeconfig usable from the host.
	Kubeconfig string
	// NodeName is the name of the one node.
	NodeName string
	// Timings records how long each start-up phase took.
	Timings []Timing

	socket     string // containerd's socket
	nodeConfig string // admin kubeconfig for components inside the node
	pki        *pki
	cg         *cgroupTree
	node, wire *holder
	procs      []*proc
	fwd        net.Listener
	fwdWG      sync.WaitGroup
	stopOnce   sync.Once
	stopErr    error
}

// Timing is one start-up phase.
type Timing struct {
	Phase    string
	Duration time.Duration
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start brings the cluster up and returns once the node is Ready and pods can
// be created. On error everything started so far is torn down.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.BinDir == "" {
		return nil, errors.New("cluster: Config.BinDir is required")
	}
	if cfg.TSNQueues == 0 {
		cfg.TSNQueues = 8
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl",
		"containerd", "containerd-shim-runc-v2", "ctr", "runc", "cni/bridge", "cni/host-local", "cni/loopback"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("cluster: %s is missing from %s (run hack/e2e/build.sh): %w", b, cfg.BinDir, err)
		}
	}
	reapStale(cfg.Logf)
	dir, err := os.MkdirTemp(cfg.Dir, "tsn-e2e-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, Dir: dir, NodeName: "tsn-e2e-node", socket: filepath.Join(dir, "containerd.sock")}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				cfg.Logf("cluster: tearing down after a failed start: %v", serr)
			}
		}
	}()
	phase := time.Now()
	mark := func(name string) {
		c.Timings = append(c.Timings, Timing{name, time.Since(phase)})
		cfg.Logf("cluster: %s in %v", name, time.Since(phase).Round(time.Millisecond))
		phase = time.Now()
	}

	for _, d := range []string{"logs", "pki", "etcd", "containerd/root", "containerd/state", "node/var-lib/kubelet",
		"node/var-lib/cni", "node/log", "node/cgroup", "cni/net.d", "cni/ipam", "nri/plugins", "nri/conf.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	suffix := strings.TrimPrefix(filepath.Base(dir), "tsn-e2e-")
	if c.cg, err = newCgroupTree("/tsn-e2e-" + suffix); err != nil {
		return nil, err
	}
	if err := c.cg.mkdir("components"); err != nil {
		return nil, err
	}
	if err := c.register(); err != nil {
		return nil, fmt.Errorf("registering the cluster in %s: %w", registryDir, err)
	}

	c.node, err = startHolder(ctx, "node", syscall.CLONE_NEWNS|syscall.CLONE_NEWNET, nodeScript, []string{
		"NODE=" + filepath.Join(dir, "node"), "NODE_IP=" + nodeIP, "SERVICE_IP=" + serviceIP})
	if err != nil {
		return nil, err
	}
	c.wire, err = startHolder(ctx, "wire", syscall.CLONE_NEWNET, wireScript, nil)
	if err != nil {
		return nil, err
	}
	if err := c.makeTSNLink(ctx); err != nil {
		return nil, err
	}
	mark("namespaces and tsn0")

	if err := c.writeConfigs(); err != nil {
		return nil, err
	}
	mark("certificates and configs")

	if err := c.startControlPlane(ctx); err != nil {
		return nil, err
	}
	mark("etcd and kube-apiserver ready")

	if err := c.startNode(ctx); err != nil {
		return nil, err
	}
	mark("node Ready")
	return c, nil
}

func (c *Cluster) makeTSNLink(ctx context.Context) error {
	q := fmt.Sprint(c.cfg.TSNQueues)
	steps := []struct {
		h    *holder
		args []string
	}{
		{c.node, []string{"ip", "link", "add", TSNInterface, "numtxqueues", q, "numrxqueues", q, "type", "veth",
			"peer", "name", WireInterface, "numtxqueues", q, "numrxqueues", q, "netns", fmt.Sprint(c.wire.pid())}},
		{c.node, []string{"ip", "addr", "add", TSNAddr + "/24", "dev", TSNInterface}},
		{c.node, []string{"ip", "link", "set", TSNInterface, "up"}},
		{c.wire, []string{"ip", "addr", "add", WireAddr + "/24", "dev", WireInterface}},
		{c.wire, []string{"ip", "link", "set", WireInterface, "up"}},
		{c.wire, []string{"ip", "route", "add", "default", "via", TSNAddr}},
	}
	for _, s := range steps {
		if _, err := s.h.run(ctx, false, s.args...); err != nil {
			return fmt.Errorf("creating %s: %w", TSNInterface, err)
		}
	}
	return nil
}

func (c *Cluster) path(p ...string) string { return filepath.Join(append([]string{c.Dir}, p...)...) }

func (c *Cluster) bin(name string) string { return filepath.Join(c.cfg.BinDir, name) }

func (c *Cluster) featureGates() string {
	var gates []string
	for k, v := range c.cfg.FeatureGates {
		gates = append(gates, fmt.Sprintf("%s=%v", k, v))
	}
	return strings.Join(gates, ",")
}

func (c *Cluster) writeConfigs() error {
	p, err := newPKI(c.path("pki"), c.NodeName, net.ParseIP(nodeIP), net.ParseIP(serviceIP))
	if err != nil {
		return fmt.Errorf("creating certificates: %w", err)
	}
	kc := func(file, server, user, cert, key string) error {
		return render(file, kubeconfigTmpl, map[string]string{"Server": server, "CA": p.caCert, "User": user, "Cert": cert, "Key": key})
	}
	inNode := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	c.nodeConfig = c.path("admin-in-node.kubeconfig")
	if err := kc(c.nodeConfig, inNode, "e2e-admin", p.adminCert, p.adminKey); err != nil {
		return err
	}
	if err := kc(c.path("kubelet.kubeconfig"), inNode, "system:node:"+c.NodeName, p.nodeCert, p.nodeKey); err != nil {
		return err
	}
	if err := render(c.path("containerd", "config.toml"), containerdTmpl, map[string]string{
		"Dir": c.Dir, "Socket": c.socket, "Bin": c.cfg.BinDir, "Pause": PauseImage}); err != nil {
		return err
	}
	if err := render(c.path("cni", "net.d", "10-tsn-e2e.conflist"), cniTmpl, map[string]string{"Dir": c.Dir, "PodCIDR": podCIDR}); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("resolv.conf"), []byte("nameserver "+clusterDNS+"\n"), 0o644); err != nil {
		return err
	}
	if err := render(c.path("kubelet.yaml"), kubeletTmpl, map[string]any{
		"CgroupRoot": c.cg.path + "/pods", "Socket": c.socket, "CA": p.caCert, "KubeletCert": p.kubeletCert,
		"KubeletKey": p.kubeletKey, "ClusterDNS": clusterDNS, "Dir": c.Dir, "FeatureGates": c.cfg.FeatureGates}); err != nil {
		return err
	}
	if err := c.cg.mkdir("pods"); err != nil {
		return err
	}
	c.pki = p
	return nil
}
