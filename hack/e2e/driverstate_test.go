package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"sigs.k8s.io/yaml"

	"github.com/tsn-dra-driver/tsn-dra-driver/bpf"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/cluster"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/manifests"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// useExternalSchedule applies the external-schedule variant of the node config
// and restarts the driver so it runs with it at once (a ConfigMap volume
// follows an edit only after the kubelet's next sync, up to a minute or more).
func useExternalSchedule(ctx context.Context, t *testing.T, c *cluster.Cluster, repo string) {
	t.Helper()
	m, err := manifests.ExternalSchedule(repo)
	if err != nil {
		t.Fatal(err)
	}
	apply(ctx, t, c, m)
	start := time.Now()
	if _, err := c.Kubectl(ctx, "-n", driverNamespace, "rollout", "restart", "daemonset/"+driverDaemonSet); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "-n", driverNamespace, "rollout", "status", "daemonset/"+driverDaemonSet, "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING driver restarted with scheduleOwner: external in %v", time.Since(start).Round(time.Millisecond))
	st := driverStatus(ctx, t, c)
	for _, n := range st.NICs {
		if n.Config.ScheduleOwner != "external" {
			t.Fatalf("driver status: NIC %s has scheduleOwner %q after the restart, want external", n.Name, n.Config.ScheduleOwner)
		}
	}
}

// statusReport is the part of `tsn-dra-driver status -o json` the test reads.
type statusReport struct {
	ConfigError   string `json:"configError"`
	CheckpointErr string `json:"checkpointError"`
	PinsError     string `json:"pinsError"`
	NICs          []struct {
		Name      string `json:"name"`
		Interface string `json:"interface"`
		RootQdisc string `json:"rootQdisc"`
		Restorer  string `json:"restorer"`
		Config    struct {
			ScheduleOwner string `json:"scheduleOwner"`
		} `json:"config"`
		Claims []json.RawMessage `json:"claims"`
		Pods   []struct {
			Name  string       `json:"name"`
			UID   string       `json:"uid"`
			Saver *statusSaver `json:"saver"`
		} `json:"pods"`
	} `json:"nics"`
	OtherClaims []json.RawMessage `json:"otherClaims"`
	OtherSavers []statusSaver     `json:"otherSavers"`
	Pins        *struct {
		Savers    []statusSaver `json:"savers"`
		Restorers []struct {
			Interface string `json:"interface"`
			Mode      string `json:"mode"`
		} `json:"restorers"`
	} `json:"pins"`
	raw []byte
}

type statusSaver struct {
	PodUID   string   `json:"podUID"`
	Slot     uint32   `json:"slot"`
	Attached bool     `json:"attached"`
	Allowed  []uint32 `json:"allowedPriorities"`
	InFlight uint32   `json:"inFlight"`
	Counters map[string]struct {
		Saved, Restored, Missed, Demoted, Dropped, Rejected, Expired uint64
	} `json:"counters"`
}

// driverStatus runs the driver's status subcommand in its pod, the way
// docs/troubleshooting.md tells an operator to.
func driverStatus(ctx context.Context, t *testing.T, c *cluster.Cluster) *statusReport {
	t.Helper()
	out, err := c.Kubectl(ctx, "-n", driverNamespace, "exec", "daemonset/"+driverDaemonSet, "--",
		"/tsn-dra-driver", "status", "-o", "json")
	if err != nil {
		t.Fatalf("driver status: %v\n%s", err, out)
	}
	var st statusReport
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("driver status -o json: %v\n%s", err, out)
	}
	st.raw = out
	for what, e := range map[string]string{"config": st.ConfigError, "checkpoint": st.CheckpointErr, "pins": st.PinsError} {
		if e != "" {
			t.Errorf("driver status: %s: %s", what, e)
		}
	}
	return &st
}

// saverOf returns the pinned saver of the pod with the given UID.
func (st *statusReport) saverOf(uid string) *statusSaver {
	if st.Pins == nil {
		return nil
	}
	for i := range st.Pins.Savers {
		if st.Pins.Savers[i].PodUID == uid {
			return &st.Pins.Savers[i]
		}
	}
	return nil
}

// leftovers lists what the driver still holds for pods and claims: prepared
// claims, pods, pinned savers (a used policy slot) and saved packets in flight.
func (st *statusReport) leftovers() []string {
	var left []string
	for _, n := range st.NICs {
		if len(n.Claims) > 0 {
			left = append(left, fmt.Sprintf("NIC %s: %d prepared claims", n.Name, len(n.Claims)))
		}
		for _, p := range n.Pods {
			left = append(left, fmt.Sprintf("NIC %s: pod %s (%s)", n.Name, p.Name, p.UID))
		}
	}
	if len(st.OtherClaims) > 0 {
		left = append(left, fmt.Sprintf("%d prepared claims on NICs not in the config", len(st.OtherClaims)))
	}
	for _, s := range st.OtherSavers {
		left = append(left, fmt.Sprintf("saver of pod %s without a claim (slot %d)", s.PodUID, s.Slot))
	}
	if st.Pins != nil {
		for _, s := range st.Pins.Savers {
			left = append(left, fmt.Sprintf("pinned saver record/policy of pod %s in slot %d (attached %v, %d in flight)",
				s.PodUID, s.Slot, s.Attached, s.InFlight))
		}
	}
	return left
}

