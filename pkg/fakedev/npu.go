package fakedev

import (
	"encoding/binary"
	"fmt"
	"math"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// NPUDriverName is what fakenpu devices report as their driver: a
// simulated DNN engine, shaped like the NPU drivers of the kernel's accel
// subsystem (ivpu, amdxdna): a parameter query for the engine's own facts,
// buffer objects with u32 handles and an info query for their mmap offset,
// and inference jobs over int8 tensors.
const NPUDriverName = "fakenpu"

// Commands of fakenpu devices (compute node only). Their numbers are
// disjoint from fakedev's, so that on a mixed node a command sent to the
// other driver's device is ENOTTY rather than a different command; their
// C declarations are in include/uapi/fakenpu_accel.h, which a test keeps
// in step.
//
//	struct fakenpu_get_param { __u32 param; __u32 pad; __u64 value; };        // out: value
//	struct fakenpu_bo_create { __u64 size; __u32 flags; __u32 handle; };      // out: handle
//	struct fakenpu_bo_info   { __u32 handle; __u32 pad; __u64 mmap_offset; __u64 size; }; // out: offset, size
//	struct fakenpu_bo_close  { __u32 handle; __u32 pad; };
//	struct fakenpu_infer     { __u32 input; __u32 weights; __u32 output; __u32 flags;
//	                           __u32 rows; __u32 cols; __u64 seq; };           // out: seq
//	struct fakenpu_wait      { same layout as struct fakedev_job_wait };
var (
	// IoctlNPUGetParam reads one of the engine's facts (NPUParam*):
	// _IOWR(0xAC, 0x60, struct fakenpu_get_param). EINVAL for an unknown
	// param.
	IoctlNPUGetParam = accel.IOWR(accel.DriverCommandBase+0x20, 16)
	// IoctlNPUBOCreate makes a buffer object: _IOWR(0xAC, 0x61, struct
	// fakenpu_bo_create). EINVAL for size 0 or flags other than 0, ENOMEM
	// when it does not fit, ENOSPC past the client's limit of buffers.
	IoctlNPUBOCreate = accel.IOWR(accel.DriverCommandBase+0x21, 16)
	// IoctlNPUBOInfo returns a buffer object's mmap offset and size:
	// _IOWR(0xAC, 0x62, struct fakenpu_bo_info). ENOENT for a handle the
	// client does not hold.
	IoctlNPUBOInfo = accel.IOWR(accel.DriverCommandBase+0x22, 24)
	// IoctlNPUBOClose frees a buffer object: _IOW(0xAC, 0x63, struct
	// fakenpu_bo_close). EINVAL for a handle the client does not hold.
	IoctlNPUBOClose = accel.IOW(accel.DriverCommandBase+0x23, 8)
	// IoctlNPUInfer queues a fully connected layer with ReLU:
	// output[r] = max(0, sum over c of weights[r*cols+c] * input[c]), with
	// int8 input (cols bytes) and weights (rows*cols bytes) and int32
	// output (rows words): _IOWR(0xAC, 0x64, struct fakenpu_infer). EINVAL
	// for rows or cols 0 or above NPUMaxDim, flags other than 0, or a
	// buffer too small; ENOENT for a handle the client does not hold;
	// ENOSPC past accel.MaxJobsPerFile jobs not waited for.
	IoctlNPUInfer = accel.IOWR(accel.DriverCommandBase+0x24, 32)
	// IoctlNPUWait waits for an inference: _IOWR(0xAC, 0x65, struct
	// fakenpu_wait), with the errors of fakedev's IoctlJobWait.
	IoctlNPUWait = accel.IOWR(accel.DriverCommandBase+0x25, 40)
)

// Parameters of IoctlNPUGetParam.
const (
	// NPUParamTiles is the number of compute tiles.
	NPUParamTiles = 1
	// NPUParamMACsPerSecond is the engine's int8 multiply-accumulate rate.
	NPUParamMACsPerSecond = 2
	// NPUParamMaxDim is the largest rows and cols an inference takes.
	NPUParamMaxDim = 3
)

// NPUTiles is how many tiles a simulated NPU reports.
const NPUTiles = 4

// NPUMaxDim is the largest rows and cols of one inference.
const NPUMaxDim = 1 << 16

// npuCommand runs the commands of the DNN engine driver.
func npuCommand(d *Device, f *accel.File, cmd uint32, in, out []byte) error {
	le := binary.LittleEndian
	dev := f.Device()
	switch cmd {
	case IoctlNPUGetParam:
		if len(in) != 16 || len(out) != 16 {
			return syscall.EINVAL
		}
		var v uint64
		switch p := le.Uint32(in); p {
		case NPUParamTiles:
			v = NPUTiles
		case NPUParamMACsPerSecond:
			v = uint64(d.throughput) // one MAC reads one weight byte
		case NPUParamMaxDim:
			v = NPUMaxDim
		default:
			return fmt.Errorf("unknown param %d: %w", p, syscall.EINVAL)
		}
		copy(out, in[:8])
		le.PutUint64(out[8:], v)
		return nil
	case IoctlNPUBOCreate:
		if len(in) != 16 || len(out) != 16 {
			return syscall.EINVAL
		}
		if flags := le.Uint32(in[8:]); flags != 0 {
			return fmt.Errorf("bo flags %#x: none are defined: %w", flags, syscall.EINVAL)
		}
		b, err := dev.Alloc(f, le.Uint64(in))
		if err != nil {
			return err
		}
		if b.Handle() > math.MaxUint32 {
			_ = dev.Free(f, b.Handle())
			return fmt.Errorf("the device has handed out every 32-bit handle: %w", syscall.ENOSPC)
		}
		copy(out, in[:12])
		le.PutUint32(out[12:], uint32(b.Handle()))
		return nil
	case IoctlNPUBOInfo:
		if len(in) != 24 || len(out) != 24 {
			return syscall.EINVAL
		}
		b, err := dev.LookupBuffer(f, uint64(le.Uint32(in)))
		if err != nil {
			return err
		}
		mapReply(out, in, b)
		return nil
	case IoctlNPUBOClose:
		if len(in) != 8 {
			return syscall.EINVAL
		}
		return dev.Free(f, uint64(le.Uint32(in)))
	case IoctlNPUInfer:
		if len(in) != 32 || len(out) != 32 {
			return syscall.EINVAL
		}
		a := DecodeInferArgs(in)
		seq, err := d.submit(f, func() (accel.Job, error) { return d.inferJob(f, a) })
		if err != nil {
			return err
		}
		a.Seq = seq
		copy(out, a.Encode())
		return nil
	case IoctlNPUWait:
		return wait(f, in, out)
	}
	return syscall.ENOTTY
}

// inferJob checks an inference's arguments and builds its job.
func (d *Device) inferJob(f *accel.File, a InferArgs) (accel.Job, error) {
	switch {
	case a.Flags != 0:
		return accel.Job{}, fmt.Errorf("infer flags %#x: none are defined: %w", a.Flags, syscall.EINVAL)
	case a.Rows == 0 || a.Cols == 0 || a.Rows > NPUMaxDim || a.Cols > NPUMaxDim:
		return accel.Job{}, fmt.Errorf("infer %dx%d: rows and cols must be 1 to %d: %w", a.Rows, a.Cols, NPUMaxDim, syscall.EINVAL)
	}
	rows, cols := uint64(a.Rows), uint64(a.Cols)
	var bufs [3]*accel.Buffer
	for i, need := range []struct {
		what   string
		handle uint32
		bytes  uint64
	}{{"input", a.Input, cols}, {"weights", a.Weights, rows * cols}, {"output", a.Output, rows * 4}} {
		b, err := f.Device().LookupBuffer(f, uint64(need.handle))
		if err != nil {
			return accel.Job{}, fmt.Errorf("%s: %w", need.what, err)
		}
		if b.Size() < need.bytes {
			return accel.Job{}, fmt.Errorf("%s buffer %d holds %d bytes, a %dx%d layer needs %d: %w", need.what, need.handle, b.Size(), rows, cols, need.bytes, syscall.EINVAL)
		}
		bufs[i] = b
	}
	return accel.Job{
		Reads: bufs[:2], Writes: bufs[2:], Duration: d.jobDuration(rows * cols),
		Run: func() (uint64, error) {
			return 0, accel.AccessBuffers(bufs[:], func(m [][]byte) error {
				x, w, y := m[0], m[1], m[2]
				for r := uint64(0); r < rows; r++ {
					var acc int64
					row := w[r*cols : (r+1)*cols]
					for c, wv := range row {
						acc += int64(int8(wv)) * int64(int8(x[c]))
					}
					// |acc| <= 2^14 * 2^16 = 2^30: no int32 overflow.
					binary.LittleEndian.PutUint32(y[r*4:], uint32(int32(max(acc, 0))))
				}
				return nil
			})
		},
	}, nil
}

// InferArgs is struct fakenpu_infer.
type InferArgs struct {
	Input, Weights, Output uint32 // handles
	Flags                  uint32
	Rows, Cols             uint32
	Seq                    uint64 // out
}

// Encode builds the argument of IoctlNPUInfer.
func (a InferArgs) Encode() []byte {
	b := make([]byte, 32)
	le := binary.LittleEndian
	for i, v := range []uint32{a.Input, a.Weights, a.Output, a.Flags, a.Rows, a.Cols} {
		le.PutUint32(b[4*i:], v)
	}
	le.PutUint64(b[24:], a.Seq)
	return b
}

// DecodeInferArgs reads struct fakenpu_infer.
func DecodeInferArgs(b []byte) InferArgs {
	le := binary.LittleEndian
	return InferArgs{Input: le.Uint32(b[0:]), Weights: le.Uint32(b[4:]), Output: le.Uint32(b[8:]), Flags: le.Uint32(b[12:]),
		Rows: le.Uint32(b[16:]), Cols: le.Uint32(b[20:]), Seq: le.Uint64(b[24:])}
}

// EncodeBOCreate builds the argument of IoctlNPUBOCreate.
func EncodeBOCreate(size uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, size)
	return b
}

// DecodeBOCreate reads the handle IoctlNPUBOCreate returned.
func DecodeBOCreate(b []byte) uint32 { return binary.LittleEndian.Uint32(b[12:]) }
