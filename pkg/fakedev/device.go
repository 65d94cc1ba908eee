package fakedev

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// DriverName is what fakedev devices report as their driver: the generic
// simulated accelerator.
const DriverName = "fakedev"

// driver is one simulated driver: its name, the model its devices report
// unless Config.Model says otherwise, and its command handler. The two
// drivers share the simulated hardware (Device: identity, status, reset)
// and the core's memory manager and job engine; what differs is their
// uAPI, each in its own header under include/uapi.
type driver struct {
	name  string
	model string
	about string // one line for `sim --help`
	// command runs one of the driver's commands; ENOTTY for any other.
	command func(d *Device, f *accel.File, cmd uint32, in, out []byte) error
}

// drivers lists the simulated drivers; the first is the default.
func drivers() []driver {
	return []driver{
		{name: DriverName, model: "Simulated Accel SA-1", about: "generic accelerator: buffers, vector add and checksum jobs (include/uapi/fakedev_accel.h)", command: fakedevCommand},
		{name: NPUDriverName, model: "Simulated NPU SN-1", about: "DNN engine: buffers, fully connected int8 layers with ReLU (include/uapi/fakenpu_accel.h)", command: npuCommand},
	}
}

// DriverNames returns the names of the simulated drivers, the default
// first.
func DriverNames() []string {
	var out []string
	for _, drv := range drivers() {
		out = append(out, drv.name)
	}
	return out
}

// DriverHelp returns one line per simulated driver: its name, model and
// what it does.
func DriverHelp() string {
	var s string
	for _, drv := range drivers() {
		s += fmt.Sprintf("  %-8s %s: %s\n", drv.name, drv.model, drv.about)
	}
	return s
}

func lookupDriver(name string) (driver, error) {
	for _, drv := range drivers() {
		if drv.name == name {
			return drv, nil
		}
	}
	return driver{}, fmt.Errorf("unknown driver %s (want one of %v): %w", quote(name), DriverNames(), syscall.EINVAL)
}

// Device is one simulated accelerator: the accel.Driver of one registered
// device.
type Device struct {
	slot          int
	drv           driver
	id            accel.Identity
	resetDuration time.Duration
	throughput    float64     // bytes per second a job moves
	corrupt       atomic.Bool // FaultCorrupt injected
}

// simulated returns the simulated driver of a device this simulator
// registered.
func simulated(d *accel.Device) *Device { return d.Driver().(*Device) }

var _ accel.Driver = (*Device)(nil)

func newDevice(cfg Config, drv driver, slot int) *Device {
	model := drv.model
	if cfg.Model != "" {
		model = cfg.Model
	}
	return &Device{
		slot:          slot,
		drv:           drv,
		resetDuration: cfg.ResetDuration,
		throughput:    cfg.Throughput,
		id: accel.Identity{
			Driver:      drv.name,
			Model:       model,
			Serial:      DriverSerial(cfg.Seed, drv.name, slot),
			MemoryTotal: cfg.MemoryTotal,
			NUMANode:    slot % cfg.NUMANodes,
			MaxBuffers:  cfg.MaxAllocations,
		},
	}
}

// Slot returns the simulated bus slot, which (with the seed) determines the
// serial. Slots are never reused within one simulator run.
func (d *Device) Slot() int { return d.slot }

// Identity implements accel.Driver.
func (d *Device) Identity() accel.Identity { return d.id }

// Open implements accel.Driver: a compute client starts with nothing.
func (d *Device) Open(f *accel.File) error { return nil }

// Release implements accel.Driver. The client's jobs and buffers are the
// core's, which ends and frees them.
func (d *Device) Release(f *accel.File) {}

// Command implements accel.Driver: the device's own driver's commands;
// any other command, another driver's included, is ENOTTY. Every argument
// is checked before it reaches the device's state.
func (d *Device) Command(f *accel.File, cmd uint32, in, out []byte) error {
	return d.drv.command(d, f, cmd, in, out)
}

// jobDuration is how long the simulated hardware takes to move n bytes,
// at most math.MaxInt64 ns (a job of 16 GiB at 1 byte/s is 544 years: the
// float is far above what converts to an int64).
func (d *Device) jobDuration(n uint64) time.Duration {
	ns := float64(n) / d.throughput * float64(time.Second)
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// Reset implements accel.Driver: the simulated hardware takes
// ResetDuration to come back, with a corrupt fault cleared.
func (d *Device) Reset(ctx context.Context) error {
	t := time.NewTimer(d.resetDuration)
	defer t.Stop()
	select {
	case <-t.C:
		d.corrupt.Store(false)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("reset interrupted: %w", ctx.Err())
	}
}

// waitTimeout converts a wait's timeout_ns: 0 means do not wait, negative
// or above MaxWaitTimeout is EINVAL.
func waitTimeout(ns int64) (time.Duration, error) {
	if ns < 0 || ns > int64(MaxWaitTimeout) {
		return 0, fmt.Errorf("timeout %d ns: want 0 to %d: %w", ns, int64(MaxWaitTimeout), syscall.EINVAL)
	}
	return time.Duration(ns), nil
}

// MaxWaitTimeout is the longest a wait command may block. A FUSE request
// that waits longer would hold one of the daemon's request handlers, and a
// client wanting more waits again.
const MaxWaitTimeout = 10 * time.Second

// jobStatus is a completed job's status as the wait commands report it: 0
// or a negative errno, as kernel drivers report job errors.
func jobStatus(err error) int32 {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return -int32(errno)
	}
	return -int32(syscall.EIO)
}

// DriverCount is how many devices of one driver a simulator starts with.
type DriverCount struct {
	Driver string
	Count  int
}

// ParseDriverMix parses a device mix, "NAME[:COUNT][,NAME[:COUNT]...]"
// (e.g. "fakedev:2,fakenpu:2"; a name alone means one device), as `sim
// --driver` takes it. Names must be known drivers, each at most once;
// counts 0 to accel.MaxDevices, and 256 devices in all at most.
func ParseDriverMix(s string) ([]DriverCount, error) {
	if s == "" {
		return nil, fmt.Errorf("empty driver list: want NAME[:COUNT][,NAME[:COUNT]...] with NAME one of %v", DriverNames())
	}
	var out []DriverCount
	total := 0
	for part := range strings.SplitSeq(s, ",") {
		name, count, hasCount := strings.Cut(part, ":")
		if _, err := lookupDriver(name); err != nil {
			return nil, fmt.Errorf("driver list %s: %w", quote(s), err)
		}
		n := 1
		if hasCount {
			v, err := strconv.Atoi(count)
			digits := strings.Trim(count, "0123456789") == "" // no sign: Atoi takes "+5" and "-0"
			if err != nil || !digits || v > accel.MaxDevices || (len(count) > 1 && count[0] == '0') {
				return nil, fmt.Errorf("driver list %s: count %s of %s: want a number from 0 to %d", quote(s), quote(count), name, accel.MaxDevices)
			}
			n = v
		}
		for _, dc := range out {
			if dc.Driver == name {
				return nil, fmt.Errorf("driver list %s: %s is named twice", quote(s), name)
			}
		}
		total += n
		out = append(out, DriverCount{Driver: name, Count: n})
	}
	if total > accel.MaxDevices {
		return nil, fmt.Errorf("driver list %s: %d devices in all, more than the %d a core has", quote(s), total, accel.MaxDevices)
	}
	return out, nil
}
