// Package driver is the DRA kubelet plugin of the TSN driver: it publishes the node's TSN traffic
// classes as devices in a ResourceSlice, prepares and unprepares claims on them, keeps the
// prepared state in a write-through checkpoint, and reports device health to the kubelet.
//
// The per-pod and per-NIC work that follows preparation (eBPF saver on the pod, restorer and
// schedule on the NIC) is not done here: it reads the prepared state through ClaimStore.
package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// DefaultDriverName is the driver name used unless configured otherwise.
const DefaultDriverName = "tsn.dra.io"

// checkpointFile is the name of the checkpoint in the state directory.
const checkpointFileName = "checkpoint.json"

// Options configures a Driver. DriverName, NodeName, KubeClient, Discoverer, Config and
// StateDir are required.
type Options struct {
	DriverName string
	NodeName   string
	KubeClient kubernetes.Interface
	Discoverer Discoverer
	Config     *config.NodeConfig
	// StateDir holds the checkpoint; it must survive a restart of the driver (a hostPath).
	StateDir string
	// PluginDataDir and RegistrarDir are the kubelet's directories for the DRA socket and the
	// registration socket; empty means the kubelet defaults. Both are created when missing.
	PluginDataDir string
	RegistrarDir  string
	// HealthResend is how often an unchanged health report is sent again; it must be shorter
	// than the kubelet's timeout (30 s). Default 10 s.
	HealthResend time.Duration
	// Metrics receives the driver's metrics; nil creates a private set.
	Metrics *Metrics
	// OnFatal is called with an error the driver cannot recover from (the daemon should shut
	// down). Nil only logs.
	OnFatal func(error)
	// Hooks, when set, take part in preparation (the data path: restorer and schedule on the
	// NIC). Nil means the data path is not wired: claims are prepared and checkpointed, and
	// the driver logs that nothing is attached.
	Hooks ClaimHooks
	// ExtraPluginOptions are passed to kubeletplugin.Start (tests use them for listeners).
	ExtraPluginOptions []kubeletplugin.Option
}

// ClaimHooks is the seam for the work that follows the DRA bookkeeping of a claim. Calls for
// one claim are serialized by the kubelet plugin helper; both must be idempotent.
type ClaimHooks interface {
	// ClaimPrepared runs after the claim was checkpointed. An error fails the preparation;
	// the checkpoint is then rolled back to what it was.
	ClaimPrepared(ctx context.Context, claim PreparedClaim) error
	// ClaimUnprepared runs before the claim leaves the checkpoint. An error fails the
	// unpreparation and keeps the claim, so the kubelet retries.
	ClaimUnprepared(ctx context.Context, claim PreparedClaim) error
}

