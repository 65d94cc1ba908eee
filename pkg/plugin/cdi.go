package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// DefaultCDISpecDir is where container runtimes look for CDI specs
// generated at run time (containerd's and CRI-O's default includes it).
const DefaultCDISpecDir = "/var/run/cdi"

// cdiName is the fully qualified CDI name of device id of kind, e.g.
// "accel.io/ac=SIM-0A1B".
func cdiName(kind, id string) string {
	vendor, class, _ := strings.Cut(kind, "/")
	return parser.QualifiedName(vendor, class, id)
}

// cdiSpecs keeps one CDI spec file per resource kind in a directory, each
// with one CDI device per accel device offering that use (named by the
// device ID), holding exactly the device's edits for it. The specs are
// derived state: rendered from the current snapshot whenever it changes and
// before a CDI name is handed to kubelet, and written when the file does
// not hold that rendering (so a file deleted or overwritten behind our back
// is put right by the next Allocate). They are written anew at start, once
// every discovery source has reported, and they stay when the plugin
// stops: kubelet restarts a container of a running pod with the CDI names
// it saved, without asking the plugin again, so a plugin restart or upgrade
// must not take the specs away (/var/run/cdi is tmpfs: a reboot clears
// them, and the next start writes them again).
type cdiSpecs struct {
	dir   string
	kinds []cdiKind
	log   *slog.Logger

	mu       sync.Mutex
	cache    *cdi.Cache
	rendered map[string]rendering // by kind: the last snapshot's specs
	written  bool                 // the first write was logged
}

// rendering is one kind's spec for one snapshot version, and its bytes as
// the library writes them (json.Marshal); spec nil: no device offers the use.
type rendering struct {
	version uint64
	spec    *cdispec.Spec
	bytes   []byte
}

// cdiKind is one spec file: a resource's kind and the use it hands out.
type cdiKind struct {
	kind string // "<prefix>/ac" or "<prefix>/ac-monitor"
	use  nodeKind
}

// specName is the kind's spec file name, e.g. "accel.io-ac.json".
func (k cdiKind) specName() string { return strings.ReplaceAll(k.kind, "/", "-") + ".json" }

// newCDISpecs returns the writer of the resources' specs in dir.
func newCDISpecs(dir string, res []*Resource, log *slog.Logger) (*cdiSpecs, error) {
	s := &cdiSpecs{dir: dir, log: log} // dir: absolute (Config.Validate)
	for _, r := range res {
		vendor, class, ok := strings.Cut(r.Name, "/")
		if !ok {
			return nil, fmt.Errorf("resource %q: want vendor/class for a CDI kind", r.Name)
		}
		if err := parser.ValidateVendorName(vendor); err != nil {
			return nil, fmt.Errorf("resource %q as a CDI kind: %w", r.Name, err)
		}
		if err := parser.ValidateClassName(class); err != nil {
			return nil, fmt.Errorf("resource %q as a CDI kind: %w", r.Name, err)
		}
		s.kinds = append(s.kinds, cdiKind{kind: r.Name, use: r.kind})
	}
	return s, nil
}

// open makes the spec directory and the library's cache over it (no
// watching: this process is the only writer of its files).
func (s *cdiSpecs) open() error {
	if s.cache != nil {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("CDI spec directory: %w", err)
	}
	c, err := cdi.NewCache(cdi.WithSpecDirs(s.dir), cdi.WithAutoRefresh(false))
	if err != nil {
		return fmt.Errorf("CDI spec directory %s: %w", s.dir, err)
	}
	s.cache = c
	return nil
}

// spec is kind's spec for snap, nil when no device offers its use.
func (k cdiKind) spec(snap *Snapshot) (*cdispec.Spec, error) {
	spec := &cdispec.Spec{Kind: k.kind}
	for _, d := range snap.Devices {
		e := d.edits(k.use)
		if e.Empty() {
			continue
		}
		spec.Devices = append(spec.Devices, cdispec.Device{Name: d.ID, ContainerEdits: e.CDI()})
	}
	if len(spec.Devices) == 0 {
		return nil, nil
	}
	v, err := MinimumCDIVersion(spec)
	if err != nil {
		return nil, fmt.Errorf("CDI version for %s: %w", k.kind, err)
	}
	spec.Version = v
	return spec, nil
}

