package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver/dpmetrics"
)

// registerDataPathMetrics exports the data path's per-pod, per-priority
// counters on /metrics (read at scrape time), naming pods from the prepared
// claims.
func registerDataPathMetrics(ctx context.Context, reg prometheus.Registerer, dp *dataPath, store driver.ClaimStore) {
	names := func(podUID string) (string, string, bool) {
		for _, p := range store.PodPolicies(types.UID(podUID)) {
			if p.PodName != "" {
				return p.ClaimNamespace, p.PodName, true
			}
		}
		return "", "", false
	}
	reg.MustRegister(dpmetrics.New(dp.mgr, names, klog.FromContext(ctx).WithName("metrics")))
}
