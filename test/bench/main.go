// Command bench is `make bench`: it measures, in one run and side by side, the costs a TSN user
// weighs when choosing the driver, and writes them to docs/benchmarks.md:
//
//   - data-path cost per packet: in-kernel ns per program (BPF run statistics) and the sending
//     thread's CPU per packet with and without the proxy (pkg/tsn/datapath's BenchmarkDatapath);
//   - added latency and jitter pod -> wire (p50, p99, max) with and without the proxy, from the
//     send time in the pod to the kernel's receive timestamp (SO_TIMESTAMPNS) in the wire netns;
//   - claim Prepare latency through the kubelet's DRA gRPC API (pkg/driver's kubelet-side test);
//   - NRI hook latency through NRI's runtime side (pkg/driver/nrihooks' TestHookLatency);
//   - driver RSS idle and with 200 prepared claims (the driver, its kubelet plugin, data path and
//     metrics in a subprocess, claims prepared over its DRA socket);
//   - map cost per packet and expiry (sweep) cost against the table size.
//
// Needs root (network namespaces, eBPF). Usage: go run ./test/bench [-out docs/benchmarks.md].
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

var (
	out     = flag.String("out", "docs/benchmarks.md", "markdown report to write (empty: stdout only)")
	quick   = flag.Bool("quick", false, "fewer packets and sizes (a smoke run)")
	only    = flag.String("only", "", "comma-separated sections to run (datapath,latency,prepare,nri,rss,mapsize,reliability)")
	rssKid  = flag.String("rss-child", "", "internal: run the driver for the RSS measurement with this state dir")
	goBin   = flag.String("go", "go", "go command for the package benchmarks")
	verbose = flag.Bool("v", false, "print the output of sub-runs")
)

func main() {
	flag.Parse()
	if *rssKid != "" {
		if err := rssChild(*rssKid); err != nil {
			fmt.Fprintln(os.Stderr, "rss child:", err)
			os.Exit(1)
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench needs root: it builds network namespaces and loads eBPF")
		os.Exit(2)
	}
	r := &report{start: time.Now(), loadStart: loadavg()}
	sections := []struct {
		name string
		run  func(*report) error
	}{
		{"datapath", benchDatapath},
		{"latency", benchLatency},
		{"prepare", benchPrepare},
		{"nri", benchNRI},
		{"rss", benchRSS},
		{"mapsize", benchMapSize},
		{"reliability", benchReliability},
	}
	for _, s := range sections {
		if *only != "" && !strings.Contains(","+*only+",", ","+s.name+",") {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s (load %s)\n", s.name, loadavg())
		t0 := time.Now()
		if err := s.run(r); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", s.name, err)
			r.errors = append(r.errors, fmt.Sprintf("%s: %v", s.name, err))
		}
		fmt.Fprintf(os.Stderr, "   took %v\n", time.Since(t0).Round(time.Second))
	}
	r.loadEnd = loadavg()
	md := r.markdown()
	fmt.Print(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	}
	if len(r.errors) > 0 {
		os.Exit(1)
	}
}

// goTest runs a package test or benchmark and returns its output.
func goTest(env []string, args ...string) (string, error) {
	cmd := exec.Command(*goBin, append([]string{"test", "-count=1"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	// Results and t.Logf lines go to stdout; klog writes its own lines to stderr, which would
	// split a benchmark's result line.
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if *verbose {
		os.Stderr.Write(stderr.Bytes())
		os.Stderr.Write(stdout.Bytes())
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("go test %s: %v\n%s\n%s", strings.Join(args, " "), err, tail(stdout.String(), 2000), tail(stderr.String(), 1000))
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// benchMetrics parses the custom metrics of one benchmark result line. Log lines printed while
// the benchmark runs can split "BenchmarkX-2" from its figures, so the figures are found on their
// own: "<iterations> <ns> ns/op <value> <unit> ...".
func benchMetrics(output, name string) (map[string]float64, error) {
	i := strings.Index(output, name)
	if i < 0 {
		return nil, fmt.Errorf("no result for %s in:\n%s", name, tail(output, 2000))
	}
	re := regexp.MustCompile(`(?m)(?:^|\s)(\d+)\s+[0-9.]+ ns/op(.*)$`)
	m := re.FindStringSubmatch(output[i:])
	if m == nil {
		return nil, fmt.Errorf("no result line for %s in:\n%s", name, tail(output, 2000))
	}
	f := strings.Fields(m[2])
	res := map[string]float64{}
	for j := 0; j+1 < len(f); j += 2 {
		if v, err := strconv.ParseFloat(f[j], 64); err == nil {
			res[f[j+1]] = v
		}
	}
	return res, nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func cmdOut(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if _, v, ok := strings.Cut(l, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return "?"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "MemTotal:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return "?"
}

// percentile of sorted durations.
func pct(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func sortDur(s []time.Duration) { sort.Slice(s, func(i, j int) bool { return s[i] < s[j] }) }

var lineRE = regexp.MustCompile(`p50=([0-9.]+[µmn]?s) p99=([0-9.]+[µmn]?s)(?: max=([0-9.]+[µmn]?s))?`)

func parseDur(s string) time.Duration {
	d, _ := time.ParseDuration(s)
	return d
}

func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

var _ = context.Background
var _ = runtime.NumCPU
