package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Config is everything `accel-plugin serve` takes. Every path is
// injectable, so tests run without touching the host's kubelet.
type Config struct {
	// DevDir is where this process sees the device daemon's nodes; empty
	// disables simulated devices.
	DevDir string
	// HostDevDir is where kubelet and the container runtime see them (the
	// host path); empty means DevDir.
	HostDevDir string
	// KernelClassDir is the kernel's accel class directory
	// (/sys/class/accel); empty disables kernel devices.
	KernelClassDir string
	// KernelDevDir is where this process sees the kernel's accel nodes
	// (/dev/accel); the host path is the same.
	KernelDevDir string
	// KubeletDir is kubelet's device-plugin directory.
	KubeletDir string
	// ResourcePrefix is the resource name prefix, e.g. "accel.io".
	ResourcePrefix string
	// MonitorSlots is the number of <prefix>/ac-monitor units per device;
	// 0 disables that resource.
	MonitorSlots int
	// Resync is the safety-net full re-read interval.
	Resync time.Duration
	// KernelResync is the kernel devices' safety-net full re-read while
	// kernel uevents are received (they and inotify carry every change, and
	// a lost one re-reads at once); without uevents, Resync applies.
	KernelResync time.Duration
	// PodResourcesSocket is kubelet's pod-resources socket, asked at scrape
	// time which containers hold which devices (accel_device_holder);
	// empty: not asked.
	PodResourcesSocket string
	// StatusPoll is the period of reading the status attributes of drivers
	// that send no event for a status change (habanalabs).
	StatusPoll time.Duration
	// DaemonTimeout bounds every access to the device daemon (READDIR,
	// lstat, open and info ioctl of a monitor node, opening the event
	// file, closing) and every metrics scrape of its devices; a daemon
	// that does not answer within it has all its devices unhealthy
	// ("device daemon not responding") and makes /readyz fail.
	DaemonTimeout time.Duration
	// StaleViewGrace: when the device daemon's mount has been dead or
	// absent this long and this process's view of DevDir cannot receive
	// new mounts (no master:/shared: propagation), Run fails, so that the
	// container restarts and sees the new daemon's mount. 0 never does.
	StaleViewGrace time.Duration
	// MetricsAddr is host:port for /metrics, /healthz and /readyz; empty
	// disables the HTTP server.
	MetricsAddr string
	// CDI makes Allocate name CDI devices (<prefix>/ac=ID,
	// <prefix>/ac-monitor=ID) instead of handing over mounts and device
	// nodes, and keeps their CDI specs in CDISpecDir. Off, the plugin
	// removes specs of its own left there by an earlier run.
	CDI bool
	// CDISpecDir is where the CDI specs go (DefaultCDISpecDir); empty with
	// CDI off: none are looked for.
	CDISpecDir string
	// Frontend, when set, is the Kubernetes front-end Run starts over the
	// store once discovery has reported (the DRA driver, package dra); nil
	// means the device-plugin API (the registrar of Resources). A Frontend
	// hands devices out itself: KubeletDir is not used, and CDI must be off.
	Frontend Frontend
	Logger   *slog.Logger
}

// Frontend is a Kubernetes front-end over the devices: it serves from the
// store's snapshots until ctx ends.
type Frontend interface {
	Run(ctx context.Context, store *Store) error
	// NotReady says why it does not serve kubelet yet ("" once it does);
	// /readyz reports it.
	NotReady() string
}

// MaxMonitorSlots bounds MonitorSlots: kubelet keeps every unit in memory
// and in its checkpoint.
const MaxMonitorSlots = 1024

// Bounds of DaemonTimeout: below the minimum a busy but healthy daemon
// would be taken for a frozen one; above the maximum a frozen one goes
// unnoticed for too long.
const (
	MinDaemonTimeout = 100 * time.Millisecond
	MaxDaemonTimeout = time.Minute
)

// prefixRE is a DNS subdomain, as Kubernetes requires for an extended
// resource's prefix.
var prefixRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ValidateResourcePrefix checks a --resource-prefix value.
func ValidateResourcePrefix(p string) error {
	switch {
	case len(p) > 253 || !prefixRE.MatchString(p):
		return fmt.Errorf("--resource-prefix must be a DNS subdomain such as accel.io, got %q", p)
	case p == "kubernetes.io" || p == "k8s.io" || strings.HasSuffix(p, ".kubernetes.io") || strings.HasSuffix(p, ".k8s.io"):
		return fmt.Errorf("--resource-prefix %q is reserved for Kubernetes itself", p)
	}
	return nil
}

