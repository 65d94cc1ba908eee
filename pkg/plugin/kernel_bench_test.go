package plugin

import (
	"fmt"
	"log/slog"
	"testing"
)

// benchKernelSource is a KernelSource over n habanalabs devices (the
// driver with the most attributes, and the one whose status is polled),
// read once.
func benchKernelSource(b *testing.B, n int) (*sysTree, *KernelSource, *slog.Logger) {
	st := newSysTree(b)
	for i := range n {
		st.habanalabs(i, fmt.Sprintf("0000:%02x:%02x.0", 0x10+i/32, i%32), i%2)
	}
	log := slog.New(slog.DiscardHandler)
	s := &KernelSource{ClassDir: st.classDir, DevDir: st.devDir, Store: NewStore(nil), Logger: log}
	s.raw, s.offline, s.pciRoots = map[string]kernelDevice{}, map[string]bool{}, map[string]string{}
	s.devices, s.dupIDs, s.warned = deviceSet{}, map[string]bool{}, map[string]bool{}
	s.scan(log)
	if len(s.raw) != n {
		b.Fatalf("%d devices read, want %d", len(s.raw), n)
	}
	return st, s, log
}

// BenchmarkKernelStatusPoll is one pass of the status poll (every device's
// status attribute read, nothing changed): its cost at 128 devices sets
// DefaultStatusPoll.
func BenchmarkKernelStatusPoll(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			_, s, _ := benchKernelSource(b, n)
			pending := map[string]bool{}
			for b.Loop() {
				s.pollStatus(pending)
			}
			if len(pending) != 0 {
				b.Fatalf("poll saw changes: %v", pending)
			}
		})
	}
}

// BenchmarkKernelEvent is what one hot-plug event costs: the one device
// re-read and the list published (against BenchmarkKernelScan, which
// every event cost before).
func BenchmarkKernelEvent(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			_, s, log := benchKernelSource(b, n)
			one := map[string]bool{"accel3": true}
			for b.Loop() {
				s.refresh(log, one)
			}
		})
	}
}

// BenchmarkKernelScan is a full re-read: start-up, the safety-net resync,
// and a lost event.
func BenchmarkKernelScan(b *testing.B) {
	for _, n := range []int{8, 128} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			_, s, log := benchKernelSource(b, n)
			for b.Loop() {
				s.scan(log)
			}
		})
	}
}
