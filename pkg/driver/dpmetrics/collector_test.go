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

// TestCollectorMissReasons: the missed packets of each reported priority,
// split by reason in their own family, with every reason present (zeros
// included) and the packets family unchanged.
func TestCollectorMissReasons(t *testing.T) {
	var a datapath.Counters
	a.ByPriority[3] = datapath.PriorityCounters{Saved: 10, Missed: 5}
	a.ByPriority[3].MissedBy[datapath.MissQuota] = 3
	a.ByPriority[3].MissedBy[datapath.MissAmbiguous] = 2
	a.ByPriority[5] = datapath.PriorityCounters{Saved: 1} // reported: its reasons are all 0
	a.ByPriority[datapath.OtherPriorities] = datapath.PriorityCounters{Missed: 1}
	a.ByPriority[datapath.OtherPriorities].MissedBy[datapath.MissUnfingerprintable] = 1
	src := &fakeSource{
		savers:   []datapath.SaverInfo{{PodUID: "uid-a", Ifname: "net1"}},
		counters: map[string]datapath.Counters{"uid-a": a},
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(src, func(string) (string, string, bool) { return "prod", "talker", true }, klog.Background()))

	const family = "tsn_dra_datapath_missed_packets_total"
	reasons := len(datapath.MissReasons())
	if n, err := testutil.GatherAndCount(reg, family); err != nil || n != 3*reasons {
		t.Errorf("%s series: %d, %v; want %d (3 priorities x %d reasons)", family, n, err, 3*reasons, reasons)
	}
	if n, err := testutil.GatherAndCount(reg, "tsn_dra_datapath_packets_total"); err != nil || n != 3*len(Results) {
		t.Errorf("packets series: %d, %v; want %d", n, err, 3*len(Results))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		if mf.GetType().String() != "COUNTER" || !strings.Contains(mf.GetHelp(), "by reason") {
			t.Errorf("%s: type %s, help %q", family, mf.GetType(), mf.GetHelp())
		}
		for _, m := range mf.Metric {
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["namespace"] != "prod" || l["pod"] != "talker" || l["pod_uid"] != "uid-a" || l["interface"] != "net1" {
				t.Errorf("labels %v", l)
			}
			got[l["priority"]+"/"+l["reason"]] = m.Counter.GetValue()
		}
	}
	want := map[string]float64{
		"3/quota": 3, "3/ambiguous": 2, "3/table_full": 0, "3/unfingerprintable": 0, "3/race": 0, "3/internal": 0,
		"5/quota": 0, "5/ambiguous": 0,
		"16+/unfingerprintable": 1, "16+/quota": 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "0/") || strings.HasPrefix(k, "7/") {
			t.Errorf("series %s for a priority without packets", k)
		}
	}
}
