// Package nrihooks attaches the TSN metadata saver to pods as the container
// runtime creates them, through NRI (github.com/containerd/nri).
//
// The pod's network namespace only exists after kubelet has prepared the pod's
// claims, so the per-pod work cannot happen in the DRA Prepare call. It cannot
// be slow either: containerd drops an NRI request after 2 s and the pod would
// then start unprotected (or, since an error fails the sandbox, not at all).
// So everything that can be computed ahead of time (which NIC, which
// priorities, the policy) is computed in Prepare and handed over through a
// PlanSource; the hooks here only look the plan up and call the data path.
package nrihooks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

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

// Hooks implements the NRI pod sandbox events the driver needs. It is safe for
// concurrent use.
type Hooks struct {
	plans   PlanSource
	savers  Savers
	metrics *Metrics

	// mu serializes work on one pod across hooks: containerd may deliver a
	// RemovePodSandbox while a Synchronize still attaches the same pod.
	mu sync.Mutex
}

// New returns hooks that attach savers per the plans. metrics may be nil.
func New(plans PlanSource, savers Savers, metrics *Metrics) *Hooks {
	return &Hooks{plans: plans, savers: savers, metrics: metrics}
}

// Synchronize reconciles the data path with the pods the runtime has: it
// attaches what a planned pod is missing (a driver restart, or a pod created
// while the driver was down) and detaches what belongs to pods that are gone.
func (h *Hooks) Synchronize(ctx context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()

	live := make(map[string]bool, len(pods))
	var errs []error
	attached := 0
	for _, pod := range pods {
		live[pod.GetUid()] = true
		did, err := h.attach(ctx, pod)
		if err != nil {
			errs = append(errs, err)
		}
		if did {
			attached++
		}
	}

	savers, err := h.savers.Savers()
	if err != nil {
		errs = append(errs, fmt.Errorf("list attached savers: %w", err))
	}
	detached := 0
	for _, s := range savers {
		if live[s.PodUID] {
			if _, planned := h.plans.PodPlan(s.PodUID); planned {
				continue
			}
		}
		// A saver whose pod is gone, or whose claims were unprepared while
		// the driver was down, must not keep holding a slot and a policy.
		if err := h.savers.DetachSaver(ctx, s.PodUID); err != nil {
			errs = append(errs, fmt.Errorf("detach saver of stale pod %s: %w", s.PodUID, err))
			continue
		}
		logger.Info("Detached saver of a pod that is gone or no longer claims", "podUID", s.PodUID, "netns", s.NetnsPath)
		detached++
	}
	h.metrics.observe("Synchronize", start, errors.Join(errs...))
	logger.Info("Synchronized with the runtime", "pods", len(pods), "attached", attached, "detached", detached, "errors", len(errs), "duration", time.Since(start))
	// An error here would make the runtime drop the plugin; what failed is
	// logged and the next pod event or restart retries.
	for _, err := range errs {
		logger.Error(err, "Synchronize")
	}
	return nil, nil
}

// RunPodSandbox attaches the saver to a pod with prepared claims. Pods without
// a claim return at once. An error fails the sandbox: a pod that claimed a
// traffic class must not start silently unprotected.
func (h *Hooks) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	start := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	did, err := h.attach(ctx, pod)
	if did || err != nil {
		h.metrics.observe("RunPodSandbox", start, err)
	}
	return err
}

// StopPodSandbox detaches the pod's saver. The network namespace may already
// be gone; that is not an error.
func (h *Hooks) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return h.detach(ctx, "StopPodSandbox", pod)
}

// RemovePodSandbox detaches again, for runtimes that skip the stop event.
func (h *Hooks) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return h.detach(ctx, "RemovePodSandbox", pod)
}

// attach reports whether the pod had a plan (and so whether work was done).
func (h *Hooks) attach(ctx context.Context, pod *api.PodSandbox) (bool, error) {
	plan, ok := h.plans.PodPlan(pod.GetUid())
	if !ok {
		return false, nil
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "pod", klog.KRef(pod.GetNamespace(), pod.GetName()), "podUID", pod.GetUid(), "claims", plan.Claims)
	if plan.Err != nil {
		return true, fmt.Errorf("pod %s/%s: %w", pod.GetNamespace(), pod.GetName(), plan.Err)
	}
	netns := NetworkNamespace(pod)
	if netns == "" {
		return true, fmt.Errorf("pod %s/%s claims TSN traffic classes but uses the host network: the saver needs a pod network namespace", pod.GetNamespace(), pod.GetName())
	}
	start := time.Now()
	if err := h.savers.AttachSaver(ctx, pod.GetUid(), netns, plan.Interface, plan.Policy); err != nil {
		return true, fmt.Errorf("attach TSN saver to %s in pod %s/%s (netns %s): %w", plan.Interface, pod.GetNamespace(), pod.GetName(), netns, err)
	}
	logger.Info("Attached saver", "interface", plan.Interface, "netns", netns, "allowed", plan.Policy.Allowed, "action", plan.Policy.Action, "duration", time.Since(start))
	return true, nil
}

func (h *Hooks) detach(ctx context.Context, event string, pod *api.PodSandbox) error {
	start := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "pod", klog.KRef(pod.GetNamespace(), pod.GetName()), "podUID", pod.GetUid())
	// Look at what is attached rather than at the plans: the claims may have
	// been unprepared already, and the saver must go all the same.
	savers, err := h.savers.Savers()
	if err != nil {
		err = fmt.Errorf("%s: list attached savers: %w", event, err)
		h.metrics.observe(event, start, err)
		return err
	}
	for _, s := range savers {
		if s.PodUID != pod.GetUid() {
			continue
		}
		err := h.savers.DetachSaver(ctx, s.PodUID)
		h.metrics.observe(event, start, err)
		if err != nil {
			return fmt.Errorf("detach TSN saver of pod %s/%s: %w", pod.GetNamespace(), pod.GetName(), err)
		}
		logger.Info("Detached saver", "event", event, "duration", time.Since(start))
		return nil
	}
	return nil
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
