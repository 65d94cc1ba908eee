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
	"github.com/accel-device-plugin/accel-device-plugin/pkg/uevent"
)

// KernelSource discovers devices of the kernel's accel subsystem (Linux
// 6.2+): /sys/class/accel/accelN, with the character device
// /dev/accel/accelN (major 261). It identifies devices from sysfs only and
// never opens a node: habanalabs answers a second open with EBUSY, and an
// open creates a context on the device.
//
// What each driver exposes (status, a control node, telemetry) is in
// kernelDrivers, from the kernel's own source. Identity: DRIVER-ADDRESS,
// the PCI address for PCI devices and the platform device's name for
// platform devices, stable across reboots and driver reloads (no driver
// exposes a serial the plugin could use: see kernelID); should two devices
// still share one (two accel devices of one parent), uniqueIDs adds the node
// name, with a warning. Every string read from sysfs is made safe
// (cleanText) before it reaches kubelet, labels or metrics, so one odd
// device never affects another.
//
// Changes are event-driven and touch only the devices they concern: kernel
// uevents (add, remove, change of accel devices and of their parents),
// inotify on the node directory and on the class directory (which a fake
// sysfs on tmpfs notifies, and real sysfs does not; uevents cover it there).
// A device whose sysfs entry is gone leaves the list at once. The only
// periodic reads are a driver's status attribute where the driver sends no
// event for it (habanalabs), every StatusPoll, and the safety-net re-read
// of everything every Resync; a lost event (a uevent or inotify overflow)
// makes a full re-read at once.
type KernelSource struct {
	// ClassDir is the accel class directory, normally /sys/class/accel.
	ClassDir string
	// DevDir is where this process, and also kubelet and the container
	// runtime, see the nodes, normally /dev/accel.
	DevDir string
	// Resync is the safety-net full re-read interval without uevents (0:
	// 30 s), and EventResync with them (0: DefaultKernelResync): uevents
	// and inotify carry every change then, and a lost event is reported
	// (an overflow) and re-reads everything at once.
	Resync, EventResync time.Duration
	// StatusPoll is the period at which status attributes that send no
	// event are read (0: DefaultStatusPoll).
	StatusPoll time.Duration
	// Uevents opens the stream of kernel uevents (nil: uevent.Dial, the
	// kernel's own). When it fails, the source warns and follows inotify
	// and the re-reads only.
	Uevents func() (UeventReader, error)
	Store   *Store
	Logger  *slog.Logger

	raw     map[string]kernelDevice // last read of each device, by node name
	offline map[string]bool         // devices whose driver said offline (a uevent), until online
	// pciRoots are PCIe roots by parent device path (see pci).
	pciRoots map[string]string
	devices  deviceSet
	dupIDs   map[string]bool // IDs seen on two devices (see uniqueIDs)
	warned   map[string]bool // one-time warnings given
}

// UeventReader is a stream of kernel uevents, as *uevent.Conn reads them.
type UeventReader interface {
	// Read blocks for the next event; uevent.ErrOverflow says some were
	// lost; after Close it fails.
	Read() (uevent.Event, error)
	Close() error
}

// DefaultStatusPoll is the default period of status attribute reads
// (`serve --status-poll`). One pass costs 33 µs at 8 habanalabs devices
// and 0.3 ms at 128 (BenchmarkKernelStatusPoll, idle 2-CPU VM): every 5 s
// that is under 2 ms of CPU in 30 s even at 128 devices (the plugin's
// idle budget is 5 ms), and a status change is seen within 5 s.
const DefaultStatusPoll = 5 * time.Second

// DefaultKernelResync is the default safety-net re-read interval of kernel
// devices while uevents are received (`serve --kernel-resync`).
const DefaultKernelResync = 10 * time.Minute

// kernelDevice is one read of a device: the device, and what the source
// needs to route events to it and to poll it.
type kernelDevice struct {
	dev Device
	// sysPath is the device's directory below the sysfs root
	// (/devices/pci0000:00/0000:00:0b.0/accel/accel0), as uevents name it.
	sysPath string
	// parentSys is its parent device's directory there
	// (/devices/pci0000:00/0000:00:0b.0; "" for none).
	parentSys string
	// statusFile is the status attribute to poll ("" for none), and
	// status what it said.
	statusFile, status string
}

