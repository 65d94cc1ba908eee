package dra

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// Defaults of Config's directories (kubelet's own).
const (
	DefaultRegistrarDir = kubeletplugin.KubeletRegistryDir // kubelet's plugin registry
	DefaultPluginsDir   = kubeletplugin.KubeletPluginsDir  // where the driver's data directory goes
)

// Health reports: resent this often even when nothing changed, and valid
// for three times as long (kubelet marks a device's health Unknown when its
// report is older than that).
const (
	healthResend  = 20 * time.Second
	healthTimeout = 3 * healthResend
)

// Config is what the DRA driver needs besides the devices.
type Config struct {
	// DriverName is the DRA driver's name and the domain of its
	// attributes: the resource prefix (accel.io).
	DriverName string
	// NodeName is this node's name: the pool's name, and its slices' node.
	NodeName string
	// Client reaches the API server (ResourceClaims, ResourceSlices).
	Client kubernetes.Interface
	// PluginDataDir holds the driver's socket and its checkpoint (default
	// DefaultPluginsDir/<DriverName>); it must survive reboots.
	PluginDataDir string
	// RegistrarDir is kubelet's plugin registry (DefaultRegistrarDir).
	RegistrarDir string
	// CDISpecDir is where the claims' CDI specs go (plugin.DefaultCDISpecDir).
	CDISpecDir string
	// MonitorClients is the clients capacity of each monitor device: how
	// many claims may share it. 0 publishes no monitor devices.
	MonitorClients int
	// RollingUpdateUID, when set (the pod's UID), lets a new driver pod
	// start beside the old one during a rolling update of the DaemonSet
	// (kubelet 1.33+): both register, kubelet uses the newest, and their
	// gRPC calls are serialised through a lock file in PluginDataDir.
	RollingUpdateUID types.UID
	Logger           *slog.Logger
}

// Driver is the DRA front-end over the device store: it publishes the
// node's devices as ResourceSlices, prepares and unprepares claims for
// kubelet, and streams device health to it. It implements plugin.Frontend
// and kubeletplugin.DRAPlugin.
type Driver struct {
	cfg   Config
	pool  string
	log   *slog.Logger
	specs *claimSpecs
	ckpt  string // checkpoint path

	store  *plugin.Store                        // set by Run
	helper atomic.Pointer[kubeletplugin.Helper] // set by Run while the helper runs

	mu      sync.Mutex    // checkpoint reads and writes (the helper serialises calls too)
	cached  *checkpoint   // the checkpoint as last read or written, while the file holds cachedB
	cachedB []byte        // the file's bytes then
	held    []gone        // devices gone while prepared claims hold them
	claimsC chan struct{} // closed when the prepared claims change: republish and report
}

