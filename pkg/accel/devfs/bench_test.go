package devfs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// timed runs op b.N times and reports the median and 99th percentile
// latency next to the mean that ns/op shows.
func timed(b *testing.B, op func() error) {
	b.Helper()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkComputeOpenClose: open and close of a compute node through FUSE.
func BenchmarkComputeOpenClose(b *testing.B) {
	m := mountSim(b, 1)
	path := m.path("ac0")
	timed(b, func() error {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		return f.Close()
	})
}

// BenchmarkInfoIoctl: the info ioctl on an open monitor node through FUSE.
func BenchmarkInfoIoctl(b *testing.B) {
	m := mountSim(b, 1)
	f, err := os.Open(m.path("ac0_monitor"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, accel.InfoSize)
	timed(b, func() error { return accel.Ioctl(f, accel.IoctlInfo, buf) })
}

// BenchmarkKernelOpenClose is the floor: open and close of a kernel
// character device (/dev/null), no FUSE round trip.
func BenchmarkKernelOpenClose(b *testing.B) {
	timed(b, func() error {
		f, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		return f.Close()
	})
}

// BenchmarkComputeIoctl: a driver-range ioctl on the held compute node
// through FUSE, the path every job's commands take, holder bookkeeping
// included (a command fakedev does not know: ENOTTY, no driver work).
func BenchmarkComputeIoctl(b *testing.B) {
	m := mountSim(b, 1)
	f, err := os.OpenFile(m.path("ac0"), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cmd := accel.IOWR(accel.DriverCommandBase+30, 8)
	buf := make([]byte, 8)
	timed(b, func() error {
		if err := accel.Ioctl(f, cmd, buf); !errors.Is(err, syscall.ENOTTY) {
			return fmt.Errorf("ioctl: %w, want ENOTTY", err)
		}
		return nil
	})
}
