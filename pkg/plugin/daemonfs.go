package plugin

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// daemonFS is every way a SimSource reaches its device daemon. Each call
// may block in the daemon for as long as the daemon takes to answer, so a
// SimSource makes every call through its daemonGate. There is deliberately
// no way to open a compute node: the plugin learns facts from monitor nodes
// only, since an open of a compute node would take the device from its one
// client (or fail with EBUSY while a workload holds it).
type daemonFS interface {
	// ReadDir returns the names in the directory (READDIR).
	ReadDir(dir string) ([]string, error)
	// Lstat reports whether path exists (LOOKUP/GETATTR; never an open).
	Lstat(path string) error
	// ReadInfo opens the monitor node at path, runs the info query and
	// closes it.
	ReadInfo(monitorPath string) (accel.Info, error)
	// OpenEvents opens the daemon's event file.
	OpenEvents(dir string) (eventStream, error)
}

// eventStream is an open event file (see devfsclient.EventStream).
type eventStream interface {
	Next() (accel.Event, error)
	Close() error
}

// osFS is daemonFS on the real file system.
type osFS struct{}

func (osFS) ReadDir(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return names, nil
}

func (osFS) Lstat(path string) error {
	_, err := os.Lstat(path)
	return err
}

func (osFS) ReadInfo(path string) (accel.Info, error) {
	if _, kind, ok := accel.ParseNodeName(filepath.Base(path)); !ok || kind != accel.NodeMonitor {
		return accel.Info{}, fmt.Errorf("%s is not a monitor node: the plugin reads device facts from monitor nodes only", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return accel.Info{}, err
	}
	info, err := accel.QueryInfo(f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", path, cerr)
	}
	return info, err
}

func (osFS) OpenEvents(dir string) (eventStream, error) {
	s, err := devfsclient.OpenEvents(dir)
	if err != nil {
		return nil, err
	}
	return s, nil
}
