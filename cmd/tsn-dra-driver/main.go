// Command tsn-dra-driver is the node daemon of the TSN DRA driver: it publishes the node's TSN
// traffic classes as DRA devices and prepares claims on them for the kubelet.
//
// Shutdown order (on SIGTERM/SIGINT):
//  1. stop watching the node config and the links, so nothing republishes while stopping;
//  2. stop the kubelet plugin: the registration and DRA gRPC servers, then the ResourceSlice
//     controller (slices stay; the kubelet removes them when the plugin stays unregistered);
//  3. flush events;
//  4. disconnect from the runtime's NRI: pods started from now on get no saver until the driver
//     is back (the runtime's Synchronize then attaches them); saver attaches and detaches still
//     queued are done first (5 s at most);
//  5. stop the HTTP server (/healthz, /readyz, /metrics), so probes answer until the end;
//  6. close the data path: handles go, programs, pins and qdiscs stay, so running pods keep
//     their priorities while the driver restarts.
//
// Prepared claims need no flush: the checkpoint is written through on every change.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
)

type flags struct {
	driverName     string
	nodeName       string
	configPath     string
	configPoll     time.Duration
	stateDir       string
	pluginDataDir  string
	registrarDir   string
	kubeconfig     string
	httpAddress    string
	healthResend   time.Duration
	linkDebounce   time.Duration
	shutdownWindow time.Duration
	dataPath       dataPathFlags
}

func parseFlags() *flags {
	klog.InitFlags(flag.CommandLine)
	f := registerFlags(flag.CommandLine)
	flag.Parse()
	if f.pluginDataDir == "" {
		f.pluginDataDir = filepath.Join("/var/lib/kubelet/plugins", f.driverName)
	}
	return f
}

