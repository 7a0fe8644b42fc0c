// Package nrihooks attaches the TSN metadata saver to pods as the container
// runtime creates them, through NRI (github.com/containerd/nri).
//
// The pod's network namespace only exists after kubelet has prepared the pod's
// claims, so the per-pod work cannot happen in the DRA Prepare call.
// Everything that can be computed ahead of time (which NIC, which priorities,
// the policy) is computed in Prepare and handed over through a PlanSource; the
// hooks here look the plan up and call the data path.
//
// # Time budgets
//
// containerd gives an NRI request 2 s; a request that runs over is dropped:
// the runtime disconnects the plugin and goes on without it, so the pod or
// container would start unprotected. The attach is kernel work in the pod's
// network namespace (a clsact qdisc, a cls_bpf filter, a bpffs pin): well
// under a millisecond as a rule, but on a loaded node each of those requests
// now and then takes tens to hundreds of milliseconds. So:
//
//   - RunPodSandbox starts the attach and waits for it for a short budget
//     (WithAttachWait, 10 ms by default). An attach that ended in time is
//     reported as it is: an error fails the sandbox. One that did not goes on
//     in the background and the hook returns nil.
//   - CreateContainer is the barrier. A container of a pod whose attach is
//     still running waits for it (WithContainerWait, 1.5 s by default, and
//     never past the request's own deadline). If the attach failed, or is
//     still running when the wait ends, CreateContainer fails with an error
//     that says so: containerd fails that container and the kubelet retries
//     it. The next CreateContainer of the pod starts a new attach if the last
//     one failed (and waits for the running one if not).
//
// # The invariant
//
// A pod's application containers never start without its saver: for a pod
// sandbox with a plan, CreateContainer returns nil only once an attach of the
// saver to that sandbox has succeeded. Pods without a plan, and pods whose
// attach succeeded, pay one map lookup in CreateContainer.
//
// # Ordering
//
// The hooks keep per sandbox the attach in flight or the last one that
// failed. All kernel work (attaches, detaches, Synchronize's sweep of stale
// savers) is queued and done by one worker goroutine, in the order the hooks
// asked for it, which is the order of the runtime's events: a detach runs
// after the attach of the same sandbox, a sweep after the attaches of its
// Synchronize and before those of later pods, and "list the savers, detach
// one" cannot interleave with an attach. The data path serializes this work
// anyway, so per-pod concurrency would gain nothing. Every hook waits for its
// work only up to its budget: a stuck kernel request delays the queue, never
// a hook past its budget. A sandbox that stops while its attach is queued or
// running is marked stopped: an attach not yet begun is skipped, and the
// detach queued behind it takes off what it attached; StopPodSandbox and
// RemovePodSandbox wait for that up to the container budget. Synchronize
// stops the sandboxes it no longer lists the same way and joins an attach in
// flight rather than queueing a second one.
package nrihooks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

const (
	// DefaultAttachWait is how long RunPodSandbox waits for the saver attach.
	DefaultAttachWait = 10 * time.Millisecond
	// DefaultContainerWait is how long CreateContainer (and a stop) waits for
	// an attach in flight: under containerd's 2 s request timeout.
	DefaultContainerWait = 1500 * time.Millisecond

	// deadlineMargin is kept free before the runtime's own request deadline,
	// so that an error saying why reaches the runtime before it drops the
	// request (and the plugin with it).
	deadlineMargin = 100 * time.Millisecond
	// drainTimeout bounds how long Run waits for attaches in flight when it
	// returns (the daemon closes the data path next).
	drainTimeout = 5 * time.Second
)

// errSandboxStopped is the result of an attach whose sandbox stopped before
// or while it ran: no saver is left on it.
var errSandboxStopped = errors.New("the pod sandbox stopped")

// PodPlan is what the data path must do for one pod, derived from the pod's
// prepared claims.
type PodPlan struct {
	// Interface is the pod's interface the saver goes on (eth0 unless the
	// claim says otherwise).
	Interface string
	// Policy holds the pod to the traffic classes it claimed.
	Policy datapath.Policy
	// Claims names the claims (namespace/name) the plan comes from, for logs.
	Claims []string
	// Err, when set, says why the pod's claims give no usable plan (they
	// contradict each other); the pod's sandbox then fails with it.
	Err error
}

