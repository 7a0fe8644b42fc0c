package driver

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the driver's Prometheus metrics.
type Metrics struct {
	prepareDuration  prometheus.Histogram
	prepareErrors    prometheus.Counter
	statusErrors     prometheus.Counter
	preparedClaims   prometheus.Gauge
	publishedDevices prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		prepareDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "tsn_dra", Name: "prepare_duration_seconds",
			Help:    "Time to prepare one ResourceClaim (plan, checkpoint, claim status).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		prepareErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tsn_dra", Name: "prepare_errors_total", Help: "Claims whose preparation failed.",
		}),
		statusErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tsn_dra", Name: "claim_status_errors_total", Help: "Failed writes of a claim's device status.",
		}),
		preparedClaims: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "tsn_dra", Name: "prepared_claims", Help: "Claims prepared on this node.",
		}),
		publishedDevices: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "tsn_dra", Name: "published_devices", Help: "Traffic-class devices published for this node.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.prepareDuration, m.prepareErrors, m.statusErrors, m.preparedClaims, m.publishedDevices)
	}
	return m
}
