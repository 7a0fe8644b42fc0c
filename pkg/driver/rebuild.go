package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/pager"
	"k8s.io/klog/v2"
)

// rebuildTiming is how the rebuild of a damaged checkpoint talks to the API server. The first
// attempt runs inside New, before the daemon serves /healthz, so it gets less time than the
// liveness probe allows (deployments: 10 s + 6 x 10 s); each retry gets attemptTimeout, and
// retries back off from firstRetry to maxRetry. Tests shorten it.
var rebuildTiming = struct {
	firstAttemptTimeout, attemptTimeout, firstRetry, maxRetry time.Duration
}{10 * time.Second, 30 * time.Second, time.Second, 30 * time.Second}

// now is the clock that names kept damaged checkpoints (tests set it).
var now = time.Now

// maxEventMessage bounds the Events the driver writes itself (the API server's limit for an
// events.k8s.io note is 1 KiB; core Events are shown in the same places).
const maxEventMessage = 1024

// rebuildState tracks a rebuild of the prepared state after a damaged checkpoint.
type rebuildState struct {
	damage *damagedError
	keptAs string
	// lastErr is the error of the last failed attempt, nil before the first one.
	lastErr error
}

// errStateUnknown is returned (wrapped) for Prepare and Unprepare while the prepared state is
// being rebuilt.
var errStateUnknown = errors.New("the prepared state of this node is not known yet")

// stateError returns nil once the prepared state is known, otherwise why it is not. Prepare and
// Unprepare refuse until then: a Prepare would be lost to the rebuild, and an Unprepare answered
// "was not prepared" would let the rebuild bring the claim back with nobody to release it.
func (d *Driver) stateError() error {
	select {
	case <-d.ready:
		return nil
	default:
	}
	d.rebuildMu.Lock()
	defer d.rebuildMu.Unlock()
	r := d.rebuild
	msg := fmt.Sprintf("%v: checkpoint %s was damaged and the claims of this node are being read again from the API server", errStateUnknown, r.damage.path)
	if r.lastErr != nil {
		msg += fmt.Sprintf(" (last attempt: %v)", r.lastErr)
	}
	return errors.New(msg + "; retry later")
}

// StateReady is closed once the prepared state is known: at once, unless New found a damaged
// checkpoint and the API server could not be read yet to rebuild it. Until then Store() is empty
// and Prepare and Unprepare fail; whatever acts on the absence of a claim (the NRI plugin's
// Synchronize detaches savers of pods without one) must wait for it.
func (d *Driver) StateReady() <-chan struct{} { return d.ready }

// recoverDamaged handles a damaged checkpoint in New: it keeps the file for inspection, reports
// it and rebuilds the prepared state from the API server. When the API server cannot be read, the
// rebuild goes on in the background (see StateReady) and New returns anyway, so the daemon serves
// the kubelet's registration and probes rather than crash-looping.
func (d *Driver) recoverDamaged(ctx context.Context, damage *damagedError) error {
	logger := klog.FromContext(ctx)
	d.metrics.checkpointDamaged.Inc()
	kept, err := d.state.cp.keepDamaged(now())
	if kept == "" {
		// The state directory is not writable: the rebuilt checkpoint could not be written
		// either, and overwriting the only copy of the damaged one would lose the evidence.
		return fmt.Errorf("%w; %v", damage, err)
	}
	if err != nil {
		logger.Error(err, "Could not prune the kept damaged checkpoints")
	}
	d.rebuild = rebuildState{damage: damage, keptAs: kept}
	logger.Error(damage, "Checkpoint damaged: rebuilding the prepared state from the API server",
		"keptAs", kept, "node", d.opts.NodeName)

	actx, cancel := context.WithTimeout(ctx, rebuildTiming.firstAttemptTimeout)
	err = d.rebuildFromAPI(actx, false)
	cancel()
	if err == nil {
		return nil
	}
	d.rebuildMu.Lock()
	d.rebuild.lastErr = err
	d.rebuildMu.Unlock()
	d.metrics.rebuildPending.Set(1)
	logger.Error(err, "Could not rebuild the prepared state; retrying in the background, Prepare and Unprepare are refused until then",
		"retryIn", rebuildTiming.firstRetry)
	bctx, stop := context.WithCancel(ctx)
	d.stopRebuild = stop
	d.rebuildDone = make(chan struct{})
	go d.retryRebuild(bctx)
	return nil
}

