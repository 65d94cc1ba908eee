package plugin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample whose line starts with series.
func metric(text, series string) (string, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v, true
		}
	}
	return "", false
}

func TestMetricsAndProbes(t *testing.T) {
	h := startHarnessWith(t, 2, 1, 2, func(c *Config) { c.MetricsAddr = "127.0.0.1:0" })
	base := "http://" + h.plugin.metricsL.Addr().String()
	if code, body := get(t, base+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	compute := h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.kubelet.awaitList(settle, monitorRes, 4, 4)
	// Registered (the stand-in saw both lists, so both registered): ready.
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := get(t, base+"/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q after registration", code, body)
		}
		time.Sleep(10 * time.Millisecond) // polling an HTTP probe, as kubelet does
	}

	// One allocation, one refusal; hold ac0's compute node and open two monitors.
	_, _ = h.kubelet.client(computeRes).Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{compute.devices[0].ID}}},
	})
	_, _ = h.kubelet.client(computeRes).Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"nope"}}},
	})
	// The daemon reports ac0's compute node held and three monitor clients:
	// two others and the plugin's own info read, which the metric leaves
	// out (opening them through the mount is what devfs tests count).
	h.mem.change(0, func(dev *memDev) {
		dev.info.ComputeInUse, dev.info.MonitorClients = true, 3
		dev.info.JobsCompleted, dev.info.BusyTime = 7, 1500*time.Millisecond
	}, "")
	// ac1's daemon speaks info version 1: no job accounting, so no job
	// series for it (rather than counters stuck at 0).
	h.mem.change(1, func(dev *memDev) { dev.info.NoJobAccounting = true }, "")
	h.ctl(t, "fault ac1 malfunction")
	h.kubelet.awaitList(time.Second, computeRes, 2, 1)

	_, text := get(t, base+"/metrics")
	want := map[string]string{
		`accel_devices{health="healthy"}`:                                                                     "1",
		`accel_devices{health="unhealthy"}`:                                                                   "1",
		`accel_plugin_allocations_total{resource="accel.io/ac",result="ok"}`:                                  "1",
		`accel_plugin_allocations_total{resource="accel.io/ac",result="error"}`:                               "1",
		`accel_plugin_registrations_total{resource="accel.io/ac",result="ok"}`:                                "1",
		`accel_plugin_registrations_total{resource="accel.io/ac-monitor",result="ok"}`:                        "1",
		fmt.Sprintf(`accel_device_compute_in_use{device="ac0",id="%s"}`, devID(h, "ac0")):                     "1",
		fmt.Sprintf(`accel_device_compute_in_use{device="ac1",id="%s"}`, devID(h, "ac1")):                     "0",
		fmt.Sprintf(`accel_device_monitor_clients{device="ac0",id="%s"}`, devID(h, "ac0")):                    "2",
		fmt.Sprintf(`accel_device_status{device="ac1",id="%s",status="malfunction"}`, devID(h, "ac1")):        "1",
		fmt.Sprintf(`accel_device_healthy{device="ac1",id="%s"}`, devID(h, "ac1")):                            "0",
		fmt.Sprintf(`accel_device_jobs_completed_total{device="ac0",id="%s"}`, devID(h, "ac0")):               "7",
		fmt.Sprintf(`accel_device_busy_seconds_total{device="ac0",id="%s"}`, devID(h, "ac0")):                 "1.5",
		fmt.Sprintf(`accel_device_info{device="ac0",driver="memsim",id="%s",model="mem-1"}`, devID(h, "ac0")): "1",
	}
	for series, v := range want {
		if got, ok := metric(text, series); !ok || got != v {
			t.Errorf("%s = %q (present %v), want %s", series, got, ok, v)
		}
	}
	for _, name := range []string{"accel_device_jobs_completed_total", "accel_device_busy_seconds_total"} {
		if series := fmt.Sprintf(`%s{device="ac1",id="%s"}`, name, devID(h, "ac1")); strings.Contains(text, series) {
			t.Errorf("%s present for a device whose info has no job accounting", series)
		}
	}
	if v, ok := metric(text, `accel_plugin_list_and_watch_updates_total{resource="accel.io/ac"}`); !ok || v < "2" {
		t.Errorf("ListAndWatch updates = %q, want at least 2", v)
	}

	// A kubelet restart: not ready until registered again.
	h.kubelet.stop()
	deadline = time.Now().Add(5 * time.Second)
	for {
		code, body := get(t, base+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "not registered") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q with kubelet gone", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// devID is the ID of the device named name in the current snapshot.
func devID(h *harness, name string) string {
	snap, _ := h.plugin.Store.Load()
	for _, d := range snap.Devices {
		if d.Name == name {
			return d.ID
		}
	}
	return "?"
}
