package plugin

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// cdiFixture is a store with two simulated devices (nodes under
// /run/accel/dev on the host) and a kernel one (/dev/null standing in for
// its character device, so the CDI library can stat it), the two
// resources in CDI mode, and their spec directory.
type cdiFixture struct {
	store            *Store
	compute, monitor *Resource
	specs            *cdiSpecs
	dir              string
}

func newCDIFixture(t *testing.T) *cdiFixture {
	t.Helper()
	f := &cdiFixture{store: NewStore(nil), dir: filepath.Join(t.TempDir(), "cdi")}
	var devs []Device
	for i := range 2 {
		d := Device{ID: "SIM-" + string(rune('A'+i)), Name: accel.ComputeName(i), Index: i, Status: accel.StatusOperational, Simulated: true}
		d.Compute, d.Monitor = simEdits("/run/accel/dev", i)
		d.health()
		devs = append(devs, d)
	}
	f.store.Publish("sim", devs)
	k := Device{ID: "KRN-1", Name: "null", Index: 7, Status: accel.StatusOperational}
	k.Compute, k.Monitor = kernelEdits("/dev", "null", "")
	k.health()
	f.store.Publish("kernel", []Device{k})
	f.compute = NewComputeResource("accel.io", f.store, testLogger(t))
	f.monitor = NewMonitorResource("accel.io", 2, f.store, testLogger(t))
	var err error
	if f.specs, err = newCDISpecs(f.dir, []*Resource{f.compute, f.monitor}, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	f.compute.cdi, f.monitor.cdi = f.specs, f.specs
	return f
}

func (f *cdiFixture) allocate(t *testing.T, r *Resource, ids ...string) *pluginapi.ContainerAllocateResponse {
	t.Helper()
	resp, err := r.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
	})
	if err != nil {
		t.Fatalf("Allocate %v: %v", ids, err)
	}
	return resp.ContainerResponses[0]
}

// inject resolves CDI names against the spec directory as a container
// runtime does and returns the OCI spec they produce.
func inject(t *testing.T, dir string, names []string) *oci.Spec {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("spec errors: %v", errs)
	}
	spec := &oci.Spec{Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(spec, names...); err != nil {
		t.Fatalf("inject %v: unresolved %v: %v", names, unresolved, err)
	}
	return spec
}