// PlanSource answers, for a pod, what its prepared claims ask of the data
// path. The DRA plugin implements it from its claim state.
type PlanSource interface {
	// PodPlan returns the pod's plan and true when the pod has prepared
	// claims on this driver.
	PodPlan(podUID string) (PodPlan, bool)
}

// Savers is the part of the data path the hooks drive; datapath.Manager
// implements it, tests fake it.
type Savers interface {
	AttachSaver(ctx context.Context, podUID, netnsPath, ifname string, p datapath.Policy) error
	DetachSaver(ctx context.Context, podUID string) error
	Savers() ([]datapath.SaverInfo, error)
}

// Option configures Hooks.
type Option func(*Hooks)

// WithAttachWait sets how long RunPodSandbox waits for the saver attach
// before it returns and lets the attach go on (DefaultAttachWait). Zero
// never waits: every attach is then checked at CreateContainer only.
func WithAttachWait(d time.Duration) Option {
	return func(h *Hooks) { h.attachWait = max(d, 0) }
}

// WithContainerWait sets how long CreateContainer waits for an attach in
// flight before it fails the container, and how long StopPodSandbox,
// RemovePodSandbox and Synchronize wait for their work before they return and
// let it go on (DefaultContainerWait). Keep it under the runtime's request
// timeout (containerd: 2 s); a wait never runs past the request's own
// deadline anyway.
func WithContainerWait(d time.Duration) Option {
	return func(h *Hooks) {
		if d > 0 {
			h.containerWait = d
		}
	}
}

// Hooks implements the NRI pod sandbox and container events the driver
// needs. It is safe for concurrent use.
type Hooks struct {
	plans         PlanSource
	savers        Savers
	metrics       *Metrics
	attachWait    time.Duration
	containerWait time.Duration

	// mu guards what follows and the fields of the sandboxes and ops in
	// them; it is never held during kernel work.
	mu sync.Mutex
	// sandboxes holds, by sandbox ID, the sandboxes with an attach in flight
	// or whose last attach failed. A sandbox whose saver is attached is not
	// in it: its containers pass on one lookup.
	sandboxes map[string]*sandbox
	// queue holds the ops not begun, in order; working says the worker
	// goroutine runs (it ends when the queue is empty).
	queue   []queued
	working bool
	// running holds the ops queued or running, for Run's drain.
	running map[*op]struct{}
}

type queued struct {
	o      *op
	ctx    context.Context
	work   func(context.Context) (bool, error)
	finish func()
}

// sandbox is the saver state of one pod sandbox.
type sandbox struct {
	key string
	pod *api.PodSandbox
	// last is the attach in flight or the last one; never nil.
	last *op
	// stopped says StopPodSandbox or RemovePodSandbox came, or Synchronize
	// no longer listed the sandbox; a detach follows the attach.
	stopped bool
}

// op is one piece of kernel work (an attach, a detach, Synchronize's sweep)
// done by the worker, so that the hook that asked for it can stop waiting for
// it.
type op struct {
	kind string // attach, detach, sweep
	// by is the hook that started it.
	by      string
	pod     *api.PodSandbox
	started time.Time
	// done is closed when the op ended; the fields below are set before.
	done  chan struct{}
	ended bool
	err   error
	// did says a detach took a saver off.
	did bool
	// result of an attach for the late counter: success, error, stopped.
	result string
	// unwatched says the hook that started it returned without its result:
	// the op logs (and, an attach, counts) its own end.
	unwatched bool
}

// New returns hooks that attach savers per the plans. metrics may be nil.
func New(plans PlanSource, savers Savers, metrics *Metrics, opts ...Option) *Hooks {
	h := &Hooks{
		plans: plans, savers: savers, metrics: metrics,
		attachWait: DefaultAttachWait, containerWait: DefaultContainerWait,
		sandboxes: map[string]*sandbox{}, running: map[*op]struct{}{},
	}
	for _, o := range opts {
		o(h)
	}
	return h
}

