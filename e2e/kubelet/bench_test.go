package kubelet

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

var idleFor = flag.Duration("idle", 30*time.Second, "BenchmarkFootprint: how long to measure idle CPU")

// BenchmarkFootprint measures what `accel-plugin serve` costs on a node
// with 128 devices, registered with kubelet's real device manager: its
// resident memory after settling and the CPU it uses while idle for -idle.
// The binary is built without the race detector for this.
func BenchmarkFootprint(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "accel-plugin")
	build := exec.Command("go", "build", "-o", bin, "./cmd/plugin")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	for range b.N {
		footprint(b, bin)
	}
}

func footprint(b *testing.B, bin string) {
	freshNode(b)
	n := newNode(b, logr.Discard())
	devDir := startSim(b, "--devices", "128", "--numa-nodes", "2")
	n.startManager()
	defer n.stopManager()
	serve := startProcBin(b, bin, "serve", "--dev-dir", devDir, "--log-level", "warn", "--metrics-addr", "127.0.0.1:0")
	settle := n.awaitCapacity(30*time.Second, 128, 128, 128*slots, 128*slots)
	b.ReportMetric(float64(settle.Microseconds())/1000, "ms-to-capacity")

	pid := serve.cmd.Process.Pid
	cpu0 := cpuTicks(b, pid)
	start := time.Now()
	time.Sleep(*idleFor) // the measurement itself: idle time, not synchronisation
	cpu := cpuTicks(b, pid) - cpu0
	elapsed := time.Since(start)
	b.ReportMetric(rssMiB(b, pid), "MiB-rss")
	b.ReportMetric(float64(cpu)*10, "ms-cpu-idle") // USER_HZ is 100
	b.ReportMetric(elapsed.Seconds(), "s-idle")
}

// rssMiB reads VmRSS of pid.
func rssMiB(b testing.TB, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// cpuTicks is utime+stime of pid in clock ticks.
func cpuTicks(b testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}
