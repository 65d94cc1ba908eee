package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// waitFor calls f every interval until it returns nil, or until timeout;
// f's error says why not yet, and the last one is in the timeout error.
// Before each call it checks that the components named in alive still
// run, and fails at once when one of them died (checkAlive).
func (c *Cluster) waitFor(ctx context.Context, what string, alive []string, timeout, interval time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		if err := c.checkAlive(alive...); err != nil {
			return err
		}
		notYet := f(ctx)
		if notYet == nil {
			return nil
		}
		if why := notYet.Error(); why != "" {
			last = why
		}
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
			}
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(interval):
		}
	}
}

// ErrComponentExited is returned when a component died while Up waited.
var ErrComponentExited = errors.New("component exited")

// checkAlive fails when a component died, naming its log. For a component
// this Cluster started, "died" is what its watcher saw (it
// reaped it); for others, its PID file no longer names a live process.
func (c *Cluster) checkAlive(names ...string) error {
	for _, n := range names {
		if k := c.child(n); k != nil {
			if done, err := k.exited(); done {
				return fmt.Errorf("%w: %s (pid %d, %s): see %s", ErrComponentExited, n, k.rec.PID, describeExit(err), c.logFile(n))
			}
			continue
		}
		if _, ok := c.running(n); !ok {
			return fmt.Errorf("%w: %s: see %s", ErrComponentExited, n, c.logFile(n))
		}
	}
	return nil
}

// child is the component name as this Cluster last started it, or nil.
func (c *Cluster) child(name string) *child { return c.kids.get(name) }
