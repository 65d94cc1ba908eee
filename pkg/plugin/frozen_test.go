package plugin

import (
	"context"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// TestFrozenDaemonUnhealthyThenRecovers freezes a real device daemon (a
// separate process serving a FUSE mount) with SIGSTOP: only the kernel
// shows how syscalls on its mount then block, so it needs root (see
// requireFUSE). TestSimSourceFrozenDaemon covers the same logic on the
// in-memory daemon without root; TestDeadDaemonFailsReadyz runs on it.

// threads is this process's OS thread count.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: in /proc/self/status")
	return 0
}

// awaitProbe polls an HTTP probe (as kubelet does) until it answers code
// with a body containing want.
func awaitProbe(t *testing.T, client *http.Client, url string, code int, want string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var got int
		var body string
		if resp, err := client.Get(url); err == nil {
			b := new(strings.Builder)
			_, _ = ioCopy(b, resp)
			got, body = resp.StatusCode, b.String()
		}
		if got == code && strings.Contains(body, want) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d %q after %s; want %d containing %q", url, got, body, within, code, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Item 4: after SIGSTOP every device of the daemon is unhealthy within two
// daemon timeouts, Allocate refuses them, /readyz is 503 naming the
// daemon, scrapes return within the timeout and grow neither threads nor
// goroutines; after SIGCONT everything is healthy again, no restart.
func TestFrozenDaemonUnhealthyThenRecovers(t *testing.T) {
	const timeout = 500 * time.Millisecond
	h := startFUSEHarness(t, "that calls into a daemon stopped with SIGSTOP block in the kernel, and that scrapes then grow neither threads nor goroutines",
		3, 1, 2, func(c *Config) { c.DaemonTimeout, c.MetricsAddr = timeout, "127.0.0.1:0" })
	compute := h.kubelet.awaitList(settle, computeRes, 3, 3)
	h.kubelet.awaitList(settle, monitorRes, 6, 6)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + h.plugin.metricsL.Addr().String()
	awaitProbe(t, client, base+"/readyz", 200, "ok", settle)
	threads0 := threads(t)

	frozenAt := time.Now()
	h.sim.freeze(t)
	at := h.kubelet.awaitList(2*timeout+2*time.Second, computeRes, 3, 0).at
	h.kubelet.awaitList(time.Second, monitorRes, 6, 0)
	t.Logf("SIGSTOP → every device unhealthy in ListAndWatch after %s (daemon timeout %s)", at.Sub(frozenAt), timeout)

	_, err := h.kubelet.client(computeRes).Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{compute.devices[0].ID}}},
	})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "device daemon not responding") {
		t.Errorf("Allocate with the daemon frozen = %v; want FailedPrecondition, device daemon not responding", err)
	}
	body := awaitProbe(t, client, base+"/readyz", http.StatusServiceUnavailable, "not responding", 2*time.Second)
	if !strings.Contains(body, h.sim.dir) {
		t.Errorf("/readyz %q does not name the daemon's directory %s", body, h.sim.dir)
	}

	scrape := func() (time.Duration, string) {
		start := time.Now()
		resp, err := client.Get(base + "/metrics")
		if err != nil {
			t.Fatalf("scrape with the daemon frozen: %v", err)
		}
		b := new(strings.Builder)
		_, _ = ioCopy(b, resp)
		return time.Since(start), b.String()
	}
	_, text := scrape()
	if v, ok := metric(text, `accel_device_info_readable{device="ac0",id="`+compute.devices[0].ID+`"}`); !ok || v != "0" {
		t.Errorf("accel_device_info_readable for ac0 = %q (present %v), want 0", v, ok)
	}
	threads1, goroutines1 := threads(t), runtime.NumGoroutine()
	const n = 20
	var slowest time.Duration
	for range n {
		el, _ := scrape()
		slowest = max(slowest, el)
	}
	threads2, goroutines2 := threads(t), runtime.NumGoroutine()
	t.Logf("threads: %d healthy, %d frozen after 1 scrape, %d after %d more; goroutines %d → %d; slowest scrape %s",
		threads0, threads1, threads2, n, goroutines1, goroutines2, slowest)
	if slowest > timeout+time.Second {
		t.Errorf("a scrape took %s with the daemon frozen; want within the daemon timeout %s", slowest, timeout)
	}
	// The runtime may start an idle thread or two to run goroutines while
	// others sit in blocked syscalls, and connection goroutines end a moment
	// after their response; one per scrape (11 → 31 threads after 20
	// scrapes before) is what must not happen.
	if threads2 > threads1+3 || goroutines2 > goroutines1+n/4 {
		t.Errorf("%d scrapes of a frozen daemon grew threads %d → %d, goroutines %d → %d", n, threads1, threads2, goroutines1, goroutines2)
	}

	thawedAt := time.Now()
	h.sim.thaw(t)
	at = h.kubelet.awaitList(5*time.Second, computeRes, 3, 3).at
	h.kubelet.awaitList(time.Second, monitorRes, 6, 6)
	t.Logf("SIGCONT → every device healthy after %s", at.Sub(thawedAt))
	awaitProbe(t, client, base+"/readyz", 200, "ok", 5*time.Second)
}

// Item 4: a dead daemon (killed: its mount answers ENOTCONN) makes /readyz
// 503 and says so. The in-memory daemon answers ENOTCONN as a killed FUSE
// daemon's mount does (TestDaemonKilledAllUnhealthyThenRecovers shows the
// kernel's answer).
func TestDeadDaemonFailsReadyz(t *testing.T) {
	h := startHarnessWith(t, 2, 1, 1, func(c *Config) { c.MetricsAddr = "127.0.0.1:0" })
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	client := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + h.plugin.metricsL.Addr().String()
	awaitProbe(t, client, base+"/readyz", 200, "ok", settle)
	h.mem.kill()
	body := awaitProbe(t, client, base+"/readyz", http.StatusServiceUnavailable, "dead", 2*time.Second)
	if !strings.Contains(body, h.daemonDir()) || !strings.Contains(body, "ENOTCONN") {
		t.Errorf("/readyz %q does not name the dead daemon and ENOTCONN", body)
	}
}

// ioCopy reads a response body into b and closes it.
func ioCopy(b *strings.Builder, resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	return io.Copy(b, resp.Body)
}
