package dra

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
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

// BenchmarkSliceUpdate measures how long a device change takes to reach
// the node's ResourceSlices: from the store publishing a snapshot with one
// more device (hot-plug) until a slice holding that device is written to
// the API server, and from the snapshot without it (removal) until no
// slice holds it; with 8 and 128 devices on the node. The driver runs on
// the real kubeletplugin helper and its ResourceSlice controller, against
// client-go's fake API server (the e2e suite measures the real one).
func BenchmarkSliceUpdate(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			var devs []plugin.Device
			for i := range n {
				devs = append(devs, simDevice(i, fmt.Sprintf("SIM-%03d", i)))
			}
			d, store := newTestDriver(b, devs...)
			client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}})
			asAPIServer(client)
			d.cfg.Client = client
			ctx, cancel := context.WithCancel(context.Background())
			w, err := client.ResourceV1().ResourceSlices().Watch(ctx, metav1.ListOptions{})
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx, store) }()
			defer func() {
				cancel()
				w.Stop()
				if err := <-done; err != nil {
					b.Error(err)
				}
			}()
			// latest is the content of every slice, by name.
			latest := map[string][]resourceapi.Device{}
			await := func(name string, present bool) {
				b.Helper()
				timeout := time.After(30 * time.Second)
				for {
					has := false
					for _, devs := range latest {
						for _, dev := range devs {
							has = has || dev.Name == name
						}
					}
					if has == present && len(latest) > 0 {
						return
					}
					select {
					case ev := <-w.ResultChan():
						s, ok := ev.Object.(*resourceapi.ResourceSlice)
						if !ok {
							continue
						}
						if ev.Type == watch.Deleted {
							delete(latest, s.Name)
						} else {
							latest[s.Name] = s.Spec.Devices
						}
					case err := <-done:
						b.Fatalf("Run ended: %v", err)
					case <-timeout:
						b.Fatalf("device %s present=%t: not in the slices within 30s (slices: %d)", name, present, len(latest))
					}
				}
			}
			await("ac0", true)
			extra := simDevice(n, fmt.Sprintf("SIM-%03d", n))
			withExtra := append(slices.Clone(devs), extra)
			added := make([]time.Duration, 0, b.N)
			removed := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				store.Publish("sim:"+hostDir, withExtra)
				await(extra.Name, true)
				added = append(added, time.Since(t0))
				t0 = time.Now()
				store.Publish("sim:"+hostDir, devs)
				await(extra.Name, false)
				removed = append(removed, time.Since(t0))
			}
			b.StopTimer()
			reportLatencies(b, added, "added")
			reportLatencies(b, removed, "removed")
		})
	}
}
