package plugin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrDaemonNotResponding marks an access to a device daemon that got no
// answer within the daemon timeout, or that was refused at once because an
// earlier access is still waiting for its answer.
var ErrDaemonNotResponding = errors.New("device daemon not responding")

// daemonGate bounds every access to one device daemon.
//
// A syscall on a FUSE file waits for the daemon that serves the file, and
// when that daemon is frozen (SIGSTOP, a debugger, a deadlock) it waits
// until the daemon answers: it cannot be cancelled, and it pins the OS
// thread that made it. So the gate never lets a caller wait longer than the
// timeout, and it never starts a new access while an earlier one is stuck:
//
//   - each access runs on its own goroutine; the caller waits for it at most
//     timeout (or until its context ends) and then gets ErrDaemonNotResponding;
//   - an access that outlives its timeout is stuck; while any is stuck the
//     gate is closed, and every new access fails at once, without a syscall;
//   - at most maxOutstanding accesses are in flight at once, so at most that
//     many OS threads can ever be pinned in a frozen daemon;
//   - when the last stuck access returns (the daemon answered after all, or
//     died and the kernel failed the request), the gate reopens, and
//     watchers are woken so they can look again at once.
type daemonGate struct {
	timeout time.Duration
	slots   chan struct{}

	mu        sync.Mutex
	stuck     int       // accesses past their timeout that have not returned
	stuckWhat string    // what the oldest of them is doing
	stuckAt   time.Time // when it started
	lastOK    time.Time // when the daemon last answered anything
	changed   chan struct{}
}

// maxOutstanding bounds the accesses to one daemon in flight at once.
const maxOutstanding = 4

func newDaemonGate(timeout time.Duration) *daemonGate {
	return &daemonGate{timeout: timeout, slots: make(chan struct{}, maxOutstanding), changed: make(chan struct{})}
}

// watch reports whether the gate is closed (an access is stuck) and returns a
// channel that is closed when that changes.
func (g *daemonGate) watch() (closed bool, changed <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stuck > 0, g.changed
}

// answeredWithin reports whether the daemon answered any access within d.
func (g *daemonGate) answeredWithin(d time.Duration) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.lastOK.IsZero() && time.Since(g.lastOK) < d
}

// answered records that the daemon answered (an access returned, or an
// event arrived).
func (g *daemonGate) answered() {
	g.mu.Lock()
	g.lastOK = time.Now()
	g.mu.Unlock()
}

// notResponding is the error for an access refused or abandoned.
func (g *daemonGate) notResponding(what string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stuck > 0 && what != g.stuckWhat {
		return fmt.Errorf("%s: %w (its %s has been waiting for an answer since %s)", what, ErrDaemonNotResponding,
			g.stuckWhat, g.stuckAt.Format(time.TimeOnly))
	}
	return fmt.Errorf("%s: %w (no answer within %s)", what, ErrDaemonNotResponding, g.timeout)
}

// access is one access in flight.
type access struct {
	what    string
	start   time.Time
	done    bool
	stuck   bool
	expired chan struct{} // closed when it outlives the timeout
}

// gated runs fn, which accesses the daemon, under the gate; the caller waits
// at most the gate's timeout in all (for a slot and for fn). If the caller
// stops waiting (timeout or ctx) before fn returns, fn's result is handed to
// abandon (may be nil) once it arrives, so nothing fn opened is leaked.
func gated[T any](ctx context.Context, g *daemonGate, what string, fn func() (T, error), abandon func(T)) (T, error) {
	var zero T
	if closed, _ := g.watch(); closed {
		return zero, g.notResponding(what)
	}
	wait := time.NewTimer(g.timeout)
	defer wait.Stop()
	select {
	case g.slots <- struct{}{}:
	case <-wait.C:
		return zero, g.notResponding(what)
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", what, ctx.Err())
	}
	a := &access{what: what, start: time.Now(), expired: make(chan struct{})}
	expire := time.AfterFunc(g.timeout, func() { g.expire(a) })
	type result struct {
		v   T
		err error
	}
	results := make(chan result, 1)
	taken := make(chan struct{}) // closed when the caller gives up on the result
	go func() {
		v, err := fn()
		expire.Stop()
		g.finish(a)
		select {
		case <-taken:
			if abandon != nil && err == nil {
				abandon(v)
			}
		default:
			results <- result{v, err}
		}
	}()
	giveUp := func(err error) (T, error) {
		close(taken)
		// fn may have finished just now: its result is then ours to release.
		select {
		case r := <-results:
			if abandon != nil && r.err == nil {
				abandon(r.v)
			}
		default:
		}
		return zero, err
	}
	select {
	case r := <-results:
		return r.v, r.err
	case <-a.expired:
		return giveUp(g.notResponding(what))
	case <-wait.C: // the caller's time is up (waiting for a slot used part of it)
		g.expire(a)
		return giveUp(g.notResponding(what))
	case <-ctx.Done():
		return giveUp(fmt.Errorf("%s: %w", what, ctx.Err()))
	}
}

// expire marks a as stuck, closing the gate, unless it returned meanwhile
// or is marked already.
func (g *daemonGate) expire(a *access) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a.done || a.stuck {
		return
	}
	a.stuck = true
	close(a.expired)
	if g.stuck == 0 {
		g.stuckWhat, g.stuckAt = a.what, a.start
		g.flip()
	}
	g.stuck++
}

// finish records that a returned, reopening the gate if it was the last
// stuck access, and frees its slot.
func (g *daemonGate) finish(a *access) {
	g.mu.Lock()
	a.done = true
	g.lastOK = time.Now()
	if a.stuck {
		g.stuck--
		if g.stuck == 0 {
			g.stuckWhat = ""
			g.flip()
		}
	}
	g.mu.Unlock()
	<-g.slots
}

// flip wakes watchers; g.mu is held.
func (g *daemonGate) flip() {
	close(g.changed)
	g.changed = make(chan struct{})
}
