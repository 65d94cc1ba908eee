package accel

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"syscall"
	"time"
)

// MaxDevices is the largest number of device indices the core hands out,
// as the kernel's accel core limits its minors.
const MaxDevices = 256

// DefaultReleaseGrace is how long after a holder's close a compute open
// waits for the holder's release by default. The release is on its way by
// then (the kernel queues it before close() returns), so the wait only
// spans the time the daemon takes to handle it: well under a millisecond
// on an idle machine, but not on a loaded one. With the former grace of
// 50 ms, counted from the open, 1 close→reopen in 10,000 failed with EBUSY
// on two CPUs shared with a Kubernetes build (load average 15), and with
// the simulator starved on purpose (nice 19 among busy loops) releases
// came up to 330 ms after their close. The grace only delays an open that
// would otherwise fail, and it counts from the close: an open against a
// holder that keeps another descriptor (dup, fork) gets its EBUSY at most
// this long after that holder's close, and at once later on.
const DefaultReleaseGrace = time.Second

// Limits on open monitor files; see Options and Device.Open.
const (
	// DefaultMonitorOpensPerProcess is how many open files of one device's
	// monitor node a single process may hold by default.
	DefaultMonitorOpensPerProcess = 64
	// DefaultMonitorOpensPerDevice is how many open monitor files one
	// device allows in all by default.
	DefaultMonitorOpensPerDevice = 4096
	// MaxMonitorOpensPerProcess is the largest per-process limit.
	MaxMonitorOpensPerProcess = 65536
	// MaxMonitorOpensPerDevice is the largest per-device limit.
	MaxMonitorOpensPerDevice = 1 << 20
)

