// Package e2e is the end-to-end test of tsn-dra-driver on a real single-node
// Kubernetes (see package cluster): it needs root and the binaries of
// build.sh; `make e2e` provides both.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/cluster"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/images"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/observe"
)

const defaultBin = "/var/cache/tsn-dra-driver/e2e-v1/bin"

// receiverPort is where the receiver in the wire namespace listens.
const receiverPort = 7788

func TestE2E(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the cluster makes namespaces, cgroups and mounts")
	}
	bin := os.Getenv("E2E_BIN")
	if bin == "" {
		bin = defaultBin
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	start := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{BinDir: bin, KeepDir: os.Getenv("E2E_KEEP") != "", Logf: t.Logf})
	if err != nil {
		t.Fatalf("starting the cluster (make e2e runs hack/e2e/build.sh first): %v", err)
	}
	t.Logf("TIMING cluster start: %v", time.Since(start).Round(time.Millisecond))
	// The per-talker summary goes to stdout (make demo shows it), pass or fail.
	t.Cleanup(func() { writeSummary(os.Stdout) })
	stopped := false
	// dumpOnFailure goes first in a subtest: the cluster is still up when it runs.
	dumpOnFailure := func(t *testing.T) {
		t.Cleanup(func() {
			if t.Failed() {
				var b bytes.Buffer
				c.Dump(context.Background(), &b)
				t.Logf("cluster state at failure (state dir %s, kept with E2E_KEEP=1):\n%s", c.Dir, b.String())
			}
		})
	}
	t.Cleanup(func() {
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	})

	start = time.Now()
	archive := filepath.Join(t.TempDir(), "images.tar")
	// The driver image goes in under the references deployments/ uses, so the
	// manifests are applied unchanged.
	driverRefs, err := images.ManifestImages(filepath.Join(repo, "deployments"))
	if err != nil {
		t.Fatal(err)
	}
	if err := images.Build(ctx, repo, archive, driverRefs...); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImages(ctx, archive); err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING images built and imported: %v", time.Since(start).Round(time.Millisecond))

	receiver := filepath.Join(t.TempDir(), "receiver")
	if err := images.GoBuild(ctx, repo, "./examples/receiver", receiver); err != nil {
		t.Fatal(err)
	}

	// The data path's observer, attached last at tsn0's egress, sees every
	// talker packet with the priority and launch time it leaves the node with.
	obs, err := observe.Attach(fmt.Sprintf("/proc/%d/ns/net", c.NodePID()), cluster.TSNInterface, datapath.ModeTCX)
	if err != nil {
		t.Fatalf("attaching the observer at %s egress: %v", cluster.TSNInterface, err)
	}
	defer obs.Close()

	t.Run("TalkerPodsReachTheWire", func(t *testing.T) {
		dumpOnFailure(t)
		rcv := startReceiver(ctx, t, c, receiver)
		const n = 200
		pods := []talkerPod{
			{name: "talker-prio1", stream: "prio1", tag: 1, args: []string{"-priority", "1"}},
			{name: "talker-prio2-txtime", stream: "prio2-txtime", tag: 2, args: []string{"-priority", "2", "-txtime", "-txtime-offset", "1ms"}, netAdmin: true},
		}
		for _, p := range pods {
			apply(ctx, t, c, p.manifest(n))
		}
		for _, p := range pods {
			d := waitSucceeded(ctx, t, c, p.name)
			t.Logf("TIMING pod %s: created to Succeeded in %v", p.name, d.Round(time.Millisecond))
			var sum struct {
				Sent       uint64 `json:"sent"`
				SendErrors uint64 `json:"send_errors"`
			}
			logs, err := c.Kubectl(ctx, "logs", p.name)
			if err != nil {
				t.Fatal(err)
			}
			// The summary is the JSON object on stdout; the talker's log lines go to stderr,
			// which kubectl logs interleaves: take from the first '{'.
			if i := bytes.IndexByte(logs, '{'); i < 0 || json.Unmarshal(lastJSON(logs[i:]), &sum) != nil {
				t.Fatalf("pod %s: no talker summary in its log:\n%s", p.name, logs)
			}
			if sum.Sent != n || sum.SendErrors != 0 {
				t.Errorf("pod %s: talker sent %d packets with %d errors, want %d and 0", p.name, sum.Sent, sum.SendErrors, n)
			}
		}
		rep := rcv.stop(t)
		for _, p := range pods {
			s := rep.stream(p.stream)
			if s == nil {
				t.Errorf("receiver saw nothing of stream %s: %+v", p.stream, rep)
				continue
			}
			if s.Packets != n || s.Missing != 0 {
				t.Errorf("stream %s: %d packets, %d missing at the wire, want %d and 0 (receiver socket drops: %d)",
					p.stream, s.Packets, s.Missing, n, rep.SocketDrops)
			}
			if strings.Contains(p.stream, "txtime") != (s.TxtimePackets == n) {
				t.Errorf("stream %s: %d packets with a launch time", p.stream, s.TxtimePackets)
			}
			// Without the driver, what leaves tsn0 is what the kernel makes of
			// a pod's packets: the priority is scrubbed to 0, CLOCK_TAI launch
			// times survive (Linux >= 6.x keeps the tstamp's clock type).
			r, err := obs.Result(p.tag)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("observer at %s egress, stream %s: %+v", cluster.TSNInterface, p.stream, r)
			recordResult("without the driver", p.name, "-", priorityArg(p.args), slices.Contains(p.args, "-txtime"), r)
			if r.Total != n || r.ByGot[0] != n {
				t.Errorf("stream %s at %s egress: %d packets, %d with priority 0; want %d and %d (no driver: priority scrubbed)",
					p.stream, cluster.TSNInterface, r.Total, r.ByGot[0], n, n)
			}
			if p.netAdmin && r.TxTimeRight != n {
				t.Errorf("stream %s at %s egress: %d of %d launch times carried", p.stream, cluster.TSNInterface, r.TxTimeRight, n)
			}
		}
		for _, p := range pods {
			if _, err := c.Kubectl(ctx, "delete", "pod", p.name, "--wait=true", "--timeout=60s"); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("Driver", func(t *testing.T) {
		dumpOnFailure(t)
		driverScenario(ctx, t, c, repo, obs, receiver)
	})

	t.Run("TeardownLeavesNothing", func(t *testing.T) {
		start := time.Now()
		stopped = true
		if err := c.Stop(); err != nil {
			t.Fatalf("teardown: %v", err)
		}
		t.Logf("TIMING teardown: %v", time.Since(start).Round(time.Millisecond))
		if left := c.Leftovers(); len(left) > 0 {
			t.Errorf("left behind after teardown:\n%s", strings.Join(left, "\n"))
		}
	})
}

type talkerPod struct {
	name, stream string
	tag          uint32 // the data path observer's flow
	args         []string
	// netAdmin adds CAP_NET_ADMIN: SO_TXTIME on CLOCK_TAI needs it.
	netAdmin bool
}

func (p talkerPod) manifest(count int) string {
	args := append([]string{"-dest", fmt.Sprintf("%s:%d", cluster.WireAddr, receiverPort), "-count", fmt.Sprint(count),
		"-period", "1ms", "-stream", p.stream, "-tag", fmt.Sprint(p.tag)}, p.args...)
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	m := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  containers:
  - name: talker
    image: %s
    imagePullPolicy: Never
    command: ["/bin/talker", %s]
`, p.name, images.Examples, strings.Join(quoted, ", "))
	if p.netAdmin {
		m += `    securityContext:
      capabilities:
        add: ["NET_ADMIN"]
`
	}
	return m
}

// lastJSON returns b up to the end of its first top-level JSON object.
func lastJSON(b []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return b
	}
	return raw
}

func apply(ctx context.Context, t *testing.T, c *cluster.Cluster, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
		t.Fatal(err)
	}
}

// waitSucceeded waits for the pod to succeed and returns the time from its
// creation to the end of its container.
func waitSucceeded(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) time.Duration {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.Kubectl(ctx, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if err != nil {
			t.Fatal(err)
		}
		phase := strings.TrimSpace(string(out))
		if phase == "Succeeded" {
			break
		}
		if phase == "Failed" || time.Now().After(deadline) {
			logs, _ := c.Kubectl(ctx, "logs", name)
			t.Fatalf("pod %s: phase %q, want Succeeded; its log:\n%s", name, phase, logs)
		}
		time.Sleep(250 * time.Millisecond)
	}
	out, err := c.Kubectl(ctx, "get", "pod", name, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var pod struct {
		Metadata struct {
			CreationTimestamp time.Time `json:"creationTimestamp"`
		} `json:"metadata"`
		Status struct {
			ContainerStatuses []struct {
				State struct {
					Terminated *struct {
						StartedAt time.Time `json:"startedAt"`
					} `json:"terminated"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &pod); err != nil {
		t.Fatal(err)
	}
	if cs := pod.Status.ContainerStatuses; len(cs) == 1 && cs[0].State.Terminated != nil {
		t.Logf("TIMING pod %s: created to container started in %v", name,
			cs[0].State.Terminated.StartedAt.Sub(pod.Metadata.CreationTimestamp))
	}
	return time.Since(pod.Metadata.CreationTimestamp)
}

// receiverProc is the example receiver running in the wire namespace.
type receiverProc struct {
	stdout, stderr syncBuffer
	done           chan error
	cmd            interface{ Signal(os.Signal) error }
}

type receiverReport struct {
	Packets     uint64 `json:"packets"`
	SocketDrops uint64 `json:"socket_drops"`
	Streams     []struct {
		Stream        string `json:"stream"`
		Priority      uint32 `json:"priority"`
		Packets       uint64 `json:"packets"`
		Missing       uint64 `json:"missing"`
		TxtimePackets uint64 `json:"txtime_packets"`
	} `json:"streams"`
}

func (r *receiverReport) stream(name string) *struct {
	Stream        string `json:"stream"`
	Priority      uint32 `json:"priority"`
	Packets       uint64 `json:"packets"`
	Missing       uint64 `json:"missing"`
	TxtimePackets uint64 `json:"txtime_packets"`
} {
	for i := range r.Streams {
		if r.Streams[i].Stream == name {
			return &r.Streams[i]
		}
	}
	return nil
}

func startReceiver(ctx context.Context, t *testing.T, c *cluster.Cluster, bin string) *receiverProc {
	t.Helper()
	r := &receiverProc{done: make(chan error, 1)}
	cmd := c.InWire(ctx, bin, "-listen", fmt.Sprintf(":%d", receiverPort))
	cmd.Stdout, cmd.Stderr = &r.stdout, &r.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.cmd = cmd.Process
	go func() { r.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("receiver did not start: %s", r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *receiverProc) stop(t *testing.T) *receiverReport {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // the last datagrams in flight
	r.cmd.Signal(syscall.SIGTERM)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("receiver: %v\n%s", err, r.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not stop on SIGTERM")
	}
	var rep receiverReport
	if err := json.Unmarshal([]byte(r.stdout.String()), &rep); err != nil {
		t.Fatalf("receiver summary %q: %v", r.stdout.String(), err)
	}
	t.Logf("receiver: %s", r.stdout.String())
	return &rep
}

// syncBuffer is a bytes.Buffer safe for a process writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