// Driver is the kubelet plugin. It implements kubeletplugin.DRAPlugin.
type Driver struct {
	opts     Options
	pool     string
	state    *claimState
	metrics  *Metrics
	recorder record.EventRecorder
	events   record.EventBroadcaster

	mu      sync.Mutex
	cfg     *config.NodeConfig
	inv     *inventory
	healthC chan struct{} // closed and replaced when health may have changed

	helper *kubeletplugin.Helper

	// ready is closed once the prepared state is known (see StateReady).
	ready chan struct{}
	// rebuild, guarded by rebuildMu, describes a rebuild after a damaged checkpoint.
	rebuildMu sync.Mutex
	rebuild   rebuildState
	// stopRebuild ends a rebuild still retrying in the background; rebuildDone is closed when
	// it has returned.
	stopRebuild context.CancelFunc
	rebuildDone chan struct{}
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// New loads the checkpoint and looks at the node's NICs; it does not talk to the kubelet yet.
//
// A damaged checkpoint (not JSON, a wrong checksum: see docs/driver.md) is kept aside as
// checkpoint.json.damaged-<time>, reported (log, Event on the Node, metric) and rebuilt from
// the ResourceClaims allocated to this node and reserved for a pod that still runs here. When the
// API server cannot be read, New still returns: the rebuild retries in the background and, until
// StateReady is closed, the state is empty and Prepare and Unprepare fail with a clear error.
// Claims rebuilt in the background are handed to Hooks.ClaimPrepared; claims loaded or rebuilt
// inside New are the caller's to resume (Store().PreparedClaims()).
func New(ctx context.Context, o Options) (*Driver, error) {
	switch {
	case o.DriverName == "":
		return nil, errors.New("driver name is required")
	case o.NodeName == "":
		return nil, errors.New("node name is required")
	case o.KubeClient == nil:
		return nil, errors.New("a Kubernetes client is required")
	case o.Discoverer == nil:
		return nil, errors.New("a NIC discoverer is required")
	case o.Config == nil:
		return nil, errors.New("a node config is required")
	case o.StateDir == "":
		return nil, errors.New("a state directory is required")
	}
	if o.HealthResend <= 0 {
		o.HealthResend = 10 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	cp := &checkpoint{path: filepath.Join(o.StateDir, checkpointFileName)}
	claims, err := cp.load()
	var damage *damagedError
	if errors.As(err, &damage) {
		claims = map[types.UID]PreparedClaim{}
	} else if err != nil {
		return nil, err
	}
	d := &Driver{
		opts:    o,
		pool:    o.NodeName,
		state:   &claimState{claims: claims, cp: cp},
		metrics: o.Metrics,
		cfg:     o.Config,
		healthC: make(chan struct{}),
		ready:   make(chan struct{}),
	}
	d.inv = buildInventory(o.Config, o.Discoverer)
	d.logInventory(klog.FromContext(ctx))
	if damage != nil {
		// The inventory is needed first: the rebuild plans each claim against it.
		if err := d.recoverDamaged(ctx, damage); err != nil {
			return nil, err
		}
		return d, nil
	}
	close(d.ready)
	d.metrics.preparedClaims.Set(float64(d.state.count()))
	klog.FromContext(ctx).Info("Loaded checkpoint", "preparedClaims", d.state.count())
	return d, nil
}

// Store returns the read side of the prepared state.
func (d *Driver) Store() ClaimStore { return d.state }

// Start serves the kubelet (registration, DRA and health gRPC services) and publishes the
// node's devices.
func (d *Driver) Start(ctx context.Context) error {
	o := d.opts
	d.events = record.NewBroadcaster(record.WithContext(ctx))
	d.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: o.KubeClient.CoreV1().Events("")})
	d.recorder = d.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: o.DriverName, Host: o.NodeName})

	popts := []kubeletplugin.Option{
		kubeletplugin.DriverName(o.DriverName),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.KubeClient(o.KubeClient),
	}
	for _, dir := range []struct {
		path string
		opt  func(string) kubeletplugin.Option
	}{{o.PluginDataDir, kubeletplugin.PluginDataDirectoryPath}, {o.RegistrarDir, kubeletplugin.RegistrarDirectoryPath}} {
		if dir.path == "" {
			continue
		}
		// kubeletplugin.Start expects both directories to exist.
		if err := os.MkdirAll(dir.path, 0o750); err != nil {
			return fmt.Errorf("create %s: %w", dir.path, err)
		}
		popts = append(popts, dir.opt(dir.path))
	}
	popts = append(popts, o.ExtraPluginOptions...)
	h, err := kubeletplugin.Start(ctx, d, popts...)
	if err != nil {
		return fmt.Errorf("start kubelet plugin: %w", err)
	}
	d.mu.Lock()
	d.helper = h
	d.mu.Unlock()
	return d.publish(ctx)
}

// NICConfig returns the current node-config entry of the NIC with the given name (for the NIC
// side: its schedule and what to do when its last claim goes).
func (d *Driver) NICConfig(name string) (config.NIC, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.cfg.NICs {
		if n.Name == name {
			return n, true
		}
	}
	return config.NIC{}, false
}

// Registered reports whether the kubelet has registered the plugin.
func (d *Driver) Registered() bool {
	d.mu.Lock()
	h := d.helper
	d.mu.Unlock()
	if h == nil {
		return false
	}
	st := h.RegistrationStatus()
	return st != nil && st.PluginRegistered
}

// Stop stops serving the kubelet (gRPC servers and the ResourceSlice controller) and the event
// recorder. Prepared state stays in the checkpoint. Order: stop taking new kubelet calls first,
// so no call sees a half-stopped driver, then flush events.
func (d *Driver) Stop() {
	d.mu.Lock()
	stopRebuild, rebuildDone := d.stopRebuild, d.rebuildDone
	d.stopRebuild = nil
	h := d.helper
	d.helper = nil
	d.mu.Unlock()
	if h != nil {
		h.Stop()
	}
	if d.events != nil {
		d.events.Shutdown()
	}
	if stopRebuild != nil {
		stopRebuild()
		<-rebuildDone
	}
}

