package devfs

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// floodHelper is the "flood" helper mode: $DEVFS_TEST_N opens of PATH,
// every successful one kept open; it prints the outcome counts as JSON and
// then holds the files until its stdin closes.
func floodHelper(path string) int {
	n, _ := strconv.Atoi(os.Getenv("DEVFS_TEST_N"))
	// Raise the descriptor limit to n if allowed (CAP_SYS_RESOURCE), else
	// to the hard limit: past it opens fail with EMFILE in the kernel.
	want := uint64(n + 64)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: want, Max: want}); err != nil {
		var lim unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
			lim.Cur = lim.Max
			_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
	}
	counts := map[string]int{}
	var fds []int
	for range n {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			counts[errName(err)]++
			continue
		}
		counts["ok"]++
		fds = append(fds, fd)
	}
	_ = json.NewEncoder(os.Stdout).Encode(counts)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, fd := range fds {
		unix.Close(fd)
	}
	return 0
}

// startFlood runs the flood helper against path with n attempts and
// returns its counts; the helper holds its files until the test ends.
func startFlood(t testing.TB, path string, n int) map[string]int {
	t.Helper()
	h := startHelperEnv(t, "flood", path, "DEVFS_TEST_N="+strconv.Itoa(n))
	var counts map[string]int
	if err := json.Unmarshal([]byte(h.line(t)), &counts); err != nil {
		t.Fatal(err)
	}
	return counts
}

// Regression (issue 10, item 7), through a real mount: one process gets
// EMFILE past the per-process limit of one device's monitor node, another
// process still opens it, and closing makes room again.
func TestMonitorOpenLimitThroughMount(t *testing.T) {
	m := mountSimWith(t, 2, filepath.Join(t.TempDir(), "dev"), accel.Options{MonitorOpensPerProcess: 8}, Options{})
	counts := startFlood(t, m.path("ac0_monitor"), 20)
	if counts["ok"] != 8 || counts["EMFILE"] != 12 {
		t.Fatalf("20 monitor opens by one process with a limit of 8: %v, want 8 ok and 12 EMFILE", counts)
	}
	// Another process, and the same process's opens of another device,
	// are not affected.
	f, err := os.Open(m.path("ac0_monitor"))
	if err != nil {
		t.Fatalf("another process's monitor open: %v", err)
	}
	if info, err := accel.QueryInfo(f); err != nil || info.MonitorClients != 9 {
		t.Fatalf("info: %+v, %v; want 9 monitor clients", info, err)
	}
	f.Close()
	if counts := startFlood(t, m.path("ac1_monitor"), 8); counts["ok"] != 8 {
		t.Fatalf("opens of ac1_monitor: %v", counts)
	}
}

// rssBytes returns this process's resident set size.
func rssBytes(t testing.TB) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkMonitorOpenFlood is issue 10's item 7 attack: one process
// tries 99,500 opens of one monitor node and keeps every one it gets. The
// benchmark (this process is the simulator) reports the simulator's heap
// and RSS growth while the attacker holds its files, with the default
// limit and with the highest per-process limit for comparison (there the
// attacker's own RLIMIT_NOFILE may stop it first: "opened" says how many
// it got). The attack runs once per call whatever b.N, so that `make
// bench`'s fixed counts do not multiply it; ns/attempt is the mean cost of
// one open attempt.
//
//	go test -run '^$' -bench BenchmarkMonitorOpenFlood ./pkg/accel/devfs/
func BenchmarkMonitorOpenFlood(b *testing.B) {
	const attempts = 99_500
	for _, tc := range []struct {
		name  string
		limit int
	}{{"limit=64", 0}, {"limit=65536", accel.MaxMonitorOpensPerProcess}} {
		b.Run(tc.name, func(b *testing.B) {
			m := mountSimWith(b, 1, filepath.Join(b.TempDir(), "dev"),
				accel.Options{MonitorOpensPerProcess: tc.limit, MonitorOpensPerDevice: accel.MaxMonitorOpensPerDevice}, Options{})
			heap0, rss0 := heapInuse(), rssBytes(b)
			start := time.Now()
			counts := startFlood(b, m.path("ac0_monitor"), attempts)
			elapsed := time.Since(start)
			heap1, rss1 := heapInuse(), rssBytes(b)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(elapsed.Nanoseconds())/attempts, "ns/attempt")
			b.ReportMetric(float64(counts["ok"]), "opened")
			b.ReportMetric(float64(counts["EMFILE"]), "EMFILE")
			b.ReportMetric(float64(int64(heap1-heap0))/(1<<20), "heap-MB-growth")
			b.ReportMetric(float64(int64(heap1-heap0))/attempts, "heap-B/attempt")
			b.ReportMetric(float64(int64(rss1-rss0))/(1<<20), "rss-MB-growth")
		})
	}
}
