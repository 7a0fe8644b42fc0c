package driver

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the driver's Prometheus metrics.
type Metrics struct {
	prepareDuration   prometheus.Histogram
	prepareErrors     prometheus.Counter
	statusErrors      prometheus.Counter
	preparedClaims    prometheus.Gauge
	publishedDevices  prometheus.Gauge
	checkpointDamaged prometheus.Counter
	rebuildPending    prometheus.Gauge
	rebuiltClaims     *prometheus.CounterVec
}

// Values of the result label of tsn_dra_checkpoint_rebuilt_claims_total.
const (
	rebuildResultRebuilt = "rebuilt"
	rebuildResultLeftOut = "left_out"
	// rebuildResultPodsFinished: none of the claim's pods is still live on this node.
	rebuildResultPodsFinished = "pods_finished"
)

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
		checkpointDamaged: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tsn_dra", Name: "checkpoint_damaged_total",
			Help: "Damaged checkpoints found at start (each is kept aside and the prepared state rebuilt from the API server).",
		}),
		rebuildPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "tsn_dra", Name: "checkpoint_rebuild_pending",
			Help: "1 while the prepared state is being rebuilt after a damaged checkpoint (Prepare and Unprepare are refused meanwhile).",
		}),
		rebuiltClaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tsn_dra", Name: "checkpoint_rebuilt_claims_total",
			Help: "Claims of this node found while rebuilding the prepared state: rebuilt, left_out because they no longer plan, or pods_finished because none of their pods is still running on this node.",
		}, []string{"result"}),
	}
	m.rebuiltClaims.WithLabelValues(rebuildResultRebuilt)
	m.rebuiltClaims.WithLabelValues(rebuildResultLeftOut)
	m.rebuiltClaims.WithLabelValues(rebuildResultPodsFinished)
	if reg != nil {
		reg.MustRegister(m.prepareDuration, m.prepareErrors, m.statusErrors, m.preparedClaims, m.publishedDevices,
			m.checkpointDamaged, m.rebuildPending, m.rebuiltClaims)
	}
	return m
}