// registerFlags defines the daemon's own flags on fs (klog's are added by
// parseFlags); docs/configuration.md lists them, checked by a test.
func registerFlags(fs *flag.FlagSet) *flags {
	f := &flags{}
	fs.StringVar(&f.driverName, "driver-name", driver.DefaultDriverName, "DRA driver name (also the domain of device attributes and the opaque config driver)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&f.configPath, "config", "/etc/tsn-dra-driver/config.yaml", "node config file (YAML, usually a ConfigMap volume)")
	fs.DurationVar(&f.configPoll, "config-poll-interval", 5*time.Second, "how often the node config file is checked for changes")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/tsn-dra-driver", "directory for the prepared-claims checkpoint (must survive restarts)")
	fs.StringVar(&f.pluginDataDir, "kubelet-plugin-dir", "", "directory for the DRA socket (default /var/lib/kubelet/plugins/<driver-name>)")
	fs.StringVar(&f.registrarDir, "kubelet-registry-dir", "/var/lib/kubelet/plugins_registry", "kubelet plugin registration directory")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&f.httpAddress, "http-address", ":9178", "address for /healthz, /readyz and /metrics (empty disables)")
	fs.DurationVar(&f.healthResend, "health-resend-interval", 10*time.Second, "how often device health is re-sent to the kubelet when unchanged")
	fs.DurationVar(&f.linkDebounce, "link-debounce", 200*time.Millisecond, "wait after a link event before rescanning, to batch bursts")
	fs.DurationVar(&f.shutdownWindow, "shutdown-timeout", 5*time.Second, "time allowed for the HTTP server to stop")
	f.dataPath.register(fs)
	return f
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(statusMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	f := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := klog.LoggerWithName(klog.Background(), "tsn-dra-driver")
	ctx = klog.NewContext(ctx, logger)
	if err := run(ctx, f); err != nil {
		logger.Error(err, "Exiting")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(ctx context.Context, f *flags) error {
	logger := klog.FromContext(ctx)
	if f.nodeName == "" {
		return errors.New("--node-name (or $NODE_NAME) is required")
	}
	cw, err := config.NewWatcher(f.configPath)
	if err != nil {
		return err
	}
	client, err := kubeClient(f.kubeconfig)
	if err != nil {
		return err
	}
	disc, err := nic.New()
	if err != nil {
		return err
	}
	defer disc.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The NIC setup looks NICs up in the driver's config, and the driver calls
	// the NIC setup from Prepare: the closure breaks the cycle.
	var d *driver.Driver
	dp, err := openDataPath(ctx, &f.dataPath, func(name string) (config.NIC, bool) { return d.NICConfig(name) }, reg)
	if err != nil {
		return err
	}
	defer func() { // 6
		if err := dp.close(); err != nil {
			logger.Error(err, "Closing the data path")
		}
	}()
	d, err = driver.New(ctx, driver.Options{
		DriverName: f.driverName, NodeName: f.nodeName, KubeClient: client,
		Discoverer: disc, Config: cw.Current(), StateDir: f.stateDir,
		PluginDataDir: f.pluginDataDir, RegistrarDir: f.registrarDir,
		HealthResend: f.healthResend, Metrics: driver.NewMetrics(reg),
		OnFatal: func(err error) { cancel(err) },
		Hooks:   dp.hooks,
	})
	if err != nil {
		return err
	}
	registerDataPathMetrics(ctx, reg, dp, d.Store())
	if err := dp.resume(ctx, d.Store().PreparedClaims()); err != nil {
		// Kubelet does not prepare these claims again; their pods keep what
		// is still on the NIC, and the next prepare on the NIC retries.
		logger.Error(err, "Resuming the NIC setup of checkpointed claims")
	}

	var started atomic.Bool
	srv := httpServer(f.httpAddress, reg, &started, d)
	if srv != nil {
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cancel(fmt.Errorf("HTTP server: %w", err))
			}
		}()
	}

	if err := d.Start(ctx); err != nil {
		d.Stop()
		if srv != nil {
			_ = srv.Close()
		}
		if ctx.Err() != nil {
			// Stopped while waiting for the API server: a normal shutdown.
			logger.Info("Stopped during start-up", "cause", context.Cause(ctx), "err", err.Error())
			return nil
		}
		return err
	}
	started.Store(true)
	logger.Info("Driver started", "driver", f.driverName, "node", f.nodeName, "config", f.configPath,
		"bpfPinDir", f.dataPath.pinDir, "attachMode", dp.mgr.Mode(), "saverAttach", f.dataPath.saverAttach)

	nriCtx, stopNRI := context.WithCancel(ctx)
	nriDone := make(chan struct{})
	go func() {
		defer close(nriDone)
		// NRI's Synchronize detaches the savers of pods without a prepared claim: wait until the
		// prepared state is known (a damaged checkpoint may still be rebuilding).
		select {
		case <-d.StateReady():
		case <-nriCtx.Done():
			return
		}
		if err := dp.runNRI(nriCtx, &f.dataPath, f.driverName, d.Store(), reg); err != nil {
			cancel(fmt.Errorf("NRI plugin: %w", err))
		}
	}()

	var wg sync.WaitGroup
	watchCtx, stopWatching := context.WithCancel(ctx)
	wg.Add(2)
	go func() {
		defer wg.Done()
		cw.Run(watchCtx, f.configPoll, func(c *config.NodeConfig) {
			if err := d.UpdateConfig(watchCtx, c); err != nil {
				logger.Error(err, "Applying the new node config")
			}
		}, nil)
	}()
	go func() {
		defer wg.Done()
		watchLinks(watchCtx, disc, d, f.linkDebounce)
	}()

	<-ctx.Done()
	cause := context.Cause(ctx)
	logger.Info("Shutting down", "cause", cause)
	stopWatching() // 1
	wg.Wait()
	d.Stop()  // 2, 3
	stopNRI() // 4
	<-nriDone
	if srv != nil { // 5
		sctx, scancel := context.WithTimeout(context.Background(), f.shutdownWindow)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}
	if cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// watchLinks rescans after link events, batching bursts.
func watchLinks(ctx context.Context, disc *nic.Discoverer, d *driver.Driver, debounce time.Duration) {
	logger := klog.FromContext(ctx)
	kick := make(chan struct{}, 1)
	go func() {
		err := disc.Watch(ctx, func(c nic.Change) {
			if !d.LinkRelevant(c.Name) {
				return
			}
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		if err != nil {
			logger.Error(err, "Link events unavailable; devices follow link changes only on config reloads")
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(debounce):
		}
		select { // drop kicks that arrived during the wait
		case <-kick:
		default:
		}
		if err := d.Rescan(ctx); err != nil {
			logger.Error(err, "Republishing after a link change")
		}
	}
}

func httpServer(addr string, reg *prometheus.Registry, started *atomic.Bool, d *driver.Driver) *http.Server {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !started.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.Registered() {
			http.Error(w, "not registered with the kubelet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("Kubernetes client config: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}
