package devfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/fakedev"
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

// BenchmarkMappedWrite: how fast a client writes device memory through a
// mapping of the compute node until it is in device memory: fill a 64 MiB
// buffer, msync it (the page cache writes it back over FUSE), per round;
// a device checksum then proves the bytes arrived. The client is a
// separate process (see runMmapHelper); MB/s is its own timing.
func BenchmarkMappedWrite(b *testing.B) {
	m := mountSim(b, 1)
	cmd := exec.Command(os.Args[0], "-test.run=^$", m.path("ac0"))
	cmd.Env = helperEnviron("mmap-write", "DEVFS_TEST_N="+strconv.Itoa(b.N))
	b.ResetTimer()
	out, err := cmd.CombinedOutput()
	b.StopTimer()
	if err != nil || !strings.Contains(string(out), "checksum=ok") {
		b.Fatalf("helper: %v\n%s", err, out)
	}
	kv := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			kv[k], _ = strconv.ParseFloat(v, 64)
		}
	}
	b.ReportMetric(kv["bytes"]/(kv["ns"]/1e9)/1e6, "MB/s")
}

// BenchmarkJobRoundTrip: submit a job and wait for it, as a client does:
// two ioctls through FUSE plus the job (a checksum of 4 KiB, about 4 µs at
// the default 1 GiB/s), and the syncs of its buffer's mapping.
func BenchmarkJobRoundTrip(b *testing.B) {
	m := mountSim(b, 1)
	f, err := os.OpenFile(m.path("ac0"), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	arg := fakedev.EncodeMemAlloc(4096)
	if err := accel.Ioctl(f, fakedev.IoctlMemAlloc, arg); err != nil {
		b.Fatal(err)
	}
	h := fakedev.DecodeMemAlloc(arg)
	timed(b, func() error {
		job := fakedev.JobArgs{Op: fakedev.OpChecksum, Src0: h, Count: 1024}.Encode()
		if err := accel.Ioctl(f, fakedev.IoctlJobSubmit, job); err != nil {
			return err
		}
		wait := fakedev.WaitArgs{Seq: fakedev.DecodeJobArgs(job).Seq, TimeoutNS: int64(5 * time.Second)}.Encode()
		if err := accel.Ioctl(f, fakedev.IoctlJobWait, wait); err != nil {
			return err
		}
		if st := fakedev.DecodeWaitArgs(wait).Status; st != 0 {
			return fmt.Errorf("job status %d", st)
		}
		return nil
	})
}
