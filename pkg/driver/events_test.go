package driver

import (
	"testing"
	"time"

	"k8s.io/client-go/tools/record"
)

// recorderForTest installs a fake event recorder (Start installs the real one).
func (d *Driver) recorderForTest(t *testing.T) {
	d.recorder = record.NewFakeRecorder(100)
}

// waitEvent returns the next event with reason.
func (d *Driver) waitEvent(t *testing.T, reason string) string {
	t.Helper()
	fr := d.recorder.(*record.FakeRecorder)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-fr.Events:
			if len(ev) > 0 && containsWord(ev, reason) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event", reason)
			return ""
		}
	}
}

func containsWord(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i:i+len(w)] == w {
			return true
		}
	}
	return false
}