// New checks cfg and returns a driver; Run starts it.
func New(cfg Config) (*Driver, error) {
	if err := plugin.ValidateResourcePrefix(cfg.DriverName); err != nil {
		return nil, err
	}
	if len(cfg.DriverName) > resourceapi.DriverNameMaxLength {
		return nil, fmt.Errorf("the DRA driver name (--resource-prefix) must be at most %d characters, got %q", resourceapi.DriverNameMaxLength, cfg.DriverName)
	}
	if cfg.NodeName == "" {
		return nil, errors.New("the DRA driver needs this node's name (--node-name or $NODE_NAME)")
	}
	if cfg.Client == nil {
		return nil, errors.New("the DRA driver needs a Kubernetes client")
	}
	if cfg.MonitorClients < 0 || cfg.MonitorClients > plugin.MaxMonitorSlots {
		return nil, fmt.Errorf("--monitor-slots must be between 0 and %d, got %d", plugin.MaxMonitorSlots, cfg.MonitorClients)
	}
	if cfg.PluginDataDir == "" {
		cfg.PluginDataDir = filepath.Join(DefaultPluginsDir, cfg.DriverName)
	}
	if cfg.RegistrarDir == "" {
		cfg.RegistrarDir = DefaultRegistrarDir
	}
	if cfg.CDISpecDir == "" {
		cfg.CDISpecDir = plugin.DefaultCDISpecDir
	}
	for flag, dir := range map[string]string{"--dra-plugin-dir": cfg.PluginDataDir, "--dra-registrar-dir": cfg.RegistrarDir, "--cdi-spec-dir": cfg.CDISpecDir} {
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("%s must be an absolute path, got %q", flag, dir)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	specs, err := newClaimSpecs(cfg.CDISpecDir, cfg.DriverName)
	if err != nil {
		return nil, err
	}
	return &Driver{
		cfg:     cfg,
		pool:    cfg.NodeName,
		log:     log.With("api", "dra"),
		specs:   specs,
		ckpt:    filepath.Join(cfg.PluginDataDir, CheckpointFile),
		claimsC: make(chan struct{}),
	}, nil
}

// Run restores the prepared claims' CDI specs from the checkpoint, starts
// the kubelet plugin (registration, the DRA and health services) and
// publishes the store's devices until ctx ends. It implements
// plugin.Frontend.
func (d *Driver) Run(ctx context.Context, store *plugin.Store) error {
	d.store = store
	if fi, err := os.Stat(d.cfg.RegistrarDir); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return fmt.Errorf("--dra-registrar-dir %s: %w (is this a Kubernetes node? kubelet creates it)", d.cfg.RegistrarDir, err)
	}
	if err := os.MkdirAll(d.cfg.PluginDataDir, 0o750); err != nil {
		return fmt.Errorf("DRA plugin directory: %w", err)
	}
	if err := d.restore(); err != nil {
		return err
	}
	// The helper logs through klog's logr: give it ours.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(d.log.Handler()))
	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(d.cfg.DriverName),
		kubeletplugin.NodeName(d.cfg.NodeName),
		kubeletplugin.KubeClient(d.cfg.Client),
		kubeletplugin.PluginDataDirectoryPath(d.cfg.PluginDataDir),
		kubeletplugin.RegistrarDirectoryPath(d.cfg.RegistrarDir),
		kubeletplugin.GRPCInterceptor(plugin.RecoverUnary(d.log)),
		kubeletplugin.GRPCStreamInterceptor(plugin.RecoverStream(d.log)),
	}
	if d.cfg.RollingUpdateUID != "" {
		opts = append(opts, kubeletplugin.RollingUpdate(d.cfg.RollingUpdateUID))
	}
	helper, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		return fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	d.helper.Store(helper)
	defer func() {
		d.helper.Store(nil)
		helper.Stop()
	}()
	d.log.Info("DRA driver started", "driver", d.cfg.DriverName, "pool", d.pool, "plugin_dir", d.cfg.PluginDataDir,
		"registrar_dir", d.cfg.RegistrarDir, "cdi_spec_dir", d.cfg.CDISpecDir, "monitor_clients", d.cfg.MonitorClients)
	return d.publish(ctx, helper)
}

// checkpoint returns the prepared claims; d.mu is held. The file is read
// every time (another driver instance writes it during a rolling update),
// but decoded only when its bytes differ from those last read or written:
// decoding is most of a Prepare's cost with many claims. Callers may change
// the result, and must then commit it.
func (d *Driver) checkpoint() (*checkpoint, error) {
	b, err := readCheckpoint(d.ckpt)
	if err != nil {
		return nil, err
	}
	if d.cached != nil && bytes.Equal(b, d.cachedB) {
		return d.cached, nil
	}
	d.cached, d.cachedB = nil, nil
	cp, err := decodeCheckpoint(d.ckpt, b)
	if err != nil {
		return nil, err
	}
	d.cached, d.cachedB = cp, b
	return cp, nil
}

// commit saves cp, the changed result of checkpoint; d.mu is held. If the
// save fails, the next checkpoint decodes the file again (cp holds changes
// the file does not).
func (d *Driver) commit(cp *checkpoint) error {
	b, err := cp.save(d.ckpt)
	if err != nil {
		d.cached, d.cachedB = nil, nil
		return fmt.Errorf("save the checkpoint %s: %w", d.ckpt, err)
	}
	d.cached, d.cachedB = cp, b
	return nil
}

// restore makes the spec directory hold exactly the checkpoint's claims'
// specs: written again (after a reboot /var/run/cdi is empty, and kubelet
// restarts containers of prepared claims without preparing them again),
// and specs of claims no longer prepared removed.
func (d *Driver) restore() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.checkpoint()
	if err != nil {
		return err
	}
	for uid, pc := range cp.Claims {
		if err := d.specs.write(uid, pc); err != nil {
			return err
		}
	}
	listed, err := d.specs.listed()
	if err != nil {
		return err
	}
	for _, uid := range listed {
		if _, ok := cp.Claims[uid]; !ok {
			if err := d.specs.remove(uid); err != nil {
				return err
			}
			d.log.Info("CDI spec of a claim no longer prepared removed", "claim_uid", uid)
		}
	}
	d.log.Info("prepared claims restored from the checkpoint", "claims", len(cp.Claims), "checkpoint", d.ckpt)
	return nil
}

