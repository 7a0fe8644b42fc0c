package nrihooks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics records how long the hooks take: containerd gives a hook 2 s, and a
// pod whose hook is dropped starts without its saver.
type Metrics struct {
	latency *prometheus.HistogramVec
}

// NewMetrics registers the hook metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tsn_dra",
			Subsystem: "nri",
			Name:      "hook_duration_seconds",
			Help:      "Time spent in NRI hooks that had work to do, by event and result.",
			// From 100 us to ~1.6 s: the interesting range is well under
			// containerd's 2 s request timeout.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 15),
		}, []string{"event", "result"}),
	}
	reg.MustRegister(m.latency)
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
