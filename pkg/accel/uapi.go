package accel

// This file is the user-space API (uAPI) of the accel core: the ioctl numbers
// and the binary layout of the info struct. It is the single source of truth;
// include/uapi/accel.h is its C rendering and a test keeps the two in step.
// accel.h holds only the core; each driver declares its commands in its own
// header that includes it, as kernel accel drivers do (fakedev:
// include/uapi/fakedev_accel.h, rendering pkg/fakedev's uapi.go).
//
// Ioctl numbers follow Linux's _IOC encoding (direction, size, type, number)
// so that FUSE forwards them to the daemon (the kernel's "restricted" ioctl
// path copies exactly _IOC_SIZE bytes in or out), which is also why every
// argument is a fixed-size struct without embedded pointers.
//
//	type   0xAC ("accel") for every command
//	0x00–0x3F  core commands, answered by every device (see IoctlInfo)
//	0x40–0x9F  driver-specific commands, routed to the device's Driver;
//	           accepted on the compute node only
//
// All integers are little-endian. Strings are NUL-padded UTF-8 in fixed
// fields and always NUL-terminated (so at most field size - 1 bytes); a
// longer string is cut at a rune boundary, never inside a UTF-8 sequence.
// A reader refuses a field without its NUL and a status it does not know
// (see Info.UnmarshalBinary) rather than guess.
//
// struct accel_info (InfoSize = 256 bytes), returned by ACCEL_IOCTL_INFO on
// either node of a device:
//
//	offset size  field            meaning
//	     0    4  size             sizeof(struct accel_info) the daemon filled (256)
//	     4    4  version          layout version (InfoVersion = 1)
//	     8    4  index            device index N (node names acN, acN_monitor)
//	    12    4  status           enum accel_status (Status)
//	    16    8  memory_total     bytes
//	    24    8  memory_used      bytes
//	    32    4  numa_node        signed; -1 when unknown
//	    36    4  flags            bit 0: compute node held (InfoFlagComputeInUse)
//	    40    4  holder_pid       signed; process holding the compute node, 0 if none
//	                              or unknown (see below)
//	    44    4  monitor_clients  open descriptions of the monitor node
//	    48    4  reset_count      completed resets since the device appeared
//	    52    4  jobs_completed   jobs the device finished (v2; wraps at 2^32)
//	    56   32  name             "acN"
//	    88   32  driver           driver name, e.g. "fakedev"
//	   120   64  model            marketing/model name
//	   184   64  serial           stable serial number (the device's identity)
//	   248    8  busy_ns          nanoseconds the device spent running jobs (v2)
//
// Version 2 gave the last reserved fields to the job engine's accounting
// (see jobs.go): a version 1 writer left them zero, and a reader of a
// version 1 struct reports 0 for both.
// holder_pid names the process (thread group, as the daemon's pid
// namespace sees it) that holds the compute file now: the opener, or a
// process that inherited the descriptor (fork, SCM_RIGHTS) and used it, or
// — once the recorded process is gone — a live process found holding a
// descriptor of the node. It is 0 when the node is free and when no live
// holder can be found (compute_in_use then still says the node is held);
// it never names a process that has exited.
//
// Versioning: fields are only ever appended (using reserved space first); a
// larger struct gets a new command number, because the size is part of the
// number. Readers check size and version before trusting later fields.
//
// Errors (errno) follow what real accel drivers return:
//
//	EBUSY   compute node already held by another open file
//	EMFILE  (open) monitor node: the process already holds its limit of open
//	        monitor files of this device, or the device its total (see Options)
//	EAGAIN  device is resetting (open, driver commands)
//	EPERM   device malfunctioning or needs a reset (compute open, driver commands);
//	        driver command sent to the monitor node
//	ENODEV  device was removed (every ioctl on a file still open)
//	ENOTTY  unknown command
//	EINVAL  malformed argument (wrong size or field values)
//	EBADF   ioctl on a file that was already released (seen only through
//	        the Go API: a process cannot use a descriptor it has closed)

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Ioctl encoding constants, as in Linux's asm-generic/ioctl.h.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30
)

// IoctlType is the _IOC type byte of every accel command.
const IoctlType = 0xAC

// Command number ranges.
const (
	// DriverCommandBase is the first command number routed to drivers.
	DriverCommandBase = 0x40
	// DriverCommandEnd is one past the last driver command number.
	DriverCommandEnd = 0xA0
)

// InfoSize is sizeof(struct accel_info).
const InfoSize = 256

// InfoVersion is the layout version this package writes: 2 added
// jobs_completed and busy_ns.
const InfoVersion = 2

// infoMinVersion is the oldest layout this package reads.
const infoMinVersion = 1

