package dra

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// CheckpointFile is the name of the prepared claims' checkpoint in the
// plugin's data directory.
const CheckpointFile = "checkpoint.json"

// checkpointVersion is the layout this driver writes and reads.
const checkpointVersion = 1

// Uses of a prepared device: what the container is given.
const (
	useCompute = "compute" // the compute device, exclusively: its compute edits
	useMonitor = "monitor" // a share of the monitor device: its monitor edits
	useAdmin   = "admin"   // admin access to the compute device: its monitor edits only
)

// preparedDevice is one allocated device of a prepared claim, with what the
// container gets for it, so that the claim's CDI spec can be written again
// without the device (after a reboot, or while it is gone).
type preparedDevice struct {
	Request string       `json:"request"` // the request (or request/subrequest) it was allocated for
	Pool    string       `json:"pool"`
	Device  string       `json:"device"` // published device name (ac0, ac0-monitor)
	ID      string       `json:"id"`     // the device ID when prepared
	Node    string       `json:"node"`   // the accel node name (ac0)
	Index   int          `json:"index"`
	Use     string       `json:"use"`
	ShareID *types.UID   `json:"shareID,omitempty"`
	Edits   plugin.Edits `json:"edits"`
}

// preparedClaim is one prepared ResourceClaim.
type preparedClaim struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Devices   []preparedDevice `json:"devices"`
}

// checkpoint is the on-disk record of prepared claims: the truth about
// which claim holds which device, kept across plugin restarts, kubelet
// restarts and reboots (the plugin data directory is on disk; the CDI spec
// directory may be tmpfs).
type checkpoint struct {
	Claims map[types.UID]*preparedClaim `json:"claims"`
}

// checkpointFile is the file as written: the claims and a checksum of
// their encoding, so that a torn or edited file is refused instead of
// being taken for "nothing prepared".
type checkpointFile struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Data     json.RawMessage `json:"data"`
}

func newCheckpoint() *checkpoint { return &checkpoint{Claims: map[types.UID]*preparedClaim{}} }

// loadCheckpoint reads the checkpoint at path; a missing file is an empty
// checkpoint.
func loadCheckpoint(path string) (*checkpoint, error) {
	b, err := readCheckpoint(path)
	if err != nil {
		return nil, err
	}
	return decodeCheckpoint(path, b)
}

// readCheckpoint returns the file's bytes (nil: there is none).
func readCheckpoint(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	return b, nil
}

// decodeCheckpoint decodes and checks the bytes of the file at path (nil:
// an empty checkpoint).
func decodeCheckpoint(path string, b []byte) (*checkpoint, error) {
	if b == nil {
		return newCheckpoint(), nil
	}
	var f checkpointFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("checkpoint %s is not valid JSON (%w): move it away to start with no prepared claims (their pods then need restarting)", path, err)
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("checkpoint %s has version %d, this driver reads version %d", path, f.Version, checkpointVersion)
	}
	var data bytes.Buffer // the checksum is of the compact encoding (whatever the file's spacing)
	if err := json.Compact(&data, f.Data); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if sum := sha256.Sum256(data.Bytes()); hex.EncodeToString(sum[:]) != f.Checksum {
		return nil, fmt.Errorf("checkpoint %s is corrupt (checksum mismatch): move it away to start with no prepared claims (their pods then need restarting)", path)
	}
	c := newCheckpoint()
	if err := json.Unmarshal(data.Bytes(), c); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if c.Claims == nil {
		c.Claims = map[types.UID]*preparedClaim{}
	}
	return c, nil
}

// encode returns the file's bytes.
func (c *checkpoint) encode() ([]byte, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	// What json.Marshal(checkpointFile{...}) writes, without it scanning
	// and compacting data (already compact) a second time: a quarter of
	// the encoding's CPU with many claims. Version and checksum need no
	// escaping.
	out := make([]byte, 0, len(data)+128)
	out = fmt.Appendf(out, `{"version":%d,"checksum":"%s","data":`, checkpointVersion, hex.EncodeToString(sum[:]))
	out = append(out, data...)
	return append(out, '}'), nil
}

// save writes the checkpoint atomically: a temporary file, synced, renamed
// over the old one, and the directory synced, so that a crash leaves the
// old or the new checkpoint and never a torn one. It returns the bytes
// written.
func (c *checkpoint) save(path string) ([]byte, error) {
	b, err := c.encode()
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	return b, writeAtomic(path, b, 0o600)
}

// writeAtomic replaces path with b (see checkpoint.save).
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing there
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// holder returns the claim other than uid that holds the compute device
// named device exclusively.
func (c *checkpoint) holder(device string, uid types.UID) (types.UID, *preparedClaim, bool) {
	uids := make([]types.UID, 0, len(c.Claims))
	for u := range c.Claims {
		uids = append(uids, u)
	}
	slices.Sort(uids)
	for _, u := range uids {
		if u == uid {
			continue
		}
		for _, d := range c.Claims[u].Devices {
			if d.Device == device && d.Use == useCompute {
				return u, c.Claims[u], true
			}
		}
	}
	return "", nil, false
}
