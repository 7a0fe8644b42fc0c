package config

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Watcher keeps the current node configuration of a file and reloads it when the file changes.
// A file that fails to read, decode or validate changes nothing: the previous configuration stays
// current and the error is reported.
type Watcher struct {
	path string

	mu       sync.Mutex
	current  *NodeConfig
	lastData []byte
}

// NewWatcher loads the file at path. It fails when the file is not a valid configuration, so a
// daemon never starts on a bad file.
func NewWatcher(path string) (*Watcher, error) {
	w := &Watcher{path: path}
	if _, err := w.Reload(); err != nil {
		return nil, err
	}
	return w, nil
}

// Current returns the configuration in force. Callers must not modify it.
func (w *Watcher) Current() *NodeConfig {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Reload reads the file again. It returns true when a new, valid configuration replaced the
// current one, false when the content is unchanged; on error the current one stays.
func (w *Watcher) Reload() (bool, error) {
	data, err := os.ReadFile(w.path)
	if err != nil {
		return false, fmt.Errorf("read node config: %w", err)
	}
	w.mu.Lock()
	same := w.current != nil && bytes.Equal(data, w.lastData)
	w.mu.Unlock()
	if same {
		return false, nil
	}
	c, err := Parse(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", w.path, err)
	}
	w.mu.Lock()
	w.current, w.lastData = c, data
	w.mu.Unlock()
	return true, nil
}

// Run checks the file every interval until ctx ends. ConfigMap volumes change files by swapping
// a symlink, which inotify on the file itself misses, so Run compares content instead. onChange
// runs with each new valid configuration; onError with each rejected one (once per content).
func (w *Watcher) Run(ctx context.Context, interval time.Duration, onChange func(*NodeConfig), onError func(error)) {
	logger := klog.FromContext(ctx)
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := w.Reload()
		switch {
		case err != nil:
			if err.Error() != lastErr {
				lastErr = err.Error()
				logger.Error(err, "Node config rejected, keeping the previous one", "path", w.path)
				if onError != nil {
					onError(err)
				}
			}
		case changed:
			lastErr = ""
			logger.Info("Node config reloaded", "path", w.path)
			if onChange != nil {
				onChange(w.Current())
			}
		}
	}
}
