package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/nic"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/qdisc"
)

const statusUsage = `Usage: tsn-dra-driver status [flags]

Shows, for this node, per TSN NIC: its schedule (node config), what is on the
NIC (root qdisc, restorer), the prepared claims on it, and per pod its policy
and data path counters. Reads the node config, the claims checkpoint and the
pinned eBPF maps; changes nothing. Run it on the node (or in the driver's pod:
kubectl -n tsn-dra-driver exec ds/tsn-dra-driver -- /tsn-dra-driver status).

Flags:
`

// checkpointName is the driver's checkpoint file in --state-dir (pkg/driver).
const checkpointName = "checkpoint.json"

type statusFlags struct {
	configPath string
	stateDir   string
	pinDir     string
	output     string
	noLinks    bool
}

// nodeStatus is what `status -o json` prints.
type nodeStatus struct {
	ConfigPath     string                 `json:"configPath"`
	ConfigError    string                 `json:"configError,omitempty"`
	CheckpointPath string                 `json:"checkpointPath"`
	CheckpointErr  string                 `json:"checkpointError,omitempty"`
	PinsError      string                 `json:"pinsError,omitempty"`
	NICs           []nicStatus            `json:"nics"`
	OtherClaims    []driver.PreparedClaim `json:"otherClaims,omitempty"` // on NICs not in the config
	OtherSavers    []pinnedSaver          `json:"otherSavers,omitempty"` // pods without a prepared claim
	Pins           *pinnedState           `json:"pins,omitempty"`
}

type nicStatus struct {
	Name      string                 `json:"name"`
	Interface string                 `json:"interface,omitempty"`
	LinkError string                 `json:"linkError,omitempty"` // "not looked at" with -no-links
	Up        bool                   `json:"up"`
	SpeedMbps uint32                 `json:"speedMbps,omitempty"`
	RootQdisc string                 `json:"rootQdisc,omitempty"`
	Queues    []queueStatus          `json:"queues,omitempty"`
	Restorer  datapath.AttachMode    `json:"restorer,omitempty"` // empty: none attached
	Config    config.NIC             `json:"config"`
	Classes   []classStatus          `json:"classes"`
	Claims    []driver.PreparedClaim `json:"claims"`
	Pods      []podStatus            `json:"pods"`
}

type classStatus struct {
	Class      int    `json:"class"`
	Device     string `json:"device"`
	Priorities []int  `json:"priorities"`
	Windows    string `json:"windows"`
	OpenShare  string `json:"openShare"`
}

type queueStatus struct {
	Handle  string `json:"handle"`
	Kind    string `json:"kind"`
	Packets uint32 `json:"packets"`
	Backlog uint32 `json:"backlog"`
	Drops   uint32 `json:"drops"`
}

type podStatus struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	UID       string       `json:"uid"`
	Claims    []string     `json:"claims"`
	Saver     *pinnedSaver `json:"saver,omitempty"` // nil: no saver (pod not started yet, or gone)
}

// statusMain runs the status subcommand and returns the exit code.
func statusMain(args []string, stdout, stderr io.Writer) int {
	f := statusFlags{}
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage); fs.PrintDefaults() }
	fs.StringVar(&f.configPath, "config", "/etc/tsn-dra-driver/config.yaml", "node config file")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/tsn-dra-driver", "the driver's state directory (claims checkpoint)")
	fs.StringVar(&f.pinDir, "bpf-pin-dir", datapath.DefaultPinDir, "the data path's bpffs directory")
	fs.StringVar(&f.output, "o", "text", "output: text or json")
	fs.BoolVar(&f.noLinks, "no-links", false, "do not look at the node's links and qdiscs (only config, checkpoint, pins)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.output != "text" && f.output != "json" {
		fmt.Fprintf(stderr, "-o %q: want text or json\n", f.output)
		return 2
	}
	st := collectStatus(f)
	if f.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	} else {
		printStatus(stdout, st)
	}
	// Exit 1 when nothing could be read at all; partial answers are still useful.
	if st.ConfigError != "" && st.CheckpointErr != "" && st.PinsError != "" {
		return 1
	}
	return 0
}