// InfoFlagComputeInUse is set in Info flags while the compute node is held.
const InfoFlagComputeInUse = 1 << 0

// Fixed string field sizes of struct accel_info.
const (
	infoNameLen   = 32
	infoDriverLen = 32
	infoModelLen  = 64
	infoSerialLen = 64
)

// IOC builds an ioctl number the way Linux's _IOC macro does.
func IOC(dir, typ, nr, size uint32) uint32 {
	return dir<<iocDirShift | size<<iocSizeShift | typ<<iocTypeShift | nr<<iocNRShift
}

// IOR is Linux's _IOR: the daemon writes size bytes back to the caller.
func IOR(nr, size uint32) uint32 { return IOC(iocRead, IoctlType, nr, size) }

// IOW is Linux's _IOW: the caller passes size bytes to the daemon.
func IOW(nr, size uint32) uint32 { return IOC(iocWrite, IoctlType, nr, size) }

// IOWR is Linux's _IOWR: size bytes travel both ways.
func IOWR(nr, size uint32) uint32 { return IOC(iocRead|iocWrite, IoctlType, nr, size) }

// IoctlInfo is ACCEL_IOCTL_INFO = _IOR(0xAC, 0x00, struct accel_info).
var IoctlInfo = IOR(0x00, InfoSize)

// IoctlNR returns the command number field of an ioctl.
func IoctlNR(cmd uint32) uint32 { return cmd >> iocNRShift & 0xff }

// IoctlTypeOf returns the type field of an ioctl.
func IoctlTypeOf(cmd uint32) uint32 { return cmd >> iocTypeShift & 0xff }

// IoctlSize returns the argument size encoded in an ioctl.
func IoctlSize(cmd uint32) uint32 { return cmd >> iocSizeShift & 0x3fff }

// Status is a device's operational status (enum accel_status).
type Status uint32

// Device statuses. Values are part of the uAPI.
const (
	StatusOperational Status = 0 // usable
	StatusInReset     Status = 1 // a reset is in progress; opens and commands get EAGAIN
	StatusMalfunction Status = 2 // broken until recovered or reset; compute opens get EPERM
	StatusNeedsReset  Status = 3 // unusable until reset; compute opens get EPERM
	StatusRemoved     Status = 4 // unplugged; every ioctl on an open file gets ENODEV
)

var statusNames = [...]string{"operational", "in_reset", "malfunction", "needs_reset", "removed"}

// String returns the status name used in JSON, logs and the C header.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("unknown(%d)", uint32(s))
}

// ParseStatus is the inverse of Status.String.
func ParseStatus(s string) (Status, error) {
	for i, n := range statusNames {
		if n == s {
			return Status(i), nil
		}
	}
	return 0, fmt.Errorf("unknown status %q (want one of %s)", s, strings.Join(statusNames[:], ", "))
}

