package fakedev

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// DriverName is what fakedev devices report as their driver.
const DriverName = "fakedev"

// Device is one simulated accelerator: the accel.Driver of one registered
// device.
type Device struct {
	slot          int
	id            accel.Identity
	resetDuration time.Duration
	maxAllocs     int

	mu         sync.Mutex
	used       uint64
	nextHandle uint64
	allocs     map[*accel.File]map[uint64]uint64 // per client: handle → size
}

var _ accel.Driver = (*Device)(nil)

func newDevice(cfg Config, slot int) *Device {
	return &Device{
		slot:          slot,
		resetDuration: cfg.ResetDuration,
		maxAllocs:     cfg.MaxAllocations,
		allocs:        make(map[*accel.File]map[uint64]uint64),
		id: accel.Identity{
			Driver:      DriverName,
			Model:       cfg.Model,
			Serial:      Serial(cfg.Seed, slot),
			MemoryTotal: cfg.MemoryTotal,
			NUMANode:    slot % cfg.NUMANodes,
		},
	}
}

// Slot returns the simulated bus slot, which (with the seed) determines the
// serial. Slots are never reused within one simulator run.
func (d *Device) Slot() int { return d.slot }

// Identity implements accel.Driver.
func (d *Device) Identity() accel.Identity { return d.id }

// Open implements accel.Driver: a compute client gets an empty context.
func (d *Device) Open(f *accel.File) error {
	d.mu.Lock()
	d.allocs[f] = make(map[uint64]uint64)
	d.mu.Unlock()
	return nil
}

// Release implements accel.Driver: the client's memory is freed.
func (d *Device) Release(f *accel.File) {
	d.mu.Lock()
	for _, size := range d.allocs[f] {
		d.used -= size
	}
	delete(d.allocs, f)
	d.mu.Unlock()
}

// MemoryUsed implements accel.Driver.
func (d *Device) MemoryUsed() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.used
}

// Command implements accel.Driver. Every argument is checked before it
// reaches the device's state: EINVAL for a wrong argument size, size 0 or
// a handle the client does not own; ENOMEM for an allocation that does not
// fit the device's free memory (so memory_used never exceeds memory_total
// and never wraps); ENOSPC when the client already holds MaxAllocations
// allocations; EBADF for a file the driver never opened or already
// released; ENOTTY for any other command.
func (d *Device) Command(f *accel.File, cmd uint32, in, out []byte) error {
	le := binary.LittleEndian
	switch cmd {
	case IoctlMemAlloc:
		if len(in) != 16 || len(out) != 16 {
			return syscall.EINVAL
		}
		size := le.Uint64(in)
		if size == 0 {
			return syscall.EINVAL
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		allocs, ok := d.allocs[f]
		switch {
		case !ok:
			return syscall.EBADF
		case size > d.id.MemoryTotal-d.used:
			return syscall.ENOMEM
		case len(allocs) >= d.maxAllocs:
			return syscall.ENOSPC
		}
		d.nextHandle++
		d.used += size
		allocs[d.nextHandle] = size
		copy(out, in)
		le.PutUint64(out[8:], d.nextHandle)
		return nil
	case IoctlMemFree:
		if len(in) != 8 {
			return syscall.EINVAL
		}
		h := le.Uint64(in)
		d.mu.Lock()
		defer d.mu.Unlock()
		allocs, ok := d.allocs[f]
		if !ok {
			return syscall.EBADF
		}
		size, ok := allocs[h]
		if !ok {
			return syscall.EINVAL
		}
		delete(allocs, h)
		d.used -= size
		return nil
	}
	return syscall.ENOTTY
}

// Reset implements accel.Driver: the simulated hardware takes
// ResetDuration to come back.
func (d *Device) Reset(ctx context.Context) error {
	t := time.NewTimer(d.resetDuration)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("reset interrupted: %w", ctx.Err())
	}
}