// In CDI mode Allocate names CDI devices (and still sets the env), and the
// specs it names resolve, as a runtime resolves them, to exactly the files
// and device nodes the mounts mode hands over.
func TestCDIAllocateMatchesMounts(t *testing.T) {
	f := newCDIFixture(t)
	c := f.allocate(t, f.compute, "SIM-B", "SIM-A", "KRN-1")
	var names []string
	for _, d := range c.CdiDevices {
		names = append(names, d.Name)
	}
	if want := []string{"accel.io/ac=SIM-A", "accel.io/ac=SIM-B", "accel.io/ac=KRN-1"}; !slices.Equal(names, want) {
		t.Fatalf("CDI devices %q, want %q (index order)", names, want)
	}
	if len(c.Mounts) != 0 || len(c.Devices) != 0 {
		t.Errorf("CDI mode still hands over mounts %v / devices %v", c.Mounts, c.Devices)
	}
	if got := c.Envs[EnvVisibleDevices]; got != "ac0,ac1,null" {
		t.Errorf("%s=%q, want ac0,ac1,null", EnvVisibleDevices, got)
	}

	// The same request in mounts mode.
	f.compute.cdi = nil
	plain := f.allocate(t, f.compute, "SIM-B", "SIM-A", "KRN-1")
	spec := inject(t, f.dir, names)
	var mounts []string
	for _, m := range spec.Mounts {
		mounts = append(mounts, m.Source+" "+m.Destination+" "+strings.Join(m.Options, ","))
	}
	var wantMounts []string
	for _, m := range plain.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		wantMounts = append(wantMounts, m.HostPath+" "+m.ContainerPath+" bind,"+mode)
	}
	if !slices.Equal(mounts, wantMounts) {
		t.Errorf("CDI mounts\n %q\nwant (mounts mode)\n %q", mounts, wantMounts)
	}
	if len(spec.Linux.Devices) != 1 || len(plain.Devices) != 1 ||
		spec.Linux.Devices[0].Path != plain.Devices[0].ContainerPath || spec.Linux.Devices[0].Type != "c" ||
		spec.Linux.Devices[0].Major != 1 || spec.Linux.Devices[0].Minor != 3 {
		t.Errorf("CDI device nodes %+v, want %s (1:3) as in mounts mode %+v", spec.Linux.Devices, plain.Devices[0].ContainerPath, plain.Devices)
	}
	if r := spec.Linux.Resources; r == nil || !slices.ContainsFunc(r.Devices, func(d oci.LinuxDeviceCgroup) bool {
		return d.Allow && d.Major != nil && *d.Major == 1 && d.Minor != nil && *d.Minor == 3 && d.Access == "rw"
	}) {
		t.Errorf("no rw cgroup rule for the device node: %+v", spec.Linux.Resources)
	}

	// Monitor slots name the device's monitor kind; the kernel device has none.
	m := f.allocate(t, f.monitor, MonitorSlotID("SIM-B", 1))
	if len(m.CdiDevices) != 1 || m.CdiDevices[0].Name != "accel.io/ac-monitor=SIM-B" || m.Envs[EnvMonitorDevices] != "ac1" {
		t.Fatalf("monitor allocation %+v", m)
	}
	spec = inject(t, f.dir, []string{m.CdiDevices[0].Name})
	if len(spec.Mounts) != 1 || spec.Mounts[0].Destination != "/dev/accel/ac1_monitor" || !slices.Contains(spec.Mounts[0].Options, "ro") {
		t.Errorf("monitor mounts %+v", spec.Mounts)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "accel.io-ac-monitor.json")); err != nil {
		t.Errorf("monitor spec: %v", err)
	}
}

// The specs follow the devices: a device that goes is gone from the spec
// at the next change, a kind nobody offers has no file, and the files stay
// when run ends (kubelet restarts containers of running pods with the CDI
// names it saved, without asking the plugin).
func TestCDISpecsFollowDevices(t *testing.T) {
	f := newCDIFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.specs.run(ctx, f.store); close(done) }()

	acSpec := filepath.Join(f.dir, "accel.io-ac.json")
	monSpec := filepath.Join(f.dir, "accel.io-ac-monitor.json")
	waitFile(t, acSpec, func(b string) bool { return strings.Contains(b, "SIM-A") && strings.Contains(b, "KRN-1") })

	f.store.Publish("sim", nil)
	waitFile(t, acSpec, func(b string) bool { return !strings.Contains(b, "SIM-A") && strings.Contains(b, "KRN-1") })
	waitFile(t, monSpec, func(b string) bool { return b == "" }) // only the kernel device left: no monitor kind

	cancel()
	<-done
	if _, err := os.Stat(acSpec); err != nil {
		t.Errorf("%s after run ended: %v, want it kept", acSpec, err)
	}
}

// A spec file deleted or changed behind the plugin's back is put right by
// the next Allocate; an unchanged one is not rewritten.
func TestCDISpecRepaired(t *testing.T) {
	f := newCDIFixture(t)
	path := filepath.Join(f.dir, "accel.io-ac.json")
	f.allocate(t, f.compute, "SIM-A")
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f.allocate(t, f.compute, "SIM-B")
	if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("an unchanged spec was rewritten (%v)", err)
	}
	for _, damage := range []func() error{
		func() error { return os.Remove(path) },
		func() error {
			return os.WriteFile(path, []byte(`{"cdiVersion":"0.3.0","kind":"accel.io/ac","devices":[]}`), 0o600)
		},
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		c := f.allocate(t, f.compute, "SIM-A")
		inject(t, f.dir, []string{c.CdiDevices[0].Name})
	}
}

