package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// fakeSysfs builds a /sys/class/accel and /dev/accel look-alike:
//
//	accel0  habanalabs-like: serial_number and status attributes, NUMA node 1
//	accel1  ivpu-like: no serial, no status, no NUMA node
//	accel2  in sysfs, but its node is missing
//
// The nodes are symlinks to /dev/null: character devices any user can
// make, and the source only asks that a node be one (stat, S_IFCHR).
// TestKernelSourceRealNode shows a node made with mknod, as root.
func fakeSysfs(t *testing.T) (classDir, devDir string) {
	t.Helper()
	root := t.TempDir()
	classDir = filepath.Join(root, "sys/class/accel")
	devDir = filepath.Join(root, "dev/accel")
	write := func(path, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, path string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	pci := filepath.Join(root, "sys/devices/pci0000:00")
	for i, d := range []struct{ addr, driver, numa string }{
		{"0000:3b:00.0", "habanalabs", "1"},
		{"0000:00:0b.0", "intel_vpu", "-1"},
		{"0000:5e:00.0", "habanalabs", "0"},
	} {
		dev := filepath.Join(pci, d.addr)
		write(filepath.Join(dev, "numa_node"), d.numa)
		write(filepath.Join(dev, "vendor"), "0x8086")
		write(filepath.Join(dev, "device"), "0x643e")
		link(filepath.Join(root, "sys/bus/pci/drivers", d.driver), filepath.Join(dev, "driver"))
		name := "accel" + itoa(i)
		cls := filepath.Join(classDir, name)
		write(filepath.Join(cls, "dev"), "261:"+itoa(i))
		link(dev, filepath.Join(cls, "device"))
		if i < 2 { // as the kernel links them; accel2's is missing: its PCIe root is unknown
			link("../../../devices/pci0000:00/"+d.addr, filepath.Join(root, "sys/bus/pci/devices", d.addr))
		}
	}
	write(filepath.Join(pci, "0000:3b:00.0", "serial_number"), "AN-0042")
	write(filepath.Join(classDir, "accel0", "status"), "operational")
	write(filepath.Join(classDir, "accel2", "status"), "operational")
	charNode(t, filepath.Join(devDir, "accel0"))
	charNode(t, filepath.Join(devDir, "accel1"))
	return classDir, devDir
}

// charNode makes path a character device without root: a symlink to
// /dev/null.
func charNode(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", path); err != nil {
		t.Fatal(err)
	}
}

// mknod makes path the character device 261:minor (accel's major), as the
// kernel does; it needs root (CAP_MKNOD).
func mknod(t *testing.T, path string, minor uint32) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mknod of a character device node (CAP_MKNOD), to show the source accepts a node as the kernel makes it")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(261, minor))); err != nil {
		t.Fatal(err)
	}
}

// awaitDevices waits until cond holds for the store's devices by name.
func awaitDevices(t *testing.T, s *Store, d time.Duration, what string, cond func(map[string]Device) bool) map[string]Device {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		snap, changed := s.Load()
		byName := map[string]Device{}
		for _, dev := range snap.Devices {
			byName[dev.Name] = dev
		}
		if cond(byName) {
			return byName
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%s: not within %s; devices: %+v", what, d, byName)
		}
	}
}