// Validate reports the first bad setting as a one-line error naming the flag.
func (c Config) Validate() error {
	switch {
	case c.DevDir == "" && c.KernelClassDir == "":
		return errors.New("nothing to discover: --dev-dir and --kernel-class-dir are both empty")
	case c.DevDir != "" && !filepath.IsAbs(c.DevDir):
		return fmt.Errorf("--dev-dir must be an absolute path, got %q", c.DevDir)
	case c.KernelClassDir != "" && !filepath.IsAbs(c.KernelClassDir):
		return fmt.Errorf("--kernel-class-dir must be an absolute path, got %q", c.KernelClassDir)
	case c.KernelClassDir != "" && !filepath.IsAbs(c.KernelDevDir):
		return fmt.Errorf("--kernel-dev-dir must be an absolute path, got %q", c.KernelDevDir)
	case c.HostDevDir != "" && !filepath.IsAbs(c.HostDevDir):
		return fmt.Errorf("--host-dev-dir must be an absolute path, got %q", c.HostDevDir)
	case !utf8.ValidString(c.DevDir + c.HostDevDir + c.KernelDevDir):
		// They reach kubelet in every Allocate answer (protobuf strings).
		return fmt.Errorf("--dev-dir, --host-dev-dir and --kernel-dev-dir must be valid UTF-8, got %q, %q, %q", c.DevDir, c.HostDevDir, c.KernelDevDir)
	case c.Frontend == nil && (c.KubeletDir == "" || !filepath.IsAbs(c.KubeletDir)):
		return fmt.Errorf("--kubelet-dir must be an absolute path, got %q", c.KubeletDir)
	case c.Frontend != nil && c.CDI:
		return errors.New("--cdi=on is the device-plugin API's: the DRA driver always hands devices out through CDI specs of its own")
	case c.MonitorSlots < 0 || c.MonitorSlots > MaxMonitorSlots:
		return fmt.Errorf("--monitor-slots must be between 0 and %d, got %d", MaxMonitorSlots, c.MonitorSlots)
	case c.Resync < time.Second:
		return fmt.Errorf("--resync must be at least 1s, got %s", c.Resync)
	case c.KernelResync != 0 && c.KernelResync < time.Second:
		return fmt.Errorf("--kernel-resync must be at least 1s, got %s", c.KernelResync)
	case c.StatusPoll != 0 && (c.StatusPoll < 100*time.Millisecond || c.StatusPoll > time.Hour):
		return fmt.Errorf("--status-poll must be between 100ms and 1h, got %s", c.StatusPoll)
	case c.DaemonTimeout < MinDaemonTimeout || c.DaemonTimeout > MaxDaemonTimeout:
		return fmt.Errorf("--daemon-timeout must be between %s and %s, got %s", MinDaemonTimeout, MaxDaemonTimeout, c.DaemonTimeout)
	case c.StaleViewGrace < 0:
		return fmt.Errorf("--stale-view-grace must be 0 (never exit) or positive, got %s", c.StaleViewGrace)
	}
	if err := ValidateResourcePrefix(c.ResourcePrefix); err != nil {
		return err
	}
	if (c.CDI || c.CDISpecDir != "") && !filepath.IsAbs(c.CDISpecDir) {
		return fmt.Errorf("--cdi-spec-dir must be an absolute path, got %q", c.CDISpecDir)
	}
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil || port == "" {
			return fmt.Errorf("--metrics-addr must be host:port (e.g. 127.0.0.1:9490 or :9490), got %q", c.MetricsAddr)
		}
	}
	return nil
}