func (d *Driver) retryRebuild(ctx context.Context) {
	defer close(d.rebuildDone)
	logger := klog.FromContext(ctx)
	delay := rebuildTiming.firstRetry
	for attempt := 2; ; attempt++ {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			logger.Info("Stopped before the prepared state was rebuilt; the damaged checkpoint is still in place and the next start rebuilds it",
				"checkpoint", d.rebuild.damage.path)
			return
		case <-t.C:
		}
		actx, cancel := context.WithTimeout(ctx, rebuildTiming.attemptTimeout)
		err := d.rebuildFromAPI(actx, true)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			continue // reported at the top
		}
		d.rebuildMu.Lock()
		d.rebuild.lastErr = err
		d.rebuildMu.Unlock()
		delay = min(2*delay, rebuildTiming.maxRetry)
		logger.Error(err, "Could not rebuild the prepared state; Prepare and Unprepare stay refused",
			"attempt", attempt, "retryIn", delay)
	}
}

// rebuildFromAPI reads the claims allocated to this node's pool and reserved for pods, keeps
// those with a pod still live on this node (see livePods), plans each as Prepare does, and writes
// the result as the new checkpoint. A claim whose pods have all finished or left was unprepared
// by the kubelet before the restart, or will never be prepared again: it is skipped (logged and
// counted, nothing is wrong with it). A claim that does not plan (its device or NIC is gone, the
// node config changed) is reported on the claim and left out. With callHooks, the data-path hooks
// take each rebuilt claim before the state counts as known (New's caller resumes them itself when
// the rebuild happens inside New).
func (d *Driver) rebuildFromAPI(ctx context.Context, callHooks bool) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	d.mu.Lock()
	inv := d.inv
	d.mu.Unlock()

	var candidates []*resourceapi.ResourceClaim
	p := pager.New(pager.SimplePageFunc(func(opts metav1.ListOptions) (runtime.Object, error) {
		return d.opts.KubeClient.ResourceV1().ResourceClaims("").List(ctx, opts)
	}))
	p.PageSize = 500
	seen := 0
	err := p.EachListItem(ctx, metav1.ListOptions{}, func(obj runtime.Object) error {
		seen++
		if c, ok := obj.(*resourceapi.ResourceClaim); ok && d.allocatedHere(c) {
			candidates = append(candidates, c.DeepCopy())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list ResourceClaims: %w", err)
	}
	// The pods are read after the claims: a pod prepared before this restart already existed
	// when the claims were read, and nothing is prepared while the state is unknown.
	var pods *nodePods
	if len(candidates) > 0 {
		if pods, err = d.listNodePods(ctx); err != nil {
			return fmt.Errorf("list the pods of node %s: %w", d.opts.NodeName, err)
		}
	}

	claims := map[types.UID]PreparedClaim{}
	type leftOut struct {
		claim *resourceapi.ResourceClaim
		err   error
	}
	var left []leftOut
	var finished []string
	for _, c := range candidates {
		if why, live := pods.live(c); !live {
			ref := klog.KObj(c)
			finished = append(finished, ref.String())
			logger.Info("Claim of this node not rebuilt: none of its pods is still running here, so the kubelet has unprepared it or never will",
				"claim", ref, "pods", why)
			continue
		}
		pc, err := planClaim(c, d.opts.DriverName, d.pool, inv)
		if err != nil {
			left = append(left, leftOut{c, err})
			continue
		}
		claims[pc.UID] = *pc
	}
	if err := d.state.replace(claims); err != nil {
		return fmt.Errorf("write the rebuilt checkpoint: %w", err)
	}
	d.metrics.preparedClaims.Set(float64(len(claims)))
	d.metrics.rebuiltClaims.WithLabelValues(rebuildResultRebuilt).Add(float64(len(claims)))
	d.metrics.rebuiltClaims.WithLabelValues(rebuildResultLeftOut).Add(float64(len(left)))
	d.metrics.rebuiltClaims.WithLabelValues(rebuildResultPodsFinished).Add(float64(len(finished)))

	rebuilt := d.state.PreparedClaims()
	if callHooks && d.opts.Hooks != nil {
		// As the daemon's resume after a normal start: put the NIC side of each claim right. A
		// failure keeps the claim (its pods may still be served); the next prepare on the NIC
		// retries.
		for _, pc := range rebuilt {
			if err := d.opts.Hooks.ClaimPrepared(ctx, pc); err != nil {
				logger.Error(err, "Could not set up the data path of a rebuilt claim", "claim", klog.KRef(pc.Namespace, pc.Name))
			}
		}
	}
	d.metrics.rebuildPending.Set(0)
	close(d.ready)

	names := make([]string, 0, len(rebuilt))
	for _, pc := range rebuilt {
		names = append(names, pc.Namespace+"/"+pc.Name)
	}
	sort.Slice(left, func(i, j int) bool {
		return left[i].claim.Namespace+"/"+left[i].claim.Name < left[j].claim.Namespace+"/"+left[j].claim.Name
	})
	sort.Strings(finished)
	var leftNames []string
	for _, l := range left {
		ref := klog.KObj(l.claim)
		leftNames = append(leftNames, ref.String())
		logger.Error(l.err, "Claim of this node left out of the rebuilt state: it no longer plans", "claim", ref)
		d.postEvent(ctx, corev1.ObjectReference{Kind: "ResourceClaim", APIVersion: resourceapi.SchemeGroupVersion.String(),
			Namespace: l.claim.Namespace, Name: l.claim.Name, UID: l.claim.UID}, corev1.EventTypeWarning, "NotRebuilt",
			fmt.Sprintf("prepared state lost with a damaged checkpoint on node %s and not rebuilt: %v", d.opts.NodeName, l.err))
	}
	r := d.rebuild
	logger.Info("Rebuilt the prepared state from the API server", "claims", len(claims), "claimNames", names,
		"leftOut", leftNames, "podsFinished", finished, "claimsListed", seen, "podsListed", pods.count(),
		"damagedCheckpointKeptAs", r.keptAs, "duration", time.Since(start))

	msg := fmt.Sprintf("checkpoint %s was damaged (%v) and is kept as %s; rebuilt %d prepared claims from the API server",
		r.damage.path, r.damage.err, r.keptAs, len(claims))
	if len(finished) > 0 {
		// Only the count: the names are in the log, and the Event's room is for what needs a look.
		msg += fmt.Sprintf(", %d skipped because their pods have finished or left the node", len(finished))
	}
	if len(left) > 0 {
		msg += fmt.Sprintf(", %d left out because they no longer plan: %s", len(left), strings.Join(leftNames, ", "))
	}
	d.postEvent(ctx, d.nodeRef(ctx), corev1.EventTypeWarning, "CheckpointRebuilt", msg)
	return nil
}

// nodePods are the pods the API server has bound to this node, by UID.
type nodePods struct {
	node  string
	byUID map[types.UID]podSummary
	// byName maps namespace/name to the UID of the pod of that name now, to tell a pod that
	// was replaced (a StatefulSet's pod) from one that is gone.
	byName map[string]types.UID
}

type podSummary struct {
	namespace string
	phase     corev1.PodPhase
}

// listNodePods reads the pods bound to this node: one paged list with a field selector, rather
// than a get per claim.
func (d *Driver) listNodePods(ctx context.Context) (*nodePods, error) {
	np := &nodePods{node: d.opts.NodeName, byUID: map[types.UID]podSummary{}, byName: map[string]types.UID{}}
	p := pager.New(pager.SimplePageFunc(func(opts metav1.ListOptions) (runtime.Object, error) {
		return d.opts.KubeClient.CoreV1().Pods("").List(ctx, opts)
	}))
	p.PageSize = 500
	sel := fields.OneTermEqualSelector("spec.nodeName", d.opts.NodeName).String()
	err := p.EachListItem(ctx, metav1.ListOptions{FieldSelector: sel}, func(obj runtime.Object) error {
		pod, ok := obj.(*corev1.Pod)
		// The selector is the API server's; checked again here so that nothing depends on it.
		if !ok || pod.Spec.NodeName != d.opts.NodeName {
			return nil
		}
		np.byUID[pod.UID] = podSummary{namespace: pod.Namespace, phase: pod.Status.Phase}
		np.byName[pod.Namespace+"/"+pod.Name] = pod.UID
		return nil
	})
	if err != nil {
		return nil, err
	}
	return np, nil
}

func (np *nodePods) count() int {
	if np == nil {
		return 0
	}
	return len(np.byUID)
}

// live says whether a pod the claim is reserved for is live on this node: it exists with the
// reserved UID, is bound here and has not reached a terminal phase. A pod being deleted whose
// containers still run counts: the kubelet unprepares its claims once they have stopped. When no
// pod is live, why says for each reserved pod what was found instead.
func (np *nodePods) live(c *resourceapi.ResourceClaim) (why []string, live bool) {
	for _, ref := range c.Status.ReservedFor {
		if ref.APIGroup != "" || ref.Resource != "pods" {
			continue
		}
		name := c.Namespace + "/" + ref.Name
		p, ok := np.byUID[ref.UID]
		switch {
		case ok && p.namespace == c.Namespace && p.phase != corev1.PodSucceeded && p.phase != corev1.PodFailed:
			return nil, true
		case ok && p.namespace == c.Namespace:
			why = append(why, fmt.Sprintf("%s is %s", name, p.phase))
		case np.byName[name] != "":
			why = append(why, fmt.Sprintf("%s was replaced: UID %s is reserved, the pod of that name on node %s has UID %s",
				name, ref.UID, np.node, np.byName[name]))
		default:
			why = append(why, fmt.Sprintf("%s (UID %s) is not on node %s", name, ref.UID, np.node))
		}
	}
	return why, false
}

// allocatedHere says whether the claim has a device of this driver in this node's pool and is
// reserved for a pod: what the kubelet has prepared, or will prepare, on this node.
func (d *Driver) allocatedHere(c *resourceapi.ResourceClaim) bool {
	if c.Status.Allocation == nil {
		return false
	}
	ours := false
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == d.opts.DriverName && r.Pool == d.pool {
			ours = true
			break
		}
	}
	if !ours {
		return false
	}
	for _, ref := range c.Status.ReservedFor {
		if ref.APIGroup == "" && ref.Resource == "pods" {
			return true
		}
	}
	return false
}

