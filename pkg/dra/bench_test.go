package dra

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// reportLatencies reports p50 and p99 of samples in µs.
func reportLatencies(b *testing.B, samples []time.Duration, name string) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	q := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))]) / float64(time.Microsecond)
	}
	b.ReportMetric(q(0.50), "p50-µs-"+name)
	b.ReportMetric(q(0.99), "p99-µs-"+name)
}

// BenchmarkPrepare measures PrepareResourceClaims for one claim of one
// compute device, as the helper calls it (the checkpoint read, checked,
// written and synced, and the claim's CDI spec written), then the
// Unprepare of it, with 8 and 128 devices on the node and every other
// device held by a prepared claim (a full checkpoint).
func BenchmarkPrepare(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			var devs []plugin.Device
			for i := range n {
				devs = append(devs, simDevice(i, fmt.Sprintf("SIM-%03d", i)))
			}
			d, _ := newTestDriver(b, devs...)
			ctx := context.Background()
			for i := 1; i < n; i++ {
				uid := fmt.Sprintf("held-%d", i)
				if _, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim(uid, "c-"+uid, alloc{request: "r", device: fmt.Sprintf("ac%d", i)})}); err != nil {
					b.Fatal(err)
				}
			}
			prep := make([]time.Duration, 0, b.N)
			unprep := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				uid := types.UID(fmt.Sprintf("bench-%d", i))
				c := claim(string(uid), "c-bench", alloc{request: "r", device: "ac0"})
				t0 := time.Now()
				out, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
				prep = append(prep, time.Since(t0))
				if err != nil || out[uid].Err != nil {
					b.Fatal(err, out[uid].Err)
				}
				t0 = time.Now()
				if _, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: uid}}); err != nil {
					b.Fatal(err)
				}
				unprep = append(unprep, time.Since(t0))
			}
			b.StopTimer()
			reportLatencies(b, prep, "prepare")
			reportLatencies(b, unprep, "unprepare")
		})
	}
}
