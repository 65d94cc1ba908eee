package plugin

import (
	"fmt"
	"strings"
	"time"
)

// The registrar's policy, one endpoint (resource) at a time, as a pure
// function: decide(state, observation) → (state, action). Run (in
// registration.go) only observes the file system and its own servers,
// carries out actions, and feeds their outcomes back as events; every
// timing decision is made here and table-tested without sockets.
//
// What the policy relies on in kubelet (read in k8s.io/kubernetes v1.37.2,
// pkg/kubelet/cm/devicemanager, the version e2e/kubelet runs):
//
//   - A starting kubelet cleans the directory, then listens:
//     plugin/v1beta1/server.go (*server).Start calls
//     CleanupPluginDirectory (manager.go: Readdirnames, then removes every
//     socket but the checkpoint, in directory order) before
//     net.Listen(kubelet.sock). So a deleted socket of ours means a kubelet
//     is starting, and a kubelet.sock not seen before is a kubelet that has
//     never seen us: register with it at once; a back-off earned with its
//     predecessor does not apply. A killed kubelet leaves its kubelet.sock
//     behind until that cleanup, so our socket can vanish while the dead
//     kubelet's socket is still there (tmpfs lists the newest entries
//     first, and ours are newer): that is not "the same kubelet".
//     net.Listen binds before it listens: a connect in between is refused.
//   - Register (server.go) is connectClient (handler.go): registerClient,
//     then client.go Connect (dial our socket, blocking, up to 10 s, then
//     manager.go PluginConnected: GetDevicePluginOptions, and "device
//     plugin already connected" if endpointStore holds the socket path).
//     On any Connect error deregisterClient drops every client for that
//     path, the live one included; when the live stream later ends,
//     runClient's getClient finds nothing and PluginDisconnected is never
//     called, so the stale endpoint blocks our path until kubelet restarts.
//     A Register to a kubelet that may still hold our endpoint is the one
//     mistake this policy must never make.
//   - An endpoint lives exactly as long as its ListAndWatch stream:
//     runClient (handler.go) runs client.go Run until Recv fails, then
//     disconnectClient → PluginDisconnected (manager.go) deletes it from
//     endpointStore (and, for the last one, marks the devices unhealthy).
//     So once our stream to a kubelet has ended, a short grace (hand-over)
//     makes a new Register safe; and a stream that lives on a server we
//     replaced keeps the endpoint working: nothing to redo.
//   - The stream is opened by runClient after connectClient returned, and
//     the manager shows the devices as soon as the first list arrives,
//     possibly before our Register call returns; a Register that failed on
//     our side (deadline, broken connection) may have been accepted. Only a
//     stream opened on our server after the call was issued proves it.
//   - After a restart the manager's capacity for our resources is 0 until
//     we register again (manager.go readCheckpoint: empty healthyDevices).

// phase is where one endpoint is in its life.
type phase int

const (
	// phaseIdle: no server (start, or serving failed); serve at ServeAt.
	phaseIdle phase = iota
	// phaseServing: a serve action is being carried out; its outcome is the
	// next event. Kubelet is the kubelet that may hold our previous endpoint.
	phaseServing
	// phaseUnregistered: serving; no kubelet holds our endpoint. Register
	// as soon as kubelet.sock exists and RetryAt has passed.
	phaseUnregistered
	// phaseHandover: serving a fresh socket at the path Kubelet may still
	// hold an endpoint for (our old server's stream just ended). Register
	// after the grace, or at once if kubelet.sock goes or is replaced.
	phaseHandover
	// phaseRegistering: a Register call (Attempt) to Kubelet is in flight.
	phaseRegistering
	// phaseUnconfirmed: Register failed in a way that does not exclude that
	// Kubelet accepted (timeout, broken connection); wait for its stream.
	phaseUnconfirmed
	// phaseRegistered: registered with Kubelet.
	phaseRegistered
	// phaseStopped: shut down; terminal.
	phaseStopped
)

var phaseNames = [...]string{"idle", "serving", "unregistered", "handover", "registering", "unconfirmed", "registered", "stopped"}

