package accel

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"
)

// File is one open file description of a device node, the core's side of
// what the kernel calls struct file. Every descriptor that refers to it
// (dup, fork) shares it; the core learns of the last close through Release.
//
// Rules the core enforces here:
//   - the compute node has at most one open File at a time; a second Open
//     gets EBUSY until the holder is released;
//   - the monitor node has up to Options.MonitorOpensPerDevice open Files,
//     at most Options.MonitorOpensPerProcess of them opened by one process;
//     the next monitor open fails with EMFILE until one is released (the
//     count follows the process that opened the file, also after it passed
//     the descriptor on by fork or SCM_RIGHTS);
//   - compute opens are refused with EAGAIN while the device resets, EPERM
//     while it is malfunctioning or needs a reset, and ENODEV once it is
//     removed;
//   - driver-specific commands are accepted on the compute node only;
//   - a released file answers every ioctl with EBADF, and the driver never
//     sees it again: Release waits for commands in flight on the file and
//     only then calls the driver's Release.
type File struct {
	dev    *Device
	kind   NodeKind
	opener int32 // the process that opened it: what the monitor limits count

	// use is held shared by each ioctl for as long as it runs and
	// exclusively by Release while it marks the file closed, so no command
	// runs on a released file.
	use sync.RWMutex

	// Guarded by dev.mu.
	pid       int32     // the process holding it now (see SetPID)
	flushedAt time.Time // when a descriptor was last closed with no activity since; zero if none
	closed    bool

	// Private belongs to the driver: per-client state set in Driver.Open.
	Private any
}

// Device returns the file's device.
func (f *File) Device() *Device { return f.dev }

// Kind returns which node the file was opened on.
func (f *File) Kind() NodeKind { return f.kind }

// PID returns the process that holds the file now: the one that opened
// it unless SetPID recorded another.
func (f *File) PID() int32 {
	f.dev.mu.Lock()
	defer f.dev.mu.Unlock()
	return f.pid
}

// SetPID records that process pid (0: unknown) holds f now, as the node's
// exposure learns when a descriptor passed on by fork or SCM_RIGHTS is
// used by another process, or finds the opener gone. It is what Info
// reports as holder_pid. The monitor limits keep counting f against the
// process that opened it.
func (f *File) SetPID(pid int32) {
	f.dev.mu.Lock()
	f.pid = pid
	f.dev.mu.Unlock()
}

// Holder returns the open compute file of d, or nil when the compute node
// is free.
func (d *Device) Holder() *File {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.holder
}

// Open opens the device's compute or monitor node on behalf of process pid.
//
// A compute open that finds the node held waits for the holder's release,
// but only if the holder has announced its end through Flush, and only
// until the registry's ReleaseGrace has passed since that Flush: with FUSE
// the kernel queues the release before close() returns, but the daemon
// handles it in its own goroutine, which a loaded machine may not run for
// a while, so a client that closes and reopens at once (or passes the node
// to another process) would otherwise see a spurious EBUSY. A holder that
// still has descriptors open after a Flush (dup, fork) keeps the node: the
// waiting open gets EBUSY once the grace since the Flush is over, and an
// open that comes later gets it at once.
func (d *Device) Open(ctx context.Context, kind NodeKind, pid int32) (*File, error) {
	f := &File{dev: d, kind: kind, opener: pid, pid: pid}
	d.mu.Lock()
	if kind == NodeMonitor {
		if d.status == StatusRemoved {
			d.mu.Unlock()
			return nil, syscall.ENODEV
		}
		if err := d.monitorLimitLocked(pid); err != nil {
			return nil, err // d.mu released
		}
		d.monitors++
		if d.monitorsOf == nil {
			d.monitorsOf = make(map[int32]int)
		}
		d.monitorsOf[pid]++
		d.open++
		d.mu.Unlock()
		return f, nil
	}

	for {
		switch d.status {
		case StatusRemoved:
			d.mu.Unlock()
			return nil, syscall.ENODEV
		case StatusInReset:
			d.mu.Unlock()
			return nil, syscall.EAGAIN
		case StatusMalfunction, StatusNeedsReset:
			d.mu.Unlock()
			return nil, syscall.EPERM
		}
		if d.holder == nil {
			break
		}
		flushed := d.holder.flushedAt
		left := time.Until(flushed.Add(d.reg.opts.ReleaseGrace))
		if flushed.IsZero() || left <= 0 {
			holderPID := d.holder.pid
			d.mu.Unlock()
			if !flushed.IsZero() {
				d.reg.log.Debug("compute open refused (EBUSY): the holder closed a descriptor but was not released within the grace",
					"device", d.name, "pid", pid, "holder", holderPID, "since_close", time.Since(flushed), "grace", d.reg.opts.ReleaseGrace)
			}
			return nil, syscall.EBUSY
		}
		if d.released == nil {
			d.released = make(chan struct{})
		}
		wait := d.released
		d.mu.Unlock()
		if err := waitRelease(ctx, wait, left); err != nil {
			return nil, err
		}
		d.mu.Lock()
	}
	d.holder = f
	d.open++
	d.mu.Unlock()

	if err := d.drv.Open(f); err != nil {
		d.mu.Lock()
		f.closed = true
		d.mu.Unlock()
		d.releaseMemory(f)
		d.dropFile(f)
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return nil, errno
		}
		return nil, syscall.EIO
	}
	return f, nil
}