// Synchronize reconciles the data path with the pods the runtime has: it
// attaches what a planned pod is missing (a driver restart, or a pod created
// while the driver was down) and detaches what belongs to pods that are gone.
// It waits for this work up to the container budget; what takes longer goes
// on (the pods' containers wait for their attaches in CreateContainer), so
// that the runtime, which gives a sync 2 s too, does not drop the plugin.
func (h *Hooks) Synchronize(ctx context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	deadline := start.Add(h.budget(ctx, h.containerWait))

	listed := make(map[string]bool, len(pods))
	live := make(map[string]bool, len(pods))
	for _, pod := range pods {
		listed[sandboxKey(pod)] = true
		live[pod.GetUid()] = true
	}
	// Sandboxes the runtime no longer lists went while the plugin was not
	// connected: treat them as stopped (an attach in flight is followed by
	// a detach).
	h.mu.Lock()
	var gone []*sandbox
	for key, sb := range h.sandboxes {
		if !listed[key] && !sb.stopped {
			gone = append(gone, sb)
		}
	}
	h.mu.Unlock()
	for _, sb := range gone {
		h.stopSandbox(ctx, "Synchronize", sb.pod)
	}

	var errs []error
	var attaches []*op
	for _, pod := range pods {
		plan, ok := h.plans.PodPlan(pod.GetUid())
		if !ok {
			continue
		}
		if _, err := checkPlan(pod, plan); err != nil {
			// The pod runs already (it started while the driver was down):
			// its next containers must not start unprotected either.
			h.recordFailure(pod, err)
			errs = append(errs, err)
			continue
		}
		_, a := h.startAttach(ctx, "Synchronize", pod, plan)
		attaches = append(attaches, a)
	}
	attached, pending := 0, 0
	for _, a := range attaches {
		ended, err := h.await(ctx, a, time.Until(deadline))
		switch {
		case !ended:
			pending++
		case err != nil:
			errs = append(errs, err)
		default:
			attached++
		}
	}

	sw := h.startSweep(ctx, live)
	swept := "done"
	if ended, err := h.await(ctx, sw, time.Until(deadline)); !ended {
		swept = "in the background"
	} else if err != nil {
		errs = append(errs, err)
	}

	h.metrics.observe("Synchronize", start, errors.Join(errs...))
	logger.Info("Synchronized with the runtime", "pods", len(pods), "attached", attached, "stillAttaching", pending,
		"staleSaverSweep", swept, "errors", len(errs), "duration", time.Since(start))
	// An error here would make the runtime drop the plugin; what failed is
	// logged, and the pod's next container or the next restart retries.
	for _, err := range errs {
		logger.Error(err, "Synchronize")
	}
	return nil, nil
}

// startSweep queues the detach of the savers of pods the runtime did not
// list (live) or that no longer have a plan. Attaches of pods that come after
// the sync are queued after it.
func (h *Hooks) startSweep(ctx context.Context, live map[string]bool) *op {
	return h.enqueue(ctx, h.newOp("sweep", "Synchronize", nil), func(ctx context.Context) (bool, error) {
		savers, err := h.savers.Savers()
		if err != nil {
			return false, fmt.Errorf("list attached savers: %w", err)
		}
		var errs []error
		detached := 0
		for _, s := range savers {
			if live[s.PodUID] {
				if _, planned := h.plans.PodPlan(s.PodUID); planned {
					continue
				}
			}
			// A saver whose pod is gone, or whose claims were unprepared
			// while the driver was down, must not keep holding a slot and a
			// policy.
			if err := h.savers.DetachSaver(ctx, s.PodUID); err != nil {
				errs = append(errs, fmt.Errorf("detach saver of stale pod %s: %w", s.PodUID, err))
				continue
			}
			klog.FromContext(ctx).Info("Detached saver of a pod that is gone or no longer claims", "podUID", s.PodUID, "netns", s.NetnsPath)
			detached++
		}
		return detached > 0, errors.Join(errs...)
	}, nil)
}

