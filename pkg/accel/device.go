package accel

import (
	"context"
	"fmt"
	"sync"
	"syscall"
)

// Device is one registered accelerator: its index and names, its driver,
// and the common attributes the core keeps for every device (status, reset
// count) together with the state of its open files.
type Device struct {
	reg   *Registry
	index int
	name  string
	id    Identity
	drv   Driver
	mem   *memory
	eng   engine

	mu         sync.Mutex
	status     Status
	resetCount uint32
	resetting  bool
	holder     *File          // open compute file, nil if none
	released   chan struct{}  // closed when holder releases; made by the first waiter
	monitors   int            // open monitor files
	monitorsOf map[int32]int  // open monitor files by opening process
	limited    map[int32]bool // processes refused since their count was last below the limit (logged once)
	open       int            // all open files, for index reuse
}

// Index returns the device index N.
func (d *Device) Index() int { return d.index }

// Name returns the compute node name, "acN".
func (d *Device) Name() string { return d.name }

// MonitorName returns the monitor node name, "acN_monitor".
func (d *Device) MonitorName() string { return MonitorName(d.index) }

// Identity returns the fixed facts the driver reported.
func (d *Device) Identity() Identity { return d.id }

// Driver returns the device's driver.
func (d *Device) Driver() Driver { return d.drv }

// Status returns the current status.
func (d *Device) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// Info returns the device's info, as the info ioctl reports it.
func (d *Device) Info() Info {
	d.mu.Lock()
	info := Info{
		Name:           d.name,
		Index:          uint32(d.index),
		Serial:         d.id.Serial,
		Driver:         d.id.Driver,
		Model:          d.id.Model,
		Status:         d.status,
		MonitorClients: uint32(d.monitors),
		MemoryTotal:    d.id.MemoryTotal,
		NUMANode:       int32(d.id.NUMANode),
		ResetCount:     d.resetCount,
	}
	if d.holder != nil {
		info.ComputeInUse = true
		info.HolderPID = d.holder.pid
	}
	d.mu.Unlock()
	info.MemoryUsed = d.MemoryUsed()
	busy, jobs := d.Usage()
	info.BusyTime, info.JobsCompleted = busy, jobs
	return info
}

// SetStatus changes the device status, as a driver does when it detects a
// fault or recovers, and emits an EventStatus when it changed. Removed is
// reached only through Registry.Unregister and is final. While Reset runs
// the reset decides the status: SetStatus fails with EAGAIN.
func (d *Device) SetStatus(s Status) error {
	if s == StatusRemoved {
		return fmt.Errorf("set status of %s: use Registry.Unregister to remove a device: %w", d.name, syscall.EINVAL)
	}
	if s > StatusRemoved {
		return fmt.Errorf("set status of %s: unknown status %d: %w", d.name, s, syscall.EINVAL)
	}
	return d.setStatus(s, func() error {
		if d.resetting {
			return fmt.Errorf("set status of %s: a reset is in progress: %w", d.name, syscall.EAGAIN)
		}
		return nil
	})
}

// setStatus applies s (after update, if any, under the device lock; an
// error from update cancels the change) and publishes the change in order
// with every other change.
func (d *Device) setStatus(s Status, update func() error) error {
	r := d.reg
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	d.mu.Lock()
	if d.status == StatusRemoved {
		d.mu.Unlock()
		return fmt.Errorf("%s: %w", d.name, syscall.ENODEV)
	}
	if update != nil {
		if err := update(); err != nil {
			d.mu.Unlock()
			return err
		}
	}
	old := d.status
	d.status = s
	d.mu.Unlock()
	if old != s {
		r.log.Info("device status changed", "device", d.name, "serial", d.id.Serial, "from", old.String(), "to", s.String())
		r.publishLocked(d.event(EventStatus, s))
	}
	return nil
}

// Reset resets the device: its status goes to in_reset while the driver
// works, then back to operational with the reset count incremented (or to
// malfunction if the driver fails). A reset already in progress makes a
// second one fail with EAGAIN. A compute client keeps its open file; its
// commands get EAGAIN during the reset.
func (d *Device) Reset(ctx context.Context) error {
	d.mu.Lock()
	switch {
	case d.status == StatusRemoved:
		d.mu.Unlock()
		return fmt.Errorf("reset %s: %w", d.name, syscall.ENODEV)
	case d.resetting:
		d.mu.Unlock()
		return fmt.Errorf("reset %s: a reset is already in progress: %w", d.name, syscall.EAGAIN)
	}
	d.resetting = true
	d.mu.Unlock()
	// The reset ends in the same step as its final status, so a status
	// change is refused exactly while the reset decides the status.
	done := func() error { d.resetting = false; return nil }
	defer func() { // the early returns
		d.mu.Lock()
		d.resetting = false
		d.mu.Unlock()
	}()

	if err := d.setStatus(StatusInReset, nil); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	if err := d.drv.Reset(ctx); err != nil {
		_ = d.setStatus(StatusMalfunction, done)
		return fmt.Errorf("reset %s: %w", d.name, err)
	}
	if err := d.setStatus(StatusOperational, func() error { d.resetCount++; return done() }); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	return nil
}

func (d *Device) event(t EventType, s Status) Event {
	return Event{Type: t, Name: d.name, Index: d.index, Serial: d.id.Serial, Status: s}
}

// wakeWaitersLocked wakes opens waiting for the holder's release.
func (d *Device) wakeWaitersLocked() {
	if d.released != nil {
		close(d.released)
		d.released = nil
	}
}
