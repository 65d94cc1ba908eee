package fakedev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Config describes the simulated hardware. The zero value of a field means
// its default.
type Config struct {
	// Seed makes serials differ between simulated machines (default "accel-sim").
	Seed string
	// Model, if set, is the model name every device reports; empty: each
	// driver's own ("Simulated Accel SA-1", "Simulated NPU SN-1").
	Model string
	// MemoryTotal is each device's memory in bytes (default 16 GiB).
	MemoryTotal uint64
	// NUMANodes spreads devices round-robin by slot over this many NUMA
	// nodes (default 1).
	NUMANodes int
	// ResetDuration is how long a reset keeps a device in_reset (default 100ms).
	ResetDuration time.Duration
	// MaxAllocations caps the live memory allocations of a device's
	// compute client (default 4096): beyond it IoctlMemAlloc fails with
	// ENOSPC, so that a client allocating one byte at a time cannot grow
	// the simulator's handle table without bound.
	MaxAllocations int
	// Throughput is how many bytes a device's job moves per second (a
	// fakenpu device: multiply-accumulates, one per weight byte), which
	// makes jobs take real time (default DefaultThroughput).
	Throughput float64
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

// DefaultMaxAllocations is Config.MaxAllocations' default.
const DefaultMaxAllocations = accel.DefaultMaxBuffers

// DefaultThroughput is Config.Throughput's default: 1 GiB/s.
const DefaultThroughput = 1 << 30

func (c *Config) setDefaults() {
	if c.Seed == "" {
		c.Seed = "accel-sim"
	}
	if c.Throughput <= 0 {
		c.Throughput = DefaultThroughput
	}
	if c.MemoryTotal == 0 {
		c.MemoryTotal = 16 << 30
	}
	if c.NUMANodes <= 0 {
		c.NUMANodes = 1
	}
	if c.MaxAllocations <= 0 {
		c.MaxAllocations = DefaultMaxAllocations
	}
	if c.ResetDuration <= 0 {
		c.ResetDuration = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Serial returns the serial of the fakedev device in slot of a simulator
// seeded with seed: the same inputs give the same serial on every run.
func Serial(seed string, slot int) string {
	sum := sha256.Sum256([]byte(seed + "/" + strconv.Itoa(slot)))
	return "SIM-" + strings.ToUpper(hex.EncodeToString(sum[:6]))
}

// DriverSerial is Serial for a device of the simulated driver driver.
// Other drivers' serials include the driver's name, so a device ID (which
// is the serial) never names devices of two drivers: started again with
// the mix in another order, a slot that held a fakedev device and now
// holds a fakenpu one is a new device to kubelet's checkpoint and to DRA
// allocations, not the old one with another driver.
func DriverSerial(seed, driver string, slot int) string {
	if driver == DriverName {
		return Serial(seed, slot) // the IDs fakedev devices had before there were two drivers
	}
	return Serial(seed+"/"+driver, slot)
}

// Fault is a fault that can be injected into a device.
type Fault string

// Injectable faults.
const (
	// FaultMalfunction makes the device report malfunction; it clears by
	// Recover or Reset.
	FaultMalfunction Fault = "malfunction"
	// FaultNeedsReset makes the device report needs_reset; only Reset clears it.
	FaultNeedsReset Fault = "needs-reset"
	// FaultCorrupt is silent data corruption: the device stays in the
	// status it has and keeps running jobs, but every job's answer has one
	// bit flipped (the first word it writes, or its result word when it
	// writes no buffer). The device cannot tell, so neither status nor
	// health change; only a workload that checks its answers sees it.
	// Recover and Reset clear it.
	FaultCorrupt Fault = "corrupt"
)

// faultKinds is the list of faults, for errors.
const faultKinds = "malfunction, needs-reset or corrupt"

// Sim is a simulated bus of fake devices registered into an accel registry.
// Slots (and so serials) are handed out in order and never reused, so a
// hot-plugged device is always a new device.
type Sim struct {
	reg *accel.Registry
	cfg Config
	log *slog.Logger

	// mu serialises hot-plug and status decisions (faults, recover). A
	// reset is the core's: it refuses a second reset and any status change
	// while it runs (EAGAIN).
	mu       sync.Mutex
	nextSlot int
}

// New returns a simulator registering into reg, with no devices yet.
func New(reg *accel.Registry, cfg Config) *Sim {
	cfg.setDefaults()
	return &Sim{reg: reg, cfg: cfg, log: cfg.Logger}
}

// Add hot-plugs one new device of the default driver (fakedev) and
// returns it.
func (s *Sim) Add() (*accel.Device, error) {
	devs, err := s.AddN(1)
	if err != nil {
		return nil, err
	}
	return devs[0], nil
}

// AddN hot-plugs n new devices of the default driver; see AddDriver.
func (s *Sim) AddN(n int) ([]*accel.Device, error) { return s.AddDriver(DriverName, n) }

// AddDriver hot-plugs n new devices of the simulated driver name (EINVAL
// for an unknown one; see DriverNames), all or none. n must be 1 to
// accel.MaxDevices (EINVAL below, ENOSPC above); ENOSPC also when fewer
// indices are free, decided before anything is registered where the
// registry's present devices tell (an index held by a removed device that
// still has open files is found only by trying, and then the devices
// added so far are unplugged again). Nothing is allocated in proportion
// to n before it is checked.
func (s *Sim) AddDriver(name string, n int) ([]*accel.Device, error) {
	drv, err := lookupDriver(name)
	if err != nil {
		return nil, err
	}
	switch {
	case n < 1:
		return nil, fmt.Errorf("hot-plug %d devices: want at least 1: %w", n, syscall.EINVAL)
	case n > accel.MaxDevices:
		return nil, fmt.Errorf("hot-plug %d devices: exceeds the limit of %d devices: %w", n, accel.MaxDevices, syscall.ENOSPC)
	}
	what := "hot-plug"
	if n > 1 {
		what = fmt.Sprintf("hot-plug %d devices", n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	present := len(s.reg.Devices())
	if free := accel.MaxDevices - present; n > free {
		return nil, fmt.Errorf("%s: only %d of %d device indices are free: %w", what, max(free, 0), accel.MaxDevices, syscall.ENOSPC)
	}
	devs := make([]*accel.Device, 0, n)
	for range n {
		d, err := s.reg.Register(newDevice(s.cfg, drv, s.nextSlot))
		if err != nil {
			for _, added := range devs {
				_ = s.reg.Unregister(added)
			}
			if len(devs) == 0 {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			return nil, fmt.Errorf("%s: %d fitted, none kept: %w", what, len(devs), err)
		}
		s.nextSlot++
		devs = append(devs, d)
	}
	return devs, nil
}

// Remove hot-unplugs the device with node name name.
func (s *Sim) Remove(name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	return s.reg.Unregister(d)
}

// Inject puts device name into the fault state f. A malfunction injected
// into a device that needs a reset leaves it needing the reset; a device
// that is resetting refuses with EAGAIN. A corrupt fault changes no
// status (see FaultCorrupt).
func (s *Sim) Inject(name string, f Fault) error {
	_, err := s.inject(name, f)
	return err
}

// inject is Inject returning the status the device is left in.
func (s *Sim) inject(name string, f Fault) (accel.Status, error) {
	var want accel.Status
	switch f {
	case FaultMalfunction:
		want = accel.StatusMalfunction
	case FaultNeedsReset:
		want = accel.StatusNeedsReset
	case FaultCorrupt:
	default:
		return 0, fmt.Errorf("unknown fault %s (want %s): %w", quote(string(f)), faultKinds, syscall.EINVAL)
	}
	d, err := s.lookup(name)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resetting := fmt.Errorf("fault %s: a reset is in progress: %w", name, syscall.EAGAIN)
	switch st := d.Status(); {
	case st == accel.StatusInReset:
		return st, resetting
	case f == FaultCorrupt:
		simulated(d).corrupt.Store(true)
		return st, nil
	case st == accel.StatusNeedsReset && want == accel.StatusMalfunction:
		return st, nil
	}
	switch err := d.SetStatus(want); {
	case errors.Is(err, syscall.EAGAIN): // a reset began after the check
		return accel.StatusInReset, resetting
	case err != nil:
		return 0, fmt.Errorf("fault: %w", err)
	}
	return want, nil
}

// Recover clears a malfunction and a corrupt fault without a reset, as when
// a transient fault goes away. A device that needs a reset must be reset.
func (s *Sim) Recover(name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resetting := fmt.Errorf("recover %s: a reset is in progress: %w", name, syscall.EAGAIN)
	switch st := d.Status(); st {
	case accel.StatusMalfunction, accel.StatusOperational:
		switch err := d.SetStatus(accel.StatusOperational); {
		case errors.Is(err, syscall.EAGAIN): // a reset began after the check
			return resetting
		case err != nil:
			return fmt.Errorf("recover: %w", err)
		}
		simulated(d).corrupt.Store(false)
		return nil
	case accel.StatusInReset:
		return resetting
	default:
		return fmt.Errorf("%s is %s: only a reset recovers it: %w", name, st, syscall.EINVAL)
	}
}

// Reset resets device name and waits for it to finish. A second reset of
// the same device while one runs fails with EAGAIN.
func (s *Sim) Reset(ctx context.Context, name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	return d.Reset(ctx) // the core refuses a second reset with EAGAIN
}

// lookup finds the simulated device whose compute node is name: EINVAL for
// anything but a compute node name (acN_monitor included), ENODEV when no
// such device is present.
func (s *Sim) lookup(name string) (*accel.Device, error) {
	if err := checkDeviceName(name); err != nil {
		return nil, err
	}
	d, err := s.reg.Lookup(name)
	if err != nil {
		return nil, err
	}
	if _, ok := d.Driver().(*Device); !ok {
		return nil, fmt.Errorf("%s is not a simulated device: %w", name, syscall.EINVAL)
	}
	return d, nil
}
