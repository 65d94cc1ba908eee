package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Config is everything `accel-plugin serve` takes. Every path is
// injectable, so tests run without touching the host's kubelet.
type Config struct {
	// DevDir is where this process sees the device daemon's nodes.
	DevDir string
	// HostDevDir is where kubelet and the container runtime see them (the
	// host path); empty means DevDir.
	HostDevDir string
	// KubeletDir is kubelet's device-plugin directory.
	KubeletDir string
	// ResourcePrefix is the resource name prefix, e.g. "accel.io".
	ResourcePrefix string
	// MonitorSlots is the number of <prefix>/ac-monitor units per device;
	// 0 disables that resource.
	MonitorSlots int
	// Resync is the safety-net full re-read interval.
	Resync time.Duration
	Logger *slog.Logger
}

// MaxMonitorSlots bounds MonitorSlots: kubelet keeps every unit in memory
// and in its checkpoint.
const MaxMonitorSlots = 1024

// prefixRE is a DNS subdomain, as Kubernetes requires for an extended
// resource's prefix.
var prefixRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Validate reports the first bad setting as a one-line error naming the flag.
func (c Config) Validate() error {
	switch {
	case c.DevDir == "" || !filepath.IsAbs(c.DevDir):
		return fmt.Errorf("--dev-dir must be an absolute path, got %q", c.DevDir)
	case c.HostDevDir != "" && !filepath.IsAbs(c.HostDevDir):
		return fmt.Errorf("--host-dev-dir must be an absolute path, got %q", c.HostDevDir)
	case c.KubeletDir == "" || !filepath.IsAbs(c.KubeletDir):
		return fmt.Errorf("--kubelet-dir must be an absolute path, got %q", c.KubeletDir)
	case len(c.ResourcePrefix) > 253 || !prefixRE.MatchString(c.ResourcePrefix):
		return fmt.Errorf("--resource-prefix must be a DNS subdomain such as accel.io, got %q", c.ResourcePrefix)
	case c.ResourcePrefix == "kubernetes.io" || c.ResourcePrefix == "k8s.io" ||
		strings.HasSuffix(c.ResourcePrefix, ".kubernetes.io") || strings.HasSuffix(c.ResourcePrefix, ".k8s.io"):
		return fmt.Errorf("--resource-prefix %q is reserved for Kubernetes itself", c.ResourcePrefix)
	case c.MonitorSlots < 0 || c.MonitorSlots > MaxMonitorSlots:
		return fmt.Errorf("--monitor-slots must be between 0 and %d, got %d", MaxMonitorSlots, c.MonitorSlots)
	case c.Resync < time.Second:
		return fmt.Errorf("--resync must be at least 1s, got %s", c.Resync)
	}
	return nil
}

// Plugin is a running device plugin: discovery, the store, the resources
// and their registrar.
type Plugin struct {
	Store     *Store
	Resources []*Resource
	source    *SimSource
	registrar *Registrar
	log       *slog.Logger
}

// New builds a plugin from a validated config.
func New(cfg Config) (*Plugin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if fi, err := os.Stat(cfg.KubeletDir); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("--kubelet-dir %s: %w (is this a Kubernetes node? kubelet creates it)", cfg.KubeletDir, err)
	}
	store := NewStore()
	res := []*Resource{NewComputeResource(cfg.ResourcePrefix, store, log)}
	if cfg.MonitorSlots > 0 {
		res = append(res, NewMonitorResource(cfg.ResourcePrefix, cfg.MonitorSlots, store, log))
	}
	return &Plugin{
		Store:     store,
		Resources: res,
		source:    &SimSource{Dir: cfg.DevDir, HostDir: cfg.HostDevDir, Resync: cfg.Resync, Store: store, Logger: log},
		registrar: &Registrar{Dir: cfg.KubeletDir, Resources: res, Logger: log},
		log:       log,
	}, nil
}

// Run runs discovery and, once discovery has reported for the first time
// (so kubelet's first list is the real one), the registrar. It returns when
// ctx ends, after the sockets are removed.
func (p *Plugin) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- p.source.Run(ctx) })
	wg.Go(func() {
		for {
			snap, changed := p.Store.Load()
			if snap.Version > 0 {
				break
			}
			select {
			case <-ctx.Done():
				errs <- nil
				return
			case <-changed:
			}
		}
		errs <- p.registrar.Run(ctx)
	})
	err := <-errs
	cancel()
	wg.Wait()
	return err
}