// RunPodSandbox attaches the saver to a pod with prepared claims. Pods without
// a claim return at once. An error fails the sandbox: a pod that claimed a
// traffic class must not start silently unprotected. An attach that takes
// longer than the attach budget goes on after the hook returns; the pod's
// containers wait for it (CreateContainer).
func (h *Hooks) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	start := time.Now()
	plan, ok := h.plans.PodPlan(pod.GetUid())
	if !ok {
		return nil
	}
	if _, err := checkPlan(pod, plan); err != nil {
		h.metrics.observe("RunPodSandbox", start, err)
		return err
	}
	sb, a := h.startAttach(ctx, "RunPodSandbox", pod, plan)
	ended, err := h.await(ctx, a, h.budget(ctx, h.attachWait))
	if !ended {
		podLogger(ctx, pod).Info("Saver attach outlived the RunPodSandbox budget: it goes on, and the pod's containers wait for it",
			"claims", plan.Claims, "budget", h.attachWait, "waited", time.Since(start))
		h.metrics.observe("RunPodSandbox", start, nil)
		return nil
	}
	if err != nil {
		// The sandbox fails with this error: nothing to keep for it.
		h.forget(sb, a)
	}
	h.metrics.observe("RunPodSandbox", start, err)
	return err
}

// CreateContainer holds back the containers of a pod whose saver attach has
// not succeeded (see the package comment). Other pods pass on one lookup.
func (h *Hooks) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	h.mu.Lock()
	sb := h.sandboxes[sandboxKey(pod)]
	var (
		a              *op
		stopped, ended bool
		lastErr        error
	)
	if sb != nil {
		a, stopped, ended, lastErr = sb.last, sb.stopped, sb.last.ended, sb.last.err
	}
	h.mu.Unlock()
	if sb == nil || (ended && lastErr == nil) {
		return nil, nil, nil
	}
	if stopped {
		return nil, nil, fmt.Errorf("pod %s/%s: container %s: the pod sandbox is stopping", pod.GetNamespace(), pod.GetName(), ctr.GetName())
	}

	start := time.Now()
	logger := podLogger(ctx, pod).WithValues("container", ctr.GetName())
	if ended {
		// The last attach failed (its error was logged, or returned to a
		// container): try again.
		plan, ok := h.plans.PodPlan(pod.GetUid())
		if !ok {
			// The claims went: nothing left to protect.
			h.forget(sb, a)
			return nil, nil, nil
		}
		if _, err := checkPlan(pod, plan); err != nil {
			h.metrics.observeContainerWait("failed", start)
			return nil, nil, h.containerErr(pod, ctr, err)
		}
		logger.Info("Retrying the saver attach, which failed before", "lastError", lastErr.Error())
		_, a = h.startAttach(ctx, "CreateContainer", pod, plan)
	}
	ended, err := h.await(ctx, a, h.budget(ctx, h.containerWait))
	waited := time.Since(start)
	switch {
	case !ended:
		h.metrics.observeContainerWait("timeout", start)
		logger.Info("Container waited for the pod's saver in vain: the attach is still running; failing the container", "waited", waited)
		return nil, nil, fmt.Errorf("pod %s/%s: container %s cannot start without the pod's TSN saver, which is still being attached after %v (the container is retried)",
			pod.GetNamespace(), pod.GetName(), ctr.GetName(), waited.Round(time.Millisecond))
	case err != nil:
		h.metrics.observeContainerWait("failed", start)
		logger.Info("Container waited for the pod's saver, whose attach failed; failing the container", "waited", waited, "err", err.Error())
		return nil, nil, h.containerErr(pod, ctr, err)
	}
	h.metrics.observeContainerWait("attached", start)
	logger.Info("Container waited for the pod's saver", "waited", waited)
	return nil, nil, nil
}