// CDI returns the edits as CDI container edits: the device nodes, and the
// bind mounts (read-only ones with "ro"). The env is not among them: its
// value lists every device of its kind a container gets, which only the
// front-end handing several devices to one container knows.
func (e Edits) CDI() cdispec.ContainerEdits {
	var edits cdispec.ContainerEdits
	for _, n := range e.Nodes() {
		edits.DeviceNodes = append(edits.DeviceNodes, &cdispec.DeviceNode{
			Path: n.ContainerPath, HostPath: n.HostPath, Type: "c", Permissions: n.Permissions,
		})
	}
	for _, m := range e.Mounts() {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		edits.Mounts = append(edits.Mounts, &cdispec.Mount{
			HostPath: m.HostPath, ContainerPath: m.ContainerPath, Type: "bind", Options: []string{"bind", mode},
		})
	}
	return edits
}

// MinimumCDIVersion is the lowest cdiVersion that has every feature spec
// uses, so that the oldest runtimes take it. The library's
// MinimumRequiredVersion (specs-go v1.1.1) looks at the last device's edits
// only: specs-go is a go 1.19 module, so its loops share one variable. Its
// check of the spec-wide edits is right, so every device's edits are put
// there, beside the spec-wide ones, for the question.
func MinimumCDIVersion(spec *cdispec.Spec) (string, error) {
	all := *spec
	all.ContainerEdits = cdispec.ContainerEdits{
		Env:         slices.Clone(spec.ContainerEdits.Env),
		DeviceNodes: slices.Clone(spec.ContainerEdits.DeviceNodes),
		Mounts:      slices.Clone(spec.ContainerEdits.Mounts),
	}
	for _, d := range spec.Devices {
		all.ContainerEdits.Env = append(all.ContainerEdits.Env, d.ContainerEdits.Env...)
		all.ContainerEdits.DeviceNodes = append(all.ContainerEdits.DeviceNodes, d.ContainerEdits.DeviceNodes...)
		all.ContainerEdits.Mounts = append(all.ContainerEdits.Mounts, d.ContainerEdits.Mounts...)
	}
	return cdispec.MinimumRequiredVersion(&all)
}

// sync makes the spec files hold snap's specs, writing only those that
// differ. Allocate calls it for its own kind before naming CDI devices
// (only: "" means every kind); the rendering is done once per snapshot.
func (s *cdiSpecs) sync(snap *Snapshot, only string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if snap.Version == 0 {
		return nil
	}
	if err := s.open(); err != nil {
		return err
	}
	changed := false
	for _, k := range s.kinds {
		if only != "" && k.kind != only {
			continue
		}
		r, err := s.render(k, snap)
		if err != nil {
			return err
		}
		path := filepath.Join(s.dir, k.specName())
		if r.spec == nil {
			if err := os.Remove(path); err == nil {
				changed = true
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove CDI spec %s: %w", path, err)
			}
			continue
		}
		if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, r.bytes) {
			continue // the file holds it (checked every time: it may have been changed behind our back)
		}
		if err := s.cache.WriteSpec(r.spec, k.specName()); err != nil {
			return fmt.Errorf("write CDI spec %s: %w", path, err)
		}
		changed = true
	}
	if changed || !s.written {
		s.log.Info("CDI specs written", "dir", s.dir, "version", snap.Version, "devices", len(snap.Devices))
		s.written = true
	}
	return nil
}

// render returns kind k's spec for snap, rendered once per snapshot.
func (s *cdiSpecs) render(k cdiKind, snap *Snapshot) (rendering, error) {
	if r, ok := s.rendered[k.kind]; ok && r.version == snap.Version {
		return r, nil
	}
	spec, err := k.spec(snap)
	if err != nil {
		return rendering{}, err
	}
	r := rendering{version: snap.Version, spec: spec}
	if spec != nil {
		if r.bytes, err = json.Marshal(spec); err != nil {
			return rendering{}, err
		}
	}
	if s.rendered == nil {
		s.rendered = map[string]rendering{}
	}
	s.rendered[k.kind] = r
	return r, nil
}

// run keeps the specs current until ctx ends (and leaves them: see
// cdiSpecs).
func (s *cdiSpecs) run(ctx context.Context, store *Store) {
	for {
		snap, changed := store.Load()
		if err := s.sync(snap, ""); err != nil {
			s.log.Error("CDI specs not updated; the next change or allocation retries", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// remove deletes this plugin's spec files (only those: other files in the
// directory belong to other vendors): with CDI off, none may outlive an
// earlier CDI run.
func (s *cdiSpecs) remove() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, k := range s.kinds {
		err := os.Remove(filepath.Join(s.dir, k.specName()))
		if err == nil {
			s.log.Info("CDI spec removed", "path", filepath.Join(s.dir, k.specName()))
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("CDI specs not removed", "err", err)
	}
}