// waitNothingLeft waits until the driver holds nothing of the test's pods and
// claims: the checkpoint lists no claim, no saver is pinned in the node's
// bpffs, and the status command (config, checkpoint and pinned maps read the
// way an operator reads them) shows no claim, pod, saver or policy slot.
func waitNothingLeft(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	waitCheckpointEmpty(ctx, t, c)
	waitNoSavers(ctx, t, c)
	deadline := time.Now().Add(time.Minute)
	for {
		st := driverStatus(ctx, t, c)
		left := st.leftovers()
		pinned, err := pinnedLeftovers(c)
		if err != nil {
			t.Fatalf("reading the data path's pinned maps: %v", err)
		}
		left = append(left, pinned...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the pods were deleted the driver still holds:\n%s\nstatus:\n%s",
				strings.Join(left, "\n"), st.raw)
		}
		time.Sleep(time.Second)
	}
}

// metricsPort is the DaemonSet's --http-address port (hostNetwork: the node's netns).
const metricsPort = 9178

type sample struct {
	labels map[string]string
	value  float64
}

// driverMetrics scrapes the driver's /metrics inside the node and returns its
// samples by metric name.
func driverMetrics(ctx context.Context, t *testing.T, c *cluster.Cluster) (map[string][]sample, []byte) {
	t.Helper()
	body, err := c.HTTPGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		t.Fatal(err)
	}
	return parseMetrics(body), body
}

// parseMetrics reads the Prometheus text format: enough of it for the
// driver's counters and histograms (no escaped quotes in label values).
func parseMetrics(b []byte) map[string][]sample {
	out := map[string][]sample{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:i], map[string]string{}
		if j := strings.IndexByte(name, '{'); j >= 0 {
			for _, kv := range strings.Split(strings.TrimSuffix(name[j+1:], "}"), ",") {
				if k, val, ok := strings.Cut(kv, "="); ok {
					labels[k] = strings.Trim(val, `"`)
				}
			}
			name = name[:j]
		}
		out[name] = append(out[name], sample{labels, v})
	}
	return out
}

// metricValue sums the samples of name whose labels include want.
func metricValue(m map[string][]sample, name string, want map[string]string) (float64, bool) {
	var sum float64
	found := false
	for _, s := range m[name] {
		match := true
		for k, v := range want {
			if s.labels[k] != v {
				match = false
				break
			}
		}
		if match {
			sum += s.value
			found = true
		}
	}
	return sum, found
}

// configFromFile parses the node config inside a ConfigMap manifest.
func configFromFile(path string) (*config.NodeConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return config.Parse([]byte(cm.Data["config.yaml"]))
}

// pinnedLeftovers reads the data path's shared maps in the node's bpffs
// (read-only, through /proc/<node pid>/root) for state of pods that are gone:
// a policy in any slot, packets in flight on any slot, a live entry in the
// saved-metadata table. Called when no pod of the driver should be left, so
// every one of them is a leak. The table's way state is the low two bits
// (ST_MASK in bpf/tsn.c; ST_FREE is 0); a saved entry of a gone pod is freed
// by the restorer or by the expiry sweep within its TTL (1 s by default).
func pinnedLeftovers(c *cluster.Cluster) ([]string, error) {
	dir := c.NodePath(bpfPinDir + "/maps")
	open := func(name string) (*ebpf.Map, error) {
		return ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	}
	var left []string
	policies, err := open(bpf.TsnMapTsnPolicies)
	if err != nil {
		return nil, err
	}
	defer policies.Close()
	var k uint32
	var pol bpf.TsnTsnPolicy
	it := policies.Iterate()
	for it.Next(&k, &pol) {
		if pol != (bpf.TsnTsnPolicy{}) {
			left = append(left, fmt.Sprintf("policy left in slot %d: %+v", k, pol))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", bpf.TsnMapTsnPolicies, err)
	}
	slots, err := open(bpf.TsnMapTsnSlots)
	if err != nil {
		return nil, err
	}
	defer slots.Close()
	var sl bpf.TsnTsnSlot
	it = slots.Iterate()
	for it.Next(&k, &sl) {
		if sl.Inflight != 0 {
			left = append(left, fmt.Sprintf("slot %d: %d saved packets in flight", k, sl.Inflight))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", bpf.TsnMapTsnSlots, err)
	}
	table, err := open(bpf.TsnMapTsnTable)
	if err != nil {
		return nil, err
	}
	defer table.Close()
	var b bpf.TsnTsnBucket
	live := 0
	it = table.Iterate()
	for it.Next(&k, &b) {
		for _, st := range b.State {
			if st&3 != 0 {
				live++
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", bpf.TsnMapTsnTable, err)
	}
	if live > 0 {
		left = append(left, fmt.Sprintf("%d live entries in the saved-metadata table %s", live, bpf.TsnMapTsnTable))
	}
	return left, nil
}
