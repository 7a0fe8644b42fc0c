package driver

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"
)

// checkpointVersion is bumped when the file format changes incompatibly.
const checkpointVersion = 1

// checkpoint persists the prepared claims in one JSON file. Each write replaces the file
// atomically (temporary file, fsync, rename), so a crash leaves either the old or the new state,
// never a mix. A checksum catches a file damaged otherwise.
type checkpoint struct {
	path string
}

type checkpointFile struct {
	Version  int    `json:"version"`
	Checksum string `json:"checksum"`
	// Claims is kept as raw JSON; the checksum covers its compact encoding.
	Claims json.RawMessage `json:"claims"`
}

func (c *checkpoint) load() (map[types.UID]PreparedClaim, error) {
	data, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return map[types.UID]PreparedClaim{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	var f checkpointFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", c.path, err)
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("checkpoint %s has version %d, this driver reads version %d", c.path, f.Version, checkpointVersion)
	}
	// The checksum covers the compact encoding, so a reformatted (e.g. hand-indented) file still loads.
	var compact bytes.Buffer
	if err := json.Compact(&compact, f.Claims); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", c.path, err)
	}
	if sum := checksum(compact.Bytes()); sum != f.Checksum {
		return nil, fmt.Errorf("checkpoint %s is damaged: checksum %s, content hashes to %s", c.path, f.Checksum, sum)
	}
	claims := map[types.UID]PreparedClaim{}
	if err := json.Unmarshal(f.Claims, &claims); err != nil {
		return nil, fmt.Errorf("checkpoint %s is damaged: %w", c.path, err)
	}
	return claims, nil
}

func (c *checkpoint) store(claims map[types.UID]PreparedClaim) error {
	body, err := json.Marshal(claims)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	// Compact: the file is rewritten on every change, and indenting doubles the encoding cost.
	data, err := json.Marshal(checkpointFile{Version: checkpointVersion, Checksum: checksum(body), Claims: body})
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	dir := filepath.Dir(c.path)
	tmp, err := os.CreateTemp(dir, ".checkpoint-*")
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("replace checkpoint: %w", err)
	}
	// The directory is not synced: after a power loss the rename may be lost and the previous
	// (complete) checkpoint comes back. That is harmless, since a node that lost power has lost
	// its pods too and the kubelet prepares and unprepares again (both idempotent); what must never
	// happen, a damaged file, is prevented by syncing the data before the rename. Skipping the
	// second journal commit halves the cost of a Prepare on a busy disk.
	return nil
}

func checksum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