// publish keeps the ResourceSlices equal to the store's devices (and the
// gone devices prepared claims hold) until ctx ends. Every snapshot is
// published as it comes: the slice controller coalesces updates itself.
func (d *Driver) publish(ctx context.Context, helper *kubeletplugin.Helper) error {
	for {
		snap, changed := d.store.Load()
		held, claimsChanged := d.heldDevices(snap)
		res := resources(entries(snap, held, d.cfg.DriverName, d.cfg.MonitorClients), d.pool)
		if err := helper.PublishResources(ctx, res); err != nil {
			return fmt.Errorf("publish ResourceSlices: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-claimsChanged:
		}
	}
}

// heldDevices are the devices prepared claims hold that snap does not
// have (by name, or now with another ID), and a channel closed when the
// prepared claims change.
func (d *Driver) heldDevices(snap *plugin.Snapshot) ([]gone, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.checkpoint()
	if err != nil {
		d.log.Error("checkpoint unreadable: devices of prepared claims that are gone are not published", "err", err)
		return d.held, d.claimsC
	}
	var held []gone
	seen := map[string]bool{}
	for _, pc := range cp.Claims {
		for _, p := range pc.Devices {
			dev, _, err := findDevice(snap, p.Device)
			if (err == nil && dev.ID == p.ID) || seen[p.Device] {
				continue
			}
			seen[p.Device] = true
			kind := KindCompute
			if _, monitor := parseDeviceName(p.Device); monitor {
				kind = KindMonitor
			}
			held = append(held, gone{name: p.Device, id: p.ID, kind: kind})
		}
	}
	slices.SortFunc(held, func(a, b gone) int { return strings.Compare(a.name, b.name) })
	d.held = held
	return held, d.claimsC
}

// changedClaims wakes the publisher and the health streams; d.mu is held.
func (d *Driver) changedClaims() {
	close(d.claimsC)
	d.claimsC = make(chan struct{})
}

// PrepareResourceClaims prepares each claim for kubelet: it records the
// claim's devices in the checkpoint and writes its CDI spec. A claim
// prepared before gets the same answer again (kubelet repeats calls after
// restarts). Implements kubeletplugin.DRAPlugin.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.checkpoint()
	if err != nil {
		return nil, err
	}
	snap, _ := d.store.Load()
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	dirty := false
	var released []types.UID // stale claims dropped: their specs go after the commit
	for _, claim := range claims {
		ref := claimRef(claim.Namespace, claim.Name, claim.UID)
		if pc, ok := cp.Claims[claim.UID]; ok {
			// Prepared before: the same answer; the spec is written again
			// in case it was lost.
			if err := d.specs.write(claim.UID, pc); err != nil {
				out[claim.UID] = kubeletplugin.PrepareResult{Err: err}
				continue
			}
			out[claim.UID] = d.result(claim.UID, pc)
			continue
		}
		pc, stale, err := d.prepareClaim(ctx, snap, cp, claim)
		if len(stale) > 0 {
			released = append(released, stale...)
			dirty = true
		}
		if err != nil {
			d.log.Warn("claim not prepared", "claim", ref, "err", err)
			out[claim.UID] = kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s: %w", ref, err)}
			continue
		}
		cp.Claims[claim.UID] = pc
		dirty = true
		out[claim.UID] = d.result(claim.UID, pc)
	}
	if dirty {
		// The checkpoint first: a spec can always be written again from it.
		if err := d.commit(cp); err != nil {
			return nil, err
		}
	}
	for _, uid := range released {
		if err := d.specs.remove(uid); err != nil {
			d.log.Warn("CDI spec of a stale claim not removed", "claim_uid", uid, "err", err)
		}
	}
	for uid, res := range out {
		if res.Err != nil {
			continue
		}
		pc := cp.Claims[uid]
		if err := d.specs.write(uid, pc); err != nil {
			out[uid] = kubeletplugin.PrepareResult{Err: err}
			continue
		}
		d.log.Info("claim prepared", "claim", claimRef(pc.Namespace, pc.Name, uid), "devices", len(pc.Devices))
	}
	if dirty {
		d.changedClaims()
	}
	return out, nil
}

