package nrihooks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics records how long the hooks take (containerd gives a hook 2 s, and a
// pod whose hook is dropped starts without its saver), how long containers
// wait for their pod's saver, and how many attaches outlive their hook.
type Metrics struct {
	latency       *prometheus.HistogramVec
	containerWait *prometheus.HistogramVec
	late          *prometheus.CounterVec
}

// NewMetrics registers the hook metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	// From 100 us to ~1.6 s: the interesting range is well under
	// containerd's 2 s request timeout.
	buckets := prometheus.ExponentialBuckets(0.0001, 2, 15)
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tsn_dra",
			Subsystem: "nri",
			Name:      "hook_duration_seconds",
			Help: "Time spent in NRI hooks that had work to do, by event and result. RunPodSandbox counts " +
				"the hook's own time: an attach that outlives its wait budget goes on after the hook " +
				"(tsn_dra_nri_late_attaches_total).",
			Buckets: buckets,
		}, []string{"event", "result"}),
		containerWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tsn_dra",
			Subsystem: "nri",
			Name:      "container_saver_wait_seconds",
			Help: "Time CreateContainer waited for the pod's TSN saver, for containers of pods whose saver " +
				"attach was still running or had failed (other containers do not wait and are not counted), " +
				"by result: attached (the container was created), failed (the attach failed: the container " +
				"failed), timeout (still attaching at the end of the wait: the container failed).",
			Buckets: buckets,
		}, []string{"result"}),
		late: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tsn_dra",
			Subsystem: "nri",
			Name:      "late_attaches_total",
			Help: "Saver attaches that ended after the hook that started them had returned (RunPodSandbox " +
				"waits only a short budget), by that hook and result: success, error (the pod's containers " +
				"fail until a retry succeeds), stopped (the pod sandbox stopped meanwhile: nothing left attached).",
		}, []string{"event", "result"}),
	}
	reg.MustRegister(m.latency, m.containerWait, m.late)
	return m
}

func (m *Metrics) observe(event string, start time.Time, err error) {
	if m == nil {
		return
	}
	result := "success"
	if err != nil {
		result = "error"
	}
	m.latency.WithLabelValues(event, result).Observe(time.Since(start).Seconds())
}

func (m *Metrics) observeContainerWait(result string, start time.Time) {
	if m == nil {
		return
	}
	m.containerWait.WithLabelValues(result).Observe(time.Since(start).Seconds())
}

func (m *Metrics) lateAttach(event, result string) {
	if m == nil {
		return
	}
	m.late.WithLabelValues(event, result).Inc()
}
