package fakedev

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// FuzzControl runs arbitrary command lines against a simulator with three
// devices. Whatever the line: no panic; the result or error is one line;
// an error wraps a documented errno and changes no device; and the call
// allocates a bounded amount, however large a number the line holds.
func FuzzControl(f *testing.F) {
	// The errnos Control documents.
	documented := []syscall.Errno{syscall.EINVAL, syscall.ENODEV, syscall.ENOSPC, syscall.EAGAIN}
	for _, seed := range []string{
		"add", "add 1", "add 2", "add 253", "add 254", "add 0", "add -1", "add 1x", "add 01", "add +1",
		"add 10000000000000", "add 18446744073709551617", "add 256",
		"remove ac1", "remove ac3", "remove ac0_monitor", "remove ac1 ac1",
		"fault ac0", "fault ac0 needs-reset", "fault ac0 malfunction", "fault ac0 corrupt", "fault ac0 melted", "fault ac0_monitor",
		"fault ac00", "fault AC0", "fault ac99999999999999999999",
		"recover ac0", "recover", "reset ac2", "reset ac0 ac1",
		"", " ", "\t\n", "fault ac0\nremove ac1", "fault\x00ac0", "ADD", "explode ac0", "\xff\xfe",
		" \tfault \t ac1\t needs-reset \r\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		reg := accel.NewRegistry(accel.Options{})
		defer reg.Close()
		s := New(reg, Config{ResetDuration: time.Nanosecond})
		if _, err := s.AddN(3); err != nil {
			t.Fatal(err)
		}
		before := snapshot(reg)
		var out string
		var err error
		// 253 hot-plugged devices take a few hundred KiB; a count used to
		// size anything would take gigabytes.
		n := allocated(func() { out, err = s.Control(context.Background(), line) })
		if n > 8<<20 {
			t.Errorf("%q allocated %d bytes", line, n)
		}
		if err == nil {
			if out == "" || strings.ContainsAny(out, "\r\n") {
				t.Errorf("%q: result %q is not one line", line, out)
			}
			if len(reg.Devices()) > accel.MaxDevices {
				t.Errorf("%q: %d devices", line, len(reg.Devices()))
			}
			return
		}
		if !slices.ContainsFunc(documented, func(e syscall.Errno) bool { return errors.Is(err, e) }) {
			t.Errorf("%q: error %v wraps none of %v", line, err, documented)
		}
		if msg := err.Error(); msg == "" || strings.ContainsAny(msg, "\r\n") || len(msg) > 256 {
			t.Errorf("%q: error %q is not one short line", line, msg)
		}
		if after := snapshot(reg); !slices.Equal(after, before) {
			t.Errorf("%q failed with %v but changed the devices: %v, was %v", line, err, after, before)
		}
	})
}