func collectStatus(f statusFlags) *nodeStatus {
	st := &nodeStatus{ConfigPath: f.configPath, CheckpointPath: filepath.Join(f.stateDir, checkpointName)}
	cfg, err := config.Load(f.configPath)
	if err != nil {
		st.ConfigError = err.Error()
		cfg = &config.NodeConfig{}
	}
	claims, err := readCheckpoint(st.CheckpointPath)
	if err != nil {
		st.CheckpointErr = err.Error()
	}
	pins, err := readPins(f.pinDir)
	if err != nil {
		st.PinsError = err.Error()
		pins = &pinnedState{PinDir: f.pinDir}
	} else {
		st.Pins = pins
	}
	savers := map[string]pinnedSaver{}
	for _, s := range pins.Savers {
		savers[s.PodUID] = s
	}
	restorers := map[string]datapath.AttachMode{}
	for _, r := range pins.Restorers {
		restorers[r.Ifname] = r.Mode
	}

	var disc *nic.Discoverer
	var qc *qdisc.Client
	if !f.noLinks {
		if disc, err = nic.New(); err == nil {
			defer disc.Close()
		}
		if qc, err = qdisc.NewClient(); err == nil {
			defer qc.Close()
		}
	}

	usedClaims := map[string]bool{}
	usedPods := map[string]bool{}
	for _, n := range cfg.NICs {
		ns := nicStatus{Name: n.Name, Config: n, Claims: []driver.PreparedClaim{}, Pods: []podStatus{}}
		for _, tc := range n.ClaimableClasses {
			cs := classStatus{Class: tc, Device: fmt.Sprintf("%s-tc%d", n.Name, tc), Priorities: n.Schedule.Priorities(tc),
				OpenShare: fmt.Sprintf("%.0f%%", 100*n.Schedule.OpenShare(tc))}
			var w []string
			for _, win := range n.Schedule.Windows(tc) {
				w = append(w, fmt.Sprintf("%v+%v", win.Offset, win.Length))
			}
			cs.Windows = strings.Join(w, ",")
			ns.Classes = append(ns.Classes, cs)
		}
		if disc == nil {
			ns.LinkError = "not looked at"
		} else {
			if info, err := disc.Resolve(n.Match); err != nil {
				ns.LinkError = err.Error()
			} else {
				ns.Interface, ns.Up, ns.SpeedMbps, ns.RootQdisc = info.Name, info.Up, info.SpeedMbps, info.RootQdisc
				if qc != nil {
					ns.Queues = queues(qc, info.Name)
				}
			}
		}
		if ns.Interface == "" && n.Match.InterfaceName != "" {
			ns.Interface = n.Match.InterfaceName
		}
		ns.Restorer = restorers[ns.Interface]

		pods := map[string]*podStatus{}
		for _, c := range claims {
			if !claimOnNIC(c, n.Name) {
				continue
			}
			usedClaims[string(c.UID)] = true
			ns.Claims = append(ns.Claims, c)
			for _, p := range c.Pods {
				if p.NIC != n.Name {
					continue
				}
				ps, ok := pods[string(p.PodUID)]
				if !ok {
					ps = &podStatus{Namespace: p.ClaimNamespace, Name: p.PodName, UID: string(p.PodUID)}
					if s, ok := savers[string(p.PodUID)]; ok {
						ps.Saver = &s
						usedPods[string(p.PodUID)] = true
					}
					pods[string(p.PodUID)] = ps
				}
				ps.Claims = append(ps.Claims, c.Namespace+"/"+c.Name)
			}
		}
		for _, p := range pods {
			ns.Pods = append(ns.Pods, *p)
		}
		sort.Slice(ns.Pods, func(i, j int) bool {
			return ns.Pods[i].Namespace+"/"+ns.Pods[i].Name < ns.Pods[j].Namespace+"/"+ns.Pods[j].Name
		})
		st.NICs = append(st.NICs, ns)
	}
	for _, c := range claims {
		if !usedClaims[string(c.UID)] {
			st.OtherClaims = append(st.OtherClaims, c)
		}
	}
	for _, s := range pins.Savers {
		if !usedPods[s.PodUID] {
			st.OtherSavers = append(st.OtherSavers, s)
		}
	}
	return st
}