var (
	kernelNodeRE    = regexp.MustCompile(`^accel([0-9]+)$`)
	kernelControlRE = regexp.MustCompile(`^accel_controlD([0-9]+)$`)
)

// kernelName returns the accel device a node or class entry name belongs
// to: accelN itself, or accelN for its control node accel_controlDN.
func kernelName(name string) (string, bool) {
	if kernelNodeRE.MatchString(name) {
		return name, true
	}
	if m := kernelControlRE.FindStringSubmatch(name); m != nil {
		return "accel" + m[1], true
	}
	return "", false
}

func (s *KernelSource) sourceName() string { return "kernel:" + s.ClassDir }

// sysfsRoot is the sysfs mount that holds ClassDir (its class/accel).
func (s *KernelSource) sysfsRoot() string { return filepath.Dir(filepath.Dir(s.ClassDir)) }

// ueventMsg is one uevent, or a read error (err).
type ueventMsg struct {
	ev  uevent.Event
	err error
}

// Run scans now, then follows events, until ctx ends.
func (s *KernelSource) Run(ctx context.Context) error {
	if s.Resync <= 0 {
		s.Resync = 30 * time.Second
	}
	if s.EventResync <= 0 {
		s.EventResync = DefaultKernelResync
	}
	if s.StatusPoll <= 0 {
		s.StatusPoll = DefaultStatusPoll
	}
	s.raw, s.offline, s.pciRoots = map[string]kernelDevice{}, map[string]bool{}, map[string]string{}
	s.devices, s.dupIDs, s.warned = deviceSet{}, map[string]bool{}, map[string]bool{}
	log := s.Logger.With("source", s.sourceName())
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.DevDir, err)
	}
	defer w.Close()
	uevents, live := s.startUevents(ctx, log)

	watched := map[string]bool{}
	watch := func() {
		for _, dir := range []string{s.DevDir, s.ClassDir} {
			if !watched[dir] {
				// The directories appear when the first driver loads.
				watched[dir] = w.Add(dir) == nil
			}
		}
	}
	watch()
	s.scan(log)
	every := s.Resync
	if live {
		every = s.EventResync
	}
	resync := time.NewTicker(every)
	defer resync.Stop()
	poll := time.NewTicker(s.StatusPoll)
	defer poll.Stop()
	pending := map[string]bool{}
	for {
		full := false
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			full = s.noteFS(ev, watched, pending)
		case err := <-w.Errors:
			full = s.noteFSError(log, err)
		case m := <-uevents:
			full = s.noteUevent(log, m, pending)
		case <-poll.C:
			s.pollStatus(pending)
		case <-resync.C:
			full = true
		}
		// Take what else is queued, so that a burst is one update.
	drain:
		for !full {
			select {
			case ev := <-w.Events:
				full = s.noteFS(ev, watched, pending)
			case err := <-w.Errors:
				full = s.noteFSError(log, err)
			case m := <-uevents:
				full = s.noteUevent(log, m, pending)
			default:
				break drain
			}
		}
		watch()
		switch {
		case full:
			s.scan(log)
		case len(pending) > 0:
			s.refresh(log, pending)
		}
		clear(pending)
	}
}

