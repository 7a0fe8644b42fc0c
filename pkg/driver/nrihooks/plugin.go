package nrihooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containerd/nri/pkg/stub"
	"k8s.io/klog/v2"
)

// Options of the NRI connection.
type Options struct {
	// PluginName is how the runtime lists the plugin (the driver name).
	PluginName string
	// PluginIndex orders the plugin among others ("00".."99").
	PluginIndex string
	// SocketPath is the runtime's NRI socket; empty means the NRI default
	// (/var/run/nri/nri.sock).
	SocketPath string
	// RetryInterval is the wait before reconnecting after the runtime closed
	// the connection (a containerd restart) or could not be reached.
	RetryInterval time.Duration
	// Dialer connects to SocketPath; nil dials the unix socket. Tests use it
	// to cut the connection the way a runtime restart does.
	Dialer func(socketPath string) (net.Conn, error)
}

// Run connects the hooks to the runtime and keeps them connected until ctx is
// done: a runtime restart closes the connection, and the plugin registers
// again (the runtime then sends Synchronize, which reconciles). Before it
// returns, it waits for saver attaches still running in the background (5 s
// at most), so that the caller may close the data path.
func Run(ctx context.Context, h *Hooks, opts Options) error {
	logger := klog.FromContext(ctx)
	defer h.drain(logger)
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 2 * time.Second
	}
	if opts.PluginIndex == "" {
		opts.PluginIndex = "10"
	}
	for {
		err := runOnce(ctx, h, opts)
		if ctx.Err() != nil {
			return nil
		}
		logger.Error(err, "NRI connection ended; reconnecting", "socket", opts.SocketPath, "retryIn", opts.RetryInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(opts.RetryInterval):
		}
	}
}

func runOnce(ctx context.Context, h *Hooks, opts Options) error {
	// The runtime closing the connection (containerd restarting) must end
	// this run so that Run registers again; the stub reports it through
	// onClose only.
	runCtx, closed := context.WithCancel(ctx)
	defer closed()
	sopts := []stub.Option{
		stub.WithPluginName(opts.PluginName),
		stub.WithPluginIdx(opts.PluginIndex),
		stub.WithOnClose(closed),
	}
	if opts.SocketPath != "" {
		sopts = append(sopts, stub.WithSocketPath(opts.SocketPath))
	}
	if opts.Dialer != nil {
		sopts = append(sopts, stub.WithDialer(opts.Dialer))
	}
	// The stub passes its own background context to the hooks; give them the
	// driver's logger back.
	s, err := stub.New(&contextHooks{h: h, logger: klog.FromContext(ctx)}, sopts...)
	if err != nil {
		return fmt.Errorf("create NRI plugin stub: %w", err)
	}
	err = s.Run(runCtx)
	if ctx.Err() == nil && errors.Is(err, context.Canceled) {
		return errors.New("the runtime closed the NRI connection")
	}
	if err != nil {
		return fmt.Errorf("run NRI plugin: %w", err)
	}
	return errors.New("NRI plugin stopped")
}
