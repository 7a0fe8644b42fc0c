package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nicsetup"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/podplan"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

const (
	rssClaims = 200
	rssNode   = "bench-node"
	rssConfig = `
apiVersion: tsn.dra.io/v1alpha1
kind: NodeConfig
nics:
- name: tsn0
  match: {interfaceName: tsn0}
  claimableClasses: [1, 2]
  schedule:
    numTrafficClasses: 3
    priorityMap: [0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    queues: ["1@0", "1@1", "1@2"]
    gateControlList:
    - {command: set, gateMask: 0x2, interval: 300us}
    - {command: set, gateMask: 0x4, interval: 300us}
    - {command: set, gateMask: 0x1, interval: 400us}
    clock: CLOCK_TAI
    mode: software
`
)

func rssClaim(i int) *resourceapi.ResourceClaim {
	dev := "tsn0-tc1"
	if i%2 == 1 {
		dev = "tsn0-tc2"
	}
	name := fmt.Sprintf("rss-%03d", i)
	share := types.UID("share-" + name)
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Status: resourceapi.ResourceClaimStatus{
			Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
				Results: []resourceapi.DeviceRequestAllocationResult{{Request: "tsn", Driver: driver.DefaultDriverName, Pool: rssNode, Device: dev, ShareID: &share}},
			}},
			ReservedFor: []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "pod-" + name, UID: types.UID("pod-uid-" + name)}},
		},
	}
	if i%3 == 0 {
		c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{{
			Source: resourceapi.AllocationConfigSourceClaim,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: driver.DefaultDriverName, Parameters: k8sruntime.RawExtension{Raw: []byte(`{"apiVersion":"tsn.dra.io/v1alpha1","kind":"TSNConfig","priorityMap":[{"appPriority":5}],"ungranted":"drop"}`)},
			}},
		}}
	}
	return c
}

// noSchedules: this host kernel has no taprio (hack/vmtest measures schedules in a VM).
type noSchedules struct{}

func (noSchedules) Apply(context.Context, nicsetup.NIC) error  { return nil }
func (noSchedules) Remove(context.Context, nicsetup.NIC) error { return nil }

// rssChild is the driver as cmd/tsn-dra-driver assembles it (data path, NIC setup, kubelet
// plugin, NRI hooks, metrics server), with a fake API server holding the claims.
func rssChild(stateDir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx = klog.NewContext(ctx, klog.Background().V(10))
	base, hostPath, pin := os.Getenv("TSN_BENCH_BASE"), os.Getenv("TSN_BENCH_NETNS"), os.Getenv("TSN_BENCH_PIN")
	cfg, err := config.Parse([]byte(rssConfig))
	if err != nil {
		return err
	}
	var objs []k8sruntime.Object
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: rssNode, UID: "node-uid"}})
	for i := 0; i < rssClaims; i++ {
		objs = append(objs, rssClaim(i))
	}
	client := fake.NewClientset(objs...)
	var n atomic.Int64
	client.PrependReactor("create", "resourceslices", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		s := a.(k8stesting.CreateAction).GetObject().(*resourceapi.ResourceSlice)
		if s.Name == "" && s.GenerateName != "" {
			s.Name = fmt.Sprintf("%s%05d", s.GenerateName, n.Add(1))
		}
		return false, nil, nil
	})
	hostNS, err := netns.GetFromPath(hostPath)
	if err != nil {
		return err
	}
	disc, err := nic.New(nic.InNamespace(hostNS))
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mgr, err := datapath.Open(ctx, datapath.WithPinDir(pin), datapath.WithNetns(hostPath), datapath.WithSaverAttachMode(datapath.ModeTC))
	if err != nil {
		return err
	}
	defer mgr.Close()
	var d *driver.Driver
	nics := func(name string) (config.NIC, bool) { return d.NICConfig(name) }
	d, err = driver.New(ctx, driver.Options{
		DriverName: driver.DefaultDriverName, NodeName: rssNode, KubeClient: client, Discoverer: disc,
		Config: cfg, StateDir: stateDir, PluginDataDir: filepath.Join(base, "data"), RegistrarDir: filepath.Join(base, "reg"),
		Metrics: driver.NewMetrics(reg), Hooks: nicsetup.ClaimHooks{Setup: nicsetup.New(mgr, noSchedules{}), NICs: nics},
	})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	go http.Serve(ln, mux)
	h := nrihooks.New(podplan.Source{Claims: d.Store(), Logger: klog.FromContext(ctx)}, mgr, nrihooks.NewMetrics(reg))
	go nrihooks.Run(ctx, h, nrihooks.Options{PluginName: driver.DefaultDriverName, SocketPath: filepath.Join(base, "no-runtime.sock"), RetryInterval: 2 * time.Second})
	fmt.Println("READY")
	<-ctx.Done()
	return nil
}