// UpdateConfig takes a new (validated) node config: devices are rebuilt and republished. Claims
// already prepared keep their state.
func (d *Driver) UpdateConfig(ctx context.Context, cfg *config.NodeConfig) error {
	d.mu.Lock()
	d.cfg = cfg
	d.mu.Unlock()
	return d.Rescan(ctx)
}

// LinkRelevant says whether an event on the link called name can change the devices: it is (or
// may become) a configured NIC's interface. Pod veths coming and going are not, unless a NIC is
// selected by PCI address or driver, or one is still missing. An empty name (a resync after
// lost events) is always relevant.
func (d *Driver) LinkRelevant(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if name == "" {
		return true
	}
	for _, n := range d.inv.nics {
		if n.cfg.Match.InterfaceName == "" || n.cfg.Match.InterfaceName == name {
			return true
		}
		if n.info != nil && n.info.Name == name {
			return true
		}
	}
	return false
}

// Rescan looks at the NICs again (after a link change) and republishes the devices.
func (d *Driver) Rescan(ctx context.Context) error {
	d.mu.Lock()
	inv := buildInventory(d.cfg, d.opts.Discoverer)
	d.inv = inv
	close(d.healthC)
	d.healthC = make(chan struct{})
	d.mu.Unlock()
	d.logInventory(klog.FromContext(ctx))
	return d.publish(ctx)
}

func (d *Driver) logInventory(logger klog.Logger) {
	d.mu.Lock()
	inv := d.inv
	d.mu.Unlock()
	for _, n := range inv.nics {
		if n.err != nil {
			logger.Info("TSN NIC not usable, its classes are not published", "nic", n.cfg.Name, "err", n.err.Error())
			continue
		}
		logger.V(2).Info("TSN NIC found", "nic", n.cfg.Name, "interface", n.info.Name, "up", n.info.Up,
			"txQueues", n.info.TxQueues, "speedMbps", n.info.SpeedMbps, "driver", n.info.Driver,
			"pciAddress", n.info.PCIAddress, "phc", n.info.PHCIndex, "rootQdisc", n.info.RootQdisc)
	}
}

// resources renders the node's pool.
func (d *Driver) resources() resourceslice.DriverResources {
	d.mu.Lock()
	inv := d.inv
	d.mu.Unlock()
	var devs []resourceapi.Device
	for _, cd := range inv.sortedDevices() {
		devs = append(devs, cd.resourceDevice())
	}
	// One pool per node; a slice holds at most ResourceSliceMaxDevices devices.
	var slices []resourceslice.Slice
	for len(devs) > 0 {
		n := min(len(devs), resourceapi.ResourceSliceMaxDevices)
		slices = append(slices, resourceslice.Slice{Devices: devs[:n]})
		devs = devs[n:]
	}
	if len(slices) == 0 {
		// An empty pool withdraws the devices of a NIC that went away.
		slices = []resourceslice.Slice{{}}
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{d.pool: {Slices: slices}}}
}

func (d *Driver) publish(ctx context.Context) error {
	d.mu.Lock()
	h := d.helper
	d.mu.Unlock()
	if h == nil {
		return nil
	}
	res := d.resources()
	n := 0
	for _, s := range res.Pools[d.pool].Slices {
		n += len(s.Devices)
	}
	d.metrics.publishedDevices.Set(float64(n))
	if err := h.PublishResources(ctx, res); err != nil {
		return fmt.Errorf("publish resources: %w", err)
	}
	klog.FromContext(ctx).V(2).Info("Published devices", "pool", d.pool, "devices", n)
	return nil
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		start := time.Now()
		devs, err := d.prepareClaim(ctx, c)
		d.metrics.prepareDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			d.metrics.prepareErrors.Inc()
			err = fmt.Errorf("prepare claim %s/%s for %s: %w", c.Namespace, c.Name, d.opts.DriverName, err)
			klog.FromContext(ctx).Error(err, "Prepare failed", "claim", klog.KObj(c))
			d.event(c, corev1.EventTypeWarning, "PrepareFailed", err.Error())
			out[c.UID] = kubeletplugin.PrepareResult{Err: err}
			continue
		}
		out[c.UID] = kubeletplugin.PrepareResult{Devices: devs}
	}
	d.metrics.preparedClaims.Set(float64(d.state.count()))
	return out, nil
}

