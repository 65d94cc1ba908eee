package plugin

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// reportLatencies reports p50 and p99 of samples in the given unit.
func reportLatencies(b *testing.B, samples []time.Duration, unit time.Duration, name string) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	q := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))]) / float64(unit)
	}
	b.ReportMetric(q(0.50), "p50-"+name)
	b.ReportMetric(q(0.99), "p99-"+name)
}

// BenchmarkAllocate measures Allocate as kubelet calls it: over gRPC on
// the plugin's unix socket, for one whole device, with 8 and 128 devices.
func BenchmarkAllocate(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			h := startHarness(b, n, 2, 8)
			l := h.kubelet.awaitList(30*time.Second, computeRes, n, n)
			h.kubelet.awaitList(30*time.Second, monitorRes, 8*n, 8*n)
			client := h.kubelet.client(computeRes)
			samples := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				req := &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
					{DevicesIds: []string{l.devices[i%n].ID}},
				}}
				start := time.Now()
				if _, err := client.Allocate(context.Background(), req); err != nil {
					b.Fatal(err)
				}
				samples = append(samples, time.Since(start))
			}
			b.StopTimer()
			reportLatencies(b, samples, time.Microsecond, "µs")
		})
	}
}

// BenchmarkHotplugToListAndWatch measures the time from a hot-plug (or
// unplug) command returning in the simulator to the ListAndWatch update
// arriving at the stand-in kubelet.
func BenchmarkHotplugToListAndWatch(b *testing.B) {
	h := startFUSEHarness(b, "hot-plug latency through a real FUSE mount and its event file", 4, 1, 1, nil)
	h.kubelet.awaitList(30*time.Second, computeRes, 4, 4)
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		cmd, want := "add", 5
		if i%2 == 1 {
			cmd, want = "remove ac4", 4
		}
		start := time.Now()
		h.sim.ctl(b, cmd)
		at := h.kubelet.awaitList(5*time.Second, computeRes, want, want).at
		samples = append(samples, at.Sub(start))
	}
	b.StopTimer()
	reportLatencies(b, samples, time.Millisecond, "ms")
}
