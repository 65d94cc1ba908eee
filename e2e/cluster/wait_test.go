package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// waitFor returns once f does, keeps f's last reason for its timeout
// error, and gives up at once, without asking f, when a component it
// watches has died.
func TestWaitFor(t *testing.T) {
	p := standins(t, "standin", map[string]string{compEtcd: "sleep", compContainerd: "exit"})
	if _, err := p.start(compEtcd); err != nil {
		t.Fatal(err)
	}
	defer p.kids.stopAll(time.Second)
	ctx := context.Background()

	tries := 0
	err := p.waitFor(ctx, "the third try", []string{compEtcd}, time.Minute, time.Millisecond, func(context.Context) error {
		if tries++; tries < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || tries != 3 {
		t.Errorf("f done on its third try: waitFor = %v after %d tries", err, tries)
	}

	tries = 0
	err = p.waitFor(ctx, "never", []string{compEtcd}, 50*time.Millisecond, time.Millisecond, func(context.Context) error {
		tries++
		if tries == 1 {
			return fmt.Errorf("reason %d", tries)
		}
		return errors.New("") // no reason: the last one given stands
	})
	if err == nil || !strings.Contains(err.Error(), "timed out after 50ms waiting for never (last: reason 1)") {
		t.Errorf("f never done: waitFor = %v, want the timeout with the last reason", err)
	}

	ctrd, err := p.start(compContainerd)
	if err != nil {
		t.Fatal(err)
	}
	<-ctrd.done
	called := false
	err = p.waitFor(ctx, "containerd", []string{compEtcd, compContainerd}, time.Minute, time.Millisecond, func(context.Context) error {
		called = true
		return nil
	})
	if !errors.Is(err, ErrComponentExited) || !strings.Contains(err.Error(), "containerd") || called {
		t.Errorf("containerd exited: waitFor = %v (f called: %v), want ErrComponentExited naming containerd, f not called", err, called)
	}
}
