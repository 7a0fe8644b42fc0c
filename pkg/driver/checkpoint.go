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
	"sort"
	"time"

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

// damagedError says the checkpoint file exists but cannot be trusted: not JSON, no version, a
// checksum that does not match, or claims that do not decode. A file of another version is not
// damaged (a newer driver wrote it) and gives a plain error.
type damagedError struct {
	path string
	err  error
}

func (e *damagedError) Error() string {
	return fmt.Sprintf("checkpoint %s is damaged: %v", e.path, e.err)
}
func (e *damagedError) Unwrap() error { return e.err }

func (c *checkpoint) load() (map[types.UID]PreparedClaim, error) {
	data, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return map[types.UID]PreparedClaim{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	damaged := func(err error) error { return &damagedError{path: c.path, err: err} }
	if len(data) == 0 {
		// A crash cannot leave an empty file (the data is synced before the rename); a full
		// disk in a tool that rewrote it, or a truncation, can.
		return nil, damaged(errors.New("the file is empty"))
	}
	var f checkpointFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, damaged(err)
	}
	if f.Version == 0 {
		return nil, damaged(errors.New("no version"))
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("checkpoint %s has version %d, this driver reads version %d", c.path, f.Version, checkpointVersion)
	}
	// The checksum covers the compact encoding, so a reformatted (e.g. hand-indented) file still loads.
	var compact bytes.Buffer
	if err := json.Compact(&compact, f.Claims); err != nil {
		return nil, damaged(err)
	}
	if sum := checksum(compact.Bytes()); sum != f.Checksum {
		return nil, damaged(fmt.Errorf("checksum %s, content hashes to %s", f.Checksum, sum))
	}
	claims := map[types.UID]PreparedClaim{}
	if err := json.Unmarshal(f.Claims, &claims); err != nil {
		return nil, damaged(err)
	}
	return claims, nil
}

// maxDamagedKept bounds the copies of damaged checkpoints kept in the state directory.
const maxDamagedKept = 5

// damagedSuffix starts the name of a kept damaged checkpoint: checkpoint.json.damaged-<UTC time>.
const damagedSuffix = ".damaged-"

// keepDamaged keeps the damaged checkpoint for inspection under <name>.damaged-<time> and
// returns that path. It is a hard link: checkpoint.json itself stays until the rebuilt state
// replaces it, so a restart before the rebuild finds the damage again instead of an absent file
// (which would mean "nothing prepared"). A file already kept (the same inode, after such a
// restart) is not kept twice. The oldest copies beyond maxDamagedKept are removed.
func (c *checkpoint) keepDamaged(now time.Time) (string, error) {
	cur, err := os.Stat(c.path)
	if err != nil {
		return "", fmt.Errorf("keep the damaged checkpoint: %w", err)
	}
	kept, err := filepath.Glob(c.path + damagedSuffix + "*")
	if err != nil {
		return "", fmt.Errorf("keep the damaged checkpoint: %w", err)
	}
	for _, k := range kept {
		if st, err := os.Stat(k); err == nil && os.SameFile(st, cur) {
			return k, nil
		}
	}
	// Fixed width, so that names sort by time.
	name := c.path + damagedSuffix + now.UTC().Format("20060102T150405.000000000Z")
	if err := os.Link(c.path, name); err != nil {
		// A file system without hard links: copy.
		data, rerr := os.ReadFile(c.path)
		if rerr != nil {
			return "", fmt.Errorf("keep the damaged checkpoint: %w", err)
		}
		if werr := os.WriteFile(name, data, 0o600); werr != nil {
			return "", fmt.Errorf("keep the damaged checkpoint: link: %v; copy: %w", err, werr)
		}
	}
	kept = append(kept, name)
	sort.Strings(kept)
	for len(kept) > maxDamagedKept {
		if err := os.Remove(kept[0]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return name, fmt.Errorf("remove the oldest kept damaged checkpoint: %w", err)
		}
		kept = kept[1:]
	}
	return name, nil
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
