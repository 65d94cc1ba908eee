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
//	struct fakedev_mem_alloc { __u64 size; __u64 handle; };           // in: size; out: handle
//	struct fakedev_mem_free  { __u64 handle; };
//	struct fakedev_mem_map   { __u64 handle; __u64 offset; __u64 size; }; // in: handle; out: offset, size
//	struct fakedev_job       { __u32 op; __u32 flags; __u64 src0; __u64 src1; __u64 dst;
//	                           __u64 count; __u64 seq; };                 // out: seq
//	struct fakedev_job_wait  { __u64 seq; __s64 timeout_ns; __s32 status; __u32 pad;
//	                           __u64 result; __u64 run_ns; };             // out: status, result, run_ns
var (
	// IoctlMemAlloc allocates device memory for the calling client:
	// _IOWR(0xAC, 0x40, struct fakedev_mem_alloc). The size is rounded up
	// to whole pages (what memory_used counts). ENOMEM when it does not
	// fit, EINVAL for size 0, ENOSPC when the client already holds
	// Config.MaxAllocations allocations (default 4096).
	IoctlMemAlloc = accel.IOWR(accel.DriverCommandBase+0, 16)
	// IoctlMemFree frees an allocation: _IOW(0xAC, 0x41, struct
	// fakedev_mem_free). EINVAL for a handle the client does not hold
	// (freed already, another client's, never made).
	IoctlMemFree = accel.IOW(accel.DriverCommandBase+1, 8)
	// IoctlMemMap returns where an allocation is in the compute node's
	// mapping space: _IOWR(0xAC, 0x42, struct fakedev_mem_map). mmap the
	// compute node at offset (size bytes, MAP_SHARED) to read and write
	// the allocation. ENOENT for a handle the client does not hold.
	IoctlMemMap = accel.IOWR(accel.DriverCommandBase+2, 24)
	// IoctlJobSubmit queues a job: _IOWR(0xAC, 0x43, struct fakedev_job).
	// count is in 32-bit words; each buffer the op uses must hold count
	// words. EINVAL for an unknown op, flags other than 0, count 0 or
	// past a buffer's end, ENOENT for a handle the client does not hold,
	// ENOSPC when the client has accel.MaxJobsPerFile jobs it has not
	// waited for.
	IoctlJobSubmit = accel.IOWR(accel.DriverCommandBase+3, 48)
	// IoctlJobWait waits for a job: _IOWR(0xAC, 0x44, struct
	// fakedev_job_wait). The job's own outcome is in status (0, or
	// -EIO when the device was not operational, -ECANCELED); the ioctl
	// fails with ETIMEDOUT when the job is not done within timeout_ns (at
	// most MaxWaitTimeout; it stays waitable) and EINVAL for a job the
	// client has not submitted or already waited for.
	IoctlJobWait = accel.IOWR(accel.DriverCommandBase+4, 40)
)

// Job operations of IoctlJobSubmit.
const (
	// OpAddU32: dst[i] = src0[i] + src1[i] (mod 2^32) for count words.
	OpAddU32 = 1
	// OpChecksum: result = the sum (mod 2^64) of the count words of src0;
	// src1 and dst are not used (0).
	OpChecksum = 2
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

// EncodeMemMap builds the argument of IoctlMemMap.
func EncodeMemMap(handle uint64) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint64(b, handle)
	return b
}

// DecodeMemMap reads the offset and size IoctlMemMap returned.
func DecodeMemMap(b []byte) (offset, size uint64) {
	return binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])
}

// JobArgs is struct fakedev_job.
type JobArgs struct {
	Op, Flags       uint32
	Src0, Src1, Dst uint64 // handles
	Count           uint64 // 32-bit words
	Seq             uint64 // out
}

// Encode builds the argument of IoctlJobSubmit.
func (j JobArgs) Encode() []byte {
	b := make([]byte, 48)
	le := binary.LittleEndian
	le.PutUint32(b[0:], j.Op)
	le.PutUint32(b[4:], j.Flags)
	le.PutUint64(b[8:], j.Src0)
	le.PutUint64(b[16:], j.Src1)
	le.PutUint64(b[24:], j.Dst)
	le.PutUint64(b[32:], j.Count)
	le.PutUint64(b[40:], j.Seq)
	return b
}

// DecodeJobArgs reads struct fakedev_job.
func DecodeJobArgs(b []byte) JobArgs {
	le := binary.LittleEndian
	return JobArgs{Op: le.Uint32(b[0:]), Flags: le.Uint32(b[4:]), Src0: le.Uint64(b[8:]), Src1: le.Uint64(b[16:]),
		Dst: le.Uint64(b[24:]), Count: le.Uint64(b[32:]), Seq: le.Uint64(b[40:])}
}

// WaitArgs is struct fakedev_job_wait (and fakenpu's wait, which has the
// same layout).
type WaitArgs struct {
	Seq       uint64
	TimeoutNS int64
	Status    int32  // out: 0 or -errno
	Result    uint64 // out
	RunNS     uint64 // out
}

// Encode builds the argument of IoctlJobWait.
func (w WaitArgs) Encode() []byte {
	b := make([]byte, 40)
	le := binary.LittleEndian
	le.PutUint64(b[0:], w.Seq)
	le.PutUint64(b[8:], uint64(w.TimeoutNS))
	le.PutUint32(b[16:], uint32(w.Status))
	le.PutUint64(b[24:], w.Result)
	le.PutUint64(b[32:], w.RunNS)
	return b
}

// DecodeWaitArgs reads struct fakedev_job_wait.
func DecodeWaitArgs(b []byte) WaitArgs {
	le := binary.LittleEndian
	return WaitArgs{Seq: le.Uint64(b[0:]), TimeoutNS: int64(le.Uint64(b[8:])), Status: int32(le.Uint32(b[16:])),
		Result: le.Uint64(b[24:]), RunNS: le.Uint64(b[32:])}
}