func claimOnNIC(c driver.PreparedClaim, nicName string) bool {
	for _, d := range c.Devices {
		if d.NIC == nicName {
			return true
		}
	}
	return false
}

func queues(qc *qdisc.Client, ifname string) []queueStatus {
	l, err := qc.Link(ifname)
	if err != nil {
		return nil
	}
	all, err := qc.List(l.Index)
	if err != nil {
		return nil
	}
	var out []queueStatus
	for _, q := range all {
		if q.Default() {
			continue
		}
		out = append(out, queueStatus{Handle: fmt.Sprint(q.Handle), Kind: q.Kind, Packets: q.Stats.Packets, Backlog: q.Stats.QLen, Drops: q.Stats.Drops})
	}
	return out
}

// readCheckpoint reads the driver's checkpoint the way the driver does
// (pkg/driver/checkpoint.go): version 1, SHA-256 over the compact claims.
func readCheckpoint(path string) ([]driver.PreparedClaim, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // nothing prepared yet
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	var f struct {
		Version  int             `json:"version"`
		Checksum string          `json:"checksum"`
		Claims   json.RawMessage `json:"claims"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("checkpoint %s has version %d, this binary reads version 1", path, f.Version)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, f.Claims); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", path, err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != f.Checksum {
		return nil, fmt.Errorf("checkpoint %s is damaged: checksum mismatch", path)
	}
	m := map[string]driver.PreparedClaim{}
	if err := json.Unmarshal(f.Claims, &m); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", path, err)
	}
	out := make([]driver.PreparedClaim, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Nano()), nil
}

func printStatus(w io.Writer, st *nodeStatus) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	if st.ConfigError != "" {
		p("node config %s: %s", st.ConfigPath, st.ConfigError)
	}
	if st.CheckpointErr != "" {
		p("checkpoint %s: %s", st.CheckpointPath, st.CheckpointErr)
	}
	if st.PinsError != "" {
		p("data path: %s", st.PinsError)
	} else if st.Pins != nil {
		gc := fmt.Sprintf("expiry timer: %d runs, %d entries expired", st.Pins.GCRuns, st.Pins.GCExpired)
		if st.Pins.GCLastRun > 0 {
			gc += fmt.Sprintf(", last run %v ago", st.Pins.GCLastRun.Round(time.Millisecond))
		} else if st.Pins.GCRuns == 0 {
			gc = "expiry: no kernel timer (the daemon sweeps while it runs)"
		}
		p("data path %s: %d savers, %d restorers; %s", st.Pins.PinDir, len(st.Pins.Savers), len(st.Pins.Restorers), gc)
	}
	if len(st.NICs) == 0 {
		p("no NICs configured")
	}
	for _, n := range st.NICs {
		s := n.Config.Schedule
		p("")
		link := "up"
		switch {
		case n.LinkError != "":
			link = n.LinkError
		case !n.Up:
			link = "down"
		}
		speed := ""
		if n.SpeedMbps > 0 {
			speed = fmt.Sprintf(", %d Mb/s", n.SpeedMbps)
		}
		p("NIC %s (interface %s: %s%s)", n.Name, orDash(n.Interface), link, speed)
		owner := n.Config.ScheduleOwner.Effective()
		p("  schedule (applied by: %s): %s, %s, cycle %v, %d traffic classes, priority map %v, queues %v",
			owner, s.Mode, orDash(string(s.Clock)), s.Cycle(), s.NumTrafficClasses, s.PriorityMap, s.Queues)
		var gcl []string
		for _, e := range s.GateControlList {
			gcl = append(gcl, fmt.Sprintf("%s %#x %v", e.EffectiveCommand(), e.GateMask, e.Interval.D()))
		}
		p("  gate control list: %s", strings.Join(gcl, " | "))
		for _, c := range n.Classes {
			p("  class %d (device %s): priorities %v, open %s at %s", c.Class, c.Device, c.Priorities, c.OpenShare, orDash(c.Windows))
		}
		restorer := "none"
		if n.Restorer != "" {
			restorer = string(n.Restorer)
		}
		p("  on the NIC: root qdisc %s, restorer %s", orDash(n.RootQdisc), restorer)
		for _, q := range n.Queues {
			p("    qdisc %s %s: %d packets sent, %d queued, %d dropped", q.Handle, q.Kind, q.Packets, q.Backlog, q.Drops)
		}
		p("  claims: %d", len(n.Claims))
		for _, c := range n.Claims {
			var devs []string
			for _, d := range c.Devices {
				if d.NIC == n.Name {
					devs = append(devs, d.Device)
				}
			}
			p("    %s/%s (uid %s): %s", c.Namespace, c.Name, c.UID, strings.Join(devs, ", "))
		}
		for _, pod := range n.Pods {
			p("  pod %s/%s (uid %s), claims %s", pod.Namespace, orDash(pod.Name), pod.UID, strings.Join(pod.Claims, ", "))
			if pod.Saver == nil {
				p("    no saver attached (pod not started, or already gone)")
				continue
			}
			printSaver(w, "    ", *pod.Saver)
		}
	}
	if len(st.OtherClaims) > 0 {
		p("")
		p("claims on NICs not in the node config:")
		for _, c := range st.OtherClaims {
			p("  %s/%s (uid %s)", c.Namespace, c.Name, c.UID)
		}
	}
	if len(st.OtherSavers) > 0 {
		p("")
		p("savers of pods without a prepared claim (the NRI plugin removes them on its next sync):")
		for _, s := range st.OtherSavers {
			p("  pod uid %s", s.PodUID)
			printSaver(w, "    ", s)
		}
	}
}

func printSaver(w io.Writer, indent string, s pinnedSaver) {
	attached := "attached"
	if !s.Attached {
		attached = "NOT attached (pin missing)"
	}
	fmt.Fprintf(w, "%ssaver on %s (%s, slot %d) %s; allowed priorities %v, remap %v, ungranted: %s to %d; in flight %d/%d\n",
		indent, s.Ifname, s.Mode, s.Slot, attached, s.Allowed, s.Remap, s.Action, s.Demote, s.InFlight, s.Quota)
	if len(s.Counters) == 0 {
		fmt.Fprintf(w, "%sno packets with metadata yet\n", indent)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%spriority\tsaved\trestored\tmissed\tdemoted\tdropped\trejected\texpired\t\n", indent)
	total := map[string]uint64{}
	for p := 0; p <= datapath.OtherPriorities; p++ {
		c, ok := s.Counters[prioLabel(p)]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", indent, prioLabel(p), c.Saved, c.Restored, c.Missed, c.Demoted, c.Dropped, c.Rejected, c.Expired)
		for r, n := range c.MissedBy {
			total[r] += n
		}
	}
	tw.Flush()
	if len(total) > 0 {
		fmt.Fprintf(w, "%smissed by reason: %s\n", indent, missedBy(total))
	}
}

// missedBy lists non-zero miss reasons in datapath.MissReason order:
// "quota 84, ambiguous 5".
func missedBy(by map[string]uint64) string {
	var parts []string
	for _, r := range datapath.MissReasons() {
		if n := by[r.String()]; n != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r, n))
		}
	}
	return strings.Join(parts, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
