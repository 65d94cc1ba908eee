package fakedev

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

func openCompute(t *testing.T, d *accel.Device) *accel.File {
	t.Helper()
	f, err := d.Open(context.Background(), accel.NodeCompute, 1)
	if err != nil {
		t.Fatalf("open %s: %v", d.Name(), err)
	}
	t.Cleanup(f.Release)
	return f
}

// A client allocating one byte at a time used to grow the device's handle
// table without bound (16 GiB of memory is 16 Gi allocations); the count
// of live allocations is capped and the next one gets ENOSPC.
func TestMemAllocCountLimit(t *testing.T) {
	_, reg := newSim(t, 1, Config{})
	d := reg.Devices()[0]
	f := openCompute(t, d)
	out := make([]byte, 16)
	var first uint64
	for i := range DefaultMaxAllocations {
		if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(1), out); err != nil {
			t.Fatalf("allocation %d of %d: %v", i+1, DefaultMaxAllocations, err)
		}
		if i == 0 {
			first = DecodeMemAlloc(out)
		}
	}
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(1), out); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("allocation %d: %v, want ENOSPC", DefaultMaxAllocations+1, err)
	}
	if got := d.Info().MemoryUsed; got != DefaultMaxAllocations*accel.PageSize {
		t.Fatalf("memory used %d, want %d pages", got, DefaultMaxAllocations)
	}
	if err := f.Ioctl(IoctlMemFree, EncodeMemFree(first), nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(1), out); err != nil {
		t.Fatalf("allocation after a free: %v", err)
	}
}

// The limit is configurable, and sizes that would wrap memory_used are
// ENOMEM.
func TestMemAllocBounds(t *testing.T) {
	_, reg := newSim(t, 1, Config{MemoryTotal: 1 << 20, MaxAllocations: 2})
	d := reg.Devices()[0]
	f := openCompute(t, d)
	out := make([]byte, 16)
	for _, tc := range []struct {
		name string
		size uint64
		want syscall.Errno
	}{
		{"max uint64", ^uint64(0), syscall.ENOMEM},
		{"total plus one", 1<<20 + 1, syscall.ENOMEM},
		{"first", 1 << 19, 0},
		{"wrapping with what is used", ^uint64(0) - 1<<18, syscall.ENOMEM},
		{"second", 1 << 18, 0},
		{"third (over the count)", 1, syscall.ENOSPC},
	} {
		err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(tc.size), out)
		if tc.want == 0 && err != nil || tc.want != 0 && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if got := d.Info().MemoryUsed; got != 1<<19+1<<18 {
		t.Fatalf("memory used %d", got)
	}
}

// A driver command on a file the driver has released used to panic the
// daemon (a write into the released client's nil table); it is EBADF.
func TestCommandAfterReleaseIsEBADF(t *testing.T) {
	_, reg := newSim(t, 1, Config{})
	d := reg.Devices()[0]
	f, err := d.Open(context.Background(), accel.NodeCompute, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 16)
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(10), out); err != nil {
		t.Fatal(err)
	}
	h := DecodeMemAlloc(out)
	f.Release()
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(10), out); !errors.Is(err, syscall.EBADF) {
		t.Errorf("alloc on a released file: %v, want EBADF", err)
	}
	if err := f.Ioctl(IoctlMemFree, EncodeMemFree(h), nil); !errors.Is(err, syscall.EBADF) {
		t.Errorf("free on a released file: %v, want EBADF", err)
	}
	if got := d.Info().MemoryUsed; got != 0 {
		t.Errorf("memory used %d after release, want 0", got)
	}
}