// UnprepareResourceClaims forgets each claim: its CDI spec is removed and
// its devices are free again. A claim not prepared is not an error.
// Implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.checkpoint()
	if err != nil {
		return nil, err
	}
	out := make(map[types.UID]error, len(claims))
	dirty := false
	for _, c := range claims {
		if _, ok := cp.Claims[c.UID]; ok {
			delete(cp.Claims, c.UID)
			dirty = true
		}
		out[c.UID] = nil
	}
	if dirty {
		if err := d.commit(cp); err != nil {
			return nil, err
		}
	}
	for _, c := range claims {
		if err := d.specs.remove(c.UID); err != nil {
			out[c.UID] = err
			continue
		}
		d.log.Info("claim unprepared", "claim", claimRef(c.Namespace, c.Name, c.UID))
	}
	if dirty {
		d.changedClaims()
	}
	return out, nil
}

// NotReady says why the driver does not serve kubelet yet ("" once kubelet
// has registered it): the plugin's /readyz reports it.
func (d *Driver) NotReady() string {
	h := d.helper.Load()
	if h == nil {
		return "the DRA driver is not running"
	}
	switch st := h.RegistrationStatus(); {
	case st == nil:
		return "the DRA driver is not registered with kubelet yet"
	case !st.PluginRegistered:
		return "kubelet refused to register the DRA driver: " + st.Error
	}
	return ""
}

// HandleError logs a background error of the helper (publishing slices);
// every such error is retried by the helper, none ends the driver.
// Implements kubeletplugin.DRAPlugin.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	d.log.Error("DRA helper: "+msg, "err", err, "recoverable", errors.Is(err, kubeletplugin.ErrRecoverable))
}

// RemoveAllSlices deletes every ResourceSlice of the driver driverName, on
// all nodes: what the chart's post-delete hook runs, as a stopping driver's
// own deletion (Uninstall) races with the deletion of its RBAC. It returns
// how many it deleted.
func RemoveAllSlices(ctx context.Context, client kubernetes.Interface, driverName string) (int, error) {
	return deleteSlices(ctx, client, driverName, "")
}

// deleteSlices deletes the ResourceSlices of the driver, on node (all nodes
// when node is ""), and returns how many it deleted.
func deleteSlices(ctx context.Context, client kubernetes.Interface, driverName, node string) (int, error) {
	sel := fields.OneTermEqualSelector("spec.driver", driverName)
	if node != "" {
		sel = fields.AndSelectors(sel, fields.OneTermEqualSelector("spec.nodeName", node))
	}
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return 0, fmt.Errorf("list the ResourceSlices of %s: %w", driverName, err)
	}
	var errs []error
	n := 0
	for _, s := range list.Items {
		if s.Spec.Driver != driverName || (node != "" && ptr.Deref(s.Spec.NodeName, "") != node) {
			continue // the selector did it already on a real API server
		}
		switch err := client.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); {
		case err == nil:
			n++
		case !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("delete ResourceSlice %s: %w", s.Name, err))
		}
	}
	return n, errors.Join(errs...)
}

// Uninstall removes what the driver leaves on the node and in the cluster
// when it is uninstalled rather than restarted: this node's ResourceSlices
// of the driver, every claim CDI spec of ours and the checkpoint. Run must
// have returned.
func (d *Driver) Uninstall(ctx context.Context) error {
	n, err := deleteSlices(ctx, d.cfg.Client, d.cfg.DriverName, d.cfg.NodeName)
	errs := []error{err}
	d.log.Info("ResourceSlices removed", "count", n)
	d.mu.Lock()
	defer d.mu.Unlock()
	if listed, err := d.specs.listed(); err != nil {
		errs = append(errs, err)
	} else {
		for _, uid := range listed {
			if err := d.specs.remove(uid); err != nil {
				errs = append(errs, err)
			}
		}
		d.log.Info("claim CDI specs removed", "count", len(listed))
	}
	if err := os.Remove(d.ckpt); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove the checkpoint: %w", err))
	}
	// The helper's lock between instances of a rolling update: none runs
	// after an uninstall. (The directory stays: it is the pod's mount.)
	if err := os.Remove(filepath.Join(d.cfg.PluginDataDir, "serialize.lock")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove the helper's lock file: %w", err))
	}
	return errors.Join(errs...)
}
