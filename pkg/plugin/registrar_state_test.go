package plugin

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Identities of kubelet.sock (K1: the kubelet we registered with, K2: its
// successor) and of our socket (S1: the first, S2: served again).
const (
	k1, k2 uint64 = 0x1001, 0x2001
	s1, s2 uint64 = 0x3001, 0x4001
)

var (
	errRefused = errors.New("register accel.io/ac: rpc error: code = Unknown desc = not ready")
	errTimeout = errors.New("register accel.io/ac: rpc error: code = DeadlineExceeded desc = context deadline exceeded")
)

// seen is an observation of a healthy server: kubelet.sock k, our socket
// sock, streams open on our current server.
// Streams opened so far default to those open now (see opened).
func seen(k, sock uint64, streams int) observation {
	return observation{Kubelet: k, Socket: sock, Serving: true, Streams: streams, Opened: uint64(streams)}
}

func (o observation) retired(n int) observation    { o.Retired = n; return o }
func (o observation) stopped() observation         { o.Serving = false; return o }
func (o observation) served(id uint64) observation { o.Event, o.Served = evServed, id; return o }
func (o observation) ok(attempt int) observation {
	o.Event, o.Attempt = evRegistered, attempt
	return o
}
func (o observation) unanswered(attempt int) observation {
	o = o.failed(attempt, errors.New("connect: connection refused"), false)
	o.Unanswered = true
	return o
}
func (o observation) failed(attempt int, err error, ambiguous bool) observation {
	o.Event, o.Attempt, o.Err, o.Ambiguous = evRegisterFailed, attempt, err, ambiguous
	return o
}

// step is one observation at a time since the scenario began, and what
// decide must answer.
type step struct {
	at    time.Duration
	o     observation
	do    doKind
	to    uint64 // doRegister: the kubelet.sock it must reach
	phase phase
	// cancel: the Register in flight must be abandoned.
	cancel bool
	// wakeBy: decide must ask to look again within this (0: unchecked).
	wakeBy time.Duration
}

// scenario is a state and the steps that follow it.
type scenario struct {
	name  string
	from  func(policy) regState
	steps []step
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// registeredWith is the state after a normal start: registered with k on
// socket s, kubelet streaming.
func registeredWith(k, s uint64) func(policy) regState {
	return func(p policy) regState {
		st := newRegState(p)
		for _, o := range []observation{
			seen(k, 0, 0).stopped(),
			seen(k, s, 0).served(s),
			seen(k, s, 0).ok(1),
			seen(k, s, 1),
		} {
			o.Now = t0.Add(-time.Minute)
			st, _ = decide(st, o, p)
		}
		if st.Phase != phaseRegistered || st.Kubelet != k || st.Socket != s {
			panic(fmt.Sprintf("setup: %+v", st))
		}
		return st
	}
}

func fresh(p policy) regState { return newRegState(p) }

func TestDecideOrderings(t *testing.T) {
	p := defaultPolicy()
	ms := time.Millisecond
	scenarios := []scenario{{
		name: "start: serve, register, stream",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 5 * ms, o: seen(k1, s1, 0).ok(1), phase: phaseRegistered, wakeBy: p.StreamGrace},
			{at: 6 * ms, o: seen(k1, s1, 1), phase: phaseRegistered},
		},
	}, {
		name: "start before kubelet: wait, then register when kubelet.sock appears",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(0, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(0, s1, 0).served(s1), phase: phaseUnregistered},
			{at: 3 * time.Second, o: seen(0, s1, 0), phase: phaseUnregistered},
			{at: 4 * time.Second, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		// A killed kubelet leaves kubelet.sock; the new one's cleanup
		// deletes our socket first (tmpfs lists newest first), then
		// kubelet.sock, then listens. The bug of 12137fa: a 1 s grace here.
		name: "kubelet killed: our socket deleted, then kubelet.sock replaced",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0), phase: phaseRegistered, wakeBy: p.HandoverGrace}, // streams end
			{at: 10 * ms, o: seen(k1, 0, 0), do: doServe, phase: phaseServing},
			{at: 10 * ms, o: seen(k1, s2, 0).served(s2), phase: phaseHandover, wakeBy: p.HandoverGrace},
			{at: 11 * ms, o: seen(0, s2, 0), phase: phaseUnregistered},
			{at: 12 * ms, o: seen(k2, s2, 0), do: doRegister, to: k2, phase: phaseRegistering},
			{at: 14 * ms, o: seen(k2, s2, 0).ok(2), phase: phaseRegistered},
		},
	}, {
		name: "our socket deleted while the old kubelet still streams, then kubelet.sock replaced",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, 0, 1), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s2, 0).retired(1).served(s2), phase: phaseRegistered},
			{at: 1 * ms, o: seen(0, s2, 0).retired(1), phase: phaseUnregistered},
			{at: 2 * ms, o: seen(0, s2, 0), phase: phaseUnregistered},
			{at: 3 * ms, o: seen(k2, s2, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "kubelet.sock replaced, then our socket deleted: no second registration while kubelet streams",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0), phase: phaseRegistered},
			{at: 5 * ms, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
			{at: 7 * ms, o: seen(k2, s1, 0).ok(2), phase: phaseRegistered},
			{at: 8 * ms, o: seen(k2, s1, 1), phase: phaseRegistered},
			{at: 20 * ms, o: seen(k2, 0, 1), do: doServe, phase: phaseServing},
			{at: 20 * ms, o: seen(k2, s2, 0).retired(1).served(s2), phase: phaseRegistered},
			{at: time.Minute, o: seen(k2, s2, 0).retired(1), phase: phaseRegistered},
			// The old server's stream ends: kubelet drops that endpoint, and
			// after the hand-over grace the current socket registers.
			{at: time.Minute + ms, o: seen(k2, s2, 0), phase: phaseRegistered, wakeBy: p.HandoverGrace},
			{at: time.Minute + p.HandoverGrace/2, o: seen(k2, s2, 0), phase: phaseRegistered},
			{at: time.Minute + ms + p.HandoverGrace, o: seen(k2, s2, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "kubelet.sock replaced and our socket deleted, seen at once",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k2, 0, 0), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k2, s2, 0).served(s2), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "kubelet stopped cleanly: kubelet.sock gone, our socket deleted, kubelet.sock created",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(0, s1, 0), phase: phaseUnregistered},
			{at: 1 * ms, o: seen(0, 0, 0), do: doServe, phase: phaseServing},
			{at: 1 * ms, o: seen(0, s2, 0).served(s2), phase: phaseUnregistered},
			{at: 2 * ms, o: seen(k2, s2, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "kubelet.sock absent for 5 s, then back",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(0, s1, 0), phase: phaseUnregistered},
			{at: 1 * time.Second, o: seen(0, s1, 0), phase: phaseUnregistered},
			{at: 5 * time.Second, o: seen(0, s1, 0), phase: phaseUnregistered},
			{at: 5*time.Second + ms, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "our server stops, kubelet stays: hand over, then register the same kubelet",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s2, 0).served(s2), phase: phaseHandover, wakeBy: p.HandoverGrace},
			{at: p.HandoverGrace / 2, o: seen(k1, s2, 0), phase: phaseHandover},
			{at: p.HandoverGrace, o: seen(k1, s2, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		name: "our server stops accepting but kubelet still streams from it: nothing to redo",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 1).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s2, 0).retired(1).served(s2), phase: phaseRegistered},
			{at: time.Minute, o: seen(k1, s2, 0).retired(1), phase: phaseRegistered},
		},
	}, {
		name: "our server stops, kubelet.sock replaced during the hand-over: register at once",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s2, 0).served(s2), phase: phaseHandover},
			{at: 50 * ms, o: seen(k2, s2, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "Register times out while kubelet streams: registered, no second Register",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 1 * time.Second, o: seen(k1, s1, 1), phase: phaseRegistering},
			{at: 5 * time.Second, o: seen(k1, s1, 1).failed(1, errTimeout, true), phase: phaseRegistered},
			{at: time.Minute, o: seen(k1, s1, 1), phase: phaseRegistered},
		},
	}, {
		// The old kubelet's stream may still be open when its successor's
		// kubelet.sock appears: it proves nothing about the successor.
		name: "kubelet.sock replaced while the old kubelet's stream lingers: not taken for the new one's",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k2, s1, 1), do: doRegister, to: k2, phase: phaseRegistering},
			{at: 5 * time.Second, o: seen(k2, s1, 1).failed(2, errTimeout, true), phase: phaseUnconfirmed},
			{at: 5*time.Second + p.ConfirmGrace, o: seen(k2, s1, 1), do: doRegister, to: k2, phase: phaseRegistering},
			{at: 5*time.Second + p.ConfirmGrace + ms, o: seen(k2, s1, 0).ok(3), phase: phaseRegistered},
		},
	}, {
		name: "Register fails while the old kubelet's stream lingers: not registered",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k2, s1, 1), do: doRegister, to: k2, phase: phaseRegistering},
			{at: ms, o: seen(k2, s1, 1).failed(2, errRefused, false), phase: phaseUnregistered},
			{at: 200 * ms, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "Register times out, the stream follows: registered, no second Register",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 5 * time.Second, o: seen(k1, s1, 0).failed(1, errTimeout, true), phase: phaseUnconfirmed, wakeBy: p.ConfirmGrace},
			{at: 5*time.Second + 300*ms, o: seen(k1, s1, 1), phase: phaseRegistered},
		},
	}, {
		name: "Register times out, no stream: try again after the confirmation grace",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 5 * time.Second, o: seen(k1, s1, 0).failed(1, errTimeout, true), phase: phaseUnconfirmed},
			{at: 5*time.Second + p.ConfirmGrace/2, o: seen(k1, s1, 0), phase: phaseUnconfirmed},
			{at: 5*time.Second + p.ConfirmGrace, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		// kubelet's net.Listen binds (inotify wakes us) before it listens.
		name: "new kubelet.sock not listening yet: one quick retry, then the back-off",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
			{at: ms, o: seen(k2, s1, 0).unanswered(2), phase: phaseUnregistered, wakeBy: p.ListenGrace},
			{at: ms + p.ListenGrace, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
			{at: 2*ms + p.ListenGrace, o: seen(k2, s1, 0).unanswered(3), phase: phaseUnregistered, wakeBy: p.BackoffMin},
			{at: 3*ms + p.ListenGrace, o: seen(k2, s1, 0), phase: phaseUnregistered},
			{at: 2*ms + p.ListenGrace + p.BackoffMin, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering},
		},
	}, {
		name: "kubelet refuses: retry with growing backoff",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 1 * ms, o: seen(k1, s1, 0).failed(1, errRefused, false), phase: phaseUnregistered, wakeBy: 100 * ms},
			{at: 50 * ms, o: seen(k1, s1, 0), phase: phaseUnregistered},
			{at: 101 * ms, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 102 * ms, o: seen(k1, s1, 0).failed(2, errRefused, false), phase: phaseUnregistered, wakeBy: 200 * ms},
			{at: 250 * ms, o: seen(k1, s1, 0), phase: phaseUnregistered},
			{at: 302 * ms, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 303 * ms, o: seen(k1, s1, 0).ok(3), phase: phaseRegistered},
		},
	}, {
		name: "stream lost, kubelet stays: register again after the hand-over grace",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0), phase: phaseRegistered, wakeBy: p.HandoverGrace},
			{at: p.HandoverGrace / 2, o: seen(k1, s1, 0), phase: phaseRegistered},
			{at: p.HandoverGrace, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		name: "stream lost and back (the stand-in reconnected): nothing to do",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 0), phase: phaseRegistered},
			{at: 100 * ms, o: seen(k1, s1, 1), phase: phaseRegistered},
			{at: time.Minute, o: seen(k1, s1, 1), phase: phaseRegistered},
		},
	}, {
		name: "registered but kubelet never streams: register again after the stream grace",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 1 * ms, o: seen(k1, s1, 0).ok(1), phase: phaseRegistered, wakeBy: p.StreamGrace},
			{at: p.StreamGrace / 2, o: seen(k1, s1, 0), phase: phaseRegistered},
			{at: p.StreamGrace + ms, o: seen(k1, s1, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		name: "kubelet.sock replaced during Register: abandon it, register with the new one",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 10 * ms, o: seen(k2, s1, 0), do: doRegister, to: k2, phase: phaseRegistering, cancel: true},
			{at: 11 * ms, o: seen(k2, s1, 0).ok(1), phase: phaseRegistering}, // the abandoned call: ignored
			{at: 12 * ms, o: seen(k2, s1, 0).ok(2), phase: phaseRegistered},
		},
	}, {
		name: "our socket deleted during Register with a live kubelet: abandon it, hand over",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 10 * ms, o: seen(k1, 0, 0), do: doServe, phase: phaseServing, cancel: true},
			{at: 10 * ms, o: seen(k1, s2, 0).served(s2), phase: phaseHandover},
			{at: 10*ms + p.HandoverGrace, o: seen(k1, s2, 0), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		name: "chmod of either socket changes nothing",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: seen(k1, s1, 1), phase: phaseRegistered},
			{at: time.Hour, o: seen(k1, s1, 1), phase: phaseRegistered},
		},
	}, {
		name: "cannot serve (a live socket of another instance): retry",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, s1, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: observation{Kubelet: k1, Socket: s1, Event: evServeFailed, Err: errors.New("served by another process")}, phase: phaseIdle, wakeBy: p.ServeRetry},
			{at: p.ServeRetry / 2, o: seen(k1, s1, 0).stopped(), phase: phaseIdle},
			{at: p.ServeRetry, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: p.ServeRetry, o: seen(k1, s2, 0).served(s2), do: doRegister, to: k1, phase: phaseRegistering},
		},
	}, {
		name: "shutdown while registering: stop, abandon the call, then nothing",
		from: fresh,
		steps: []step{
			{at: 0, o: seen(k1, 0, 0).stopped(), do: doServe, phase: phaseServing},
			{at: 0, o: seen(k1, s1, 0).served(s1), do: doRegister, to: k1, phase: phaseRegistering},
			{at: 1 * ms, o: observation{Event: evShutdown}, do: doStop, phase: phaseStopped, cancel: true},
			{at: 2 * ms, o: seen(k1, s1, 0).ok(1), phase: phaseStopped},
			{at: 3 * ms, o: seen(k2, 0, 0), phase: phaseStopped},
		},
	}, {
		name: "shutdown while registered",
		from: registeredWith(k1, s1),
		steps: []step{
			{at: 0, o: observation{Event: evShutdown}, do: doStop, phase: phaseStopped},
		},
	}}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			st := sc.from(p)
			for i, s := range sc.steps {
				o := s.o
				o.Now = t0.Add(s.at)
				before := st
				var a action
				st, a = decide(st, o, p)
				ctx := fmt.Sprintf("step %d (at %s, %+v) from %s", i, s.at, o, before.Phase)
				if a.Do != s.do || st.Phase != s.phase {
					t.Fatalf("%s: did %s → %s (%q), want %s → %s", ctx, a.Do, st.Phase, a.Why, s.do, s.phase)
				}
				if a.Do == doRegister && a.Kubelet != s.to {
					t.Fatalf("%s: Register to kubelet.sock %#x, want %#x", ctx, a.Kubelet, s.to)
				}
				if a.Cancel != s.cancel {
					t.Fatalf("%s: cancel = %v, want %v", ctx, a.Cancel, s.cancel)
				}
				if s.wakeBy > 0 && (a.Wake <= 0 || a.Wake > s.wakeBy) {
					t.Fatalf("%s: wake in %s, want within %s", ctx, a.Wake, s.wakeBy)
				}
				if st.registered() != (st.Phase == phaseRegistered) {
					t.Fatalf("%s: registered() disagrees with the phase", ctx)
				}
			}
		})
	}
}