// MarshalText implements encoding.TextMarshaler so Status is a string in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Status) UnmarshalText(b []byte) error {
	v, err := ParseStatus(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Info is the decoded struct accel_info: the fixed and dynamic facts of one
// device. JSON names are those `accel-plugin info` prints.
type Info struct {
	Name           string `json:"name"`
	Index          uint32 `json:"index"`
	Serial         string `json:"serial"`
	Driver         string `json:"driver"`
	Model          string `json:"model"`
	Status         Status `json:"status"`
	ComputeInUse   bool   `json:"compute_in_use"`
	HolderPID      int32  `json:"holder_pid"`
	MonitorClients uint32 `json:"monitor_clients"`
	MemoryTotal    uint64 `json:"memory_total"`
	MemoryUsed     uint64 `json:"memory_used"`
	NUMANode       int32  `json:"numa_node"`
	ResetCount     uint32 `json:"reset_count"`
	// JobsCompleted counts jobs finished (successfully or not); the
	// struct carries its low 32 bits.
	JobsCompleted uint64 `json:"jobs_completed"`
	// BusyTime is the time the device spent running jobs.
	BusyTime time.Duration `json:"busy_ns"`
	// NoJobAccounting is set when the info came in layout version 1, which
	// has neither jobs_completed nor busy_ns (an older daemon): they read
	// 0 then, and mean "not known", not "idle". Such an Info encodes as
	// version 1 again.
	NoJobAccounting bool `json:"-"`
}

// MarshalBinary encodes i as struct accel_info (InfoSize bytes).
func (i *Info) MarshalBinary() ([]byte, error) {
	b := make([]byte, InfoSize)
	i.encode(b)
	return b, nil
}

func (i *Info) encode(b []byte) {
	le := binary.LittleEndian
	clear(b[:InfoSize])
	le.PutUint32(b[0:], InfoSize)
	version := uint32(InfoVersion)
	if i.NoJobAccounting {
		version = 1
	}
	le.PutUint32(b[4:], version)
	le.PutUint32(b[8:], i.Index)
	le.PutUint32(b[12:], uint32(i.Status))
	le.PutUint64(b[16:], i.MemoryTotal)
	le.PutUint64(b[24:], i.MemoryUsed)
	le.PutUint32(b[32:], uint32(i.NUMANode))
	var flags uint32
	if i.ComputeInUse {
		flags |= InfoFlagComputeInUse
	}
	le.PutUint32(b[36:], flags)
	le.PutUint32(b[40:], uint32(i.HolderPID))
	le.PutUint32(b[44:], i.MonitorClients)
	le.PutUint32(b[48:], i.ResetCount)
	if !i.NoJobAccounting { // version 1 leaves both reserved (zero)
		le.PutUint32(b[52:], uint32(i.JobsCompleted))
		le.PutUint64(b[248:], uint64(max(i.BusyTime, 0)))
	}
	putString(b[56:56+infoNameLen], i.Name)
	putString(b[88:88+infoDriverLen], i.Driver)
	putString(b[120:120+infoModelLen], i.Model)
	putString(b[184:184+infoSerialLen], i.Serial)
}

// UnmarshalBinary decodes struct accel_info. It rejects a buffer whose
// size or version this package does not understand, a string field without
// its terminating NUL and a status value it does not know, each with an
// error naming the field; i is left unchanged then.
func (i *Info) UnmarshalBinary(b []byte) error {
	le := binary.LittleEndian
	if len(b) < 8 {
		return fmt.Errorf("accel info: %d bytes, want %d", len(b), InfoSize)
	}
	size, version := le.Uint32(b[0:]), le.Uint32(b[4:])
	if size < InfoSize || len(b) < InfoSize {
		return fmt.Errorf("accel info: size %d (buffer %d), want at least %d", size, len(b), InfoSize)
	}
	if version < infoMinVersion {
		return fmt.Errorf("accel info: version %d, want at least %d", version, infoMinVersion)
	}
	status := Status(le.Uint32(b[12:]))
	if status > StatusRemoved {
		return fmt.Errorf("accel info: unknown status %d (this reader knows 0-%d: %s)", uint32(status), uint32(StatusRemoved), strings.Join(statusNames[:], ", "))
	}
	var strs [4]string
	for n, f := range []struct {
		name     string
		off, len int
	}{{"name", 56, infoNameLen}, {"driver", 88, infoDriverLen}, {"model", 120, infoModelLen}, {"serial", 184, infoSerialLen}} {
		s, err := getString(b[f.off : f.off+f.len])
		if err != nil {
			return fmt.Errorf("accel info: %s field (offset %d): %w", f.name, f.off, err)
		}
		strs[n] = s
	}
	*i = Info{
		Index:          le.Uint32(b[8:]),
		Status:         status,
		MemoryTotal:    le.Uint64(b[16:]),
		MemoryUsed:     le.Uint64(b[24:]),
		NUMANode:       int32(le.Uint32(b[32:])),
		ComputeInUse:   le.Uint32(b[36:])&InfoFlagComputeInUse != 0,
		HolderPID:      int32(le.Uint32(b[40:])),
		MonitorClients: le.Uint32(b[44:]),
		ResetCount:     le.Uint32(b[48:]),
		Name:           strs[0],
		Driver:         strs[1],
		Model:          strs[2],
		Serial:         strs[3],
	}
	if version >= 2 {
		i.JobsCompleted = uint64(le.Uint32(b[52:]))
		i.BusyTime = time.Duration(min(le.Uint64(b[248:]), 1<<63-1))
	} else {
		i.NoJobAccounting = true
	}
	return nil
}

// putString copies s into a fixed field, truncating so a NUL always ends
// it. A cut never splits a UTF-8 sequence: it falls before the rune that
// would not fit.
func putString(dst []byte, s string) {
	n := len(s)
	if n > len(dst)-1 {
		n = len(dst) - 1
		// Step back to the start of the rune at the cut (at most
		// utf8.UTFMax-1 bytes) and drop it if it does not fit whole.
		for j := n; j > 0 && j > n-utf8.UTFMax; j-- {
			if utf8.RuneStart(s[j]) {
				if r, size := utf8.DecodeRuneInString(s[j:]); r != utf8.RuneError || size > 1 {
					if j+size > n {
						n = j
					}
				}
				break
			}
		}
	}
	copy(dst, s[:n])
	clear(dst[n:])
}

// getString returns the NUL-terminated string of a fixed field.
func getString(b []byte) (string, error) {
	n := bytes.IndexByte(b, 0)
	if n < 0 {
		return "", fmt.Errorf("no terminating NUL within its %d bytes", len(b))
	}
	return string(b[:n]), nil
}