// nodeRef refers to this node's Node object (with its UID when the API server says it).
func (d *Driver) nodeRef(ctx context.Context) corev1.ObjectReference {
	ref := corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: d.opts.NodeName}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n, err := d.opts.KubeClient.CoreV1().Nodes().Get(gctx, d.opts.NodeName, metav1.GetOptions{}); err == nil {
		ref.UID = n.UID
	}
	return ref
}

// postEvent writes an Event at once. The rebuild runs before Start sets up the event recorder
// (inside New), and right after the API server answered, so a direct write is both possible and
// the only way to report from there; a failure is logged.
func (d *Driver) postEvent(ctx context.Context, ref corev1.ObjectReference, eventType, reason, msg string) {
	if len(msg) > maxEventMessage {
		msg = msg[:maxEventMessage-3] + "..."
	}
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault // where events of cluster-scoped objects go
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", ref.Name, now.UnixNano()), Namespace: ns},
		InvolvedObject:      ref,
		Reason:              reason,
		Message:             msg,
		Type:                eventType,
		Source:              corev1.EventSource{Component: d.opts.DriverName, Host: d.opts.NodeName},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: d.opts.DriverName,
		ReportingInstance:   d.opts.DriverName + "-" + d.opts.NodeName,
	}
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.opts.KubeClient.CoreV1().Events(ns).Create(ectx, ev, metav1.CreateOptions{}); err != nil {
		klog.FromContext(ctx).Error(err, "Could not write an event", "object", ref.Kind+" "+klog.KRef(ref.Namespace, ref.Name).String(),
			"reason", reason, "message", msg)
	}
}