func (h *Hooks) containerErr(pod *api.PodSandbox, ctr *api.Container, err error) error {
	return fmt.Errorf("pod %s/%s: container %s cannot start without the pod's TSN saver (the next container creation retries the attach): %w",
		pod.GetNamespace(), pod.GetName(), ctr.GetName(), err)
}

// StopPodSandbox detaches the pod's saver. The network namespace may already
// be gone; that is not an error.
func (h *Hooks) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return h.stop(ctx, "StopPodSandbox", pod)
}

// RemovePodSandbox detaches again, for runtimes that skip the stop event.
func (h *Hooks) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return h.stop(ctx, "RemovePodSandbox", pod)
}

func (h *Hooks) stop(ctx context.Context, event string, pod *api.PodSandbox) error {
	start := time.Now()
	d, afterAttach := h.stopSandbox(ctx, event, pod)
	ended, err := h.await(ctx, d, h.budget(ctx, h.containerWait))
	logger := podLogger(ctx, pod).WithValues("event", event)
	if !ended {
		logger.Info("Saver detach goes on after the hook returns (it waits for the pod's attach, or for other pods' kernel work)",
			"waitedForAttach", afterAttach, "waited", time.Since(start))
		h.metrics.observe(event, start, nil)
		return nil
	}
	h.mu.Lock()
	did := d.did
	h.mu.Unlock()
	if did || err != nil || afterAttach {
		h.metrics.observe(event, start, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", event, err)
	}
	if did {
		logger.Info("Detached saver", "waitedForAttach", afterAttach, "duration", time.Since(start))
	}
	return nil
}

// stopSandbox marks the sandbox stopped and queues the detach of its saver,
// behind the sandbox's attach in flight, if any (then the second result is
// true).
func (h *Hooks) stopSandbox(ctx context.Context, by string, pod *api.PodSandbox) (*op, bool) {
	key := sandboxKey(pod)
	h.mu.Lock()
	var inflight *op
	if sb := h.sandboxes[key]; sb != nil {
		sb.stopped = true
		if sb.last.ended {
			delete(h.sandboxes, key)
		} else {
			// The attach removes the entry when it ends.
			inflight = sb.last
		}
	}
	h.mu.Unlock()
	d := h.enqueue(ctx, h.newOp("detach", by, pod), func(ctx context.Context) (bool, error) {
		return h.detachSaver(ctx, pod)
	}, nil)
	return d, inflight != nil
}

// startAttach queues the attach of the pod's saver, or returns the one in
// flight for the sandbox.
func (h *Hooks) startAttach(ctx context.Context, by string, pod *api.PodSandbox, plan PodPlan) (*sandbox, *op) {
	key := sandboxKey(pod)
	h.mu.Lock()
	sb := h.sandboxes[key]
	if sb != nil && !sb.last.ended {
		h.mu.Unlock()
		return sb, sb.last
	}
	if sb == nil || sb.stopped {
		sb = &sandbox{key: key}
		h.sandboxes[key] = sb
	}
	sb.pod = pod
	a := h.newOp("attach", by, pod)
	sb.last = a
	h.mu.Unlock()
	h.enqueue(ctx, a, func(ctx context.Context) (bool, error) {
		h.mu.Lock()
		stopped := sb.stopped
		h.mu.Unlock()
		if stopped {
			return false, errSandboxStopped
		}
		return true, h.attachSaver(ctx, pod, plan)
	}, func() {
		// Under h.mu, as the attach ends.
		switch {
		case errors.Is(a.err, errSandboxStopped) || (a.err == nil && sb.stopped):
			// A detach is queued behind it.
			a.result = "stopped"
		case a.err != nil:
			a.result = "error"
		default:
			a.result = "success"
		}
		if (a.err == nil || sb.stopped) && h.sandboxes[sb.key] == sb && sb.last == a {
			delete(h.sandboxes, sb.key)
		}
	})
	return sb, a
}

func (h *Hooks) newOp(kind, by string, pod *api.PodSandbox) *op {
	return &op{kind: kind, by: by, pod: pod, started: time.Now(), done: make(chan struct{})}
}

// enqueue queues o's work for the worker; finish, if set, runs under h.mu as
// o ends.
func (h *Hooks) enqueue(ctx context.Context, o *op, work func(context.Context) (bool, error), finish func()) *op {
	// The op outlives the hook's request, whose context the runtime cancels
	// when the hook returns; keep its values (the logger).
	ctx = context.WithoutCancel(ctx)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running[o] = struct{}{}
	h.queue = append(h.queue, queued{o: o, ctx: ctx, work: work, finish: finish})
	if !h.working {
		h.working = true
		go h.worker()
	}
	return o
}

// worker does the queued ops in order, and ends when the queue is empty.
func (h *Hooks) worker() {
	for {
		h.mu.Lock()
		if len(h.queue) == 0 {
			h.working = false
			h.mu.Unlock()
			return
		}
		q := h.queue[0]
		h.queue[0] = queued{}
		h.queue = h.queue[1:]
		h.mu.Unlock()

		did, err := q.work(q.ctx)
		o := q.o
		h.mu.Lock()
		o.ended, o.did, o.err = true, did, err
		if q.finish != nil {
			q.finish()
		}
		delete(h.running, o)
		unwatched := o.unwatched
		close(o.done)
		h.mu.Unlock()
		if unwatched {
			h.reportLate(q.ctx, o)
		}
	}
}

// reportLate logs (and, for an attach, counts) an op that ended after the
// hook that started it had returned.
func (h *Hooks) reportLate(ctx context.Context, o *op) {
	logger := klog.FromContext(ctx)
	if o.pod != nil {
		logger = podLogger(ctx, o.pod)
	}
	logger = logger.WithValues("startedBy", o.by, "took", time.Since(o.started))
	switch o.kind {
	case "attach":
		switch o.result {
		case "stopped":
			logger.Info("Saver attach ended after its hook returned, but the pod sandbox had stopped: its saver is taken off")
		case "error":
			logger.Error(o.err, "Saver attach failed after its hook returned: the pod's containers fail until an attach succeeds (each new container retries it)")
		default:
			logger.Info("Saver attach ended after its hook returned: the pod's containers may start")
		}
		h.metrics.lateAttach(o.by, o.result)
	case "detach":
		if o.err != nil {
			logger.Error(o.err, "Saver detach failed after its hook returned")
		} else if o.did {
			logger.Info("Detached saver after the hook returned")
		}
	default:
		if o.err != nil {
			logger.Error(o.err, "Sweep of stale savers failed after Synchronize returned")
		} else {
			logger.Info("Sweep of stale savers ended after Synchronize returned")
		}
	}
}

// await waits for the op up to budget (and ctx). It reports whether the op
// ended and, if so, its error. An op that has not ended is marked as left by
// its hook: it then reports its own end.
func (h *Hooks) await(ctx context.Context, o *op, budget time.Duration) (bool, error) {
	if budget > 0 {
		t := time.NewTimer(budget)
		defer t.Stop()
		select {
		case <-o.done:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if o.ended {
		return true, o.err
	}
	o.unwatched = true
	return false, nil
}

// budget caps d to what is left of the request before its deadline (less a
// margin for the answer).
func (h *Hooks) budget(ctx context.Context, d time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)-deadlineMargin)
	}
	return max(d, 0)
}

