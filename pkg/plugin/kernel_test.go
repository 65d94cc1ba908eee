package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/uevent"
)

// charNode makes path a character device without root: a symlink to
// /dev/null.
func charNode(t testing.TB, path string) {
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

// Kernel devices are character devices: Allocate hands them over as
// DeviceSpecs, and they offer no monitor slots (the merged kernel has no
// monitor node).
func TestKernelDeviceAllocation(t *testing.T) {
	store := NewStore(nil)
	d := Device{ID: "AN-1", Name: "accel3", Index: 3, NUMANode: 0, Status: accel.StatusOperational}
	d.Compute, d.Monitor = kernelEdits("/dev/accel", "accel3", "")
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

func runKernelTree(t *testing.T, st *sysTree) *Store { return st.run(nil) }

// Discovery on a host with one device of each of the six drivers in
// drivers/accel, each laid out as its driver lays it out: identity from
// the bus address (PCI address, platform device), never a node opened.
func TestKernelDriverFixtures(t *testing.T) {
	st := allSix(t)
	store := runKernelTree(t, st)
	devs := awaitDevices(t, store, 5*time.Second, "six devices", func(m map[string]Device) bool { return len(m) == 6 })
	type want struct {
		id, driver, model, pci, root string
		numa                         int
		control                      bool
	}
	for name, w := range map[string]want{
		"accel0": {"habanalabs-0000-3b-00.0", "habanalabs", "pci 1da3:1020", "0000:3b:00.0", "pci0000:3b", 1, true},
		"accel1": {"intel_vpu-0000-00-0b.0", "intel_vpu", "pci 8086:643e", "0000:00:0b.0", "pci0000:00", -1, false},
		"accel2": {"qaic-0000-01-00.0", "qaic", "pci 17cb:a100", "0000:01:00.0", "pci0000:01", 0, false},
		"accel3": {"amdxdna-0000-c4-00.1", "amdxdna", "pci 1022:17f0", "0000:c4:00.1", "pci0000:c4", -1, false},
		"accel4": {"rocket-rknn", "rocket", "rocket", "", "", -1, false},
		"accel5": {"ethosu-4a900000.npu", "ethosu", "fsl,imx93-npu", "", "", -1, false},
	} {
		d := devs[name]
		if d.ID != w.id || d.Driver != w.driver || d.Model != w.model || d.PCIBusID != w.pci || d.PCIeRoot != w.root ||
			d.NUMANode != w.numa || !d.Healthy || d.HasMonitor() != w.control || d.Simulated {
			t.Errorf("%s = %+v\nwant %+v, healthy", name, d, w)
		}
		nodes := []string{filepath.Join(st.devDir, name)}
		if w.control {
			nodes = append(nodes, filepath.Join(st.devDir, "accel_controlD"+name[len("accel"):]))
		}
		var got []string
		for _, n := range d.Compute.Nodes() {
			got = append(got, n.HostPath)
		}
		if strings.Join(got, " ") != strings.Join(nodes, " ") || len(d.Compute.Mounts()) != 0 {
			t.Errorf("%s compute nodes %v, want %v", name, got, nodes)
		}
	}
}

// habanalabs' control node is the device's monitor node: accel.io/ac
// gives both nodes, accel.io/ac-monitor shares the control node in slots.
func TestHabanalabsControlNodeIsTheMonitor(t *testing.T) {
	st := newSysTree(t)
	st.habanalabs(0, "0000:3b:00.0", 0)
	st.habanalabs(1, "0000:5e:00.0", 1)
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "two devices", func(m map[string]Device) bool { return len(m) == 2 })
	snap, _ := store.Load()
	monitor := NewMonitorResource("accel.io", 3, store, testLogger(t))
	if units := monitor.units(snap); len(units) != 6 {
		t.Fatalf("monitor slots %d, want 3 per device", len(units))
	}
	resp, err := monitor.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{MonitorSlotID("habanalabs-0000-5e-00.0", 2)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	if len(c.Devices) != 1 || c.Devices[0].HostPath != filepath.Join(st.devDir, "accel_controlD1") ||
		c.Devices[0].ContainerPath != "/dev/accel/accel_controlD1" || c.Envs[EnvMonitorDevices] != "accel1" {
		t.Errorf("monitor slot got devices %v, env %v; want the control node of accel1", c.Devices, c.Envs)
	}
	compute := NewComputeResource("accel.io", store, testLogger(t))
	resp, err = compute.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"habanalabs-0000-3b-00.0"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range resp.ContainerResponses[0].Devices {
		paths = append(paths, d.ContainerPath)
	}
	if strings.Join(paths, " ") != "/dev/accel/accel0 /dev/accel/accel_controlD0" {
		t.Errorf("compute unit got %v, want accel0 and its control node", paths)
	}

	// The control node goes (or never came): no monitor slots for it, and
	// the compute unit carries the compute node only.
	if err := os.Remove(filepath.Join(st.devDir, "accel_controlD1")); err != nil {
		t.Fatal(err)
	}
	devs := awaitDevices(t, store, 5*time.Second, "accel1 without monitor", func(m map[string]Device) bool { return !m["accel1"].HasMonitor() })
	if n := len(devs["accel1"].Compute.Nodes()); n != 1 || !devs["accel1"].Healthy {
		t.Errorf("accel1 without its control node: %d compute nodes, healthy %v", n, devs["accel1"].Healthy)
	}
	charNode(t, filepath.Join(st.devDir, "accel_controlD1"))
	awaitDevices(t, store, 5*time.Second, "accel1 monitor back", func(m map[string]Device) bool { return m["accel1"].HasMonitor() })
}

// habanalabs sends no event on a status change: its status attribute is
// polled, and every status string of common/device.c maps as the README's
// table says.
func TestHabanalabsStatusPolled(t *testing.T) {
	st := newSysTree(t)
	dir := st.habanalabs(0, "0000:3b:00.0", 0)
	store := st.run(func(s *KernelSource) { s.StatusPoll = 10 * time.Millisecond })
	awaitDevices(t, store, 5*time.Second, "healthy", func(m map[string]Device) bool { return m["accel0"].Healthy })
	for _, tc := range []struct {
		status string
		want   accel.Status
	}{
		{"Needs reset", accel.StatusNeedsReset},
		{"In reset", accel.StatusInReset},
		{"In reset after device release", accel.StatusInReset},
		{"Operational", accel.StatusOperational},
		{"In device creation", accel.StatusInReset},
		{"Disabled", accel.StatusMalfunction},
		{"Something new", accel.StatusMalfunction},
		{"Operational", accel.StatusOperational},
	} {
		st.write(filepath.Join(dir, "status"), tc.status+"\n")
		// The reason quotes the driver's words.
		awaitDevices(t, store, 5*time.Second, "status "+tc.status, func(m map[string]Device) bool {
			d := m["accel0"]
			return d.Status == tc.want && d.Healthy == (tc.want == accel.StatusOperational) &&
				(d.Healthy || strings.Contains(d.Reason, tc.status))
		})
	}
}

// qaic: the firmware's state arrives as uevents, on accelN (online,
// offline) and on the MHI channel devices below the PCI device.
func TestQaicHealthFromUevents(t *testing.T) {
	st := newSysTree(t)
	pci := st.qaic(0, "0000:01:00.0", 3)
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "healthy", func(m map[string]Device) bool { return m["accel0"].Healthy })
	accelPath := st.sysPaths["accel0"]
	st.uevent("offline", accelPath, "accel")
	awaitDevices(t, store, 5*time.Second, "offline", func(m map[string]Device) bool {
		return !m["accel0"].Healthy && strings.Contains(m["accel0"].Reason, "offline")
	})
	// The reset tears the MHI channels down...
	ch := filepath.Join(pci, "mhi3", "mhi3_QAIC_CONTROL")
	if err := os.RemoveAll(ch); err != nil {
		t.Fatal(err)
	}
	st.uevent("remove", strings.TrimPrefix(ch, st.sys), "mhi")
	// ...and online alone is not enough while the firmware's channel is
	// missing.
	st.uevent("online", accelPath, "accel")
	devs := awaitDevices(t, store, 5*time.Second, "no channel", func(m map[string]Device) bool {
		return strings.Contains(m["accel0"].Reason, "QAIC_CONTROL")
	})
	if devs["accel0"].Healthy {
		t.Fatal("healthy without the QAIC_CONTROL channel")
	}
	// The channel comes back, unbound at first (qaic_mhi's probe, which
	// negotiates the protocol, has not run): still not usable.
	st.write(filepath.Join(ch, "uevent"), "")
	st.uevent("add", strings.TrimPrefix(ch, st.sys), "mhi")
	awaitDevices(t, store, 5*time.Second, "unbound channel", func(m map[string]Device) bool {
		return !m["accel0"].Healthy && strings.Contains(m["accel0"].Reason, "not bound to qaic_mhi")
	})
	st.link(filepath.Join(st.sys, "bus/mhi/drivers/qaic_mhi"), filepath.Join(ch, "driver"))
	st.uevent("bind", strings.TrimPrefix(ch, st.sys), "mhi")
	awaitDevices(t, store, 5*time.Second, "healthy again", func(m map[string]Device) bool { return m["accel0"].Healthy })
	// A DBC state change (a workload activated) is routed to it too, and
	// changes nothing.
	st.uevent("change", accelPath, "accel", "DBC_ID=3", "DBC_STATE=1")
}

// A device whose sysfs entry goes leaves the list at once, also when its
// node went first (device_del's order) and the re-read in between saw it
// Unhealthy; the uevent alone suffices (real sysfs does not notify inotify).
func TestKernelRemovalLeavesAtOnce(t *testing.T) {
	st := newSysTree(t)
	for i := range 4 {
		st.ivpu(i, "0000:0"+strconv.Itoa(i)+":0b.0")
	}
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "four", func(m map[string]Device) bool { return len(m) == 4 })
	if err := os.Remove(filepath.Join(st.devDir, "accel1")); err != nil {
		t.Fatal(err)
	}
	awaitDevices(t, store, 5*time.Second, "accel1 unhealthy", func(m map[string]Device) bool { return !m["accel1"].Healthy })
	st.remove("accel1")
	awaitDevices(t, store, 5*time.Second, "accel1 gone", func(m map[string]Device) bool { _, ok := m["accel1"]; return !ok && len(m) == 3 })

	// Only a uevent, no inotify: the source is told, and reads sysfs.
	st2 := newSysTree(t)
	st2.ivpu(0, "0000:00:0b.0")
	st2.ivpu(1, "0000:01:0b.0")
	store2 := st2.run(func(s *KernelSource) { s.ClassDir = st2.classDir })
	awaitDevices(t, store2, 5*time.Second, "two", func(m map[string]Device) bool { return len(m) == 2 })
	path := st2.sysPaths["accel1"]
	st2.remove("accel1")
	st2.uevent("remove", path, "accel")
	awaitDevices(t, store2, 5*time.Second, "accel1 gone", func(m map[string]Device) bool { return len(m) == 1 })
}