// driver runs decide like Run does, on virtual time: it follows the wakes,
// carries serve actions out at once and answers each Register with answer.
type driver struct {
	t       *testing.T
	p       policy
	st      regState
	now     time.Time
	kub     uint64 // kubelet.sock now
	sock    uint64
	streams int // ListAndWatch streams open now
	answer  func(kubelet uint64) error
	calls   []time.Time // Register calls, by virtual time
}

func (d *driver) look(ev observation) action {
	o := ev
	o.Now, o.Kubelet, o.Socket, o.Serving, o.Streams = d.now, d.kub, d.sock, true, d.streams
	for {
		var a action
		d.st, a = decide(d.st, o, d.p)
		switch a.Do {
		case doServe:
			d.sock++
			o = observation{Now: d.now, Kubelet: d.kub, Socket: d.sock, Serving: true, Event: evServed, Served: d.sock}
			continue
		case doRegister:
			d.calls = append(d.calls, d.now)
			o = observation{Now: d.now, Kubelet: d.kub, Socket: d.sock, Serving: true, Streams: d.streams, Attempt: a.Attempt}
			if err := d.answer(a.Kubelet); err != nil {
				o.Event, o.Err = evRegisterFailed, err
			} else {
				o.Event = evRegistered
			}
			continue
		}
		return a
	}
}

