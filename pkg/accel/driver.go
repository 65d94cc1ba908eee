package accel

import "context"

// Identity holds a device's fixed facts, reported once by its driver at
// registration. Serial is the device's identity everywhere: node info,
// events, logs and (in the device plugin) Kubernetes device IDs.
type Identity struct {
	Driver      string
	Model       string
	Serial      string
	MemoryTotal uint64
	NUMANode    int // -1 when unknown
	// MaxBuffers caps the buffers one client holds at once (default
	// DefaultMaxBuffers); see Device.Alloc.
	MaxBuffers int
}

// Driver is the ops table a device driver gives the core at probe time.
//
// The core calls these methods without holding its own locks, so a driver
// may call back into its Device (for example SetStatus). Device memory and
// jobs are the core's: a driver allocates buffers (Device.Alloc) and
// submits work (Device.Submit) from its commands. Open and Release
// are called for the compute node only: monitor clients are the core's
// business and never reach the driver.
type Driver interface {
	// Identity returns the device's fixed facts.
	Identity() Identity
	// Open is called after the core granted f the compute node; an error
	// (preferably a syscall.Errno) refuses the open.
	Open(f *File) error
	// Release is called when the last descriptor of f is closed, before
	// another client can open the compute node, and after f's jobs ended
	// (see Device.Submit). It frees what the driver keeps for f; the core
	// then frees f's buffers.
	Release(f *File)
	// Command runs a driver-specific ioctl (numbers DriverCommandBase up to
	// DriverCommandEnd) on the compute file f. in holds the caller's
	// argument and out, pre-sized from the command number, receives the
	// reply. Unknown commands return ENOTTY, malformed ones EINVAL.
	Command(f *File, cmd uint32, in, out []byte) error
	// Reset brings the hardware back to a known state. The core has set
	// the status to in_reset before calling it and sets operational (or
	// malfunction, on error) afterwards.
	Reset(ctx context.Context) error
}
