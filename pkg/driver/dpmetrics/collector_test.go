package dpmetrics

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/klog/v2"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
)

type fakeSource struct {
	savers    []datapath.SaverInfo
	saversErr error
	counters  map[string]datapath.Counters
}

func (f *fakeSource) Savers() ([]datapath.SaverInfo, error) { return f.savers, f.saversErr }

func (f *fakeSource) Counters(uid string) (datapath.Counters, error) {
	c, ok := f.counters[uid]
	if !ok {
		return c, errors.New("no saver attached")
	}
	return c, nil
}

func TestCollector(t *testing.T) {
	var a datapath.Counters
	a.ByPriority[3] = datapath.PriorityCounters{Saved: 10, Restored: 9, Expired: 1}
	a.ByPriority[datapath.OtherPriorities] = datapath.PriorityCounters{Demoted: 4}
	src := &fakeSource{
		savers: []datapath.SaverInfo{
			{PodUID: "uid-a", Ifname: "eth0"},
			{PodUID: "uid-b", Ifname: "net1"},    // no name known, zero counters
			{PodUID: "uid-gone", Ifname: "eth0"}, // gone between Savers and Counters
		},
		counters: map[string]datapath.Counters{"uid-a": a, "uid-b": {}},
	}
	names := func(uid string) (string, string, bool) {
		if uid == "uid-a" {
			return "default", "talker", true
		}
		return "", "", false
	}
	c := New(src, names, klog.Background())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	want := `
# HELP tsn_dra_datapath_savers Pods with a saver attached on this node.
# TYPE tsn_dra_datapath_savers gauge
tsn_dra_datapath_savers 3
# HELP tsn_dra_datapath_scrape_errors_total Reads of the data path's counters that failed during a scrape.
# TYPE tsn_dra_datapath_scrape_errors_total counter
tsn_dra_datapath_scrape_errors_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tsn_dra_datapath_savers", "tsn_dra_datapath_scrape_errors_total"); err != nil {
		t.Error(err)
	}
	// 2 non-zero priority buckets of pod a, 7 results each; pod b has none.
	if n, err := testutil.GatherAndCount(reg, "tsn_dra_datapath_packets_total"); err != nil || n != 14 {
		t.Errorf("packets series: %d, %v; want 14", n, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tsn_dra_datapath_packets_total" {
			continue
		}
		for _, m := range mf.Metric {
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["namespace"] != "default" || l["pod"] != "talker" || l["pod_uid"] != "uid-a" || l["interface"] != "eth0" {
				t.Errorf("labels %v", l)
			}
			got[l["priority"]+"/"+l["result"]] = m.Counter.GetValue()
		}
	}
	for k, v := range map[string]float64{"3/saved": 10, "3/restored": 9, "3/expired": 1, "3/missed": 0, "16+/demoted": 4, "16+/saved": 0} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestCollectorSaversError(t *testing.T) {
	c := New(&fakeSource{saversErr: errors.New("datapath manager is closed")}, nil, klog.Background())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	for i := 0; i < 2; i++ {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := testutil.GatherAndCount(reg, "tsn_dra_datapath_savers"); n != 0 {
		t.Errorf("savers gauge reported without a reading")
	}
	want := "# HELP tsn_dra_datapath_scrape_errors_total Reads of the data path's counters that failed during a scrape.\n# TYPE tsn_dra_datapath_scrape_errors_total counter\ntsn_dra_datapath_scrape_errors_total 4\n" // 4 gathers, each failing once
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tsn_dra_datapath_scrape_errors_total"); err != nil {
		t.Error(err)
	}
}

func TestValuesOrder(t *testing.T) {
	v := Values(datapath.PriorityCounters{Saved: 1, Restored: 2, Missed: 3, Demoted: 4, Dropped: 5, Rejected: 6, Expired: 7})
	for i := range v {
		if v[i] != uint64(i+1) {
			t.Fatalf("Values = %v: not in the order of Results %v", v, Results)
		}
	}
	if len(v) != len(Results) {
		t.Fatalf("%d values, %d results", len(v), len(Results))
	}
}