// until advances virtual time to t, waking when decide asked to.
func (d *driver) until(t time.Time) {
	for {
		a := d.look(observation{})
		if a.Wake <= 0 || d.now.Add(a.Wake).After(t) {
			d.now = t
			d.look(observation{})
			return
		}
		d.now = d.now.Add(a.Wake)
	}
}

// A kubelet that is down with its kubelet.sock left behind refuses every
// connection; the back-off grows. A new kubelet.sock resets it: the first
// Register to it goes out at once, and a refusal by it is retried after the
// minimum back-off, not the predecessor's.
func TestDecideBackoffResetByNewKubeletSock(t *testing.T) {
	p := defaultPolicy()
	d := &driver{t: t, p: p, st: newRegState(p), now: t0, kub: k1}
	alive := map[uint64]bool{k1: true}
	refuse := 0
	d.answer = func(k uint64) error {
		if !alive[k] {
			return errors.New("connect: connection refused")
		}
		if refuse > 0 {
			refuse--
			return errRefused
		}
		return nil
	}
	d.until(t0.Add(time.Second))
	if !d.st.registered() {
		t.Fatalf("not registered at start: %+v", d.st)
	}
	d.streams = 1
	d.until(d.now.Add(time.Second))
	// kubelet dies, its socket stays for 5 s.
	alive[k1], d.streams = false, 0
	down := d.now
	d.until(down.Add(5 * time.Second))
	if d.st.Backoff < 2*time.Second {
		t.Fatalf("backoff after 5 s of refusals = %s; the scenario needs it grown", d.st.Backoff)
	}
	failures := len(d.calls) - 1
	// The new kubelet refuses once (not ready), then accepts.
	d.kub, alive[k2], refuse = k2, true, 1
	back := d.now
	calls := len(d.calls)
	d.look(observation{})
	if len(d.calls) != calls+1 || !d.calls[calls].Equal(back) {
		t.Fatalf("no Register at once on the new kubelet.sock (calls %v)", d.calls[calls:])
	}
	d.until(back.Add(time.Second))
	if !d.st.registered() || d.st.Kubelet != k2 {
		t.Fatalf("not registered with the new kubelet 1 s after it came: %+v", d.st)
	}
	if retry := d.calls[calls+1].Sub(back); retry > p.BackoffMin {
		t.Errorf("the new kubelet's refusal was retried after %s, want the minimum back-off %s", retry, p.BackoffMin)
	}
	t.Logf("%d refused Register calls while kubelet was down; registered with its successor %s after its kubelet.sock appeared",
		failures, d.calls[len(d.calls)-1].Sub(back))
}

