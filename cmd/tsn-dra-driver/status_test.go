package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/datapath/netemu"
)

// writeCheckpoint writes claims in the driver's checkpoint format.
func writeCheckpoint(t *testing.T, dir string, claims ...driver.PreparedClaim) {
	t.Helper()
	m := map[types.UID]driver.PreparedClaim{}
	for _, c := range claims {
		m[c.UID] = c
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	data, _ := json.Marshal(map[string]any{"version": 1, "checksum": hex.EncodeToString(sum[:]), "claims": json.RawMessage(body)})
	if err := os.WriteFile(filepath.Join(dir, checkpointName), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// shippedConfig writes the node config of deployments/20-configmap.yaml to dir.
func shippedConfig(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("../../deployments/20-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(obj.(*corev1.ConfigMap).Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func talkerClaim(podUID string) driver.PreparedClaim {
	return driver.PreparedClaim{
		UID: "claim-uid-1", Namespace: "default", Name: "talker-tc1",
		Devices: []driver.PreparedDevice{{Request: "tsn", Pool: "node1", Device: "tsn0-tc1", NIC: "tsn0", Interface: "tsn0", TrafficClass: 1}},
		Pods: []driver.PodPolicy{{
			ClaimUID: "claim-uid-1", ClaimNamespace: "default", ClaimName: "talker-tc1",
			PodUID: types.UID(podUID), PodName: "talker", NIC: "tsn0", Interface: "tsn0", PodInterface: "eth0",
			GrantedClasses: []int{1}, GrantedPriorities: []uint32{3}, Ungranted: "demote",
		}},
	}
}

func TestReadCheckpoint(t *testing.T) {
	dir := t.TempDir()
	if c, err := readCheckpoint(filepath.Join(dir, checkpointName)); err != nil || len(c) != 0 {
		t.Fatalf("missing checkpoint: %v, %v; want nothing prepared", c, err)
	}
	want := talkerClaim("pod-uid-1")
	writeCheckpoint(t, dir, want)
	got, err := readCheckpoint(filepath.Join(dir, checkpointName))
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("readCheckpoint = %+v, %v; want %+v", got, err, want)
	}
	data, _ := os.ReadFile(filepath.Join(dir, checkpointName))
	_ = os.WriteFile(filepath.Join(dir, checkpointName), bytes.Replace(data, []byte("talker-tc1"), []byte("talker-tc2"), 1), 0o600)
	if _, err := readCheckpoint(filepath.Join(dir, checkpointName)); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("damaged checkpoint: err %v", err)
	}
}

// TestStatusWithoutDataPath: config and checkpoint only (no pins, links not read).
func TestStatusWithoutDataPath(t *testing.T) {
	dir := t.TempDir()
	cfg := shippedConfig(t, dir)
	writeCheckpoint(t, dir, talkerClaim("pod-uid-1"))
	var out, errOut bytes.Buffer
	code := statusMain([]string{"--config", cfg, "--state-dir", dir, "--bpf-pin-dir", filepath.Join(dir, "pins"), "--no-links"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, s := range []string{
		"data path: no data path pinned under",
		"NIC tsn0 (interface tsn0: not looked at)",
		"gate control list: set 0x2 300µs | set 0x4 300µs | set 0x1 400µs",
		"class 1 (device tsn0-tc1): priorities [3], open 30% at 0s+300µs",
		"class 2 (device tsn0-tc2): priorities [2], open 30% at 300µs+300µs",
		"default/talker-tc1 (uid claim-uid-1): tsn0-tc1",
		"pod default/talker (uid pod-uid-1), claims default/talker-tc1",
		"no saver attached",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	out.Reset()
	if code := statusMain([]string{"--config", cfg, "--state-dir", dir, "--bpf-pin-dir", dir, "--no-links", "-o", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("json: exit %d", code)
	}
	var st nodeStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || len(st.NICs) != 1 || len(st.NICs[0].Pods) != 1 || st.NICs[0].Pods[0].Name != "talker" {
		t.Fatalf("json output %v: %s", err, out.String())
	}
	if code := statusMain([]string{"-o", "yaml"}, &out, &errOut); code != 2 {
		t.Errorf("-o yaml: exit %d, want 2", code)
	}
	// Nothing readable at all: no config, a checkpoint that cannot be read, no pins.
	bad := t.TempDir()
	if err := os.Mkdir(filepath.Join(bad, checkpointName), 0o700); err != nil {
		t.Fatal(err)
	}
	if code := statusMain([]string{"--config", filepath.Join(bad, "none"), "--state-dir", bad, "--bpf-pin-dir", bad, "--no-links"}, &out, &errOut); code != 1 {
		t.Errorf("nothing readable: exit %d, want 1", code)
	}
}

// TestPinsMatchManager attaches a saver and a restorer with a real data path
// manager, sends pod traffic, and checks that what the status command reads
// from the pins agrees with the manager's own view.
func TestPinsMatchManager(t *testing.T) {
	// tc is what the DaemonSet uses (--saver-attach=tc), tcx the kernel's newer hook.
	for _, mode := range []datapath.AttachMode{datapath.ModeTC, datapath.ModeTCX} {
		t.Run(string(mode), func(t *testing.T) { testPinsMatchManager(t, mode) })
	}
}

func testPinsMatchManager(t *testing.T, saverMode datapath.AttachMode) {
	if os.Getenv("TSN_SKIP_ROOT_TESTS") != "" {
		t.Skip("TSN_SKIP_ROOT_TESTS is set")
	}
	if err := netemu.Available(netemu.Routed); err != nil {
		t.Skip(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("bpffs is not mounted at /sys/fs/bpf")
	}
	if _, err := datapath.ProbeFeatures(); err != nil {
		t.Skipf("eBPF data path unavailable: %v", err)
	}
	if f, _ := datapath.ProbeFeatures(); saverMode == datapath.ModeTCX && !f.TCX {
		t.Skip("kernel has no TCX")
	}
	_, ctx := ktesting.NewTestContext(t)
	node, err := netemu.New(netemu.Routed, 1)
	if err != nil {
		t.Fatalf("build node: %v", err)
	}
	t.Cleanup(node.Close)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	base := filepath.Join("/sys/fs/bpf", "tsn-status-"+hex.EncodeToString(b))
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	pinDir := filepath.Join(base, "v1")
	mgr, err := datapath.Open(ctx, datapath.WithPinDir(pinDir), datapath.WithNetns(node.HostNetns), datapath.WithMaxPods(8), datapath.WithQuota(64),
		datapath.WithSaverAttachMode(saverMode))
	if err != nil {
		t.Fatalf("open data path: %v", err)
	}
	t.Cleanup(func() { _ = mgr.Uninstall(klog.NewContext(context.Background(), klog.Background())) })
	if err := mgr.EnsureRestorer(ctx, netemu.NIC); err != nil {
		t.Fatal(err)
	}
	const uid = "3f0c1e9a-status-test"
	pod := node.Pods[0]
	pol := datapath.Policy{Allowed: []uint32{3}, Remap: map[uint32]uint32{3: 4}, DefaultPriority: 0}
	if err := mgr.AttachSaver(ctx, uid, pod.Netns, pod.Ifname, pol); err != nil {
		t.Fatal(err)
	}
	s, err := netemu.NewSender(pod.Netns, node.Dest, unix.CLOCK_TAI)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := uint32(0); i < 50; i++ {
		prio, want := uint32(3), uint32(4)
		if i%5 == 0 {
			prio, want = 5, 0 // ungranted: demoted
		}
		if err := s.Send(9, i, prio, 0, want, 0); err != nil {
			t.Fatal(err)
		}
	}

	pins, err := readPins(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(pins.Savers) != 1 || len(pins.Restorers) != 1 {
		t.Fatalf("pins: %d savers, %d restorers; want 1, 1", len(pins.Savers), len(pins.Restorers))
	}
	ps := pins.Savers[0]
	infos, _ := mgr.Savers()
	if ps.PodUID != uid || ps.Ifname != pod.Ifname || ps.NetnsPath != pod.Netns || ps.Slot != infos[0].Slot || ps.Mode != mgr.SaverMode() || !ps.Attached {
		t.Errorf("saver %+v, manager says %+v", ps, infos[0])
	}
	if !reflect.DeepEqual(ps.Allowed, []uint32{3}) || !reflect.DeepEqual(ps.Remap, map[uint32]uint32{3: 4}) || ps.Action != "demote" || ps.Quota != 64 {
		t.Errorf("policy read from pins: %+v", ps)
	}
	if r := pins.Restorers[0]; r.Ifname != netemu.NIC || r.Mode != mgr.Mode() {
		t.Errorf("restorer %+v, manager mode %s", r, mgr.Mode())
	}
	want, err := mgr.Counters(uid)
	if err != nil {
		t.Fatal(err)
	}
	// Restores lag the saves by the time the packets take to reach tsn0; the
	// manager is read after the pins, so compare what cannot move any more.
	if ps.countsRaw.ByPriority[3].Saved != want.ByPriority[3].Saved || ps.countsRaw.ByPriority[5].Demoted != want.ByPriority[5].Demoted {
		t.Errorf("counters from pins %+v, manager %+v", ps.countsRaw.ByPriority, want.ByPriority)
	}
	if want.ByPriority[3].Saved != 40 || want.ByPriority[5].Demoted != 10 {
		t.Errorf("manager counters: saved %d demoted %d; want 40, 10", want.ByPriority[3].Saved, want.ByPriority[5].Demoted)
	}

	// The whole command, with the claim the pod belongs to.
	dir := t.TempDir()
	cfg := shippedConfig(t, dir)
	writeCheckpoint(t, dir, talkerClaim(uid))
	var out, errOut bytes.Buffer
	if code := statusMain([]string{"--config", cfg, "--state-dir", dir, "--bpf-pin-dir", pinDir, "--no-links"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	t.Logf("status:\n%s", out.String())
	for _, s := range []string{
		"1 savers, 1 restorers",
		"restorer " + string(mgr.Mode()),
		"pod default/talker (uid " + uid + ")",
		"saver on eth0",
		"allowed priorities [3], remap map[3:4], ungranted: demote to 0",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q", s)
		}
	}
	if strings.Contains(out.String(), "savers of pods without a prepared claim") {
		t.Errorf("the pod's saver is reported as orphaned")
	}
}

// TestPrintSaverMissReasons: the text output sums the miss reasons over the
// pod's priorities on one line under the counters; JSON keeps them per priority.
func TestPrintSaverMissReasons(t *testing.T) {
	var c datapath.PriorityCounters
	c.Saved, c.Missed = 10, 7
	c.MissedBy[datapath.MissQuota], c.MissedBy[datapath.MissAmbiguous] = 4, 1
	other := datapath.PriorityCounters{Missed: 2}
	other.MissedBy[datapath.MissUnfingerprintable], other.MissedBy[datapath.MissQuota] = 1, 1
	s := pinnedSaver{PodUID: "u", Ifname: "eth0", Mode: datapath.ModeTC, Attached: true,
		Counters: map[string]priorityCounts{"3": countsOf(c), "16+": countsOf(other)}}
	var out bytes.Buffer
	printSaver(&out, "  ", s)
	if want := "  missed by reason: quota 5, unfingerprintable 1, ambiguous 1\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"3":{"Saved":10,"Restored":0,"Missed":7,"Demoted":0,"Dropped":0,"Rejected":0,"Expired":0,"MissedBy":{"ambiguous":1,"quota":4}}`; !strings.Contains(string(data), want) {
		t.Errorf("json lacks %s:\n%s", want, data)
	}
	out.Reset()
	printSaver(&out, "", pinnedSaver{Counters: map[string]priorityCounts{"1": {Saved: 1}}})
	if strings.Contains(out.String(), "missed by reason") {
		t.Errorf("no misses, yet:\n%s", out.String())
	}
}