func (d *Driver) prepareClaim(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	logger := klog.FromContext(ctx)
	if err := d.stateError(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	inv := d.inv
	d.mu.Unlock()

	old, had := d.state.get(claim.UID)
	plan, err := planClaim(claim, d.opts.DriverName, d.pool, inv)
	if err != nil {
		if had && sameDevices(old, claim, d.opts.DriverName) {
			// Prepared before (maybe before a restart or a config change): the devices are
			// already in use, so keep what was prepared instead of failing a running pod.
			logger.Info("Claim already prepared; keeping the prepared state although it cannot be planned again",
				"claim", klog.KObj(claim), "reason", err.Error())
			return kubeletDevices(old), nil
		}
		return nil, err
	}
	changed := !had || !equalPrepared(old, *plan)
	if changed {
		if err := d.state.put(*plan); err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
	}
	if d.opts.Hooks != nil {
		if err := d.opts.Hooks.ClaimPrepared(ctx, *plan); err != nil {
			if changed {
				var rerr error
				if had {
					rerr = d.state.put(old)
				} else {
					_, rerr = d.state.remove(plan.UID)
				}
				if rerr != nil {
					logger.Error(rerr, "Could not roll back the checkpoint after a failed data-path setup", "claim", klog.KObj(claim))
				}
			}
			return nil, fmt.Errorf("set up data path: %w", err)
		}
	} else if changed {
		logger.Info("Data path not wired: claim prepared and checkpointed, nothing attached", "claim", klog.KObj(claim))
	}
	if changed {
		logger.Info("Prepared claim", "claim", klog.KObj(claim), "devices", deviceNames(plan.Devices), "pods", len(plan.Pods))
	} else {
		logger.V(2).Info("Claim already prepared", "claim", klog.KObj(claim))
	}
	d.updateClaimStatus(ctx, claim, plan)
	return kubeletDevices(*plan), nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		var removed bool
		err := d.stateError()
		if pc, ok := d.state.get(c.UID); err == nil && ok && d.opts.Hooks != nil {
			if herr := d.opts.Hooks.ClaimUnprepared(ctx, pc); herr != nil {
				err = fmt.Errorf("tear down data path: %w", herr)
			}
		}
		if err == nil {
			removed, err = d.state.remove(c.UID)
			if err != nil {
				err = fmt.Errorf("checkpoint: %w", err)
			}
		}
		if err != nil {
			err = fmt.Errorf("unprepare claim %s for %s: %w", c.NamespacedName.String(), d.opts.DriverName, err)
			d.event(&corev1.ObjectReference{Kind: "ResourceClaim", APIVersion: resourceapi.SchemeGroupVersion.String(),
				Namespace: c.Namespace, Name: c.Name, UID: c.UID}, corev1.EventTypeWarning, "UnprepareFailed", err.Error())
		} else if removed {
			klog.FromContext(ctx).Info("Unprepared claim", "claim", c.NamespacedName.String(), "uid", c.UID)
		} else {
			klog.FromContext(ctx).V(2).Info("Claim was not prepared", "claim", c.NamespacedName.String(), "uid", c.UID)
		}
		out[c.UID] = err
	}
	d.metrics.preparedClaims.Set(float64(d.state.count()))
	return out, nil
}

// HandleError implements kubeletplugin.DRAPlugin.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	utilruntime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) && d.opts.OnFatal != nil {
		d.opts.OnFatal(fmt.Errorf("%s: %w", msg, err))
	}
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin: a device is unhealthy while its NIC is
// down or missing (or no longer fits its schedule).
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	t := time.NewTicker(d.opts.HealthResend)
	defer t.Stop()
	for {
		d.mu.Lock()
		changed := d.healthC
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case reports <- d.healthReport():
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}

func (d *Driver) healthReport() kubeletplugin.DeviceHealthReport {
	d.mu.Lock()
	inv := d.inv
	d.mu.Unlock()
	now := time.Now()
	var r kubeletplugin.DeviceHealthReport
	for _, n := range inv.nics {
		status, msg := kubeletplugin.HealthStatusHealthy, ""
		switch {
		case n.err != nil:
			status, msg = kubeletplugin.HealthStatusUnhealthy, n.err.Error()
		case !n.info.Up:
			status, msg = kubeletplugin.HealthStatusUnhealthy, fmt.Sprintf("interface %s is down (%s)", n.info.Name, n.info.OperState)
		}
		for _, tc := range n.cfg.ClaimableClasses {
			r.Devices = append(r.Devices, kubeletplugin.DeviceHealth{
				PoolName: d.pool, DeviceName: deviceName(n.cfg.Name, tc),
				Health: status, Message: msg, LastUpdated: now,
				HealthCheckTimeout: 3 * d.opts.HealthResend,
			})
		}
	}
	return r
}

