package plugin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"k8s.io/dynamic-resource-allocation/deviceattribute"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// KernelSource discovers devices of the kernel's accel subsystem (Linux
// 6.2+): /sys/class/accel/accelN, with the character device
// /dev/accel/accelN (major 261). It identifies devices from sysfs only and
// never opens a node: habanalabs answers a second open with EBUSY, and an
// open creates a context on the device.
//
// Identity: the device's serial_number attribute where the driver has one
// (habanalabs) and it can be a device ID (see validID), else driver and PCI
// address (stable across reboots for a card in a slot), with a warning.
// Devices that report the same serial are each advertised as
// SERIAL-PCIADDRESS, whatever order they are found in, with a warning
// naming them. Every string read from sysfs is made safe (cleanText) before
// it reaches kubelet, labels or metrics, so one odd device never affects
// another. Health: the status attribute where the driver has one
// (habanalabs: "operational", "in reset", "needs reset", "malfunction", ...),
// else healthy while the node exists. Node creation and removal in the
// device directory arrive through inotify; sysfs attributes do not notify,
// so status changes are seen at the next resync.
type KernelSource struct {
	// ClassDir is the accel class directory, normally /sys/class/accel.
	ClassDir string
	// DevDir is where this process, and also kubelet and the container
	// runtime, see the nodes, normally /dev/accel.
	DevDir string
	// Resync is the re-read interval (0: 30 s).
	Resync time.Duration
	Store  *Store
	Logger *slog.Logger

	devices deviceSet
	dupIDs  map[string]bool // serials seen on two devices (see uniqueIDs)
	warned  map[string]bool // one-time warnings given
}

var kernelNodeRE = regexp.MustCompile(`^accel([0-9]+)$`)

func (s *KernelSource) sourceName() string { return "kernel:" + s.ClassDir }

// Run scans now, then on every node change and every Resync, until ctx ends.
func (s *KernelSource) Run(ctx context.Context) error {
	if s.Resync <= 0 {
		s.Resync = 30 * time.Second
	}
	s.devices, s.dupIDs, s.warned = deviceSet{}, map[string]bool{}, map[string]bool{}
	log := s.Logger.With("source", s.sourceName())
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.DevDir, err)
	}
	defer w.Close()
	watching := false
	tick := time.NewTicker(s.Resync)
	defer tick.Stop()
	for {
		if !watching {
			// The directory appears when the first driver loads.
			watching = w.Add(s.DevDir) == nil
		}
		s.scan(log)
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if ev.Name == s.DevDir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				watching = false
			}
		case err := <-w.Errors:
			log.Warn("watching kernel accel nodes", "dir", s.DevDir, "err", err)
		case <-tick.C:
		}
	}
}

// scan re-reads every device from sysfs and publishes the result.
func (s *KernelSource) scan(log *slog.Logger) {
	entries, err := os.ReadDir(s.ClassDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("cannot list kernel accel devices", "dir", s.ClassDir, "err", err)
	}
	var devs []Device
	for _, e := range entries {
		m := kernelNodeRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		index, err := strconv.Atoi(m[1])
		if err != nil {
			continue // too many digits to be a minor
		}
		devs = append(devs, s.read(log, e.Name(), index))
	}
	uniqueIDs(log, devs, s.dupIDs, func(d Device) string { return cmp.Or(d.addr, d.Name) })
	seen := map[string]bool{}
	for _, d := range devs {
		seen[d.Name] = true
		s.devices.put(log, d)
	}
	s.devices.keepOnly(log, seen)
	s.Store.Publish(s.sourceName(), s.devices.list())
}