// Plugin is a running device plugin: discovery, the store, the resources
// and their registrar.
type Plugin struct {
	Store     *Store
	Resources []*Resource
	Metrics   *Metrics
	metricsL  net.Listener // nil: no HTTP server
	cdi       *cdiSpecs    // nil: no CDI spec directory
	cdiOn     bool         // CDI mode: Allocate names CDI devices
	sources   []source
	frontend  Frontend // the registrar unless Config.Frontend
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
	if cfg.Frontend == nil {
		if fi, err := os.Stat(cfg.KubeletDir); err != nil || !fi.IsDir() {
			if err == nil {
				err = errors.New("not a directory")
			}
			return nil, fmt.Errorf("--kubelet-dir %s: %w (is this a Kubernetes node? kubelet creates it)", cfg.KubeletDir, err)
		}
	}
	store := NewStore(log)
	res := []*Resource{NewComputeResource(cfg.ResourcePrefix, store, log)}
	if cfg.MonitorSlots > 0 {
		res = append(res, NewMonitorResource(cfg.ResourcePrefix, cfg.MonitorSlots, store, log))
	}
	metrics := NewMetrics(store, cfg.DaemonTimeout)
	if cfg.PodResourcesSocket != "" {
		metrics.devices.holders = &PodResources{Socket: cfg.PodResourcesSocket, Prefix: cfg.ResourcePrefix}
		metrics.devices.log = log
	}
	for _, r := range res {
		r.metrics = metrics
	}
	var specs *cdiSpecs
	if cfg.CDISpecDir != "" {
		var err error
		if specs, err = newCDISpecs(cfg.CDISpecDir, res, log); err != nil {
			return nil, fmt.Errorf("--cdi-spec-dir: %w", err)
		}
		if cfg.CDI {
			for _, r := range res {
				r.cdi = specs
			}
		}
	}
	var l net.Listener
	if cfg.MetricsAddr != "" {
		var err error
		if l, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	p := &Plugin{
		Store:     store,
		Resources: res,
		Metrics:   metrics,
		metricsL:  l,
		cdi:       specs,
		cdiOn:     cfg.CDI,
		frontend:  cfg.Frontend,
		log:       log,
	}
	if p.frontend == nil {
		p.frontend = registrarFrontend{&Registrar{Dir: cfg.KubeletDir, Resources: res, Logger: log}}
	}
	if cfg.DevDir != "" {
		sim := &SimSource{Dir: cfg.DevDir, HostDir: cfg.HostDevDir, Resync: cfg.Resync, Timeout: cfg.DaemonTimeout,
			StaleGrace: cfg.StaleViewGrace, Store: store, Logger: log}
		metrics.devices.sources[simSourceName(cfg.DevDir)] = sim
		p.sources = append(p.sources, sim)
	}
	if cfg.KernelClassDir != "" {
		p.sources = append(p.sources, &KernelSource{ClassDir: cfg.KernelClassDir, DevDir: cfg.KernelDevDir,
			Resync: cfg.Resync, EventResync: cfg.KernelResync, StatusPoll: cfg.StatusPoll, Store: store, Logger: log})
	}
	return p, nil
}

// RemoveCDISpecs deletes the plugin's CDI specs, for a stop that is an
// uninstall (see package uninstall); a plain stop keeps them. It does
// nothing without a CDI spec directory.
func (p *Plugin) RemoveCDISpecs() {
	if p.cdi != nil {
		p.cdi.remove()
	}
}

// registrarFrontend is the device-plugin API as a Frontend.
type registrarFrontend struct{ r *Registrar }

func (f registrarFrontend) Run(ctx context.Context, _ *Store) error { return f.r.Run(ctx) }

// NotReady names the resources kubelet has not registered.
func (f registrarFrontend) NotReady() string {
	var missing []string
	for _, r := range f.r.Resources {
		if !r.registered.Load() {
			missing = append(missing, r.Name+" is not registered with kubelet")
		}
	}
	return strings.Join(missing, "; ")
}

// source is a discovery source: it publishes its devices into the store
// until ctx ends.
type source interface {
	Run(ctx context.Context) error
}

// Run runs discovery and, once every source has reported for the first
// time (so kubelet's first list is the real one), the registrar. It returns
// when ctx ends, after the sockets are removed.
func (p *Plugin) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(p.sources)+2)
	if p.metricsL != nil {
		wg.Go(func() { errs <- p.serveHTTP(ctx, p.metricsL) })
	}
	for _, s := range p.sources {
		wg.Go(func() { errs <- s.Run(ctx) })
	}
	if p.cdi != nil && !p.cdiOn {
		p.cdi.remove() // CDI off: no spec of ours may outlive an earlier CDI run
	}
	wg.Go(func() {
		for {
			snap, changed := p.Store.Load()
			if p.Store.Sources() >= len(p.sources) && snap.Version > 0 {
				break
			}
			select {
			case <-ctx.Done():
				errs <- nil
				return
			case <-changed:
			}
		}
		if p.cdi != nil && p.cdiOn {
			// Written from the first complete discovery, not from the
			// first source's devices alone.
			wg.Go(func() { p.cdi.run(ctx, p.Store) })
		}
		errs <- p.frontend.Run(ctx, p.Store)
	})
	err := <-errs
	cancel()
	wg.Wait()
	return err
}
