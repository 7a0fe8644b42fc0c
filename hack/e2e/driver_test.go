package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/cluster"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

// The names deployments/ uses.
const (
	// bpfPinDir is the DaemonSet's --bpf-pin-dir, in the node's own bpffs.
	bpfPinDir       = "/sys/fs/bpf/tsn-dra/v1"
	driverName      = "tsn.dra.io"
	driverNamespace = "tsn-dra-driver"
	driverDaemonSet = "tsn-dra-driver"
	deviceClass     = "tsn.dra.io"
)

// installDriver applies deployments/ the way the README tells users to and
// waits for the DaemonSet's pod to be ready.
func installDriver(ctx context.Context, t *testing.T, c *cluster.Cluster, repo string) {
	t.Helper()
	start := time.Now()
	if _, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(repo, "deployments")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "-n", driverNamespace, "rollout", "status", "daemonset/"+driverDaemonSet, "--timeout=180s"); err != nil {
		logs, _ := c.Kubectl(ctx, "-n", driverNamespace, "logs", "daemonset/"+driverDaemonSet, "--tail=50")
		t.Fatalf("driver DaemonSet not ready: %v\ndriver log:\n%s", err, logs)
	}
	t.Logf("TIMING driver installed (kubectl apply to DaemonSet ready): %v", time.Since(start).Round(time.Millisecond))
}

type sliceDevice struct {
	Name       string `json:"name"`
	Attributes map[string]struct {
		Int    *int64  `json:"int"`
		String *string `json:"string"`
		Bool   *bool   `json:"bool"`
	} `json:"attributes"`
	Capacity map[string]struct {
		Value string `json:"value"`
	} `json:"capacity"`
}