func runKernelSource(t *testing.T, classDir, devDir string, resync time.Duration) *Store {
	store := NewStore(nil)
	src := &KernelSource{ClassDir: classDir, DevDir: devDir, Resync: resync, Store: store, Logger: testLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return store
}

func TestKernelSourceIdentityAndHealth(t *testing.T) {
	classDir, devDir := fakeSysfs(t)
	store := runKernelSource(t, classDir, devDir, time.Hour)
	devs := awaitDevices(t, store, 5*time.Second, "three devices", func(m map[string]Device) bool { return len(m) == 3 })

	want := map[string]Device{
		"accel0": {ID: "AN-0042", Name: "accel0", Index: 0, Driver: "habanalabs", Model: "pci 8086:643e", NUMANode: 1, Healthy: true},
		"accel1": {ID: "intel_vpu-0000-00-0b.0", Name: "accel1", Index: 1, Driver: "intel_vpu", Model: "pci 8086:643e", NUMANode: -1, Healthy: true},
		"accel2": {ID: "habanalabs-0000-5e-00.0", Name: "accel2", Index: 2, Driver: "habanalabs", Model: "pci 8086:643e", NUMANode: 0, Healthy: false},
	}
	for name, w := range want {
		got := devs[name]
		if got.ID != w.ID || got.Index != w.Index || got.Driver != w.Driver || got.Model != w.Model ||
			got.NUMANode != w.NUMANode || got.Healthy != w.Healthy || got.Simulated || !got.Monitor.Empty() ||
			len(got.Compute.Nodes()) != 1 || got.Compute.Nodes()[0].HostPath != filepath.Join(devDir, name) || len(got.Compute.Mounts()) != 0 {
			t.Errorf("%s = %+v\nwant %+v", name, got, w)
		}
	}
	if r := devs["accel2"].Reason; r == "" {
		t.Errorf("accel2 has no node but no reason")
	}
	for name, want := range map[string][2]string{
		"accel0": {"0000:3b:00.0", "pci0000:00"},
		"accel1": {"0000:00:0b.0", "pci0000:00"},
		"accel2": {"0000:5e:00.0", ""},
	} {
		if got := [2]string{devs[name].PCIBusID, devs[name].PCIeRoot}; got != want {
			t.Errorf("%s PCI address and PCIe root %q, want %q", name, got, want)
		}
	}

	// Node changes arrive through inotify, without waiting for a resync.
	if err := os.Remove(filepath.Join(devDir, "accel1")); err != nil {
		t.Fatal(err)
	}
	charNode(t, filepath.Join(devDir, "accel2"))
	awaitDevices(t, store, time.Second, "accel1 unhealthy, accel2 healthy", func(m map[string]Device) bool {
		return !m["accel1"].Healthy && m["accel2"].Healthy
	})
	// The sysfs directory going away (driver unbound) removes the device at
	// the next node event.
	if err := os.RemoveAll(filepath.Join(classDir, "accel2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(devDir, "accel2")); err != nil {
		t.Fatal(err)
	}
	awaitDevices(t, store, time.Second, "accel2 removed", func(m map[string]Device) bool { _, ok := m["accel2"]; return !ok })
}

// A node made with mknod (261:N, as the kernel makes it) is usable; a
// regular file where the node should be is not, and says why.
func TestKernelSourceRealNode(t *testing.T) {
	classDir, devDir := kernelSysfs(t, kernelDev{name: "accel0", pci: "0000:3b:00.0", serial: "AN-1"},
		kernelDev{name: "accel1", pci: "0000:3c:00.0", serial: "AN-2"})
	mknod(t, filepath.Join(devDir, "accel0"), 0)
	if err := os.WriteFile(filepath.Join(devDir, "accel1"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	store := runKernelSource(t, classDir, devDir, time.Hour)
	devs := awaitDevices(t, store, 5*time.Second, "accel0 healthy, accel1 unhealthy", func(m map[string]Device) bool {
		return len(m) == 2 && m["accel0"].Healthy && !m["accel1"].Healthy
	})
	if r := devs["accel1"].Reason; !strings.Contains(r, "not a character device") {
		t.Errorf("accel1 (a regular file) reason %q; want \"not a character device\"", r)
	}
}

// sysfs attributes do not notify: a status change is seen at the resync.
func TestKernelSourceStatusAtResync(t *testing.T) {
	classDir, devDir := fakeSysfs(t)
	store := runKernelSource(t, classDir, devDir, 20*time.Millisecond)
	awaitDevices(t, store, 5*time.Second, "accel0 healthy", func(m map[string]Device) bool { return m["accel0"].Healthy })
	for _, tc := range []struct {
		status  string
		want    accel.Status
		healthy bool
	}{
		{"needs reset", accel.StatusNeedsReset, false},
		{"in reset", accel.StatusInReset, false},
		{"disabled", accel.StatusMalfunction, false},
		{"operational", accel.StatusOperational, true},
	} {
		if err := os.WriteFile(filepath.Join(classDir, "accel0", "status"), []byte(tc.status+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		awaitDevices(t, store, 2*time.Second, "status "+tc.status, func(m map[string]Device) bool {
			return m["accel0"].Status == tc.want && m["accel0"].Healthy == tc.healthy
		})
	}
}

// Kernel devices are character devices: Allocate hands them over as
// DeviceSpecs, and they offer no monitor slots (the merged kernel has no
// monitor node).
func TestKernelDeviceAllocation(t *testing.T) {
	store := NewStore(nil)
	d := Device{ID: "AN-1", Name: "accel3", Index: 3, NUMANode: 0, Status: accel.StatusOperational}
	d.Compute, d.Monitor = kernelEdits("/dev/accel", "accel3")
	d.health()
	store.Publish("kernel", []Device{d})
	compute := NewComputeResource("accel.io", store, testLogger(t))
	monitor := NewMonitorResource("accel.io", 4, store, testLogger(t))
	snap, _ := store.Load()
	if units := monitor.units(snap); len(units) != 0 {
		t.Errorf("kernel device offers monitor slots: %v", units)
	}
	resp, err := compute.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"AN-1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	if len(c.Mounts) != 0 || len(c.Devices) != 1 {
		t.Fatalf("mounts %v, devices %v; want one DeviceSpec", c.Mounts, c.Devices)
	}
	if ds := c.Devices[0]; ds.HostPath != "/dev/accel/accel3" || ds.ContainerPath != "/dev/accel/accel3" || ds.Permissions != "rw" {
		t.Errorf("DeviceSpec = %+v", ds)
	}
	if c.Envs[EnvVisibleDevices] != "accel3" {
		t.Errorf("env = %v", c.Envs)
	}
	if _, err := monitor.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{MonitorSlotID("AN-1", 0)}}},
	}); err == nil || !strings.Contains(err.Error(), "has no monitor node") {
		t.Errorf("monitor slot of a kernel device: err = %v, want \"has no monitor node\"", err)
	}
}
