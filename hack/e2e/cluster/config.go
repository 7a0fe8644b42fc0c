package cluster

import (
	"fmt"
	"os"
	"strings"
	"text/template"
)

// Addresses inside the node's network namespace. The namespace is private to
// one cluster, so these cannot collide with another cluster on the machine.
const (
	nodeIP       = "10.250.0.1"
	serviceCIDR  = "10.96.0.0/16"
	serviceIP    = "10.96.0.1" // the "kubernetes" Service; a local address of the node
	clusterDNS   = "10.96.0.10"
	podCIDR      = "10.244.0.0/24"
	apiPort      = 443 // the kubernetes Service's port, so in-cluster clients reach it without kube-proxy
	etcdPort     = 2379
	etcdPeerPort = 2380

	// TSNAddr and WireAddr are tsn0's address on the node and its peer's in the
	// wire namespace, where a receiver sees what leaves tsn0.
	TSNAddr  = "192.0.2.1"
	WireAddr = "192.0.2.2"
	// TSNInterface is the emulated TSN NIC of the node, WireInterface its peer.
	TSNInterface  = "tsn0"
	WireInterface = "wire0"

	// PauseImage is the sandbox image containerd is configured with; the
	// caller imports it (see Cluster.ImportImages) before pods start.
	PauseImage = "tsn-e2e.local/pause:e2e"
)

func render(path, text string, data any) error {
	t, err := template.New(path).Option("missingkey=error").Parse(text)
	if err != nil {
		return err
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return fmt.Errorf("rendering %s: %w", path, err)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

const kubeconfigTmpl = `apiVersion: v1
kind: Config
clusters:
- name: tsn-e2e
  cluster:
    server: {{.Server}}
    certificate-authority: {{.CA}}
users:
- name: {{.User}}
  user:
    client-certificate: {{.Cert}}
    client-key: {{.Key}}
contexts:
- name: tsn-e2e
  context:
    cluster: tsn-e2e
    user: {{.User}}
current-context: tsn-e2e
`

// The node setup script runs in new mount and network namespaces. Paths the
// driver's manifests mount from the host (/var/lib/kubelet, /var/lib/tsn-dra-driver,
// /var/run/nri, /sys/fs/bpf, /var/run/cdi) are the standard ones inside, backed
// by the cluster's directory or fresh file systems, so `kubectl apply -f
// deployments/` works unchanged and nothing lands on the real host.
const nodeScript = `set -euo pipefail
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /run/nri /run/cdi /run/containerd
# All of /var/lib is the node's own: the kubelet's root, CNI state, and any
# hostPath a manifest creates there (the driver's checkpoint directory).
mount --bind "$NODE/var-lib" /var/lib
mount --bind "$NODE/log" /var/log
# A sysfs of this network namespace (so /sys/class/net lists tsn0), with the
# host's cgroup hierarchies carried over and a bpffs of its own.
mount --rbind /sys/fs/cgroup "$NODE/cgroup"
mount -t sysfs sysfs /sys
mount --move "$NODE/cgroup" /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
# Shared again, like a systemd host's /, but in peer groups of this namespace
# only: HostToContainer/Bidirectional volumes (the driver's /var/run/netns)
# need a shared or slave source, and nothing propagates to the real host.
mount --make-rshared /
ip link set lo up
# The node address and the kubernetes Service address are local (this kernel
# has no dummy links; lo carries any address). Nothing leaves the namespace:
# the default route is a blackhole.
ip addr add "$NODE_IP/32" dev lo
ip addr add "$SERVICE_IP/32" dev lo
ip route add blackhole default
sysctl -qw net.ipv4.ip_forward=1
echo ready
exec sleep infinity
`

const wireScript = `set -euo pipefail
ip link set lo up
echo ready
exec sleep infinity
`

const containerdTmpl = `version = 3
root = "{{.Dir}}/containerd/root"
state = "{{.Dir}}/containerd/state"

[grpc]
  address = "{{.Socket}}"

[plugins]
  [plugins.'io.containerd.cri.v1.runtime']
    # root here lacks CAP_SYS_RESOURCE: never lower a container's OOM score below ours.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{{.Bin}}/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{{.Bin}}/cni"]
      conf_dir = "{{.Dir}}/cni/net.d"
  [plugins.'io.containerd.cri.v1.images']
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{{.Pause}}"
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = "/var/run/nri/nri.sock"
    plugin_path = "{{.Dir}}/nri/plugins"
    plugin_config_path = "{{.Dir}}/nri/conf.d"
`

const cniTmpl = `{
  "cniVersion": "1.0.0",
  "name": "tsn-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "{{.Dir}}/cni/ipam"
      }
    }
  ]
}
`

const kubeletTmpl = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{{.Socket}}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{.CA}}
authorization:
  mode: Webhook
tlsCertFile: {{.KubeletCert}}
tlsPrivateKeyFile: {{.KubeletKey}}
clusterDomain: cluster.local
clusterDNS: [{{.ClusterDNS}}]
resolvConf: {{.Dir}}/resolv.conf
readOnlyPort: 0
# The machine is small and shared: do not evict or garbage-collect images the
# tests imported (they cannot be pulled again).
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
{{- if .FeatureGates}}
featureGates:
{{- range $k, $v := .FeatureGates}}
  {{$k}}: {{$v}}
{{- end}}
{{- end}}
`
