package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/uevent"
)

// sysTree is a fake sysfs and /dev/accel, laid out as the kernel lays out
// each accel driver's devices (the README's kernel table; each builder
// below names the driver files it follows). Nodes are symlinks to
// /dev/null (character devices any user can make; see charNode).
type sysTree struct {
	t                    testing.TB
	root, sys            string
	classDir, devDir     string
	uevents              chan ueventMsg // what fakeUevents delivers
	sysPaths, parentDirs map[string]string
}

func newSysTree(t testing.TB) *sysTree {
	root := t.TempDir()
	st := &sysTree{t: t, root: root, sys: filepath.Join(root, "sys"), classDir: filepath.Join(root, "sys/class/accel"),
		devDir: filepath.Join(root, "dev/accel"), uevents: make(chan ueventMsg, 16),
		sysPaths: map[string]string{}, parentDirs: map[string]string{}}
	for _, d := range []string{st.classDir, st.devDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func (st *sysTree) write(path, v string) {
	st.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		st.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		st.t.Fatal(err)
	}
}

func (st *sysTree) link(target, path string) {
	st.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		st.t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(path), target)
	if err != nil {
		st.t.Fatal(err)
	}
	if err := os.Symlink(rel, path); err != nil {
		st.t.Fatal(err)
	}
}

// pci adds a PCI device bound to driver, below its own root port, with the
// attributes the PCI core gives it and attrs (the driver's), and returns
// its directory.
func (st *sysTree) pci(addr, driver, vendor, device string, numa int, attrs map[string]string) string {
	// Behind a root port of its own root complex, as a card in a slot.
	dir := filepath.Join(st.sys, "devices", "pci0000:"+addr[5:7], "0000:"+addr[5:7]+":01.0", addr)
	st.write(filepath.Join(dir, "vendor"), vendor+"\n")
	st.write(filepath.Join(dir, "device"), device+"\n")
	st.write(filepath.Join(dir, "numa_node"), strconv.Itoa(numa)+"\n")
	for k, v := range attrs {
		st.write(filepath.Join(dir, k), v)
	}
	drv := filepath.Join(st.sys, "bus/pci/drivers", driver)
	st.link(drv, filepath.Join(dir, "driver"))
	st.link(dir, filepath.Join(drv, addr))
	st.link(dir, filepath.Join(st.sys, "bus/pci/devices", addr))
	st.link(filepath.Join(st.sys, "bus/pci"), filepath.Join(dir, "subsystem"))
	return dir
}

// platform adds a platform device (path below /sys/devices/platform),
// bound to driver unless driver is "", with its device tree node (ofPath
// below /sys/firmware/devicetree/base, e.g. soc@0/npu@4a900000) and its
// compatible list, and returns its directory.
func (st *sysTree) platform(path, driver, ofPath string, compatible ...string) string {
	dir := filepath.Join(st.sys, "devices/platform", path)
	st.write(filepath.Join(dir, "uevent"), "")
	if driver != "" {
		drv := filepath.Join(st.sys, "bus/platform/drivers", driver)
		st.link(drv, filepath.Join(dir, "driver"))
		st.link(dir, filepath.Join(drv, filepath.Base(path)))
	}
	if len(compatible) > 0 {
		node := filepath.Join(st.sys, "firmware/devicetree/base", ofPath)
		st.write(filepath.Join(node, "compatible"), strings.Join(compatible, "\x00")+"\x00")
		st.link(node, filepath.Join(dir, "of_node"))
	}
	st.link(filepath.Join(st.sys, "bus/platform"), filepath.Join(dir, "subsystem"))
	return dir
}

// accel adds the accel core's device accelN below parent (drm_accel.c:
// class "accel", name accel%d, node accel/accel%d, major 261) and its node.
func (st *sysTree) accel(index int, parent string, node bool) string {
	name := "accel" + strconv.Itoa(index)
	dir := filepath.Join(parent, "accel", name)
	st.write(filepath.Join(dir, "dev"), "261:"+strconv.Itoa(index)+"\n")
	st.write(filepath.Join(dir, "uevent"), "MAJOR=261\nMINOR="+strconv.Itoa(index)+"\nDEVNAME=accel/"+name+"\nDEVTYPE=accel_minor\n")
	st.link(parent, filepath.Join(dir, "device"))
	st.link(st.classDir, filepath.Join(dir, "subsystem"))
	st.link(dir, filepath.Join(st.classDir, name))
	st.sysPaths[name] = strings.TrimPrefix(dir, st.sys)
	st.parentDirs[name] = parent
	if node {
		charNode(st.t, filepath.Join(st.devDir, name))
	}
	return dir
}

// habanalabs adds a Gaudi2 (1da3:1020; common/sysfs.c attributes on the
// PCI device) as accelN, and its control node accel_controlDN: in the accel
// class, without a parent (so below devices/virtual), on the driver's own
// major (common/device.c cdev_sysfs_debugfs_add, device_init_cdev).
func (st *sysTree) habanalabs(index int, addr string, numa int) string {
	dir := st.pci(addr, "habanalabs", "0x1da3", "0x1020", numa, map[string]string{
		"status": "Operational\n", "device_type": "GAUDI2\n", "pci_addr": addr + "\n", "module_id": strconv.Itoa(index) + "\n",
		"hard_reset_cnt": "2\n", "clk_cur_freq_mhz": "1800\n", "clk_max_freq_mhz": "1800\n", "max_power": "600000\n",
		"eeprom": "\x00\x01binary", "armcp_ver": "1.15.0\n", "parent_device": addr + "\n",
	})
	st.accel(index, dir, true)
	ctrl := "accel_controlD" + strconv.Itoa(index)
	cdir := filepath.Join(st.sys, "devices/virtual/accel", ctrl)
	st.write(filepath.Join(cdir, "dev"), "508:"+strconv.Itoa(index)+"\n")
	st.link(cdir, filepath.Join(st.classDir, ctrl))
	charNode(st.t, filepath.Join(st.devDir, ctrl))
	return dir
}