// waitFile waits, up to a deadline, until path's content (""
// when it does not exist) satisfies ok.
func waitFile(t *testing.T, path string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if ok(string(b)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after 5s: %q", path, b)
		}
		runtime.Gosched()
	}
}

// Allocate never names a CDI device the spec does not hold: it writes the
// spec first when discovery is ahead of the writer.
func TestCDIAllocateWritesSpecFirst(t *testing.T) {
	f := newCDIFixture(t)
	c := f.allocate(t, f.compute, "SIM-A")
	spec := inject(t, f.dir, []string{c.CdiDevices[0].Name})
	if len(spec.Mounts) != 2 {
		t.Fatalf("mounts %+v", spec.Mounts)
	}
	d := Device{ID: "SIM-NEW", Name: "ac5", Index: 5, Status: accel.StatusOperational, Simulated: true}
	d.Compute, d.Monitor = simEdits("/run/accel/dev", 5)
	d.health()
	f.store.Publish("sim2", []Device{d})
	c = f.allocate(t, f.compute, "SIM-NEW")
	inject(t, f.dir, []string{c.CdiDevices[0].Name}) // fails if the spec lags
}

// With CDI off, specs of ours left by an earlier CDI run are removed at
// start; other vendors' files stay.
func TestCDIOffRemovesStaleSpecs(t *testing.T) {
	kubelet := t.TempDir()
	dir := filepath.Join(t.TempDir(), "cdi")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"accel.io-ac.json", "accel.io-ac-monitor.json", "vendor.com-gpu.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := New(Config{DevDir: t.TempDir(), KubeletDir: kubelet, ResourcePrefix: "accel.io", MonitorSlots: 2,
		Resync: time.Hour, DaemonTimeout: time.Second, CDISpecDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run removes the stale specs before anything else, then returns
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if !slices.Equal(left, []string{"vendor.com-gpu.json"}) {
		t.Errorf("spec dir holds %q, want only vendor.com-gpu.json", left)
	}
}

func TestCDIConfig(t *testing.T) {
	base := Config{DevDir: "/run/accel/dev", KubeletDir: "/var/lib/kubelet/device-plugins", ResourcePrefix: "accel.io",
		Resync: time.Minute, DaemonTimeout: time.Second}
	for _, tc := range []struct {
		cdi  bool
		dir  string
		want string
	}{
		{true, "", "--cdi-spec-dir must be an absolute path"},
		{true, "var/run/cdi", "--cdi-spec-dir must be an absolute path"},
		{false, "rel", "--cdi-spec-dir must be an absolute path"},
		{true, "/var/run/cdi", ""},
		{false, "", ""},
	} {
		c := base
		c.CDI, c.CDISpecDir = tc.cdi, tc.dir
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CDI %v dir %q: %v, want %q", tc.cdi, tc.dir, err, tc.want)
		}
	}
}

// The spec's cdiVersion covers every device's features: a device node with
// a hostPath needs 0.5.0 wherever the device is in the list (the library's
// own MinimumRequiredVersion looks at the last device only and said 0.4.0
// here, which a strict 0.4.0 runtime would read without the host path).
func TestCDIVersionCoversEveryDevice(t *testing.T) {
	f := newCDIFixture(t)
	snap, _ := f.store.Load()
	spec, err := f.specs.kinds[0].spec(snap)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Devices[0].Name != "KRN-1" || spec.Devices[len(spec.Devices)-1].Name == "KRN-1" {
		t.Fatalf("fixture order changed: %v; the kernel device must not be last", spec.Devices)
	}
	if spec.Version != "0.5.0" {
		t.Errorf("cdiVersion %s, want 0.5.0 (device node hostPath)", spec.Version)
	}
	mon, err := f.specs.kinds[1].spec(snap)
	if err != nil || mon.Version != "0.4.0" {
		t.Errorf("monitor spec cdiVersion %v (%v), want 0.4.0 (mount type)", mon.Version, err)
	}
}