// Hot-plug by uevent (ACTION=add on accelN) and a lost event (overflow)
// that makes a full re-read.
func TestKernelUeventAddAndOverflow(t *testing.T) {
	st := newSysTree(t)
	st.ivpu(0, "0000:00:0b.0")
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "one", func(m map[string]Device) bool { return len(m) == 1 })
	st.amdxdna(7, "0000:c4:00.1")
	st.uevent("add", st.sysPaths["accel7"], "accel", "DEVNAME=accel/accel7")
	awaitDevices(t, store, 5*time.Second, "accel7", func(m map[string]Device) bool { return m["accel7"].Healthy })
	st.ethosu(8)
	st.uevents <- ueventMsg{err: uevent.ErrOverflow}
	awaitDevices(t, store, 5*time.Second, "accel8 after the overflow", func(m map[string]Device) bool { return m["accel8"].Healthy })
}

// A node made with mknod (261:N, as the kernel makes it) is usable; a
// regular file where the node should be is not, and says why.
func TestKernelSourceRealNode(t *testing.T) {
	st := newSysTree(t)
	dir0 := st.pci("0000:3b:00.0", "intel_vpu", "0x8086", "0x643e", 0, nil)
	st.accel(0, dir0, false)
	dir1 := st.pci("0000:3c:00.0", "intel_vpu", "0x8086", "0x643e", 0, nil)
	st.accel(1, dir1, false)
	mknod(t, filepath.Join(st.devDir, "accel0"), 0)
	if err := os.WriteFile(filepath.Join(st.devDir, "accel1"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	store := runKernelTree(t, st)
	devs := awaitDevices(t, store, 5*time.Second, "accel0 healthy, accel1 unhealthy", func(m map[string]Device) bool {
		return len(m) == 2 && m["accel0"].Healthy && !m["accel1"].Healthy
	})
	if r := devs["accel1"].Reason; !strings.Contains(r, "not a character device") {
		t.Errorf("accel1 (a regular file) reason %q; want \"not a character device\"", r)
	}
}

// Odd bytes in sysfs names never reach kubelet: a platform device whose
// name is not valid UTF-8 gets a valid ID, and the list marshals.
func TestKernelOddNames(t *testing.T) {
	st := newSysTree(t)
	st.accel(0, st.platform("bad\xffname.npu", "ethosu", ""), true)
	store := runKernelTree(t, st)
	devs := awaitDevices(t, store, 5*time.Second, "one", func(m map[string]Device) bool { return len(m) == 1 })
	if id := devs["accel0"].ID; !validID(id) {
		t.Errorf("ID %q is not valid", id)
	}
}

// Telemetry is read from each driver's attributes at scrape time, in the
// metric's unit, labelled by device ID; a device without it reports none.
func TestKernelTelemetry(t *testing.T) {
	st := allSix(t)
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "six", func(m map[string]Device) bool { return len(m) == 6 })
	metrics := NewMetrics(store, time.Second)
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "device" {
					key += " " + l.GetName() + "=" + l.GetValue()
				}
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"accel_device_resets_total id=habanalabs-0000-3b-00.0 kind=hard":               2,
		"accel_device_clock_hertz id=habanalabs-0000-3b-00.0 which=current":            1.8e9,
		"accel_device_power_watts id=habanalabs-0000-3b-00.0 which=max":                600,
		"accel_device_busy_seconds_total id=intel_vpu-0000-00-0b.0":                    1.5,
		"accel_device_memory_used_bytes id=intel_vpu-0000-00-0b.0":                     1 << 20,
		"accel_device_clock_hertz id=intel_vpu-0000-00-0b.0 which=max":                 1.95e9,
		"accel_device_errors_total id=qaic-0000-01-00.0 kind=correctable":              3,
		"accel_device_errors_total id=qaic-0000-01-00.0 kind=uncorrectable_nonfatal":   1,
		"accel_device_errors_total id=qaic-0000-01-00.0 kind=uncorrectable":            0,
		"accel_device_healthy id=ethosu-4a900000.npu":                                  1,
		"accel_device_info driver=amdxdna id=amdxdna-0000-c4-00.1 model=pci 1022:17f0": 1,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	for key := range got {
		if strings.Contains(key, "soft") || (strings.HasPrefix(key, "accel_device_") && strings.Contains(key, "amdxdna") && !strings.Contains(key, "healthy") && !strings.Contains(key, "status") && !strings.HasPrefix(key, "accel_device_info ")) {
			t.Errorf("unexpected %s: an attribute the device does not have", key)
		}
	}
}

// Allocate logs nothing per call at info level (kubelet calls it for every
// container: 10,500 calls once made 1.5 MB of log); the count is a metric.
func TestAllocateQuietAtInfo(t *testing.T) {
	st := newSysTree(t)
	st.ivpu(0, "0000:00:0b.0")
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "one", func(m map[string]Device) bool { return m["accel0"].Healthy })
	var logs logBuffer
	res := NewComputeResource("accel.io", store, logs.logger())
	res.metrics = NewMetrics(store, time.Second)
	for range 100 {
		if _, err := res.Allocate(context.Background(), &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"intel_vpu-0000-00-0b.0"}}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	if s := logs.String(); s != "" {
		t.Errorf("Allocate logged at info:\n%s", s)
	}
	if v := testCounter(t, res.metrics, "accel_plugin_allocations_total"); v != 100 {
		t.Errorf("accel_plugin_allocations_total = %v, want 100", v)
	}
}

