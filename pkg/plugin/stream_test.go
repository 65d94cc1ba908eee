package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeStream is a ListAndWatch stream whose Send blocks until the test
// lets it through, like a kubelet that stopped reading.
type fakeStream struct {
	ctx     context.Context
	gate    chan struct{} // one token per Send allowed
	entered chan *pluginapi.ListAndWatchResponse
	sent    chan *pluginapi.ListAndWatchResponse
}

func newFakeStream(ctx context.Context) *fakeStream {
	return &fakeStream{ctx: ctx, gate: make(chan struct{}),
		entered: make(chan *pluginapi.ListAndWatchResponse, 1000),
		sent:    make(chan *pluginapi.ListAndWatchResponse, 1000)}
}

func (s *fakeStream) Send(r *pluginapi.ListAndWatchResponse) error {
	s.entered <- r
	select {
	case <-s.gate:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	s.sent <- r
	return nil
}
func (s *fakeStream) Context() context.Context     { return s.ctx }
func (s *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (s *fakeStream) SendHeader(metadata.MD) error { return nil }
func (s *fakeStream) SetTrailer(metadata.MD)       {}
func (s *fakeStream) SendMsg(any) error            { return nil }
func (s *fakeStream) RecvMsg(any) error            { return nil }

// A stream stuck in Send blocks neither discovery nor other streams, and
// when it moves again it sends the newest list: changes coalesce, and the
// last one is never lost.
func TestSlowStreamBlocksNothingAndCoalesces(t *testing.T) {
	store := NewStore(nil)
	store.Publish("sim", []Device{dev("A", 0, 0)})
	res := NewComputeResource("accel.io", store, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	slow, fast := newFakeStream(ctx), newFakeStream(ctx)
	close(fast.gate) // the fast stream never blocks
	for _, s := range []*fakeStream{slow, fast} {
		go func() { _ = res.ListAndWatch(&pluginapi.Empty{}, s) }()
	}
	first := <-fast.sent
	if len(first.Devices) != 1 {
		t.Fatalf("first list has %d devices", len(first.Devices))
	}
	if r := <-slow.entered; len(r.Devices) != 1 { // now stuck in Send
		t.Fatalf("slow stream's first list has %d devices", len(r.Devices))
	}

	// 200 changes while the slow stream is stuck in its first Send: they
	// all complete while it stays stuck (its gate opens only below). The
	// deadline only ends a test that would otherwise hang; how fast a
	// publish is, is BenchmarkKernelEvent's business, not this test's (a
	// 1 s bound here once failed on a loaded CI machine at 1.77 s).
	published := make(chan struct{})
	go func() {
		defer close(published)
		var devs []Device
		for i := range 200 {
			devs = append(devs, dev(fmt.Sprintf("D%03d", i), i+1, 0))
			store.Publish("sim", devs)
		}
	}()
	select {
	case <-published:
	case <-time.After(30 * time.Second):
		t.Fatal("200 publishes did not complete while a stream was stuck in Send: discovery is blocked by it")
	}
	// The fast stream ends at the final list.
	deadline := time.After(5 * time.Second)
	for last := first; len(last.Devices) != 200; {
		select {
		case last = <-fast.sent:
		case <-deadline:
			t.Fatalf("fast stream stopped at %d devices", len(last.Devices))
		}
	}
	// Let the slow stream through: its first (old) list, then directly the
	// newest one, not 200 intermediate lists.
	slow.gate <- struct{}{}
	if r := <-slow.sent; len(r.Devices) != 1 {
		t.Fatalf("slow stream's first list has %d devices", len(r.Devices))
	}
	slow.gate <- struct{}{}
	if r := <-slow.sent; len(r.Devices) != 200 {
		t.Fatalf("slow stream's second list has %d devices, want the newest (200)", len(r.Devices))
	}
	select {
	case slow.gate <- struct{}{}:
		t.Fatal("slow stream sent a third list with nothing new")
	case <-time.After(50 * time.Millisecond): // nothing to send: no Send call arrives
	}
}
