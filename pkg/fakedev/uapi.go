package fakedev

import (
	"encoding/binary"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Driver-specific commands of fakedev devices (compute node only). This
// file is their source of truth; their C declarations are in the driver's
// own header, include/uapi/fakedev_accel.h (it includes the core's
// accel.h), and a test keeps the two in step.
//
//	struct fakedev_mem_alloc { __u64 size; __u64 handle; };  // in: size; out: handle
//	struct fakedev_mem_free  { __u64 handle; };
var (
	// IoctlMemAlloc allocates device memory for the calling client:
	// _IOWR(0xAC, 0x40, struct fakedev_mem_alloc). ENOMEM when it does not
	// fit, EINVAL for size 0, ENOSPC when the client already holds
	// Config.MaxAllocations allocations (default 4096).
	IoctlMemAlloc = accel.IOWR(accel.DriverCommandBase+0, 16)
	// IoctlMemFree frees an allocation: _IOW(0xAC, 0x41, struct
	// fakedev_mem_free). EINVAL for a handle the client does not own.
	IoctlMemFree = accel.IOW(accel.DriverCommandBase+1, 8)
)

// EncodeMemAlloc builds the argument of IoctlMemAlloc.
func EncodeMemAlloc(size uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, size)
	return b
}

// DecodeMemAlloc reads the handle IoctlMemAlloc returned.
func DecodeMemAlloc(b []byte) (handle uint64) { return binary.LittleEndian.Uint64(b[8:]) }

// EncodeMemFree builds the argument of IoctlMemFree.
func EncodeMemFree(handle uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, handle)
	return b
}