// startUevents starts reading kernel uevents; live is false, and the
// channel never delivers, when they are unavailable.
func (s *KernelSource) startUevents(ctx context.Context, log *slog.Logger) (_ <-chan ueventMsg, live bool) {
	dial := s.Uevents
	if dial == nil {
		dial = func() (UeventReader, error) { return uevent.Dial() }
	}
	c := make(chan ueventMsg, 64)
	r, err := dial()
	if err != nil {
		log.Warn("kernel uevents unavailable: following the node directory and periodic re-reads (--resync) only", "err", err)
		return c, false
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	go func() {
		for {
			ev, err := r.Read()
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return
			}
			select {
			case c <- ueventMsg{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil && !errors.Is(err, uevent.ErrOverflow) {
				// A socket that keeps failing must not spin a CPU.
				select {
				case <-time.After(10 * time.Millisecond):
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return c, true
}

// noteFS notes an inotify event; it reports whether everything must be
// re-read (a watched directory went away).
func (s *KernelSource) noteFS(ev fsnotify.Event, watched map[string]bool, pending map[string]bool) bool {
	if watched[ev.Name] && ev.Has(fsnotify.Remove|fsnotify.Rename) {
		watched[ev.Name] = false
		return true
	}
	if name, ok := kernelName(filepath.Base(ev.Name)); ok {
		pending[name] = true
	}
	return false
}

// noteFSError handles a watcher error: an overflow lost events, so
// everything is re-read.
func (s *KernelSource) noteFSError(log *slog.Logger, err error) bool {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		log.Warn("inotify events lost; re-reading every device", "dir", s.DevDir)
		return true
	}
	log.Warn("watching kernel accel nodes", "dir", s.DevDir, "err", err)
	return false
}

// noteUevent routes a uevent to the devices it concerns: an accel device
// itself, or every device below a parent that changed (qaic's DBC state
// changes, a PCI device unbound). It reports whether everything must be
// re-read (events were lost).
func (s *KernelSource) noteUevent(log *slog.Logger, m ueventMsg, pending map[string]bool) bool {
	switch {
	case errors.Is(m.err, uevent.ErrOverflow):
		log.Warn("kernel uevents lost; re-reading every device")
		return true
	case m.err != nil:
		log.Debug("ignoring a uevent", "err", m.err)
		return false
	}
	if m.ev.Subsystem == "accel" {
		if name, ok := kernelName(m.ev.Name()); ok {
			pending[name] = true
			switch m.ev.Action {
			case "offline": // qaic: reset or firmware down (qaic_notify_reset)
				s.offline[name] = true
			case "online", "add", "remove":
				delete(s.offline, name)
			}
		}
		return false
	}
	// The device's parent or an ancestor (a PCI device unbound, ivpu's
	// recovery), or a device beside it below the parent (qaic's MHI
	// channels).
	for name, kd := range s.raw {
		if strings.HasPrefix(kd.sysPath, m.ev.DevPath+"/") ||
			kd.parentSys != "" && (m.ev.DevPath == kd.parentSys || strings.HasPrefix(m.ev.DevPath, kd.parentSys+"/")) {
			pending[name] = true
		}
	}
	return false
}

// pollStatus reads the status attribute of every device that has one and
// marks those whose status changed.
func (s *KernelSource) pollStatus(pending map[string]bool) {
	for name, kd := range s.raw {
		if kd.statusFile == "" {
			continue
		}
		if st, _ := attr(kd.statusFile, ""); st != kd.status {
			pending[name] = true
		}
	}
}

// scan re-reads every device from sysfs and publishes the result.
func (s *KernelSource) scan(log *slog.Logger) {
	start := time.Now()
	entries, err := os.ReadDir(s.ClassDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("cannot list kernel accel devices", "dir", s.ClassDir, "err", err)
	}
	raw := make(map[string]kernelDevice, len(entries))
	for _, e := range entries {
		if kernelNodeRE.MatchString(e.Name()) {
			if kd, ok := s.read(log, e.Name()); ok {
				raw[e.Name()] = kd
			}
		}
	}
	s.raw = raw
	log.Debug("kernel devices read", "devices", len(raw), "took", time.Since(start))
	s.publish(log)
}

// refresh re-reads the named devices only and publishes the result.
func (s *KernelSource) refresh(log *slog.Logger, names map[string]bool) {
	for name := range names {
		if kd, ok := s.read(log, name); ok {
			s.raw[name] = kd
		} else {
			delete(s.raw, name) // its sysfs entry is gone: so is the device
		}
	}
	s.publish(log)
}

// publish gives the devices their unique IDs and hands them to the store.
func (s *KernelSource) publish(log *slog.Logger) {
	devs := make([]Device, 0, len(s.raw))
	for _, kd := range s.raw {
		devs = append(devs, kd.dev)
	}
	uniqueIDs(log, devs, s.dupIDs, func(d Device) string { return d.Name }) // the ID has the address already
	seen := make(map[string]bool, len(devs))
	for _, d := range devs {
		seen[d.Name] = true
		s.devices.put(log, d)
	}
	s.devices.keepOnly(log, seen)
	s.Store.Publish(s.sourceName(), s.devices.list())
}

// read builds one device from its sysfs entry; ok is false when the entry
// is gone (the device with it). It never opens the device's nodes.
func (s *KernelSource) read(log *slog.Logger, name string) (kd kernelDevice, ok bool) {
	m := kernelNodeRE.FindStringSubmatch(name)
	if m == nil {
		return kd, false
	}
	index, err := strconv.Atoi(m[1])
	if err != nil {
		return kd, false // too many digits to be a minor
	}
	dir := filepath.Join(s.ClassDir, name)
	real, err := resolveLink(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("cannot read kernel accel device", "name", name, "err", err)
		}
		return kd, false
	}
	parent, _ := resolveLink(filepath.Join(real, "device"))
	kd.sysPath = strings.TrimPrefix(real, s.sysfsRoot())
	parentName := ""
	if parent != "" {
		kd.parentSys = strings.TrimPrefix(parent, s.sysfsRoot())
		parentName = filepath.Base(parent)
	}
	driver := ""
	if target, err := os.Readlink(filepath.Join(dir, "device", "driver")); err == nil {
		driver = filepath.Base(target)
	} else if f, ok := kernelFacades[parentName]; ok {
		driver = f
	}
	drv := kernelDrivers[driver]
	d := Device{
		Name:     name,
		Index:    index,
		Driver:   cleanText(driver),
		NUMANode: -1,
		Source:   s.sourceName(),
		Status:   accel.StatusOperational,
		// Telemetry is read below the parent (kernelDrivers).
		sysDevice: parent,
	}
	d.PCIBusID, d.PCIeRoot = s.pci(log, name, parent)
	switch {
	case d.PCIBusID != "":
		d.addr = idPart(strings.ReplaceAll(parentName, ":", "-")) // 0000:3b:00.0 → 0000-3b-00.0
		if v, ok := attr(dir, "device/vendor"); ok {
			dev, _ := attr(dir, "device/device")
			d.Model = cleanText("pci " + strings.TrimPrefix(v, "0x") + ":" + strings.TrimPrefix(dev, "0x"))
		}
		if v, ok := attr(dir, "device/numa_node"); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= maxNUMANode {
				d.NUMANode = n
			}
		}
	case parentName != "":
		d.addr = idPart(parentName) // a platform device: fdab0000.npu, rknn
		d.Model = cleanText(cmp.Or(compatible(parent), driver))
	}
	// The bus address identifies the device: stable across reboots and
	// driver reloads, and unique on its bus (see kernelID).
	d.ID = kernelID(driver, d.addr, name)

	reason := ""
	if drv.status != nil && parent != "" {
		d.Status, reason, kd.statusFile, kd.status = drv.status(parent)
	}
	d.health()
	if reason != "" {
		d.Reason = reason // the driver's own words
	}
	if s.offline[name] {
		d.Status, d.Healthy, d.Reason = accel.StatusInReset, false, "offline (the driver sent an offline uevent)"
	}
	node := filepath.Join(s.DevDir, name)
	nodeErr := checkCharDevice(node)
	control := ""
	if drv.control != nil {
		control = drv.control(index)
		// habanalabs creates it just after accelN (hl_device_init): a
		// device seen in between gets it at the node's inotify event. Warned
		// once per loss.
		key := "control\x00" + name
		if err := checkCharDevice(filepath.Join(s.DevDir, control)); err != nil {
			if !s.warned[key] {
				s.warned[key] = true
				log.Warn("control node missing: the device offers no monitor slots, and compute users get its compute node only", "name", name, "err", err)
			}
			control = ""
		} else {
			delete(s.warned, key)
		}
	}
	d.Compute, d.Monitor = kernelEdits(s.DevDir, name, control)
	if d.Healthy && nodeErr != nil {
		d.Healthy, d.Reason = false, nodeErr.Error()
	}
	kd.dev = d
	return kd, true
}

// resolveLink returns where the sysfs symlink path points: sysfs links are
// relative and lead to real directories, so one readlink resolves them
// (EvalSymlinks would lstat every component of both paths: most of a
// device's read, at start-up with 128 devices). A path that is not a link
// is returned as it is, once it exists.
func resolveLink(path string) (string, error) {
	target, err := os.Readlink(path)
	if errors.Is(err, unix.EINVAL) { // not a link
		if _, err := os.Lstat(path); err != nil {
			return "", err
		}
		return path, nil
	}
	if err != nil {
		return "", err
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(path), target)
	}
	return filepath.Clean(target), nil
}

// kernelID is a kernel device's ID: DRIVER-ADDRESS, the address being the
// PCI address (0000-3b-00.0) or the platform device's name (rknn,
// 4a900000.npu), each unique on its bus; accel-accelN when neither is known.
// No driver in drivers/accel exposes a serial the plugin could use instead
// (the README's kernel table says why for each).
func kernelID(driver, addr, name string) string {
	if addr == "" {
		return "accel-" + name // no stable identity known: the best we have
	}
	return idPart(cmp.Or(driver, "accel") + "-" + addr) // idPart again: at most maxIDLen
}

// compatible returns the first compatible string of a platform device's
// device tree node ("" without one): the SoC's name for the block.
func compatible(dev string) string {
	list, _ := attr(dev, "of_node/compatible") // NUL-separated, bounded like any attribute
	first, _, _ := strings.Cut(list, "\x00")
	return first
}

// pciAddrRE is a PCI address in extended BDF form, as the kernel names
// PCI devices (and deviceattribute accepts them).
var pciAddrRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$`)

// pci returns the PCI address and PCIe root of a device whose parent
// device directory is parent, both empty when the parent is not a PCI
// device (a platform device). The root comes from sysfs' bus/pci/devices
// link, as Kubernetes' own deviceattribute reads it, in the sysfs that
// holds ClassDir (its class/accel). Both are kept by parent path: a PCI
// device's place in the topology is in its path, so a device re-read for
// an event costs no second look-up.
func (s *KernelSource) pci(log *slog.Logger, name, parent string) (busID, root string) {
	dev := filepath.Base(parent)
	if parent == "" || !pciAddrRE.MatchString(dev) {
		return "", "" // not on PCI
	}
	if r, ok := s.pciRoots[parent]; ok {
		return dev, r
	}
	attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(dev, deviceattribute.WithFSFromRoot(s.sysfsRoot()))
	if err != nil || attr.Value.StringValue == nil {
		log.Debug("PCIe root unknown", "name", name, "pci", dev, "err", err)
	} else {
		root = *attr.Value.StringValue
	}
	// Kept either way: the PCI core links bus/pci/devices/ADDR before a
	// driver binds the device, so before its accel device exists.
	if len(s.pciRoots) >= 4*maxKernelDevices {
		clear(s.pciRoots) // devices come and go at new paths: bound it
	}
	s.pciRoots[parent] = root
	return dev, root
}

// maxKernelDevices is the most accel devices a host can have (the accel
// core's 256 minors, ACCEL_MAX_MINORS).
const maxKernelDevices = 256

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

// attr reads a sysfs attribute, trimmed.
func attr(dir, name string) (string, bool) {
	// Plain system calls: os.Open would also try to add the file to the
	// runtime's poller and fcntl it (sysfs files cannot be polled that
	// way), four more calls for each of the few attributes of every device.
	fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for errors.Is(err, unix.EINTR) {
		fd, err = unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return "", false
	}
	defer unix.Close(fd)
	// A text attribute is at most a page, returned by one read; a larger
	// file (a binary attribute, or not sysfs) is cut there, never read
	// whole.
	var buf [maxAttr]byte
	n, err := unix.Read(fd, buf[:])
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Read(fd, buf[:])
	}
	if err != nil || n < 0 {
		return "", false
	}
	return strings.TrimSpace(string(buf[:n])), true
}

// maxAttr is the most of an attribute read: sysfs' PAGE_SIZE on x86 and
// most arm64 kernels.
const maxAttr = 4096