// forget drops the sandbox's state if a is still its last attach.
func (h *Hooks) forget(sb *sandbox, a *op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sandboxes[sb.key] == sb && sb.last == a {
		delete(h.sandboxes, sb.key)
	}
}

// recordFailure marks the sandbox's attach as failed with err (unless one is
// in flight): its containers fail, and the next one retries.
func (h *Hooks) recordFailure(pod *api.PodSandbox, err error) {
	key := sandboxKey(pod)
	h.mu.Lock()
	defer h.mu.Unlock()
	if sb := h.sandboxes[key]; sb != nil && !sb.last.ended {
		return
	}
	a := h.newOp("attach", "Synchronize", pod)
	a.ended, a.err, a.result = true, err, "error"
	close(a.done)
	h.sandboxes[key] = &sandbox{key: key, pod: pod, last: a}
}

// drain waits for the ops in flight (up to drainTimeout), so that the data
// path is not closed under them.
func (h *Hooks) drain(logger logr.Logger) {
	h.mu.Lock()
	var list []*op
	for o := range h.running {
		list = append(list, o)
	}
	h.mu.Unlock()
	if len(list) == 0 {
		return
	}
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	for i, o := range list {
		select {
		case <-o.done:
		case <-t.C:
			logger.Info("Saver attaches or detaches still running as the NRI plugin stops", "running", len(list)-i, "waited", drainTimeout)
			return
		}
	}
}