// FuzzDriverCommands runs a program of driver commands on one compute
// client and checks the device against a model: memory_used is the sum of
// the live allocations and never exceeds memory_total, handles are unique,
// frees succeed exactly for live handles, a release frees everything, and
// arbitrary commands and arguments only ever return errnos.
//
// Program bytes, op by op (op = byte % 4):
//
//	0 SIZE[8]         IoctlMemAlloc of SIZE (little-endian; short reads pad with 0)
//	1 SEL [HANDLE[8]] IoctlMemFree: SEL < 128 frees live handle SEL % live, else HANDLE
//	2 CMD[4] LEN IN[LEN]  raw ioctl CMD with LEN bytes in, out sized from CMD
//	3                 release the client (then a command on it must be EBADF) and reopen
func FuzzDriverCommands(f *testing.F) {
	le := binary.LittleEndian
	alloc := func(size uint64) []byte { return le.AppendUint64([]byte{0}, size) }
	free := func(sel byte, h uint64) []byte {
		if sel < 128 {
			return []byte{1, sel}
		}
		return le.AppendUint64([]byte{1, sel}, h)
	}
	raw := func(cmd uint32, in []byte) []byte {
		return append(le.AppendUint32([]byte{2}, cmd), append([]byte{byte(len(in))}, in...)...)
	}
	f.Add(slices.Concat(alloc(100), alloc(0), free(0, 0), free(200, 12345), []byte{3}, alloc(1<<20)))
	f.Add(slices.Concat(alloc(1<<20), alloc(1), alloc(^uint64(0)), free(0, 0), alloc(1<<19)))
	f.Add(slices.Concat(alloc(1), alloc(1), alloc(1), alloc(1), alloc(1), free(3, 0), alloc(1)))
	f.Add(slices.Concat(raw(IoctlMemAlloc, EncodeMemAlloc(7)), raw(IoctlMemFree, EncodeMemFree(1)),
		raw(IoctlMemAlloc, make([]byte, 8)), raw(accel.IOW(accel.DriverCommandBase+9, 8), nil),
		raw(accel.IoctlInfo, nil), raw(0xffffffff, []byte{1, 2, 3})))
	f.Fuzz(func(t *testing.T, prog []byte) {
		const total, maxAllocs = 1 << 20, 4
		_, reg := newSim(t, 1, Config{MemoryTotal: total, MaxAllocations: maxAllocs})
		d := reg.Devices()[0]
		file, err := d.Open(context.Background(), accel.NodeCompute, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { file.Release() }()
		live := map[uint64]uint64{} // handle → size
		seen := map[uint64]bool{}
		used := func() (sum uint64) { // memory_used: sizes rounded up to pages
			for _, size := range live {
				sum += (size + accel.PageSize - 1) &^ (accel.PageSize - 1)
			}
			return sum
		}
		next := func(n int) []byte {
			b := make([]byte, n)
			k := copy(b, prog)
			prog = prog[k:]
			return b
		}
		for len(prog) > 0 {
			op := next(1)[0] % 4
			switch op {
			case 0:
				size := le.Uint64(next(8))
				out := make([]byte, 16)
				err := file.Ioctl(IoctlMemAlloc, EncodeMemAlloc(size), out)
				var want error
				switch {
				case size == 0:
					want = syscall.EINVAL
				case size > total || (size+accel.PageSize-1)&^(accel.PageSize-1) > total-used():
					want = syscall.ENOMEM
				case len(live) >= maxAllocs:
					want = syscall.ENOSPC
				}
				if !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Fatalf("alloc %d with %d used in %d allocations: %v, want %v", size, used(), len(live), err, want)
				}
				if err == nil {
					h := DecodeMemAlloc(out)
					if h == 0 || seen[h] {
						t.Fatalf("alloc returned handle %d, seen before or zero", h)
					}
					seen[h] = true
					live[h] = size
				}
			case 1:
				sel := next(1)[0]
				var h uint64
				if sel < 128 && len(live) > 0 {
					keys := slices.Sorted(func(yield func(uint64) bool) {
						for k := range live {
							if !yield(k) {
								return
							}
						}
					})
					h = keys[int(sel)%len(keys)]
				} else if sel >= 128 {
					h = le.Uint64(next(8))
				}
				_, isLive := live[h]
				err := file.Ioctl(IoctlMemFree, EncodeMemFree(h), nil)
				if isLive != (err == nil) || (err != nil && !errors.Is(err, syscall.EINVAL)) {
					t.Fatalf("free of handle %d (live %v): %v", h, isLive, err)
				}
				delete(live, h)
			case 2:
				cmd := le.Uint32(next(4))
				if cmd == IoctlJobSubmit || cmd == IoctlNPUInfer {
					// A job holds its buffers past a free, which this
					// model of memory_used does not follow.
					cmd = IoctlJobWait
				}
				in := next(int(next(1)[0]))
				out := make([]byte, accel.IoctlSize(cmd))
				err := file.Ioctl(cmd, in, out)
				var errno syscall.Errno
				if err != nil && !errors.As(err, &errno) {
					t.Fatalf("ioctl %#x: %v is not an errno", cmd, err)
				}
				if err == nil && cmd == IoctlMemAlloc {
					live[DecodeMemAlloc(out)] = le.Uint64(in)
					seen[DecodeMemAlloc(out)] = true
				}
				if err == nil && cmd == IoctlMemFree {
					delete(live, le.Uint64(in))
				}
			case 3:
				file.Release()
				if got := d.Info().MemoryUsed; got != 0 {
					t.Fatalf("memory used %d after the client released", got)
				}
				if err := file.Ioctl(IoctlMemAlloc, EncodeMemAlloc(1), make([]byte, 16)); !errors.Is(err, syscall.EBADF) {
					t.Fatalf("alloc on a released file: %v, want EBADF", err)
				}
				clear(live)
				if file, err = d.Open(context.Background(), accel.NodeCompute, 1); err != nil {
					t.Fatal(err)
				}
			}
			if got := d.Info().MemoryUsed; got != used() || got > total {
				t.Fatalf("after op %d: memory used %d, model %d (total %d)", op, got, used(), total)
			}
		}
	})
}