// updateClaimStatus writes a Ready condition and the pod interface name into the claim's device
// status (server-side apply, field manager = driver name). A failure is reported, not fatal:
// the devices are prepared and the pod can run.
func (d *Driver) updateClaimStatus(ctx context.Context, claim *resourceapi.ResourceClaim, pc *PreparedClaim) {
	podIface := ""
	if len(pc.Pods) > 0 {
		podIface = pc.Pods[0].PodInterface
	}
	now := metav1.Now()
	var devs []*resourceapply.AllocatedDeviceStatusApplyConfiguration
	for _, dev := range pc.Devices {
		ds := resourceapply.AllocatedDeviceStatus().
			WithDriver(d.opts.DriverName).WithPool(dev.Pool).WithDevice(dev.Device).
			WithConditions(metav1apply.Condition().
				WithType("Ready").WithStatus(metav1.ConditionTrue).WithReason("Prepared").
				WithMessage(fmt.Sprintf("traffic class %d of %s (%s) prepared", dev.TrafficClass, dev.NIC, dev.Interface)).
				WithObservedGeneration(claim.Generation).
				WithLastTransitionTime(now)).
			WithNetworkData(resourceapply.NetworkDeviceData().WithInterfaceName(podIface))
		if dev.ShareID != nil {
			ds = ds.WithShareID(string(*dev.ShareID))
		}
		devs = append(devs, ds)
	}
	ac := resourceapply.ResourceClaim(claim.Name, claim.Namespace).
		WithStatus(resourceapply.ResourceClaimStatus().WithDevices(devs...))
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := d.opts.KubeClient.ResourceV1().ResourceClaims(claim.Namespace).ApplyStatus(sctx, ac,
		metav1.ApplyOptions{FieldManager: d.opts.DriverName, Force: true})
	if err != nil {
		d.metrics.statusErrors.Inc()
		klog.FromContext(ctx).Error(err, "Could not update the claim's device status", "claim", klog.KObj(claim))
		d.event(claim, corev1.EventTypeWarning, "StatusUpdateFailed", fmt.Sprintf("device status not written: %v", err))
	}
}

func (d *Driver) event(obj interface{}, eventType, reason, msg string) {
	if d.recorder == nil {
		return
	}
	switch o := obj.(type) {
	case *resourceapi.ResourceClaim:
		ref := &corev1.ObjectReference{Kind: "ResourceClaim", APIVersion: resourceapi.SchemeGroupVersion.String(),
			Namespace: o.Namespace, Name: o.Name, UID: o.UID}
		d.recorder.Event(ref, eventType, reason, msg)
	case *corev1.ObjectReference:
		d.recorder.Event(o, eventType, reason, msg)
	}
}

func kubeletDevices(pc PreparedClaim) []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(pc.Devices))
	for _, d := range pc.Devices {
		out = append(out, kubeletplugin.Device{
			Requests: []string{d.Request}, PoolName: d.Pool, DeviceName: d.Device, ShareID: d.ShareID,
		})
	}
	return out
}

func deviceNames(devs []PreparedDevice) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.Device
	}
	sort.Strings(out)
	return out
}

// sameDevices reports whether the claim's allocation (for this driver) is what was prepared.
func sameDevices(pc PreparedClaim, claim *resourceapi.ResourceClaim, driverName string) bool {
	if claim.Status.Allocation == nil {
		return false
	}
	var want []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == driverName {
			want = append(want, r.Pool+"/"+r.Device+"/"+r.Request)
		}
	}
	var have []string
	for _, d := range pc.Devices {
		have = append(have, d.Pool+"/"+d.Device+"/"+d.Request)
	}
	sort.Strings(want)
	sort.Strings(have)
	if len(want) != len(have) {
		return false
	}
	for i := range want {
		if want[i] != have[i] {
			return false
		}
	}
	return true
}