func (p phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// regState is one endpoint's registration state.
type regState struct {
	Phase phase
	// Kubelet is the kubelet.sock identity the phase is about: registered
	// or registering with, or handing over from (0: none).
	Kubelet uint64
	// Since is when the current wait began: the hand-over or confirmation;
	// in phaseRegistered, since when no stream is open (zero: streaming).
	Since time.Time
	// Streamed: kubelet has streamed from us since this registration.
	Streamed bool
	// Socket is the identity of the socket our current server listens on.
	Socket uint64
	// SeenKubelet is kubelet.sock's identity at the last observation.
	SeenKubelet uint64
	RetryAt     time.Time     // no Register before this
	Backoff     time.Duration // wait after the next failure
	ServeAt     time.Time     // phaseIdle: serve again at
	Attempt     int           // Register calls issued
	// OpenedBefore is how many streams our current server had opened when
	// the Register in flight was issued: only a stream opened after it
	// proves that this kubelet accepted (an older one may still linger).
	OpenedBefore uint64
	// Quick is the kubelet.sock that had its one quick retry (see
	// policy.ListenGrace).
	Quick     uint64
	Registers int    // registrations that took
	Why       string // why the next Register is needed
	LastErr   string // last failure logged (logged once until it changes)
	Waiting   bool   // "waiting for kubelet" has been logged
}

// event is what happened since the last observation, if anything.
type event int

const (
	evNone event = iota
	evServed
	evServeFailed
	evRegistered
	evRegisterFailed
	evShutdown
)

// observation is what the registrar sees when it looks, plus the event
// that made it look.
type observation struct {
	Now time.Time
	// Kubelet is kubelet.sock's identity (0: absent).
	Kubelet uint64
	// Socket is the identity of the socket at our path (0: absent).
	Socket uint64
	// Serving: our current server's Serve has not returned.
	Serving bool
	// Streams is the ListAndWatch streams open on our current server;
	// Retired those on servers we replaced (kept while they stream).
	Streams, Retired int
	// Opened is how many streams our current server has opened so far.
	Opened uint64

	Event event
	// Attempt is the Register call an evRegistered/evRegisterFailed is for.
	Attempt int
	// Served is the new socket's identity (evServed).
	Served uint64
	// Err is the failure (evServeFailed, evRegisterFailed).
	Err error
	// Ambiguous: the failed Register reached kubelet and may have been
	// accepted (evRegisterFailed).
	Ambiguous bool
	// Unanswered: the failed Register found nobody listening on
	// kubelet.sock (evRegisterFailed).
	Unanswered bool
}

// doKind is what the registrar must do.
type doKind int

const (
	doNothing doKind = iota
	// doServe: retire the current server (kept while it streams) and serve
	// on a fresh socket; report evServed or evServeFailed.
	doServe
	// doRegister: call Register (Attempt) on the kubelet.sock whose identity
	// is Kubelet; report evRegistered or evRegisterFailed.
	doRegister
	// doStop: stop every server, remove our socket if it is still ours.
	doStop
)

var doNames = [...]string{"nothing", "serve", "register", "stop"}

func (d doKind) String() string { return doNames[d] }

// action is decide's answer.
type action struct {
	Do      doKind
	Kubelet uint64 // doRegister
	Attempt int    // doRegister
	// Cancel: abandon the Register call in flight.
	Cancel bool
	// Why is the reason for a serve or a register (logged with it).
	Why string
	// Info and Warn are state changes worth a log line.
	Info, Warn string
	// Wake: look again within this even if nothing happens (0: only on an
	// event: a file in the directory, a stream, an outcome).
	Wake time.Duration
}

// policy is the registrar's timing.
type policy struct {
	// HandoverGrace: how long kubelet may take to drop an endpoint after
	// its stream ended, before the same kubelet is asked to register the
	// path again.
	HandoverGrace time.Duration
	// StreamGrace: how long kubelet may take to open its stream after a
	// Register it accepted.
	StreamGrace time.Duration
	// ConfirmGrace: how long to wait for a stream after an ambiguous
	// Register failure before trying again.
	ConfirmGrace           time.Duration
	BackoffMin, BackoffMax time.Duration
	// ListenGrace: when a new kubelet.sock does not answer the first
	// Register, try once more this soon. kubelet's net.Listen binds (the
	// file appears, inotify wakes us) before it listens, and a connect in
	// between is refused.
	ListenGrace time.Duration
	// ServeRetry: wait after a failure to serve.
	ServeRetry time.Duration
}

func defaultPolicy() policy {
	return policy{
		HandoverGrace: time.Second,
		StreamGrace:   5 * time.Second,
		ConfirmGrace:  time.Second,
		BackoffMin:    100 * time.Millisecond,
		BackoffMax:    10 * time.Second,
		ListenGrace:   10 * time.Millisecond,
		ServeRetry:    time.Second,
	}
}

// newRegState is an endpoint that has not served yet.
func newRegState(p policy) regState {
	return regState{Phase: phaseIdle, Backoff: p.BackoffMin}
}

// registered reports whether the endpoint counts as registered with the
// current kubelet (readiness).
func (s regState) registered() bool { return s.Phase == phaseRegistered }

// decide is the registrar's whole policy for one endpoint.
func decide(s regState, o observation, p policy) (regState, action) {
	var a action
	if s.Phase == phaseStopped {
		return s, a
	}
	if o.Event == evShutdown {
		a.Do, a.Cancel = doStop, s.Phase == phaseRegistering
		s.Phase = phaseStopped
		return s, a
	}
	// A kubelet.sock never seen before belongs to a kubelet that never saw
	// our failures: its predecessor's back-off does not apply.
	if o.Kubelet != 0 && o.Kubelet != s.SeenKubelet {
		s.Backoff, s.RetryAt = p.BackoffMin, time.Time{}
	}
	s.SeenKubelet = o.Kubelet

	switch o.Event {
	case evServed:
		s.Socket, s.LastErr, s.ServeAt, s.OpenedBefore = o.Served, "", time.Time{}, 0
		holder := s.Kubelet
		switch {
		case holder != 0 && holder == o.Kubelet && o.Retired > 0:
			// kubelet streams from the server we replaced: it still holds
			// our endpoint, which keeps working. Nothing to redo.
			s.Phase, s.Since, s.Streamed = phaseRegistered, time.Time{}, true
		case holder != 0 && holder == o.Kubelet:
			s.Phase, s.Since = phaseHandover, o.Now
			s.Why = "new socket, same kubelet (after its hand-over grace)"
		default:
			s.Phase, s.Kubelet = phaseUnregistered, 0
			if s.Why == "" {
				s.Why = "first registration"
			}
		}
	case evServeFailed:
		s.Phase, s.ServeAt = phaseIdle, o.Now.Add(p.ServeRetry)
		if msg := errString(o.Err); msg != s.LastErr {
			a.Warn, s.LastErr = "cannot serve device plugin socket; retrying: "+msg, msg
		}
		a.Wake = p.ServeRetry
		return s, a
	case evRegistered, evRegisterFailed:
		if s.Phase != phaseRegistering || o.Attempt != s.Attempt {
			break // superseded: its kubelet is gone or we cancelled it
		}
		switch {
		case o.Event == evRegistered:
			a.Info, a.Why = "registered with kubelet", s.Why
			s = s.nowRegistered(o.Now, p)
		case s.acceptedBy(o):
			// kubelet connected back and streams: it accepted. A second
			// Register would be refused as a duplicate.
			s = s.nowRegistered(o.Now, p)
			a.Info = "registered with kubelet (it streams from us although Register failed: " + errString(o.Err) + ")"
		case o.Ambiguous:
			s.Phase, s.Since = phaseUnconfirmed, o.Now
			a.Warn = "Register failed after reaching kubelet; waiting for its stream before trying again: " + errString(o.Err)
		case o.Unanswered && s.Quick != s.Kubelet:
			s.Phase, s.Quick = phaseUnregistered, s.Kubelet
			s.RetryAt = o.Now.Add(p.ListenGrace)
			s.Why = "new kubelet.sock did not answer yet"
		default:
			s.Phase = phaseUnregistered
			s.RetryAt = o.Now.Add(s.Backoff)
			msg := errString(o.Err)
			if msg != s.LastErr {
				a.Warn = fmt.Sprintf("registration with kubelet failed; retrying in %s (backoff): %s", s.Backoff, msg)
				if strings.Contains(msg, "already connected") {
					a.Warn += " (kubelet holds a stale endpoint for our socket; it forgets it only when kubelet restarts)"
				}
				s.LastErr = msg
			}
			s.Backoff = min(2*s.Backoff, p.BackoffMax)
			s.Why = "retry after: " + msg
		}
	}

	// Our server: a fresh socket if it vanished (kubelet deletes every
	// socket when it starts), was replaced, or the server stopped.
	switch s.Phase {
	case phaseIdle:
		if o.Now.Before(s.ServeAt) {
			a.Wake = s.ServeAt.Sub(o.Now)
			return s, a
		}
		s.Phase = phaseServing
		a.Do, a.Why = doServe, "starting"
		if s.Attempt > 0 || s.Registers > 0 || s.LastErr != "" {
			a.Why = "serving again"
		}
		return s, a
	case phaseServing:
		return s, a
	}
	why := ""
	switch {
	case !o.Serving:
		why = "server stopped"
	case o.Socket == 0:
		why = "socket removed (kubelet restarting?)"
	case o.Socket != s.Socket:
		why = "socket replaced"
	}
	if why != "" {
		if (s.Phase == phaseRegistering || s.Phase == phaseUnconfirmed) && s.Kubelet == o.Kubelet && s.acceptedBy(o) {
			// kubelet already streams from the server we are replacing.
			s = s.nowRegistered(o.Now, p)
			a.Info = "registered with kubelet (it streams from us)"
		}
		holder := uint64(0)
		if s.Phase != phaseUnregistered && s.Kubelet == o.Kubelet {
			holder = s.Kubelet // it may hold our endpoint at this path
		}
		a.Cancel = s.Phase == phaseRegistering
		s.Phase, s.Kubelet = phaseServing, holder
		a.Do, a.Why = doServe, why
		if holder == 0 {
			s.Why = why
		}
		return s, a
	}

	// Each phase can only fall to phaseUnregistered (or rise to
	// phaseRegistered), so one pass in this order settles.
	if s.Phase == phaseRegistered {
		switch {
		case o.Kubelet == 0:
			s.Phase, s.Kubelet, s.Why = phaseUnregistered, 0, "kubelet restarted (its socket went)"
		case o.Kubelet != s.Kubelet:
			s.Phase, s.Kubelet, s.Why = phaseUnregistered, 0, "kubelet.sock recreated (kubelet restarted)"
		case o.Streams+o.Retired > 0:
			s.Since, s.Streamed = time.Time{}, true
		case s.Since.IsZero():
			s.Since = o.Now // the stream just ended
		case o.Now.Sub(s.Since) >= s.streamWait(p):
			s.Phase, s.Kubelet = phaseUnregistered, 0
			s.Why = "kubelet holds no ListAndWatch stream"
			if s.Streamed {
				s.Why = "ListAndWatch stream lost"
			}
		}
	}
	if s.Phase == phaseHandover && (o.Kubelet != s.Kubelet || o.Now.Sub(s.Since) >= p.HandoverGrace) {
		if o.Kubelet != s.Kubelet {
			s.Why = "kubelet.sock went or was replaced during the hand-over"
		}
		s.Phase, s.Kubelet = phaseUnregistered, 0
	}
	if s.Phase == phaseUnconfirmed {
		switch {
		case o.Kubelet != s.Kubelet:
			s.Phase, s.Kubelet, s.Why = phaseUnregistered, 0, "kubelet.sock recreated"
		case s.acceptedBy(o):
			s = s.nowRegistered(o.Now, p)
			a.Info = "registered with kubelet (it streams from us although Register failed)"
		case o.Now.Sub(s.Since) >= p.ConfirmGrace:
			s.Phase, s.Kubelet = phaseUnregistered, 0
			s.Backoff = min(2*s.Backoff, p.BackoffMax)
			s.Why = "no stream after an unconfirmed Register"
		}
	}
	if s.Phase == phaseRegistering && o.Kubelet != s.Kubelet {
		// kubelet.sock went or was replaced while we called: whatever that
		// kubelet answers, it is gone.
		a.Cancel = true
		s.Phase, s.Kubelet, s.Why = phaseUnregistered, 0, "kubelet.sock recreated during Register"
	}
	if s.Phase == phaseUnregistered {
		switch {
		case o.Kubelet == 0:
			if !s.Waiting {
				a.Info, s.Waiting = "no kubelet socket; waiting for kubelet", true
			}
		case o.Now.Before(s.RetryAt):
		default:
			s.Waiting = false
			s.Attempt++
			s.Phase, s.Kubelet, s.OpenedBefore = phaseRegistering, o.Kubelet, o.Opened
			a.Do, a.Kubelet, a.Attempt, a.Why = doRegister, o.Kubelet, s.Attempt, s.Why
			if s.Registers == 0 && s.Attempt == 1 {
				a.Why = "first registration"
			}
		}
	}
	a.Wake = s.deadline(o, p)
	return s, a
}

// nowRegistered enters phaseRegistered with s.Kubelet.
func (s regState) nowRegistered(now time.Time, p policy) regState {
	s.Phase, s.Since, s.Streamed = phaseRegistered, now, false
	s.Registers++
	s.Backoff, s.RetryAt, s.LastErr, s.Why, s.Waiting = p.BackoffMin, time.Time{}, "", "", false
	return s
}

// acceptedBy reports whether the observation proves that the kubelet of
// the Register in flight (or just failed) accepted it: a stream opened on
// our current server since the call was issued. A stream that was already
// open may belong to a kubelet that is dying while its successor starts.
func (s regState) acceptedBy(o observation) bool {
	return o.Streams > 0 && o.Opened > s.OpenedBefore
}

// streamWait is how long a registered endpoint may go without a stream:
// kubelet opens the first one right after Register, and drops the
// endpoint right after a stream ends.
func (s regState) streamWait(p policy) time.Duration {
	if s.Streamed {
		return p.HandoverGrace
	}
	return p.StreamGrace
}

// deadline is when the state must be looked at again without an event.
func (s regState) deadline(o observation, p policy) time.Duration {
	var at time.Time
	switch s.Phase {
	case phaseUnregistered:
		if o.Kubelet != 0 {
			at = s.RetryAt
		}
	case phaseHandover:
		at = s.Since.Add(p.HandoverGrace)
	case phaseUnconfirmed:
		at = s.Since.Add(p.ConfirmGrace)
	case phaseRegistered:
		if !s.Since.IsZero() {
			at = s.Since.Add(s.streamWait(p))
		}
	}
	if at.IsZero() {
		return 0
	}
	return max(at.Sub(o.Now), time.Millisecond)
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}