// checkPlan returns the pod's network namespace, or why the pod cannot be
// protected.
func checkPlan(pod *api.PodSandbox, plan PodPlan) (string, error) {
	if plan.Err != nil {
		return "", fmt.Errorf("pod %s/%s: %w", pod.GetNamespace(), pod.GetName(), plan.Err)
	}
	netns := NetworkNamespace(pod)
	if netns == "" {
		return "", fmt.Errorf("pod %s/%s claims TSN traffic classes but uses the host network: the saver needs a pod network namespace", pod.GetNamespace(), pod.GetName())
	}
	return netns, nil
}

// attachSaver does the kernel work, in the worker.
func (h *Hooks) attachSaver(ctx context.Context, pod *api.PodSandbox, plan PodPlan) error {
	netns, err := checkPlan(pod, plan)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := h.savers.AttachSaver(ctx, pod.GetUid(), netns, plan.Interface, plan.Policy); err != nil {
		return fmt.Errorf("attach TSN saver to %s in pod %s/%s (netns %s): %w", plan.Interface, pod.GetNamespace(), pod.GetName(), netns, err)
	}
	podLogger(ctx, pod).Info("Attached saver", "claims", plan.Claims, "interface", plan.Interface, "netns", netns,
		"allowed", plan.Policy.Allowed, "action", plan.Policy.Action, "duration", time.Since(start))
	return nil
}

// detachSaver takes off the pod's saver, looking at what is attached rather
// than at the plans: the claims may have been unprepared already, and the
// saver must go all the same. A saver in another network namespace than the
// sandbox's belongs to a newer sandbox of the same pod (the kubelet made a
// new one, and garbage-collects the old one later) and stays. It runs in the
// worker, and reports whether a saver was detached.
func (h *Hooks) detachSaver(ctx context.Context, pod *api.PodSandbox) (bool, error) {
	savers, err := h.savers.Savers()
	if err != nil {
		return false, fmt.Errorf("list attached savers: %w", err)
	}
	netns := NetworkNamespace(pod)
	for _, s := range savers {
		if s.PodUID != pod.GetUid() {
			continue
		}
		if netns != "" && s.NetnsPath != netns {
			podLogger(ctx, pod).V(2).Info("Saver of the pod belongs to a newer sandbox: left", "netns", netns, "saverNetns", s.NetnsPath)
			return false, nil
		}
		if err := h.savers.DetachSaver(ctx, s.PodUID); err != nil {
			return false, fmt.Errorf("detach TSN saver of pod %s/%s: %w", pod.GetNamespace(), pod.GetName(), err)
		}
		return true, nil
	}
	return false, nil
}

// sandboxKey identifies a pod sandbox: the kubelet may give a pod a new
// sandbox (same pod UID, new ID and network namespace).
func sandboxKey(pod *api.PodSandbox) string {
	if id := pod.GetId(); id != "" {
		return id
	}
	return "pod-uid:" + pod.GetUid()
}

func podLogger(ctx context.Context, pod *api.PodSandbox) logr.Logger {
	return klog.LoggerWithValues(klog.FromContext(ctx), "pod", klog.KRef(pod.GetNamespace(), pod.GetName()), "podUID", pod.GetUid())
}

// NetworkNamespace returns the path of the pod's network namespace, or "" for
// a pod on the host network.
func NetworkNamespace(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			return ns.GetPath()
		}
	}
	return ""
}
