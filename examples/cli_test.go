// Package examples_test runs the example programs as the processes users run:
// a receiver and two talkers over loopback, stopped by -count and SIGTERM.
package examples_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func build(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(dir))
	cmd := exec.Command("go", "build", "-o", out, "./"+dir)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", dir, err, b)
	}
	return out
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func TestTalkersToReceiver(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example binaries")
	}
	talker, receiver := build(t, "talker"), build(t, "receiver")
	port := freeUDPPort(t)
	outFile := filepath.Join(t.TempDir(), "summary.json")

	var rstdout, rstderr bytes.Buffer
	rcv := exec.Command(receiver, "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-out", outFile)
	rcv.Stdout, rcv.Stderr = &rstdout, &rstderr
	if err := rcv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rcv.Process.Kill(); rcv.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rstderr.String(), "listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("receiver did not start: %s", rstderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	dest := fmt.Sprintf("127.0.0.1:%d", port)
	for _, args := range [][]string{
		{"-stream", "plain", "-priority", "1", "-count", "40", "-period", "1ms"},
		{"-stream", "timed", "-priority", "2", "-count", "40", "-period", "1ms", "-txtime", "-txtime-offset", "20ms"},
	} {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(talker, append([]string{"-dest", dest, "-size", "300"}, args...)...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("talker %v: %v\n%s", args, err, stderr.String())
		}
		var sum struct {
			Sent       uint64 `json:"sent"`
			SendErrors uint64 `json:"send_errors"`
			Priority   uint32 `json:"priority"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
			t.Fatalf("talker summary %q: %v", stdout.String(), err)
		}
		if sum.Sent != 40 || sum.SendErrors != 0 {
			t.Errorf("talker %v: summary %+v", args, sum)
		}
	}
	// Let the last datagrams arrive, then stop the receiver the way kubelet does.
	time.Sleep(200 * time.Millisecond)
	if err := rcv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := rcv.Wait(); err != nil {
		t.Fatalf("receiver exit after SIGTERM: %v\n%s", err, rstderr.String())
	}

	type stream struct {
		Stream        string `json:"stream"`
		Priority      uint32 `json:"priority"`
		Packets       uint64 `json:"packets"`
		Bytes         uint64 `json:"bytes"`
		Missing       uint64 `json:"missing"`
		TxtimePackets uint64 `json:"txtime_packets"`
	}
	var rep struct {
		Packets uint64   `json:"packets"`
		Streams []stream `json:"streams"`
	}
	if err := json.Unmarshal(rstdout.Bytes(), &rep); err != nil {
		t.Fatalf("receiver summary %q: %v", rstdout.String(), err)
	}
	file, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, rstdout.Bytes()) {
		t.Error("-out file differs from the summary on stdout")
	}
	want := []stream{
		{Stream: "plain", Priority: 1, Packets: 40, Bytes: 40 * 300},
		{Stream: "timed", Priority: 2, Packets: 40, Bytes: 40 * 300, TxtimePackets: 40},
	}
	if rep.Packets != 80 || len(rep.Streams) != 2 || rep.Streams[0] != want[0] || rep.Streams[1] != want[1] {
		t.Errorf("receiver summary: %+v, want 80 packets in %+v", rep, want)
	}
}
