package datapath

import (
	"fmt"
	"path/filepath"
	"time"
)

// DefaultPinDir is where maps and links are pinned. The version is bumped
// whenever the maps' layout changes, so an upgraded driver never adopts maps it
// cannot read.
const DefaultPinDir = "/sys/fs/bpf/tsn-dra/v1"

// Option configures Open.
type Option func(*options)

type options struct {
	pinDir     string
	netnsPath  string
	maxPods    uint32
	quota      uint32
	ttl        time.Duration
	gcInterval time.Duration
	vxlanPorts [2]uint16
	nicClock   Clock
	mode       AttachMode
	saverMode  AttachMode
	clockTypes *bool
	timer      *bool
	prepared   int
}

func defaultOptions() options {
	return options{
		pinDir:     DefaultPinDir,
		maxPods:    64,
		quota:      256,
		ttl:        time.Second,
		gcInterval: 250 * time.Millisecond,
		vxlanPorts: [2]uint16{4789, 8472},
		nicClock:   ClockTAI,
		prepared:   2,
	}
}

// WithPinDir pins under dir instead of DefaultPinDir (it must be on bpffs).
func WithPinDir(dir string) Option { return func(o *options) { o.pinDir = dir } }

// WithNetns makes EnsureRestorer/RemoveRestorer look for NICs in the network
// namespace at path instead of the caller's.
func WithNetns(path string) Option { return func(o *options) { o.netnsPath = path } }

// WithMaxPods sets how many savers can be attached at once (default 64).
func WithMaxPods(n uint32) Option { return func(o *options) { o.maxPods = n } }

// WithQuota sets how many in-flight entries one pod may hold (default 256).
// The shared map holds MaxPods*Quota entries, so no pod can fill it.
func WithQuota(n uint32) Option { return func(o *options) { o.quota = n } }

// maxTTL bounds WithTTL (see validate).
const maxTTL = time.Hour

// WithTTL sets how long a saved entry waits for its packet at the NIC
// (default 1s, at most 1h).
func WithTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithGCInterval sets how often expired entries are removed (default 250ms).
func WithGCInterval(d time.Duration) Option { return func(o *options) { o.gcInterval = d } }

// WithVXLANPorts sets the UDP ports the restorer looks into (default 4789 and
// flannel's 8472; 0 disables one).
func WithVXLANPorts(a, b uint16) Option { return func(o *options) { o.vxlanPorts = [2]uint16{a, b} } }

// WithNICClock sets the clock the NIC's qdiscs (etf, taprio txtime) read launch
// times in (default TAI). Launch times in other clocks are not carried.
func WithNICClock(c Clock) Option { return func(o *options) { o.nicClock = c } }

// WithAttachMode forces TCX or tc instead of probing (tests use it to run the
// pre-6.6 path on newer kernels).
func WithAttachMode(m AttachMode) Option { return func(o *options) { o.mode = m } }

// WithSaverAttachMode attaches savers with mode m while restorers use the
// probed (or WithAttachMode) mode. A TCX attach waits for an RCU grace period
// (8-20 ms measured on the development VM) where a cls_bpf filter takes under
// 1 ms; see docs/datapath.md for the trade-off.
func WithSaverAttachMode(m AttachMode) Option { return func(o *options) { o.saverMode = m } }

// WithKernelClockTypes overrides the probe for BPF_SKB_CLOCK_TAI (6.11); false
// runs the path for older kernels.
func WithKernelClockTypes(have bool) Option { return func(o *options) { o.clockTypes = &have } }

// WithKernelTimer overrides whether entries expire by a bpf_timer in the kernel
// (default: when the kernel allows it; PREEMPT_RT kernels refuse it) or by a
// sweep the manager runs while it is open; false runs the latter.
func WithKernelTimer(use bool) Option { return func(o *options) { o.timer = &use } }

// WithPreparedSavers sets how many saver programs are loaded ahead of time so
// AttachSaver need not wait for the verifier (default 2).
func WithPreparedSavers(n int) Option { return func(o *options) { o.prepared = n } }

func (o *options) validate() error {
	if !filepath.IsAbs(o.pinDir) {
		return fmt.Errorf("pin dir %q: must be absolute", o.pinDir)
	}
	if o.maxPods == 0 || o.maxPods > 4096 {
		return fmt.Errorf("max pods %d: want 1..4096", o.maxPods)
	}
	if o.quota == 0 || uint64(o.quota)*uint64(o.maxPods) > 1<<20 {
		return fmt.Errorf("quota %d x max pods %d: want 1..%d entries", o.quota, o.maxPods, 1<<20)
	}
	if o.ttl <= 0 || o.gcInterval <= 0 {
		return fmt.Errorf("ttl %v and gc interval %v must be positive", o.ttl, o.gcInterval)
	}
	// Entries age in a 32-bit count of 2^20 ns read as signed (bpf/tsn.c):
	// a TTL must stay far below 2^31 units (~26 days).
	if o.ttl > maxTTL {
		return fmt.Errorf("ttl %v: at most %v", o.ttl, maxTTL)
	}
	if o.nicClock != ClockTAI && o.nicClock != ClockMonotonic {
		return fmt.Errorf("nic clock %v: want tai or monotonic", o.nicClock)
	}
	for _, m := range []AttachMode{o.mode, o.saverMode} {
		switch m {
		case "", ModeTCX, ModeTC:
		default:
			return fmt.Errorf("attach mode %q: want %q or %q", m, ModeTCX, ModeTC)
		}
	}
	if o.prepared < 0 {
		return fmt.Errorf("prepared savers %d: negative", o.prepared)
	}
	return nil
}