func TestRegisterAmbiguous(t *testing.T) {
	for _, tc := range []struct {
		err    string
		dialed bool
		want   bool
	}{
		{"connect: connection refused", false, false},
		{"rpc error: code = Unknown desc = device plugin already connected", true, false},
		{"rpc error: code = DeadlineExceeded desc = context deadline exceeded", true, true},
		{"rpc error: code = DeadlineExceeded desc = context deadline exceeded", false, false},
		{"rpc error: code = Unavailable desc = connection closed", true, true},
	} {
		err := statusError(tc.err)
		if got := registerAmbiguous(err, tc.dialed); got != tc.want {
			t.Errorf("registerAmbiguous(%q, dialed=%v) = %v, want %v", tc.err, tc.dialed, got, tc.want)
		}
	}
}

// statusError makes a gRPC status error from its printed form.
func statusError(s string) error {
	for code, name := range map[codes.Code]string{codes.Unknown: "Unknown", codes.DeadlineExceeded: "DeadlineExceeded", codes.Unavailable: "Unavailable"} {
		if strings.Contains(s, "code = "+name) {
			return status.Error(code, s)
		}
	}
	return errors.New(s)
}

// FuzzDecide feeds decide arbitrary observation sequences (identities,
// streams, events, time steps, consistent or not) and checks what must
// hold whatever the world does:
//   - a Register goes only to the kubelet.sock there now;
//   - never to a kubelet we are registered with while it streams from us;
//   - never to the kubelet a hand-over waits for, before its grace;
//   - "registered" always means registered with the kubelet.sock there now;
//   - liveness: when decide asks for no wake-up and does nothing, time
//     alone would change nothing (no deadline is forgotten).
func FuzzDecide(f *testing.F) {
	f.Add([]byte{0x00, 0x10, 0x21, 0x31, 0x40, 0x55, 0x60, 0x70})
	f.Add([]byte{0x03, 0x13, 0x23, 0x83, 0x93, 0xa3, 0xb3, 0xc3, 0xd3, 0xe3, 0xf3})
	f.Add([]byte("kubelet restarted, sockets gone, kubelet.sock replaced"))
	f.Fuzz(func(t *testing.T, ops []byte) {
		p := defaultPolicy()
		st := newRegState(p)
		now := t0
		kubelets := []uint64{0, k1, k2, 0x5001}
		sockets := []uint64{0, s1, s2}
		steps := []time.Duration{0, time.Millisecond, 10 * time.Millisecond, 300 * time.Millisecond, time.Second, 6 * time.Second}
		for i := 0; i+1 < len(ops); i += 2 {
			a, b := ops[i], ops[i+1]
			now = now.Add(steps[int(a>>5)%len(steps)])
			o := observation{
				Now:     now,
				Kubelet: kubelets[int(a>>3)&3],
				Socket:  sockets[int(a>>1)&3%len(sockets)],
				Serving: a&1 == 0,
				Streams: int(b>>6) & 1, Retired: int(b>>5) & 1, Opened: uint64(b>>4) & 3,
			}
			switch b & 7 {
			case 1:
				o.Event, o.Served = evServed, o.Socket
			case 2:
				o.Event, o.Err = evServeFailed, errors.New("busy")
			case 3:
				o.Event, o.Attempt = evRegistered, st.Attempt-int(b>>3&1)
			case 4:
				o.Event, o.Attempt, o.Err, o.Ambiguous = evRegisterFailed, st.Attempt, errTimeout, b&8 != 0
			case 5:
				o.Event, o.Attempt, o.Err, o.Unanswered = evRegisterFailed, st.Attempt, errRefused, b&8 != 0
			}
			before := st
			var act action
			st, act = decide(st, o, p)
			fail := func(msg string) {
				t.Helper()
				t.Fatalf("%s\nop %d: %+v\nbefore %+v\nafter %+v\naction %+v", msg, i/2, o, before, st, act)
			}
			if act.Do == doRegister {
				if act.Kubelet == 0 || act.Kubelet != o.Kubelet {
					fail(fmt.Sprintf("Register to %#x with kubelet.sock %#x", act.Kubelet, o.Kubelet))
				}
				if before.Phase == phaseRegistered && before.Kubelet == o.Kubelet && o.Streams+o.Retired > 0 && o.Event == evNone {
					fail("Register while the kubelet we are registered with streams")
				}
				if before.Phase == phaseHandover && before.Kubelet == o.Kubelet && o.Now.Sub(before.Since) < p.HandoverGrace && o.Event == evNone {
					fail("Register to the kubelet of a hand-over before its grace")
				}
				if before.Phase == phaseRegistered && before.Kubelet == o.Kubelet && before.Streamed && !before.Since.IsZero() &&
					o.Now.Sub(before.Since) < p.HandoverGrace && o.Event == evNone {
					fail("Register to the same kubelet right after its stream ended")
				}
			}
			if st.registered() && st.Kubelet != o.Kubelet {
				fail(fmt.Sprintf("registered with %#x while kubelet.sock is %#x", st.Kubelet, o.Kubelet))
			}
			if act.Do == doNothing && act.Wake == 0 && st.Phase != phaseServing {
				later := o
				later.Now, later.Event = o.Now.Add(time.Hour), evNone
				if _, a2 := decide(st, later, p); a2.Do != doNothing {
					fail("no wake-up asked, yet an hour later decide does " + a2.Do.String())
				}
			}
		}
	})
}