// waitRelease waits for released to be closed, for at most d. It returns
// nil when it was (or the time ran out: the caller checks again) and EINTR
// when ctx ends first.
func waitRelease(ctx context.Context, released <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-released:
	case <-t.C:
	case <-ctx.Done():
		return syscall.EINTR
	}
	return nil
}

// monitorLimitLocked checks the monitor limits for one more open by pid.
// On refusal it unlocks d.mu, logs (once per process until its count drops
// again) and returns EMFILE; otherwise d.mu stays held.
func (d *Device) monitorLimitLocked(pid int32) error {
	opts := &d.reg.opts
	var reason string
	var limit int
	switch {
	case d.monitorsOf[pid] >= opts.MonitorOpensPerProcess:
		reason, limit = "per-process limit of open monitor files reached", opts.MonitorOpensPerProcess
	case d.monitors >= opts.MonitorOpensPerDevice:
		reason, limit = "per-device limit of open monitor files reached", opts.MonitorOpensPerDevice
	default:
		return nil
	}
	first := !d.limited[pid]
	if first {
		if d.limited == nil {
			d.limited = make(map[int32]bool)
		}
		d.limited[pid] = true
	}
	d.mu.Unlock()
	if first {
		d.reg.log.Warn("monitor open refused (EMFILE)", "device", d.name, "pid", pid, "reason", reason, "limit", limit)
	}
	return syscall.EMFILE
}

// Flush records that a descriptor of f was closed. The kernel sends it on
// every close(); the release follows only after the last one. Until f shows
// activity again (an ioctl), a competing compute open waits for the
// release, until ReleaseGrace after the latest Flush, instead of failing
// at once.
func (f *File) Flush() {
	f.dev.mu.Lock()
	f.flushedAt = time.Now()
	f.dev.mu.Unlock()
}

// Release closes f: its last descriptor is gone. It is idempotent; it
// waits for ioctls in flight on f to return, and the driver's Release runs
// exactly once, after them and before the node can be reopened.
func (f *File) Release() {
	d := f.dev
	f.use.Lock()
	d.mu.Lock()
	if f.closed {
		d.mu.Unlock()
		f.use.Unlock()
		return
	}
	f.closed = true
	d.mu.Unlock()
	f.use.Unlock()
	if f.kind == NodeCompute {
		d.releaseJobs(f)
		d.drv.Release(f)
		d.releaseMemory(f)
	}
	d.dropFile(f)
}

// isClosed reports whether f was released.
func (f *File) isClosed() bool {
	f.dev.mu.Lock()
	defer f.dev.mu.Unlock()
	return f.closed
}

// dropFile removes a closed f from the device's open-file bookkeeping and
// frees the index once a removed device has no open file left.
func (d *Device) dropFile(f *File) {
	d.mu.Lock()
	if f.kind == NodeMonitor {
		d.monitors--
		if d.monitorsOf[f.opener]--; d.monitorsOf[f.opener] <= 0 {
			delete(d.monitorsOf, f.opener)
		}
		clear(d.limited) // below a limit again: the next refusal is logged
	} else if d.holder == f {
		d.holder = nil
		d.wakeWaitersLocked()
	}
	d.open--
	gone := d.open == 0 && d.status == StatusRemoved
	d.mu.Unlock()
	if gone {
		d.reg.free(d)
	}
}

// Ioctl runs command cmd on f. in holds the caller's argument bytes and
// out (sized from cmd) receives the reply. Errors are syscall.Errno values
// as documented in uapi.go; a released f gets EBADF (and never reaches the
// driver).
func (f *File) Ioctl(cmd uint32, in, out []byte) error {
	f.use.RLock()
	defer f.use.RUnlock()
	d := f.dev
	d.mu.Lock()
	if f.closed {
		d.mu.Unlock()
		return syscall.EBADF
	}
	status := d.status
	f.flushedAt = time.Time{}
	d.mu.Unlock()
	if status == StatusRemoved {
		return syscall.ENODEV
	}
	if IoctlTypeOf(cmd) != IoctlType {
		return syscall.ENOTTY
	}
	nr := IoctlNR(cmd)
	switch {
	case nr == IoctlNR(IoctlInfo):
		if cmd != IoctlInfo || len(out) != InfoSize {
			return syscall.EINVAL
		}
		info := d.Info()
		info.encode(out)
		return nil
	case nr < DriverCommandBase || nr >= DriverCommandEnd:
		return syscall.ENOTTY
	case f.kind != NodeCompute:
		return syscall.EPERM
	case status == StatusInReset:
		return syscall.EAGAIN
	case status != StatusOperational:
		return syscall.EPERM
	}
	return d.drv.Command(f, cmd, in, out)
}