func procStatus(pid int, key string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key+":") {
			v, _ := strconv.Atoi(strings.Fields(l)[1])
			return v
		}
	}
	return 0
}

func benchRSS(r *report) error {
	node, err := netemu.New(netemu.Routed, 0)
	if err != nil {
		return err
	}
	defer node.Close()
	base, err := os.MkdirTemp("", "tsnbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(base)
	pinBase := filepath.Join("/sys/fs/bpf", "tsn-bench-rss-"+randSuffix())
	defer os.RemoveAll(pinBase)
	cmd := exec.Command(os.Args[0], "-rss-child", filepath.Join(base, "state"))
	cmd.Env = append(os.Environ(), "TSN_BENCH_BASE="+base, "TSN_BENCH_NETNS="+node.HostNetns, "TSN_BENCH_PIN="+filepath.Join(pinBase, "v1"))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
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
		// Uninstall what the child left attached.
		if m, err := datapath.Open(quietCtx(), datapath.WithPinDir(filepath.Join(pinBase, "v1")), datapath.WithNetns(node.HostNetns)); err == nil {
			_ = m.Uninstall(quietCtx())
		}
	}()
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- nil
				return
			}
		}
		ready <- fmt.Errorf("driver subprocess exited before it was ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			return err
		}
	case <-time.After(60 * time.Second):
		return fmt.Errorf("driver subprocess not ready after 60s")
	}
	pid := cmd.Process.Pid
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dial := func(p string) (*grpc.ClientConn, error) {
		return grpc.NewClient("unix://"+p, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	rc, err := dial(filepath.Join(base, "reg", driver.DefaultDriverName+"-reg.sock"))
	if err != nil {
		return err
	}
	defer rc.Close()
	reg := registerapi.NewRegistrationClient(rc)
	info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		return fmt.Errorf("GetInfo: %w", err)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	r.rssIdle, r.anonIdle, r.fileIdle = procStatus(pid, "VmRSS"), procStatus(pid, "RssAnon"), procStatus(pid, "RssFile")
	dc, err := dial(info.Endpoint)
	if err != nil {
		return err
	}
	defer dc.Close()
	dra := drapb.NewDRAPluginClient(dc)
	for i := 0; i < rssClaims; i++ {
		c := rssClaim(i)
		res, err := dra.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}})
		if err != nil {
			return fmt.Errorf("prepare %s: %w", c.Name, err)
		}
		if e := res.Claims[string(c.UID)].GetError(); e != "" {
			return fmt.Errorf("prepare %s: %s", c.Name, e)
		}
	}
	time.Sleep(3 * time.Second)
	r.rssClaims, r.hwm, r.rssClaimsN = procStatus(pid, "VmRSS"), procStatus(pid, "VmHWM"), rssClaims
	r.anonClaims, r.fileClaims = procStatus(pid, "RssAnon"), procStatus(pid, "RssFile")
	if err := daemonIdleRSS(r); err != nil {
		fmt.Fprintf(os.Stderr, "real daemon idle RSS: %v\n", err)
	}
	r.rssNote = fmt.Sprintf("The driver as cmd/tsn-dra-driver assembles it (eBPF data path with the restorer on tsn0, NIC setup, kubelet "+
		"plugin with its gRPC servers and ResourceSlice controller, NRI hooks retrying to reach a runtime, Prometheus metrics served over HTTP), "+
		"in a subprocess (`bench -rss-child`), against client-go's fake clientset holding the node and the %d claims (so the API objects the "+
		"real daemon would not keep are counted too: a conservative figure). The claims are prepared through the DRA gRPC socket, one per "+
		"call, as the kubelet does; VmRSS from /proc/<pid>/status 3 s after the last call. GOGC and GOMEMLIMIT at their defaults.", rssClaims)
	return nil
}