// read builds one device from its sysfs directory.
func (s *KernelSource) read(log *slog.Logger, name string, index int) Device {
	dir := filepath.Join(s.ClassDir, name)
	pciDev := ""
	if target, err := filepath.EvalSymlinks(filepath.Join(dir, "device")); err == nil {
		pciDev = filepath.Base(target)
	}
	driver := ""
	if target, err := os.Readlink(filepath.Join(dir, "device", "driver")); err == nil {
		driver = filepath.Base(target)
	}
	addr := idPart(strings.ReplaceAll(pciDev, ":", "-")) // 0000:3b:00.0 → 0000-3b-00.0
	d := Device{
		Name:     name,
		Index:    index,
		Driver:   cleanText(driver),
		NUMANode: -1,
		Source:   s.sourceName(),
		addr:     addr,
	}
	d.Compute, d.Monitor = kernelEdits(s.DevDir, name)
	d.PCIBusID, d.PCIeRoot = s.pci(log, name, pciDev)
	if v, ok := attr(dir, "device/vendor"); ok {
		dev, _ := attr(dir, "device/device")
		d.Model = cleanText("pci " + strings.TrimPrefix(v, "0x") + ":" + strings.TrimPrefix(dev, "0x"))
	}
	if v, ok := attr(dir, "device/numa_node"); ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= maxNUMANode {
			d.NUMANode = n
		}
	}
	fallback := "accel-" + name // no stable identity known: the best we have
	if addr != "" {
		fallback = idPart(cmp.Or(driver, "accel") + "-" + addr) // idPart again: at most maxIDLen
	}
	switch serial, ok := driverAttr(dir, "serial_number"); {
	case ok && validID(serial):
		d.ID = serial
	case ok && serial != "":
		d.ID = fallback
		if key := name + "\x00" + serial; !s.warned[key] {
			s.warned[key] = true
			log.Warn("serial_number cannot be a device ID (not 1-128 of A-Z a-z 0-9 . _ -); identifying the device by its PCI address instead",
				"name", name, "serial", fmt.Sprintf("%q", serial), "id", d.ID)
		}
	default:
		d.ID = fallback
	}

	d.Status = accel.StatusOperational
	if st, ok := driverAttr(dir, "status"); ok {
		d.Status = kernelStatus(st)
	}
	d.health()
	if d.Healthy {
		if err := checkCharDevice(filepath.Join(s.DevDir, name)); err != nil {
			d.Healthy, d.Reason = false, err.Error()
		}
	}
	return d
}

// pci returns the PCI address and PCIe root of a device whose parent is
// dev (the basename of its sysfs "device" link), both empty when dev is not
// a PCI address (a platform device). The root comes from sysfs'
// bus/pci/devices link, as Kubernetes' own deviceattribute reads it, in the
// sysfs that holds ClassDir (its class/accel).
func (s *KernelSource) pci(log *slog.Logger, name, dev string) (busID, root string) {
	bus, err := deviceattribute.GetPCIBusIDAttribute(dev)
	if err != nil {
		return "", "" // not on PCI
	}
	sysfs := filepath.Dir(filepath.Dir(s.ClassDir))
	attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(dev, deviceattribute.WithFSFromRoot(sysfs))
	if err != nil || attr.Value.StringValue == nil {
		if key := "pcieroot\x00" + name + "\x00" + dev; !s.warned[key] {
			s.warned[key] = true
			log.Debug("PCIe root unknown", "name", name, "pci", dev, "err", err)
		}
		return *bus.Value.StringValue, ""
	}
	return *bus.Value.StringValue, *attr.Value.StringValue
}

// kernelStatus maps a driver's status attribute to the core's statuses.
func kernelStatus(s string) accel.Status {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "operational":
		return accel.StatusOperational
	case "in reset", "in reset after device release", "in device creation":
		return accel.StatusInReset
	case "needs reset":
		return accel.StatusNeedsReset
	default: // "malfunction", "disabled", anything unknown
		return accel.StatusMalfunction
	}
}

// checkCharDevice reports why path is not a usable character device node.
func checkCharDevice(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("node %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return fmt.Errorf("node %s is not a character device", path)
	}
	return nil
}

// driverAttr reads a driver attribute, which a driver may put on the accel
// device itself or on its parent (PCI) device.
func driverAttr(dir, name string) (string, bool) {
	if v, ok := attr(dir, name); ok {
		return v, true
	}
	return attr(dir, filepath.Join("device", name))
}

// attr reads a sysfs attribute, trimmed.
func attr(dir, name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}