func testCounter(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, s := range mf.GetMetric() {
				sum += s.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// The source never opens a node, not to identify a device, not to check
// its health, not for a scrape: inotify would report IN_OPEN on the node
// directory (the nodes here are regular files, so an open is reported on
// their own directory; symlinks would report it on their target's).
func TestKernelNeverOpensNodes(t *testing.T) {
	st := allSix(t)
	entries, err := os.ReadDir(st.devDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(st.devDir, e.Name())
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, st.devDir, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	store := st.run(func(s *KernelSource) { s.StatusPoll = 10 * time.Millisecond })
	awaitDevices(t, store, 5*time.Second, "six, their nodes not character devices", func(m map[string]Device) bool {
		return len(m) == 6 && !m["accel0"].Healthy && !m["accel0"].HasMonitor()
	})
	st.write(filepath.Join(st.parentDirs["accel0"], "status"), "In reset\n") // a poll re-reads it
	awaitDevices(t, store, 5*time.Second, "accel0 in reset", func(m map[string]Device) bool { return m["accel0"].Status == accel.StatusInReset })
	st.uevent("change", st.sysPaths["accel2"], "accel", "DBC_ID=1", "DBC_STATE=1")
	mustGather(t, NewMetrics(store, time.Second).Registry)
	// Make sure the watch works: this test's own open is reported.
	f, err := os.Open(filepath.Join(st.devDir, "accel1"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	var opened []string
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("inotify: %v (not even this test's own open was seen)", err)
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		opened = append(opened, name)
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	if len(opened) != 1 || opened[0] != "accel1" {
		t.Errorf("nodes opened: %v; want only this test's own open of accel1", opened)
	}
}
