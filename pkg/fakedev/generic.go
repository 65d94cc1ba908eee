package fakedev

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// fakedevCommand runs the commands of the generic driver (uapi.go).
func fakedevCommand(d *Device, f *accel.File, cmd uint32, in, out []byte) error {
	le := binary.LittleEndian
	dev := f.Device()
	switch cmd {
	case IoctlMemAlloc:
		if len(in) != 16 || len(out) != 16 {
			return syscall.EINVAL
		}
		b, err := dev.Alloc(f, le.Uint64(in))
		if err != nil {
			return err
		}
		copy(out, in)
		le.PutUint64(out[8:], b.Handle())
		return nil
	case IoctlMemFree:
		if len(in) != 8 {
			return syscall.EINVAL
		}
		return dev.Free(f, le.Uint64(in))
	case IoctlMemMap:
		if len(in) != 24 || len(out) != 24 {
			return syscall.EINVAL
		}
		b, err := dev.LookupBuffer(f, le.Uint64(in))
		if err != nil {
			return err
		}
		mapReply(out, in, b)
		return nil
	case IoctlJobSubmit:
		if len(in) != 48 || len(out) != 48 {
			return syscall.EINVAL
		}
		args := DecodeJobArgs(in)
		seq, err := d.submit(f, func() (accel.Job, error) { return d.fakedevJob(f, args) })
		if err != nil {
			return err
		}
		args.Seq = seq
		copy(out, args.Encode())
		return nil
	case IoctlJobWait:
		return wait(f, in, out)
	}
	return syscall.ENOTTY
}

// fakedevJob checks a job's arguments and builds it.
func (d *Device) fakedevJob(f *accel.File, a JobArgs) (accel.Job, error) {
	if a.Flags != 0 {
		return accel.Job{}, fmt.Errorf("job flags %#x: none are defined: %w", a.Flags, syscall.EINVAL)
	}
	if a.Count == 0 || a.Count > 1<<61 {
		return accel.Job{}, fmt.Errorf("job count %d: want 1 or more words that fit the buffers: %w", a.Count, syscall.EINVAL)
	}
	n := a.Count * 4
	buf := func(h uint64) (*accel.Buffer, error) {
		b, err := f.Device().LookupBuffer(f, h)
		if err != nil {
			return nil, err
		}
		if b.Size() < n {
			return nil, fmt.Errorf("buffer %d holds %d bytes, the job needs %d: %w", h, b.Size(), n, syscall.EINVAL)
		}
		return b, nil
	}
	switch a.Op {
	case OpAddU32:
		var bufs [3]*accel.Buffer
		for i, h := range []uint64{a.Src0, a.Src1, a.Dst} {
			b, err := buf(h)
			if err != nil {
				return accel.Job{}, err
			}
			bufs[i] = b
		}
		return accel.Job{
			Reads: bufs[:2], Writes: bufs[2:], Duration: d.jobDuration(3 * n),
			Run: func() (uint64, error) {
				return 0, accel.AccessBuffers(bufs[:], func(m [][]byte) error {
					le := binary.LittleEndian
					a, b, dst := m[0][:n], m[1][:n], m[2][:n]
					for i := uint64(0); i < n; i += 4 {
						le.PutUint32(dst[i:], le.Uint32(a[i:])+le.Uint32(b[i:]))
					}
					return nil
				})
			},
		}, nil
	case OpChecksum:
		if a.Src1 != 0 || a.Dst != 0 {
			return accel.Job{}, fmt.Errorf("checksum uses src0 only: src1 and dst must be 0: %w", syscall.EINVAL)
		}
		src, err := buf(a.Src0)
		if err != nil {
			return accel.Job{}, err
		}
		return accel.Job{
			Reads: []*accel.Buffer{src}, Duration: d.jobDuration(n),
			Run: func() (sum uint64, err error) {
				err = accel.AccessBuffers([]*accel.Buffer{src}, func(m [][]byte) error {
					for i := uint64(0); i < n; i += 4 {
						sum += uint64(binary.LittleEndian.Uint32(m[0][i:]))
					}
					return nil
				})
				return sum, err
			},
		}, nil
	}
	return accel.Job{}, fmt.Errorf("unknown job op %d (want %d add_u32 or %d checksum): %w", a.Op, OpAddU32, OpChecksum, syscall.EINVAL)
}

// mapReply answers a map query (fakedev's MEM_MAP, fakenpu's BO_INFO: the
// same layout after the handle): the request's first 8 bytes, then the
// buffer's offset and size.
func mapReply(out, in []byte, b *accel.Buffer) {
	copy(out, in[:8])
	binary.LittleEndian.PutUint64(out[8:], b.MapOffset())
	binary.LittleEndian.PutUint64(out[16:], b.Size())
}

// submit builds a job with build and submits it for f, returning its
// sequence number. While the device has a corrupt fault, the job's answer
// gets one bit flipped when it has run.
func (d *Device) submit(f *accel.File, build func() (accel.Job, error)) (uint64, error) {
	job, err := build()
	if err != nil {
		return 0, err
	}
	run := job.Run
	job.Run = func() (uint64, error) {
		v, err := run()
		if err != nil || !d.corrupt.Load() {
			return v, err
		}
		if len(job.Writes) == 0 {
			return v ^ 1, nil
		}
		return v, accel.AccessBuffers(job.Writes[:1], func(m [][]byte) error {
			m[0][0] ^= 1
			return nil
		})
	}
	return f.Device().Submit(f, job)
}

// wait runs a wait command (fakedev's and fakenpu's share the layout).
func wait(f *accel.File, in, out []byte) error {
	if len(in) != 40 || len(out) != 40 {
		return syscall.EINVAL
	}
	args := DecodeWaitArgs(in)
	timeout, err := waitTimeout(args.TimeoutNS)
	if err != nil {
		return err
	}
	res, err := f.Device().Wait(context.Background(), f, args.Seq, timeout)
	if err != nil {
		return err
	}
	args.Status = jobStatus(res.Err)
	args.Result = res.Value
	args.RunNS = uint64(res.RunTime)
	copy(out, args.Encode())
	return nil
}
