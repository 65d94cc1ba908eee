package plugin

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A stuck access closes the gate: the caller gets ErrDaemonNotResponding
// after the timeout, later callers at once and without a new access; when
// the stuck access returns the gate reopens and watchers are woken.
func TestGateFailsFastWhileStuckAndReopens(t *testing.T) {
	g := newDaemonGate(50 * time.Millisecond)
	release := make(chan struct{})
	var started atomic.Int64
	stuckFn := func() (int, error) { started.Add(1); <-release; return 1, nil }
	start := time.Now()
	if _, err := gated(context.Background(), g, "first", stuckFn, nil); !errors.Is(err, ErrDaemonNotResponding) {
		t.Fatalf("stuck access: %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("caller waited %s for a 50ms timeout", el)
	}
	closed, reopened := g.watch()
	if !closed {
		t.Fatal("gate open with an access stuck")
	}
	for range 100 {
		_, err := gated(context.Background(), g, "next", func() (int, error) { started.Add(1); return 0, nil }, nil)
		if !errors.Is(err, ErrDaemonNotResponding) {
			t.Fatalf("access while stuck: %v", err)
		}
	}
	if n := started.Load(); n != 1 {
		t.Fatalf("%d accesses reached the daemon while one was stuck, want 1", n)
	}
	close(release)
	select {
	case <-reopened:
	case <-time.After(5 * time.Second):
		t.Fatal("gate did not reopen when the stuck access returned")
	}
	if v, err := gated(context.Background(), g, "after", func() (int, error) { return 7, nil }, nil); v != 7 || err != nil {
		t.Fatalf("access after reopening: %v, %v", v, err)
	}
}

// What an abandoned access opens is handed to abandon, so nothing leaks.
func TestGateReleasesAbandonedResults(t *testing.T) {
	g := newDaemonGate(20 * time.Millisecond)
	release := make(chan struct{})
	released := make(chan int, 1)
	_, err := gated(context.Background(), g, "open", func() (int, error) { <-release; return 42, nil }, func(v int) { released <- v })
	if !errors.Is(err, ErrDaemonNotResponding) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	select {
	case v := <-released:
		if v != 42 {
			t.Fatalf("abandon got %d", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the late result was not released")
	}
}

// At most maxOutstanding accesses are in flight; the next caller waits
// within its timeout, then fails.
func TestGateBoundsOutstanding(t *testing.T) {
	g := newDaemonGate(time.Hour)
	release := make(chan struct{})
	defer close(release)
	var inFlight atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range maxOutstanding {
		go func() {
			_, _ = gated(ctx, g, "slow", func() (int, error) { inFlight.Add(1); <-release; return 0, nil }, nil)
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for inFlight.Load() < maxOutstanding { // waits for goroutines to enter
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accesses started", inFlight.Load(), maxOutstanding)
		}
		time.Sleep(time.Millisecond)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	_, err := gated(short, g, "one more", func() (int, error) { inFlight.Add(1); return 0, nil }, nil)
	if !errors.Is(err, context.DeadlineExceeded) || inFlight.Load() != maxOutstanding {
		t.Fatalf("access beyond the bound: %v, in flight %d", err, inFlight.Load())
	}
}
