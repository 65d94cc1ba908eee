package kind

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// hostPackages are the Debian packages the kind provider runs on: Docker
// (dockerd, its containerd and the docker CLI of the same version) and
// mmdebstrap for the node image; busybox-static for the busybox image.
var hostPackages = []string{"docker.io", "mmdebstrap", "busybox-static"}

// Options configure a Kind. The zero value works.
type Options struct {
	// CacheDir caches what the node image is made of, shared with the
	// local cluster. Default $HOME/.cache/accel-device-plugin.
	CacheDir string
	// LogDir holds the build logs and dockerd's. Default /var/log/accel-e2e.
	LogDir string
	// RunDir holds what Up leaves for Down: dockerd's PID and the host
	// state it saved before starting dockerd. Default /run/accel-e2e-kind.
	RunDir string
	// OutDir receives the clusters' kubeconfigs and kind configs.
	// Default _output under the repository.
	OutDir string
	// ModuleDir is the e2e module's root. Default: found from the working
	// directory upwards.
	ModuleDir string
	// Log receives progress lines; default os.Stderr.
	Log io.Writer
}

// Kind is the kind provider. Make one with New.
type Kind struct {
	o  Options
	lc *cluster.Cluster // the local cluster's builds and cache
}

// New returns the provider o describes, defaults filled in. It changes
// nothing on the machine.
func New(o Options) (*Kind, error) {
	lc := cluster.New(cluster.Options{CacheDir: o.CacheDir, LogDir: o.LogDir, ModuleDir: o.ModuleDir, Log: o.Log})
	lo := lc.Options()
	o.CacheDir, o.LogDir, o.Log = lo.CacheDir, lo.LogDir, lo.Log
	if o.RunDir == "" {
		o.RunDir = "/run/accel-e2e-kind"
	}
	if o.ModuleDir == "" {
		mod, err := lc.ModuleDir()
		if err != nil {
			return nil, err
		}
		o.ModuleDir = mod
	}
	if o.OutDir == "" {
		o.OutDir = filepath.Join(filepath.Dir(o.ModuleDir), "_output")
	}
	return &Kind{o: o, lc: lc}, nil
}

// Options are the provider's options, defaults filled in.
func (k *Kind) Options() Options { return k.o }

func (k *Kind) logf(format string, args ...any) {
	fmt.Fprintf(k.o.Log, "kindcluster: "+format+"\n", args...)
}

// imageModuleDir is the build/image module (go-containerregistry).
func (k *Kind) imageModuleDir() (string, error) {
	dir := filepath.Join(filepath.Dir(k.o.ModuleDir), "build", "image")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("the build/image module is not at %s: %w", dir, err)
	}
	return dir, nil
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("kind clusters here need root (dockerd, mmdebstrap, iptables): run as root")
	}
	return nil
}

// lockFile takes an exclusive lock on path (made if missing) until unlock.
func lockFile(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