// waitSlices waits for the driver's ResourceSlice of the node and returns its
// devices by traffic class.
func waitSlices(ctx context.Context, t *testing.T, c *cluster.Cluster, want []int64) map[int64]sliceDevice {
	t.Helper()
	start := time.Now()
	var got map[int64]sliceDevice
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.Kubectl(ctx, "get", "resourceslices", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Items []struct {
				Spec struct {
					Driver   string        `json:"driver"`
					NodeName string        `json:"nodeName"`
					Devices  []sliceDevice `json:"devices"`
				} `json:"spec"`
			} `json:"items"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatal(err)
		}
		got = map[int64]sliceDevice{}
		for _, s := range list.Items {
			if s.Spec.Driver != driverName || s.Spec.NodeName != c.NodeName {
				continue
			}
			for _, d := range s.Spec.Devices {
				if tc := d.Attributes["trafficClass"].Int; tc != nil {
					got[*tc] = d
				}
			}
		}
		if len(got) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ResourceSlices of %s on %s: devices for classes %v, want %v:\n%s", driverName, c.NodeName, keys(got), want, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("TIMING ResourceSlice published %v after the driver was ready", time.Since(start).Round(time.Millisecond))
	return got
}

func keys(m map[int64]sliceDevice) []int64 {
	var k []int64
	for tc := range m {
		k = append(k, tc)
	}
	return k
}

// claimTemplate is a ResourceClaimTemplate asking for one traffic class of tsn0.
func claimTemplate(name string, class int) string {
	return fmt.Sprintf(`apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata:
  name: %s
spec:
  spec:
    devices:
      requests:
      - name: tsn
        exactly:
          deviceClassName: %s
          selectors:
          - cel:
              expression: device.attributes["%s"].interface == "%s" && device.attributes["%s"].trafficClass == %d
`, name, deviceClass, driverName, cluster.TSNInterface, driverName, class)
}

// claimedTalker is a talker pod with a claim from a template.
func claimedTalker(p talkerPod, template string, count int) string {
	m := p.manifest(count)
	m = strings.Replace(m, "spec:\n  restartPolicy: Never\n", fmt.Sprintf(`spec:
  restartPolicy: Never
  resourceClaims:
  - name: tsn
    resourceClaimTemplateName: %s
`, template), 1)
	return m + "    resources:\n      claims:\n      - name: tsn\n"
}

type claimStatus struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Status struct {
		Allocation *struct {
			Devices struct {
				Results []struct {
					Driver string `json:"driver"`
					Pool   string `json:"pool"`
					Device string `json:"device"`
				} `json:"results"`
			} `json:"devices"`
		} `json:"allocation"`
		Devices []struct {
			Driver     string `json:"driver"`
			Device     string `json:"device"`
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
			NetworkData *struct {
				InterfaceName string `json:"interfaceName"`
			} `json:"networkData"`
		} `json:"devices"`
	} `json:"status"`
}

// podClaim returns the claim generated for the pod's "tsn" claim.
func podClaim(ctx context.Context, t *testing.T, c *cluster.Cluster, pod string) claimStatus {
	t.Helper()
	out, err := c.Kubectl(ctx, "get", "pod", pod, "-o", "jsonpath={.status.resourceClaimStatuses[0].resourceClaimName}")
	if err != nil || len(out) == 0 {
		t.Fatalf("pod %s has no generated claim (%v)", pod, err)
	}
	out, err = c.Kubectl(ctx, "get", "resourceclaim", string(out), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var cs claimStatus
	if err := json.Unmarshal(out, &cs); err != nil {
		t.Fatal(err)
	}
	return cs
}

// kernelHasTaprio reports whether the kernel knows the taprio qdisc: the
// node config of deployments/ has a taprio schedule, which preparing a claim
// applies to tsn0. The probe runs on lo of the wire namespace, where a refusal
// for any other reason (lo has one queue) still shows the kind is known.
func kernelHasTaprio(ctx context.Context, c *cluster.Cluster) (bool, string) {
	cmd := c.InWire(ctx, "tc", "qdisc", "add", "dev", "lo", "root", "taprio", "num_tc", "1", "map", "0", "queues", "1@0",
		"base-time", "0", "sched-entry", "S", "1", "1000000", "clockid", "CLOCK_TAI")
	out, err := cmd.CombinedOutput()
	if err == nil {
		c.InWire(ctx, "tc", "qdisc", "del", "dev", "lo", "root").Run()
		return true, ""
	}
	msg := strings.TrimSpace(string(out))
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		// tc did not run at all: say so rather than guess the kernel has taprio.
		return false, fmt.Sprintf("probe did not run: %v", err)
	}
	return !strings.Contains(strings.ToLower(msg), "unknown"), msg
}

func driverScenario(ctx context.Context, t *testing.T, c *cluster.Cluster, repo string, obs *observe.Observer, rcvBin string) {
	var devs map[int64]sliceDevice
	if !t.Run("InstallAndPublish", func(t *testing.T) {
		installDriver(ctx, t, c, repo)
		devs = waitSlices(ctx, t, c, []int64{1, 2})
		checkDevices(t, devs)
	}) {
		return
	}
	// On failure, what the driver itself says: its status, its metrics and
	// what is on tsn0 (the cluster dump has objects and logs).
	t.Cleanup(func() {
		if t.Failed() {
			dumpDriverState(context.Background(), t, c)
		}
	})
	taprio, probe := kernelHasTaprio(ctx, c)
	// external: the node config says scheduleOwner: external (set below where
	// the kernel has no taprio), so claims are prepared without a qdisc change.
	external := false
	needClaims := func(t *testing.T) {
		if !taprio && !external {
			t.Skipf("this kernel has no taprio qdisc (%q) and the node config could not be switched to "+
				"scheduleOwner: external (see ExternalSchedule)", probe)
		}
	}
	t.Run("UnclaimedTalker", func(t *testing.T) {
		// With the driver's NRI hooks in the runtime, a pod without a claim
		// still runs, and its priority 1 still leaves tsn0 as 0.
		const n = 500
		p := scenarioPod{talkerPod: talkerPod{name: "noclaim-with-driver", stream: "noclaim-driver", tag: 31,
			args: []string{"-priority", "1"}}, want: bestEffort}
		rcv := startReceiver(ctx, t, c, rcvBin)
		if err := obs.Reset(); err != nil {
			t.Fatal(err)
		}
		apply(ctx, t, c, p.manifest(n))
		waitSucceeded(ctx, t, c, p.name)
		rep := rcv.stop(t)
		if s := rep.stream(p.stream); s == nil || s.Packets != n {
			t.Errorf("stream %s: receiver saw %+v, want %d packets (receiver socket drops: %d)", p.stream, s, n, rep.SocketDrops)
		}
		checkObserved(t, obs, p, n)
		if _, err := c.Kubectl(ctx, "delete", "pod", p.name, "--wait=true", "--timeout=60s"); err != nil {
			t.Error(err)
		}
		waitNoSavers(ctx, t, c)
	})
	t.Run("PrepareFailsCleanlyWithoutTaprio", func(t *testing.T) {
		if taprio {
			t.Skip("the kernel has taprio: ClaimedTraffic covers prepare")
		}
		prepareFailsCleanly(ctx, t, c)
	})
	if !taprio {
		// The shipped node config has the driver apply a taprio schedule,
		// which this kernel cannot run. An admin in that position (or one
		// whose NIC is scheduled by a TSN controller) sets scheduleOwner:
		// external: the driver restores priorities and leaves the qdiscs alone.
		external = t.Run("ExternalSchedule", func(t *testing.T) {
			t.Logf("no taprio here (%q): node config switched to scheduleOwner: external", probe)
			useExternalSchedule(ctx, t, c, repo)
			waitSlices(ctx, t, c, []int64{1, 2})
		})
	}
	t.Run("ClaimedTraffic", func(t *testing.T) {
		needClaims(t)
		claimedTraffic(ctx, t, c, obs, rcvBin, devs, external)
	})
	t.Run("DriverRestartMidTraffic", func(t *testing.T) {
		needClaims(t)
		driverRestart(ctx, t, c, obs, rcvBin)
	})
}

// tsnQdiscs returns what `tc qdisc show dev tsn0` prints in the node.
func tsnQdiscs(ctx context.Context, t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	out, err := c.InNode(ctx, "tc", "qdisc", "show", "dev", cluster.TSNInterface)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// podUID returns the pod's UID.
func podUID(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) string {
	t.Helper()
	out, err := c.Kubectl(ctx, "get", "pod", name, "-o", "jsonpath={.metadata.uid}")
	if err != nil || len(out) == 0 {
		t.Fatalf("pod %s: no UID (%v)", name, err)
	}
	return string(out)
}

// dumpDriverState logs the driver's status, its metrics, tsn0's qdiscs and
// filters and the node's bpffs pins.
func dumpDriverState(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", driverNamespace, "exec", "daemonset/" + driverDaemonSet, "--", "/tsn-dra-driver", "status"},
		{"-n", driverNamespace, "get", "configmap", "tsn-dra-driver-config", "-o", "yaml"},
		{"-n", driverNamespace, "logs", "daemonset/" + driverDaemonSet, "--tail=300"},
		{"-n", driverNamespace, "logs", "daemonset/" + driverDaemonSet, "--previous", "--tail=100"},
	} {
		out, err := c.Kubectl(ctx, args...)
		fmt.Fprintf(&b, "\n=== kubectl %s\n%s\n", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintln(&b, err)
		}
	}
	if m, err := c.HTTPGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err == nil {
		fmt.Fprintf(&b, "\n=== driver /metrics (tsn_dra_*)\n%s\n", tsnLines(m))
	} else {
		fmt.Fprintf(&b, "\n=== driver /metrics: %v\n", err)
	}
	for _, args := range [][]string{
		{"tc", "-s", "qdisc", "show", "dev", cluster.TSNInterface},
		{"tc", "filter", "show", "dev", cluster.TSNInterface, "egress"},
		{"find", bpfPinDir},
		{"cat", "/var/lib/tsn-dra-driver/checkpoint.json"},
	} {
		out, err := c.InNode(ctx, args...)
		fmt.Fprintf(&b, "\n=== node: %s\n%s\n", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintln(&b, err)
		}
	}
	t.Logf("driver state at failure:%s", b.String())
}

func checkDevices(t *testing.T, devs map[int64]sliceDevice) {
	for tc, d := range devs {
		if s := d.Attributes["interface"].String; s == nil || *s != cluster.TSNInterface {
			t.Errorf("class %d device %s: interface attribute %v, want %s", tc, d.Name, s, cluster.TSNInterface)
		}
		if _, ok := d.Capacity["bandwidth"]; !ok {
			t.Errorf("class %d device %s: no bandwidth capacity (consumable capacity lets pods share a class)", tc, d.Name)
		}
		attrs := make([]string, 0, len(d.Attributes))
		for k := range d.Attributes {
			attrs = append(attrs, k)
		}
		t.Logf("class %d: device %s, attributes %v", tc, d.Name, attrs)
	}
}

func claimedTraffic(ctx context.Context, t *testing.T, c *cluster.Cluster, obs *observe.Observer, rcvBin string, devs map[int64]sliceDevice, external bool) {
	qdiscsBefore := tsnQdiscs(ctx, t, c)

	for _, tmpl := range []struct {
		name  string
		class int
	}{{"tsn-class1", 1}, {"tsn-class2", 2}} {
		apply(ctx, t, c, claimTemplate(tmpl.name, tmpl.class))
	}
	// deployments/20-configmap.yaml maps socket priority 3 to class 1 and 2 to
	// class 2. The talkers run for 5 s: a claim made from a template is
	// deleted, and the pod's saver detached, when the pod ends, so claim status,
	// driver status and metrics are read while the pods send (on a loaded
	// machine the last pod may start seconds after the first).
	const n = 5000
	pods := []scenarioPod{
		{talkerPod: talkerPod{name: "claim-class1", stream: "class1", tag: 11, args: []string{"-priority", "3"}},
			template: "tsn-class1", class: 1, want: restored},
		{talkerPod: talkerPod{name: "claim-class2", stream: "class2-txtime", tag: 12, netAdmin: true,
			args: []string{"-priority", "2", "-txtime", "-txtime-offset", "1ms"}}, template: "tsn-class2", class: 2, want: restored},
		// No claim: the pod may set priority 1, it leaves with 0.
		{talkerPod: talkerPod{name: "noclaim-prio1", stream: "noclaim-prio1", tag: 13, args: []string{"-priority", "1"}}, want: bestEffort},
		// Claims class 2, sends with priority 1 (not its class): demoted, not restored.
		{talkerPod: talkerPod{name: "claim-class2-sends1", stream: "class2-sends1", tag: 14, args: []string{"-priority", "1"}},
			template: "tsn-class2", class: 2, want: demoted},
	}
	rcv := startReceiver(ctx, t, c, rcvBin)
	if err := obs.Reset(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.template == "" {
			apply(ctx, t, c, p.manifest(n))
		} else {
			apply(ctx, t, c, claimedTalker(p.talkerPod, p.template, n))
		}
	}
	uids := map[string]string{}
	for _, p := range pods {
		if p.template == "" {
			continue
		}
		waitRunning(ctx, t, c, p.name)
		checkClaim(ctx, t, c, p.name, devs[int64(p.class)].Name)
		uids[p.name] = podUID(ctx, t, c, p.name)
	}
	// While the talkers send: what the driver reports about them. The
	// kubelet stops a finished pod's sandbox and unprepares its claims at
	// once, so this cannot wait for the end of the traffic.
	checkDriverView(ctx, t, c, pods, uids)
	for _, p := range pods {
		d := waitSucceeded(ctx, t, c, p.name)
		t.Logf("TIMING pod %s: created to Succeeded in %v", p.name, d.Round(time.Millisecond))
	}
	rep := rcv.stop(t)
	for _, p := range pods {
		if s := rep.stream(p.stream); s == nil || s.Packets != n {
			t.Errorf("stream %s: receiver saw %+v, want %d packets (receiver socket drops: %d)", p.stream, s, n, rep.SocketDrops)
		}
		checkObserved(t, obs, p, n)
	}
	if q := tsnQdiscs(ctx, t, c); external && q != qdiscsBefore {
		t.Errorf("scheduleOwner: external, yet %s's qdiscs changed with claims prepared:\nbefore: %s\nafter:  %s",
			cluster.TSNInterface, qdiscsBefore, q)
	} else if !external && !strings.Contains(q, "taprio") {
		t.Errorf("the driver owns the schedule, yet %s has no taprio with claims prepared: %s", cluster.TSNInterface, q)
	}
	for _, p := range pods {
		if _, err := c.Kubectl(ctx, "delete", "pod", p.name, "--wait=true", "--timeout=60s"); err != nil {
			t.Error(err)
		}
	}
	waitNothingLeft(ctx, t, c)
	if external {
		if after := tsnQdiscs(ctx, t, c); after != qdiscsBefore {
			t.Errorf("scheduleOwner: external, yet %s's qdiscs changed after the claims were unprepared:\nbefore: %s\nafter:  %s",
				cluster.TSNInterface, qdiscsBefore, after)
		}
	}
}

// checkDriverView checks, while the claimed pods send, what the driver itself
// reports about them: the status command (the restorer on tsn0, one attached
// saver per claimed pod holding its granted priorities, its counters) and
// /metrics (the NRI hook histogram, the data path's per-pod counters). The
// counters are read mid-traffic, so they are checked for the kind of packets
// counted, not their number (the observer at tsn0 counts every packet).
func checkDriverView(ctx context.Context, t *testing.T, c *cluster.Cluster, pods []scenarioPod, uids map[string]string) {
	t.Helper()
	const packets = "tsn_dra_datapath_packets_total"
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := driverStatus(ctx, t, c)
		m, raw := driverMetrics(ctx, t, c)
		var problems []string
		restorer := false
		if st.Pins != nil {
			for _, r := range st.Pins.Restorers {
				restorer = restorer || r.Interface == cluster.TSNInterface
			}
		}
		if !restorer {
			problems = append(problems, "no restorer pinned for "+cluster.TSNInterface)
		}
		const hook = "tsn_dra_nri_hook_duration_seconds_count"
		if v, _ := metricValue(m, hook, map[string]string{"event": "RunPodSandbox", "result": "success"}); v < float64(len(uids)) {
			problems = append(problems, fmt.Sprintf("/metrics: %s{event=RunPodSandbox,result=success} = %v, want >= %d (one per claimed pod)", hook, v, len(uids)))
		}
		if v, _ := metricValue(m, hook, map[string]string{"result": "error"}); v > 0 {
			problems = append(problems, fmt.Sprintf("/metrics: %v NRI hooks failed", v))
		}
		var seen []string
		for _, p := range pods {
			uid, claimed := uids[p.name]
			if !claimed {
				continue
			}
			sv := st.saverOf(uid)
			if sv == nil || !sv.Attached {
				problems = append(problems, fmt.Sprintf("no attached saver for pod %s (%s): %+v", p.name, uid, sv))
				continue
			}
			prio := fmt.Sprint(p.sentPriority())
			cnt := sv.Counters[prio]
			metric := func(result string) float64 {
				v, _ := metricValue(m, packets, map[string]string{"pod": p.name, "pod_uid": uid, "priority": prio, "result": result})
				return v
			}
			seen = append(seen, fmt.Sprintf("pod %s: saver in slot %d allows %v; priority %s: status %+v, /metrics restored %v demoted %v",
				p.name, sv.Slot, sv.Allowed, prio, cnt, metric("restored"), metric("demoted")))
			switch p.want {
			case restored:
				if cnt.Restored == 0 || metric("restored") == 0 || cnt.Demoted != 0 {
					problems = append(problems, fmt.Sprintf("pod %s: priority %s not counted as restored (or counted demoted)", p.name, prio))
				}
			case demoted:
				if cnt.Demoted == 0 || metric("demoted") == 0 || cnt.Restored != 0 {
					problems = append(problems, fmt.Sprintf("pod %s: ungranted priority %s not counted as demoted (or counted restored)", p.name, prio))
				}
			}
		}
		// The test's own reader of the pinned maps (waitNothingLeft) must see
		// the claimed pods' policies now, or its "nothing left" means nothing.
		if pinned, err := pinnedLeftovers(c); err != nil {
			problems = append(problems, fmt.Sprintf("reading the pinned maps: %v", err))
		} else if n := countPrefix(pinned, "policy left in slot"); n < len(uids) {
			problems = append(problems, fmt.Sprintf("the pinned maps show %d pod policies, want %d: %v", n, len(uids), pinned))
		}
		if len(problems) == 0 {
			sum, _ := metricValue(m, "tsn_dra_nri_hook_duration_seconds_sum", map[string]string{"event": "RunPodSandbox", "result": "success"})
			cnt, _ := metricValue(m, hook, map[string]string{"event": "RunPodSandbox", "result": "success"})
			t.Logf("TIMING NRI RunPodSandbox hook (saver attach) per /metrics: %d hooks, mean %v (containerd gives a hook 2 s)",
				int(cnt), time.Duration(sum/cnt*float64(time.Second)).Round(time.Microsecond))
			// The driver's own account of each attach: whether the slot's
			// program was loaded ahead of time (prepared) and how long it took.
			if logs, err := c.Kubectl(ctx, "-n", driverNamespace, "logs", "daemonset/"+driverDaemonSet, "--tail=500"); err == nil {
				for _, line := range strings.Split(string(logs), "\n") {
					if strings.Contains(line, `"saver attached"`) || strings.Contains(line, "loaded one inline") {
						t.Logf("driver: %s", line)
					}
				}
			}
			for _, l := range seen {
				t.Log(l)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("driver's view of the claimed pods mid-traffic:\n%s\nseen:\n%s\nstatus:\n%s\n/metrics:\n%s",
				strings.Join(problems, "\n"), strings.Join(seen, "\n"), st.raw, tsnLines(raw))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// tsnLines keeps the driver's own metrics.
func tsnLines(b []byte) string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "tsn_dra_") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// driverRestart: 8 s of claimed traffic; the driver pod is deleted 2 s in and
// the DaemonSet brings it back: the pod's packets must keep their priority.
func driverRestart(ctx context.Context, t *testing.T, c *cluster.Cluster, obs *observe.Observer, rcvBin string) {
	{
		const n = 8000
		p := scenarioPod{talkerPod: talkerPod{name: "claim-class1-restart", stream: "class1-restart", tag: 15, args: []string{"-priority", "3"}},
			template: "tsn-class1", class: 1, want: restored}
		// A receiver must listen: without one, the wire answers with ICMP port
		// unreachable and the talker's next send fails.
		rcv := startReceiver(ctx, t, c, rcvBin)
		if err := obs.Reset(); err != nil {
			t.Fatal(err)
		}
		apply(ctx, t, c, claimedTalker(p.talkerPod, p.template, n))
		waitRunning(ctx, t, c, p.name)
		uid := podUID(ctx, t, c, p.name)
		time.Sleep(2 * time.Second)
		start := time.Now()
		if _, err := c.Kubectl(ctx, "-n", driverNamespace, "delete", "pod", "-l", "app.kubernetes.io/name=tsn-dra-driver", "--wait=true"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl(ctx, "-n", driverNamespace, "rollout", "status", "daemonset/"+driverDaemonSet, "--timeout=120s"); err != nil {
			t.Fatal(err)
		}
		t.Logf("TIMING driver pod deleted and back ready in %v", time.Since(start).Round(time.Millisecond))
		// The new driver adopted the pinned saver of the running pod.
		if sv := driverStatus(ctx, t, c).saverOf(uid); sv == nil || !sv.Attached {
			t.Errorf("after the driver restart, pod %s has no attached saver: %+v", p.name, sv)
		}
		waitSucceeded(ctx, t, c, p.name)
		rep := rcv.stop(t)
		if s := rep.stream(p.stream); s == nil || s.Packets != n {
			t.Errorf("stream %s: receiver saw %+v, want %d packets (receiver socket drops: %d)", p.stream, s, n, rep.SocketDrops)
		}
		checkObserved(t, obs, p, n)
		if _, err := c.Kubectl(ctx, "delete", "pod", p.name, "--wait=true", "--timeout=60s"); err != nil {
			t.Error(err)
		}
		waitNothingLeft(ctx, t, c)
	}
}

type expectation int

const (
	restored   expectation = iota // leaves tsn0 with the priority (and launch time) the pod set
	bestEffort                    // no claim: leaves with priority 0
	demoted                       // claimed another class: must not leave with the priority it set
)

type scenarioPod struct {
	talkerPod
	template string // ResourceClaimTemplate; "" for no claim
	class    int
	want     expectation
}

func (p scenarioPod) sentPriority() uint32 { return priorityArg(p.args) }

// priorityArg returns the talker's -priority argument (0 when absent).
func priorityArg(args []string) uint32 {
	for i, a := range args {
		if a == "-priority" && i+1 < len(args) {
			var v uint32
			fmt.Sscan(args[i+1], &v)
			return v
		}
	}
	return 0
}

// checkObserved checks what the observer at tsn0's egress saw of p's stream.
func checkObserved(t *testing.T, obs *observe.Observer, p scenarioPod, n uint64) {
	t.Helper()
	r, err := obs.Result(p.tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("observer at %s egress, stream %s: %+v", cluster.TSNInterface, p.stream, r)
	claim := "-"
	if p.template != "" {
		claim = fmt.Sprintf("class %d", p.class)
	}
	recordResult("with the driver", p.name, claim, p.sentPriority(), slices.Contains(p.args, "-txtime"), r)
	if r.Total != n {
		t.Errorf("stream %s: %d packets at %s egress, want %d", p.stream, r.Total, cluster.TSNInterface, n)
	}
	switch p.want {
	case restored:
		if r.Right != n {
			t.Errorf("claimed stream %s: %d of %d packets left %s with the priority (and launch time) the pod set; by priority %v",
				p.stream, r.Right, r.Total, cluster.TSNInterface, r.ByGot)
		}
	case bestEffort:
		if r.ByGot[0] != n {
			t.Errorf("unclaimed stream %s: %d of %d packets left %s with priority 0; by priority %v",
				p.stream, r.ByGot[0], r.Total, cluster.TSNInterface, r.ByGot)
		}
	case demoted:
		if prio := p.sentPriority(); r.ByGot[prio] != 0 {
			t.Errorf("stream %s sent priority %d outside its claimed class: %d packets left %s with it; by priority %v",
				p.stream, prio, r.ByGot[prio], cluster.TSNInterface, r.ByGot)
		}
	}
}

// checkClaim checks the pod's generated claim: allocated the wanted device,
// and the driver's device status says Ready.
func checkClaim(ctx context.Context, t *testing.T, c *cluster.Cluster, pod, wantDevice string) {
	t.Helper()
	cs := podClaim(ctx, t, c, pod)
	if cs.Status.Allocation == nil || len(cs.Status.Allocation.Devices.Results) != 1 {
		t.Errorf("pod %s: claim %s not allocated one device: %+v", pod, cs.Metadata.Name, cs.Status)
		return
	}
	res := cs.Status.Allocation.Devices.Results[0]
	if res.Driver != driverName || res.Device != wantDevice {
		t.Errorf("pod %s: allocated %s/%s, want %s/%s", pod, res.Driver, res.Device, driverName, wantDevice)
	}
	for _, ds := range cs.Status.Devices {
		for _, cond := range ds.Conditions {
			if ds.Device == res.Device && cond.Type == "Ready" && cond.Status == "True" {
				iface := ""
				if ds.NetworkData != nil {
					iface = ds.NetworkData.InterfaceName
				}
				t.Logf("pod %s: claim %s Ready on %s, pod interface %q", pod, cs.Metadata.Name, res.Device, iface)
				return
			}
		}
	}
	t.Errorf("pod %s: claim %s has no Ready device status: %+v", pod, cs.Metadata.Name, cs.Status.Devices)
}

// waitCheckpointEmpty waits until the driver's checkpoint lists no prepared
// claim: every claim was unprepared.
func waitCheckpointEmpty(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	const path = "/var/lib/tsn-dra-driver/checkpoint.json"
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := c.InNode(ctx, "cat", path)
		if err != nil {
			t.Fatalf("reading the driver's checkpoint: %v", err)
		}
		var f struct {
			Claims map[string]json.RawMessage `json:"claims"`
		}
		if err := json.Unmarshal(out, &f); err != nil {
			t.Fatalf("checkpoint %s: %v\n%s", path, err, out)
		}
		if len(f.Claims) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("claims still prepared a minute after their pods were deleted: %s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitRunning waits until the pod's container runs.
func waitRunning(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.Kubectl(ctx, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if err != nil {
			t.Fatal(err)
		}
		switch phase := strings.TrimSpace(string(out)); phase {
		case "Running":
			return
		case "Succeeded", "Failed":
			logs, _ := c.Kubectl(ctx, "logs", name)
			t.Fatalf("pod %s: %s before it was seen running; its log:\n%s", name, phase, logs)
		}
		if time.Now().After(deadline) {
			desc, _ := c.Kubectl(ctx, "describe", "pod", name)
			t.Fatalf("pod %s not running after 2 minutes:\n%s", name, desc)
		}
		// The kubelet retries a failed prepare with back-off: give it 30 s, then
		// report the driver's error instead of waiting out the deadline.
		if time.Until(deadline) < 90*time.Second {
			if msg, _ := lastEvent(ctx, c, name, "FailedPrepareDynamicResources"); msg != "" {
				t.Fatalf("pod %s: claims not prepared after 30 s: %s", name, msg)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// prepareFailsCleanly: on a kernel without taprio, preparing a claim must fail
// with an error that says so, leave tsn0's qdiscs as they were and record
// nothing; the pod waits, and deleting it leaves nothing behind.
func prepareFailsCleanly(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	qdiscs := func() string {
		out, err := c.InNode(ctx, "tc", "qdisc", "show", "dev", cluster.TSNInterface)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	before := qdiscs()
	apply(ctx, t, c, claimTemplate("tsn-class1", 1))
	p := talkerPod{name: "claim-no-taprio", stream: "no-taprio", tag: 21, args: []string{"-priority", "3"}}
	apply(ctx, t, c, claimedTalker(p, "tsn-class1", 100))
	deadline := time.Now().Add(time.Minute)
	var msg string
	for msg == "" {
		var err error
		if msg, err = lastEvent(ctx, c, p.name, "FailedPrepareDynamicResources"); err != nil {
			t.Fatal(err)
		}
		if msg == "" && time.Now().After(deadline) {
			t.Fatalf("pod %s: no FailedPrepareDynamicResources event within a minute", p.name)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("prepare error: %s", msg)
	if !strings.Contains(msg, "taprio") {
		t.Errorf("the prepare error does not name taprio: %s", msg)
	}
	out, err := c.Kubectl(ctx, "get", "pod", p.name, "-o", "jsonpath={.status.phase}")
	if err != nil {
		t.Fatal(err)
	}
	if phase := strings.TrimSpace(string(out)); phase != "Pending" {
		t.Errorf("pod %s is %s with an unprepared claim, want Pending", p.name, phase)
	}
	if after := qdiscs(); after != before {
		t.Errorf("a failed prepare changed %s's qdiscs:\nbefore: %s\nafter:  %s", cluster.TSNInterface, before, after)
	}
	waitCheckpointEmpty(ctx, t, c)
	if _, err := c.Kubectl(ctx, "delete", "pod", p.name, "--wait=true", "--timeout=60s"); err != nil {
		t.Fatal(err)
	}
	waitCheckpointEmpty(ctx, t, c)
	waitNoSavers(ctx, t, c)
	if after := qdiscs(); after != before {
		t.Errorf("deleting the pod left %s's qdiscs changed:\nbefore: %s\nafter:  %s", cluster.TSNInterface, before, after)
	}
}

// lastEvent returns the message of the newest event with reason about the
// object named name ("" if none).
func lastEvent(ctx context.Context, c *cluster.Cluster, name, reason string) (string, error) {
	out, err := c.Kubectl(ctx, "get", "events", "--sort-by=.lastTimestamp", "--field-selector",
		"involvedObject.name="+name+",reason="+reason, "-o", `jsonpath={range .items[*]}{.message}{"\n"}{end}`)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// waitNoSavers waits until no pod saver is pinned in the node's bpffs: every
// pod the test started is gone, and with it its saver.
func waitNoSavers(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	dir := c.NodePath(bpfPinDir + "/savers")
	deadline := time.Now().Add(time.Minute)
	for {
		entries, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			t.Fatalf("listing the driver's saver pins: %v", err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("saver pins left a minute after their pods were deleted: %v", names)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}