// Options tune a Registry. The zero value is usable.
type Options struct {
	// MaxDevices caps the indices handed out (default and maximum MaxDevices).
	MaxDevices int
	// ReleaseGrace is how long after the holder announced its release by
	// closing a descriptor a competing compute open still waits for that
	// release (default DefaultReleaseGrace). See Device.Open and File.Flush.
	ReleaseGrace time.Duration
	// EventBacklog is how many events a slow consumer may lag behind
	// before it gets EventResync (default 1024).
	EventBacklog int
	// MonitorOpensPerProcess caps the open files of one device's monitor
	// node that a single process (thread group) may hold at once (default
	// DefaultMonitorOpensPerProcess, at most MaxMonitorOpensPerProcess);
	// the next open fails with EMFILE. Every open monitor file costs the
	// daemon memory, so without a cap one client could exhaust it.
	MonitorOpensPerProcess int
	// MonitorOpensPerDevice caps all open monitor files of one device
	// (default DefaultMonitorOpensPerDevice, at most
	// MaxMonitorOpensPerDevice); the next open fails with EMFILE.
	MonitorOpensPerDevice int
	// MemoryBudget caps the device memory of all devices together that
	// buffers may hold at once, in bytes (0: no cap). Simulated device
	// memory is the daemon's own memory: without a cap, clients writing
	// their devices' memory_total would make the daemon use that much,
	// and an out-of-memory kill would take every device away. Past it an
	// allocation fails with ENOMEM although memory_total has room.
	MemoryBudget uint64
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

// Registry is the accel core's device table. It assigns each registered
// device the lowest free index, and an index becomes free again only when
// the device that had it is unregistered and its last open file is closed,
// so a name never refers to two devices at once.
type Registry struct {
	opts Options
	log  *slog.Logger

	// pubMu orders every state change with its event and hooks, so that
	// consumers see changes in the order they were made.
	pubMu sync.Mutex
	hooks []func(Event)

	mu      sync.Mutex
	slots   []*Device // by index; a removed device keeps its slot until gone
	syncers []MappingSyncer

	events *eventLog
	budget *budget
}

// NewRegistry returns an empty registry.
func NewRegistry(opts Options) *Registry {
	if opts.MaxDevices <= 0 || opts.MaxDevices > MaxDevices {
		opts.MaxDevices = MaxDevices
	}
	if opts.ReleaseGrace <= 0 {
		opts.ReleaseGrace = DefaultReleaseGrace
	}
	if opts.EventBacklog <= 0 {
		opts.EventBacklog = 1024
	}
	if opts.MonitorOpensPerProcess <= 0 {
		opts.MonitorOpensPerProcess = DefaultMonitorOpensPerProcess
	}
	opts.MonitorOpensPerProcess = min(opts.MonitorOpensPerProcess, MaxMonitorOpensPerProcess)
	if opts.MonitorOpensPerDevice <= 0 {
		opts.MonitorOpensPerDevice = DefaultMonitorOpensPerDevice
	}
	opts.MonitorOpensPerDevice = min(opts.MonitorOpensPerDevice, MaxMonitorOpensPerDevice)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{
		opts:   opts,
		log:    opts.Logger,
		slots:  make([]*Device, opts.MaxDevices),
		events: newEventLog(opts.EventBacklog),
		budget: &budget{limit: opts.MemoryBudget},
	}
}

// Register adds a device driven by drv, as a driver does at probe time, and
// returns it with its index and names assigned. It fails with ENOSPC when
// every index is taken.
func (r *Registry) Register(drv Driver) (*Device, error) {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	id := drv.Identity()
	r.mu.Lock()
	index := -1
	for i, d := range r.slots {
		if d == nil {
			index = i
			break
		}
	}
	if index < 0 {
		r.mu.Unlock()
		return nil, fmt.Errorf("register %s device %s: all %d indices in use: %w", id.Driver, id.Serial, len(r.slots), syscall.ENOSPC)
	}
	d := &Device{reg: r, index: index, name: ComputeName(index), id: id, drv: drv, mem: newMemory(id.MemoryTotal, id.MaxBuffers, r.budget)}
	r.slots[index] = d
	r.mu.Unlock()
	r.log.Info("device registered", "device", d.name, "serial", id.Serial, "driver", id.Driver)
	r.publishLocked(d.event(EventAdded, StatusOperational))
	return d, nil
}

// Unregister removes d, as on hot-unplug: its status becomes removed, its
// nodes disappear, every ioctl on a file still open gets ENODEV, and its
// index is reused only after the last of those files is closed.
func (r *Registry) Unregister(d *Device) error {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	d.mu.Lock()
	if d.status == StatusRemoved {
		d.mu.Unlock()
		return fmt.Errorf("unregister %s: %w", d.name, syscall.ENODEV)
	}
	d.status = StatusRemoved
	gone := d.open == 0
	d.wakeWaitersLocked()
	d.mu.Unlock()
	if gone {
		r.free(d)
	}
	r.log.Info("device unregistered", "device", d.name, "serial", d.id.Serial, "open_files", !gone)
	r.publishLocked(d.event(EventRemoved, StatusRemoved))
	return nil
}

// free returns d's index once d is fully gone.
func (r *Registry) free(d *Device) {
	r.mu.Lock()
	if r.slots[d.index] == d {
		r.slots[d.index] = nil
	}
	r.mu.Unlock()
}

// Devices returns the present (not removed) devices ordered by index.
func (r *Registry) Devices() []*Device {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Device, 0, len(r.slots))
	for _, d := range r.slots {
		if d != nil && d.Status() != StatusRemoved {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].index < out[j].index })
	return out
}

// Lookup finds a present device by its compute or monitor node name.
// It fails with ENODEV, naming the device, when there is none.
func (r *Registry) Lookup(name string) (*Device, error) {
	index, _, ok := ParseNodeName(name)
	if ok && index < len(r.slots) {
		r.mu.Lock()
		d := r.slots[index]
		r.mu.Unlock()
		if d != nil && d.Status() != StatusRemoved {
			return d, nil
		}
	}
	return nil, fmt.Errorf("no device named %q: %w", name, syscall.ENODEV)
}

// Attach adds a hook that sees every later event synchronously, before any
// subscriber does, and returns the devices present at that moment. Hooks
// are how node exposure (package devfs) keeps files in step with the
// registry: a consumer that reads "added" can open the node at once. A hook
// must not call back into the registry's state-changing methods.
func (r *Registry) Attach(hook func(Event)) []*Device {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	r.hooks = append(r.hooks, hook)
	return r.Devices()
}

// Subscribe returns a subscription to every event from now on.
func (r *Registry) Subscribe() *Subscription {
	r.events.mu.Lock()
	defer r.events.mu.Unlock()
	return &Subscription{log: r.events, cursor: r.events.next}
}

// Close ends every subscription (Next returns ErrClosed). Devices stay
// usable; Close is for shutting the daemon down.
func (r *Registry) Close() { r.events.close() }

// publishLocked runs hooks then appends ev to the log; r.pubMu must be held.
func (r *Registry) publishLocked(ev Event) {
	ev.Time = time.Now()
	for _, h := range r.hooks {
		h(ev)
	}
	r.events.append(ev)
}
