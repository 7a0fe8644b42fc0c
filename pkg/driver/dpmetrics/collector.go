// Package dpmetrics exports the eBPF data path's per-pod, per-priority counters
// as Prometheus metrics: tsn_dra_datapath_packets_total by result, and
// tsn_dra_datapath_missed_packets_total, the missed ones by reason.
//
// The counters live in a per-CPU BPF map that the kernel updates for every
// packet; copying them into Prometheus counters on every change would cost a
// goroutine and a map walk per interval whether anyone scrapes or not. A
// Collector reads the map only when /metrics is scraped, so the cost is paid by
// the scraper, once per scrape, and the values are never stale.
package dpmetrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

// Source is the part of the data path the collector reads; *datapath.Manager
// implements it.
type Source interface {
	Savers() ([]datapath.SaverInfo, error)
	Counters(podUID string) (datapath.Counters, error)
}

// PodNamer names a pod by its UID (namespace and name), for labels a human can
// read. ok is false for a pod the driver does not know (yet): its series then
// carry the UID only.
type PodNamer func(podUID string) (namespace, name string, ok bool)

// Collector is a prometheus.Collector over the data path's counters.
type Collector struct {
	src    Source
	names  PodNamer
	logger klog.Logger

	packets    *prometheus.Desc
	missed     *prometheus.Desc
	savers     *prometheus.Desc
	scrapeErrs *prometheus.Desc

	errors atomic.Uint64
}

// Results are the values of the "result" label, one per counter of
// datapath.PriorityCounters, in this order.
var Results = []string{"saved", "restored", "missed", "demoted", "dropped", "rejected", "expired"}

// New returns a collector reading src; names may be nil.
func New(src Source, names PodNamer, logger klog.Logger) *Collector {
	return &Collector{
		src: src, names: names, logger: logger,
		packets: prometheus.NewDesc("tsn_dra_datapath_packets_total",
			"Packets of a pod's application priority handled by the eBPF data path, by result: "+
				"saved (metadata stored at the pod), restored (written back at the TSN NIC), "+
				"missed (not stored: quota, table full, not fingerprintable), demoted and dropped "+
				"(ungranted priority), rejected (ambiguous fingerprint at the NIC), expired "+
				"(never reached the NIC). priority \"16+\" counts priorities above 15.",
			[]string{"namespace", "pod", "pod_uid", "interface", "priority", "result"}, nil),
		missed: prometheus.NewDesc("tsn_dra_datapath_missed_packets_total",
			"Packets of a pod's application priority whose metadata the saver could not store, by reason: "+
				"quota (the pod holds its quota of in-flight entries), table_full (both buckets of the "+
				"packet full of live entries), unfingerprintable (IP fragment, not IP, truncated), "+
				"ambiguous (same bytes in flight with other metadata), race (another CPU took the way), "+
				"internal (a map lookup failed). The reasons add up to "+
				"tsn_dra_datapath_packets_total{result=\"missed\"}.",
			[]string{"namespace", "pod", "pod_uid", "interface", "priority", "reason"}, nil),
		savers: prometheus.NewDesc("tsn_dra_datapath_savers",
			"Pods with a saver attached on this node.", nil, nil),
		scrapeErrs: prometheus.NewDesc("tsn_dra_datapath_scrape_errors_total",
			"Reads of the data path's counters that failed during a scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.missed
	ch <- c.savers
	ch <- c.scrapeErrs
}

// Collect implements prometheus.Collector. Priorities whose counters are all
// zero are left out: a pod uses few of the 17 priority buckets, and 7 series
// (and 6 reasons) per unused bucket would only add cardinality. A priority
// that is reported gets every result and every miss reason, zeros included,
// so that rate() sees a series' first increment.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	savers, err := c.src.Savers()
	if err != nil {
		c.failed(err, "")
		ch <- prometheus.MustNewConstMetric(c.scrapeErrs, prometheus.CounterValue, c.errorCount())
		return
	}
	ch <- prometheus.MustNewConstMetric(c.savers, prometheus.GaugeValue, float64(len(savers)))
	for _, s := range savers {
		cnt, err := c.src.Counters(s.PodUID)
		if err != nil {
			// The pod may have gone between Savers and Counters.
			c.failed(err, s.PodUID)
			continue
		}
		ns, name := "", ""
		if c.names != nil {
			if n, p, ok := c.names(s.PodUID); ok {
				ns, name = n, p
			}
		}
		for prio, pc := range cnt.ByPriority {
			vals := Values(pc)
			if allZero(vals) {
				continue
			}
			label := strconv.Itoa(prio)
			if prio == datapath.OtherPriorities {
				label = "16+"
			}
			for i, v := range vals {
				ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(v),
					ns, name, s.PodUID, s.Ifname, label, Results[i])
			}
			for _, r := range datapath.MissReasons() {
				ch <- prometheus.MustNewConstMetric(c.missed, prometheus.CounterValue, float64(pc.MissedBy[r]),
					ns, name, s.PodUID, s.Ifname, label, r.String())
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrs, prometheus.CounterValue, c.errorCount())
}

// Values returns the counters in the order of Results.
func Values(pc datapath.PriorityCounters) []uint64 {
	return []uint64{pc.Saved, pc.Restored, pc.Missed, pc.Demoted, pc.Dropped, pc.Rejected, pc.Expired}
}

func allZero(v []uint64) bool {
	for _, x := range v {
		if x != 0 {
			return false
		}
	}
	return true
}

func (c *Collector) failed(err error, podUID string) {
	c.errors.Add(1)
	c.logger.V(2).Info("Reading data path counters for /metrics", "podUID", podUID, "err", err)
}

func (c *Collector) errorCount() float64 { return float64(c.errors.Load()) }
