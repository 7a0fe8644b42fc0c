package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nicsetup"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/nrihooks"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/podplan"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

// dataPathFlags configure the eBPF data path and the NRI plugin.
type dataPathFlags struct {
	pinDir      string
	saverAttach string
	maxPods     uint
	quota       uint
	nriSocket   string
	nriIndex    string
	// How long the NRI hooks wait for a saver attach (docs/pod-lifecycle.md).
	nriAttachWait    time.Duration
	nriContainerWait time.Duration
}

func (f *dataPathFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.pinDir, "bpf-pin-dir", datapath.DefaultPinDir, "bpffs directory for the data path's maps and links (kept across restarts; versioned by map layout)")
	fs.StringVar(&f.saverAttach, "saver-attach", string(datapath.ModeTC), "how savers attach to pod interfaces: tc (cls_bpf, sub-ms, meets the NRI hook budget) or tcx (waits for an RCU grace period, 10-20 ms)")
	fs.UintVar(&f.maxPods, "max-pods", 64, "pods with a saver at once (sizes the shared map; changing it needs a new --bpf-pin-dir)")
	fs.UintVar(&f.quota, "pod-quota", 256, "in-flight packets one pod may have saved at once (sizes the shared map)")
	fs.StringVar(&f.nriSocket, "nri-socket", "", "the container runtime's NRI socket (default /var/run/nri/nri.sock)")
	fs.StringVar(&f.nriIndex, "nri-plugin-index", "10", "order of the NRI plugin among the runtime's plugins")
	fs.DurationVar(&f.nriAttachWait, "nri-attach-wait", nrihooks.DefaultAttachWait, "how long RunPodSandbox waits for the pod's saver attach before it returns and lets the attach go on (the pod's containers then wait for it); 0 never waits")
	fs.DurationVar(&f.nriContainerWait, "nri-container-wait", nrihooks.DefaultContainerWait, "how long CreateContainer waits for a saver attach still running before it fails the container (the kubelet retries it); never past the runtime's NRI request deadline less 100ms (containerd: 2s)")
}

// validate checks the flags that need no system access.
func (f *dataPathFlags) validate() error {
	if mode := datapath.AttachMode(f.saverAttach); mode != datapath.ModeTC && mode != datapath.ModeTCX {
		return fmt.Errorf("--saver-attach=%q: want tc or tcx", f.saverAttach)
	}
	if f.nriAttachWait < 0 {
		return fmt.Errorf("--nri-attach-wait=%v: want 0 or more", f.nriAttachWait)
	}
	if f.nriContainerWait <= 0 {
		return fmt.Errorf("--nri-container-wait=%v: want more than 0", f.nriContainerWait)
	}
	return nil
}

// dataPath is the eBPF data path with the NIC setup and pod hooks on top.
type dataPath struct {
	mgr   *datapath.Manager
	qdisc *qdisc.Client
	hooks nicsetup.ClaimHooks
	// stopGuard stops the taprio guard and waits for it.
	stopGuard func()
}

// openDataPath loads (or adopts) the data path, and starts the guard that
// re-applies NIC schedules an event stopped (docs/qdisc.md). nics looks NICs
// up in the driver's current node config.
func openDataPath(ctx context.Context, f *dataPathFlags, nics func(string) (config.NIC, bool), reg prometheus.Registerer) (*dataPath, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	mode := datapath.AttachMode(f.saverAttach)
	mgr, err := datapath.Open(ctx, datapath.WithPinDir(f.pinDir), datapath.WithSaverAttachMode(mode),
		datapath.WithMaxPods(uint32(f.maxPods)), datapath.WithQuota(uint32(f.quota)))
	if err != nil {
		return nil, fmt.Errorf("open the eBPF data path: %w", err)
	}
	qc, err := qdisc.NewClient()
	if err != nil {
		_ = mgr.Close()
		return nil, fmt.Errorf("open the qdisc client: %w", err)
	}
	setup := nicsetup.New(mgr, nicsetup.NewQdiscSchedules(qc, nics))
	port, err := qc.PortID()
	if err != nil {
		qc.Close()
		_ = mgr.Close()
		return nil, fmt.Errorf("netlink port of the qdisc client: %w", err)
	}
	guard := nicsetup.NewGuard(setup, nicsetup.WithOwnPort(port), nicsetup.WithGuardMetrics(nicsetup.NewGuardMetrics(reg)))
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A guard that cannot watch leaves schedules unrepaired, not pods
		// unserved: logged, not fatal.
		if err := guard.Run(gctx); err != nil {
			klog.FromContext(ctx).Error(err, "Taprio guard stopped: NIC schedules stopped by link or qdisc events are not repaired")
		}
	}()
	return &dataPath{mgr: mgr, qdisc: qc, hooks: nicsetup.ClaimHooks{Setup: setup, NICs: nics},
		stopGuard: func() { cancel(); <-done }}, nil
}

// resume re-acquires the NICs of the claims prepared before a restart: the
// setup's claim counts live in memory, and a NIC whose schedule or restorer
// went away while the driver was down is put right again. A schedule still
// in place but stopped while the driver was down (a link flap, another
// process's qdisc change) looks as applied: the guard, which was told of the
// setup's NICs in NewGuard, checks each NIC once as it begins to watch it.
func (p *dataPath) resume(ctx context.Context, claims []driver.PreparedClaim) error {
	var errs []error
	for _, c := range claims {
		if err := p.hooks.ClaimPrepared(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("claim %s/%s: %w", c.Namespace, c.Name, err))
		}
	}
	if len(claims) > 0 {
		klog.FromContext(ctx).Info("Resumed the NIC setup of checkpointed claims", "claims", len(claims), "errors", len(errs))
	}
	return errors.Join(errs...)
}

// runNRI connects the pod hooks to the runtime until ctx ends.
func (p *dataPath) runNRI(ctx context.Context, f *dataPathFlags, driverName string, store driver.ClaimStore, reg prometheus.Registerer) error {
	plans := podplan.Source{Claims: store, Logger: klog.FromContext(ctx)}
	h := nrihooks.New(plans, p.mgr, nrihooks.NewMetrics(reg),
		nrihooks.WithAttachWait(f.nriAttachWait), nrihooks.WithContainerWait(f.nriContainerWait))
	return nrihooks.Run(ctx, h, nrihooks.Options{PluginName: driverName, PluginIndex: f.nriIndex, SocketPath: f.nriSocket})
}

// close releases handles; attached programs, pins and qdiscs stay, so pods
// keep being served while the driver restarts.
func (p *dataPath) close() error {
	p.stopGuard()
	p.qdisc.Close()
	return p.mgr.Close()
}