// ivpu adds a Lunar Lake NPU (8086:643e, driver intel_vpu; ivpu_sysfs.c
// attributes on the PCI device).
func (st *sysTree) ivpu(index int, addr string) string {
	dir := st.pci(addr, "intel_vpu", "0x8086", "0x643e", -1, map[string]string{
		"npu_busy_time_us": "1500000\n", "npu_memory_utilization": "1048576\n", "sched_mode": "HW\n",
		"npu_current_frequency_mhz": "0\n", "npu_max_frequency_mhz": "1950\n",
	})
	st.accel(index, dir, true)
	return dir
}

// qaic adds a Cloud AI 100 (17cb:a100; qaic_ras.c counts on the PCI
// device, the MHI controller mhiM with its serial and, while the firmware
// runs, its QAIC_CONTROL channel device).
func (st *sysTree) qaic(index int, addr string, mhi int) string {
	dir := st.pci(addr, "qaic", "0x17cb", "0xa100", 0, map[string]string{
		"ce_count": "3\n", "ue_count": "0\n", "ue_nonfatal_count": "1\n",
	})
	m := "mhi" + strconv.Itoa(mhi)
	st.write(filepath.Join(dir, m, "serial_number"), "Serial Number: 123456789\n")
	ch := filepath.Join(dir, m, m+"_QAIC_CONTROL")
	st.write(filepath.Join(ch, "uevent"), "")
	st.link(filepath.Join(st.sys, "bus/mhi/drivers/qaic_mhi"), filepath.Join(ch, "driver"))
	adir := st.accel(index, dir, true)
	for i := range 16 {
		st.write(filepath.Join(adir, "dbc"+strconv.Itoa(i)+"_state"), "0\n")
	}
	return dir
}

// amdxdna adds a Ryzen AI NPU4 (1022:17f0; amdxdna_sysfs.c attributes).
func (st *sysTree) amdxdna(index int, addr string) string {
	dir := st.pci(addr, "amdxdna", "0x1022", "0x17f0", -1, map[string]string{
		"vbnv": "RyzenAI-npu4\n", "device_type": "0\n", "fw_version": "1.5.4.389\n",
	})
	st.accel(index, dir, true)
	return dir
}

// rocket adds an RK3588 NPU: three cores bound to rocket, and the accel
// device below the "rknn" platform device the driver registers for them,
// which no driver binds (rocket_drv.c).
func (st *sysTree) rocket(index int) string {
	for _, core := range []string{"fdab0000", "fdac0000", "fdad0000"} {
		st.platform(core+".npu", "rocket", "npu@"+core, "rockchip,rk3588-rknn-core")
	}
	dir := st.platform("rknn", "", "")
	st.accel(index, dir, true)
	return dir
}

// ethosu adds an i.MX93's Ethos-U65, a platform device below the SoC bus
// (ethosu_drv.c; the device tree binding arm,ethos.yaml).
func (st *sysTree) ethosu(index int) string {
	dir := st.platform("soc@0/4a900000.npu", "ethosu", "soc@0/npu@4a900000", "fsl,imx93-npu", "arm,ethos-u65")
	st.accel(index, dir, true)
	return dir
}

// remove removes accelN as device_del does: the node first, then the sysfs
// entry (class link and directory).
func (st *sysTree) remove(name string) {
	st.t.Helper()
	for _, p := range []string{filepath.Join(st.devDir, name), filepath.Join(st.classDir, name),
		filepath.Join(st.sys, st.sysPaths[name])} {
		if err := os.RemoveAll(p); err != nil {
			st.t.Fatal(err)
		}
	}
}

// uevent queues a uevent as the kernel would send it.
func (st *sysTree) uevent(action, devPath, subsystem string, env ...string) {
	ev := uevent.Event{Action: action, DevPath: devPath, Subsystem: subsystem, Env: map[string]string{}}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		ev.Env[k] = v
	}
	st.uevents <- ueventMsg{ev: ev}
}

// fakeUevents is a UeventReader fed by a sysTree.
type fakeUevents struct {
	c      chan ueventMsg
	closed chan struct{}
}

func (f *fakeUevents) Read() (uevent.Event, error) {
	select {
	case m := <-f.c:
		return m.ev, m.err
	case <-f.closed:
		return uevent.Event{}, os.ErrClosed
	}
}

func (f *fakeUevents) Close() error { close(f.closed); return nil }

// run runs a KernelSource over the tree, with injected uevents.
func (st *sysTree) run(mod func(*KernelSource)) *Store {
	store := NewStore(nil)
	src := &KernelSource{ClassDir: st.classDir, DevDir: st.devDir, Resync: time.Hour, StatusPoll: time.Hour, Store: store, Logger: testLogger(st.t),
		Uevents: func() (UeventReader, error) { return &fakeUevents{c: st.uevents, closed: make(chan struct{})}, nil }}
	if mod != nil {
		mod(src)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	st.t.Cleanup(func() { cancel(); <-done })
	return store
}

// allSix builds a host with one device of every driver in drivers/accel.
func allSix(t *testing.T) *sysTree {
	st := newSysTree(t)
	st.habanalabs(0, "0000:3b:00.0", 1)
	st.ivpu(1, "0000:00:0b.0")
	st.qaic(2, "0000:01:00.0", 0)
	st.amdxdna(3, "0000:c4:00.1")
	st.rocket(4)
	st.ethosu(5)
	return st
}
