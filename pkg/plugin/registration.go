package plugin

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// KubeletSocketName is kubelet's registration socket in its device-plugin
// directory.
const KubeletSocketName = "kubelet.sock"

// Registrar serves each resource on its own socket in kubelet's
// device-plugin directory and keeps it registered with kubelet.
//
// kubelet forgets every plugin when it restarts: it deletes the sockets in
// the directory and creates a new kubelet.sock. The registrar watches the
// directory (inotify) and its own servers' ListAndWatch streams; what to do
// about what it sees is decided by a pure function (decide, in
// registrar_state.go, which also says what it relies on in kubelet). In
// short: a vanished socket is served again at once; a kubelet.sock never
// seen before is registered with at once, with the back-off reset; the same
// kubelet is asked to register a path again only after its stream there
// ended and kubelet had time to drop the endpoint, because kubelet refuses
// a duplicate ("device plugin already connected") and then loses the
// endpoint for good.
type Registrar struct {
	// Dir is kubelet's device-plugin directory.
	Dir       string
	Resources []*Resource
	Logger    *slog.Logger
	// Timeout bounds one Register call (0: 5 s).
	Timeout time.Duration
	// StreamGrace is how long kubelet may take to open its ListAndWatch
	// stream after accepting a Register before the resource registers
	// again (0: 5 s). A stream that was open and ended is followed by a new
	// registration after the (shorter) hand-over grace.
	StreamGrace time.Duration
}

const safetyRecheck = 30 * time.Second

// endpoint is one resource's socket, servers and registration state.
type endpoint struct {
	res  *Resource
	path string
	log  *slog.Logger
	st   regState

	cur     *pluginServer   // serves at path now (nil: none)
	retired []*pluginServer // replaced, kept while kubelet streams from them
	cancel  context.CancelFunc
}

// registerResult is the outcome of one Register call.
type registerResult struct {
	ep      *endpoint
	attempt int
	err     error
	// ambiguous: it may have been accepted; unanswered: nobody listened.
	ambiguous, unanswered bool
}

// Run serves and registers every resource until ctx ends, then stops the
// servers and removes the sockets it created.
func (g *Registrar) Run(ctx context.Context) error {
	pol := defaultPolicy()
	if g.StreamGrace > 0 {
		pol.StreamGrace = g.StreamGrace
	}
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	log := g.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("kubelet_dir", g.Dir)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", g.Dir, err)
	}
	defer w.Close()

	wake := make(chan struct{}, 1)
	results := make(chan registerResult, 2*len(g.Resources))
	var calls sync.WaitGroup
	eps := make([]*endpoint, len(g.Resources))
	for i, r := range g.Resources {
		eps[i] = &endpoint{res: r, path: filepath.Join(g.Dir, r.SocketName()),
			log: log.With("resource", r.Name), st: newRegState(pol)}
	}
	kubeletSock := filepath.Join(g.Dir, KubeletSocketName)
	step := func(ep *endpoint, ev observation) time.Duration {
		o := ep.observe(kubeletSock, ev)
		for {
			st, a := decide(ep.st, o, pol)
			ep.st = st
			ep.res.registered.Store(st.registered())
			next := ep.carryOut(ctx, a, kubeletSock, timeout, wake, results, &calls)
			if next == nil {
				ep.reap()
				return a.Wake
			}
			o = ep.observe(kubeletSock, *next)
		}
	}
	defer func() {
		for _, ep := range eps {
			step(ep, observation{Event: evShutdown})
		}
		calls.Wait()
	}()

	watching := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if !watching {
			if err := w.Add(g.Dir); err != nil {
				log.Warn("cannot watch kubelet's device-plugin directory; retrying", "err", err)
			} else {
				watching = true
			}
		}
		next := safetyRecheck
		if !watching {
			next = time.Second
		}
		for _, ep := range eps {
			if d := step(ep, observation{}); d > 0 {
				next = min(next, d)
			}
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if ev.Name == g.Dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				watching = false
			}
		case err := <-w.Errors:
			log.Warn("watching kubelet's device-plugin directory", "err", err)
		case <-wake:
		case r := <-results:
			ev := observation{Event: evRegistered, Attempt: r.attempt}
			if r.err != nil {
				ev = observation{Event: evRegisterFailed, Attempt: r.attempt, Err: r.err, Ambiguous: r.ambiguous, Unanswered: r.unanswered}
			}
			if r.ep.st.Phase == phaseRegistering && r.ep.st.Attempt == r.attempt {
				r.ep.res.metrics.registered(r.ep.res.Name, r.err)
			}
			step(r.ep, ev)
		case <-timer.C:
		}
	}
}

// observe looks at the directory and the endpoint's servers; ev carries
// the event that made it look.
func (ep *endpoint) observe(kubeletSock string, ev observation) observation {
	o := ev
	o.Now = time.Now()
	o.Kubelet = socketInode(kubeletSock)
	o.Socket = socketInode(ep.path)
	if ep.cur != nil {
		o.Serving = !isClosed(ep.cur.served)
		o.Streams = int(ep.cur.streams.n.Load())
		o.Opened = ep.cur.streams.opened.Load()
	}
	for _, s := range ep.retired {
		o.Retired += int(s.streams.n.Load())
	}
	return o
}

// carryOut performs an action; it returns the event to observe next when
// the action completed at once (serving), nil otherwise.
func (ep *endpoint) carryOut(ctx context.Context, a action, kubeletSock string,
	timeout time.Duration, wake chan struct{}, results chan<- registerResult, calls *sync.WaitGroup) *observation {
	log := ep.log
	if a.Info != "" {
		attrs := []any{"registrations", ep.st.Registers, "endpoint", ep.res.SocketName()}
		if a.Why != "" {
			attrs = append(attrs, "reason", a.Why)
		}
		log.Info(a.Info, attrs...)
	}
	if a.Warn != "" {
		log.Warn(a.Warn, "phase", ep.st.Phase.String())
	}
	if a.Cancel && ep.cancel != nil {
		ep.cancel()
		ep.cancel = nil
	}
	switch a.Do {
	case doServe:
		ep.retire()
		srv, err := serveAt(ep.path, ep.res, log, wake)
		if err != nil {
			return &observation{Event: evServeFailed, Err: err}
		}
		ep.cur = srv
		log.Info("serving device plugin", "socket", ep.path, "reason", a.Why)
		return &observation{Event: evServed, Served: srv.id}
	case doRegister:
		if ep.cancel != nil {
			ep.cancel() // superseded; its outcome is ignored
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		ep.cancel = cancel
		log.Info("registering with kubelet", "attempt", a.Attempt, "reason", a.Why)
		calls.Add(1)
		go func(attempt int, kubelet uint64) {
			defer calls.Done()
			defer cancel()
			r := register(cctx, kubeletSock, kubelet, ep.res)
			r.ep, r.attempt = ep, attempt
			select {
			case results <- r:
			case <-ctx.Done():
			}
		}(a.Attempt, a.Kubelet)
	case doStop:
		if ep.cancel != nil {
			ep.cancel()
			ep.cancel = nil
		}
		for _, s := range ep.retired {
			s.grpc.Stop()
		}
		ep.retired = nil
		if ep.cur != nil {
			ep.cur.stop(log, ep.path, true)
			ep.cur = nil
		}
	}
	return nil
}

// retire takes the current server out of service: kept while kubelet
// streams from it (its endpoint in kubelet lives exactly as long as the
// stream), stopped otherwise.
func (ep *endpoint) retire() {
	if ep.cur == nil {
		return
	}
	if ep.cur.streams.n.Load() > 0 {
		ep.retired = append(ep.retired, ep.cur)
	} else {
		ep.cur.grpc.Stop()
	}
	ep.cur = nil
}

// reap stops retired servers whose last stream ended.
func (ep *endpoint) reap() {
	kept := ep.retired[:0]
	for _, s := range ep.retired {
		if s.streams.n.Load() > 0 {
			kept = append(kept, s)
			continue
		}
		s.grpc.Stop()
	}
	clear(ep.retired[len(kept):])
	ep.retired = kept
}

// pluginServer is one gRPC server on one socket.
type pluginServer struct {
	grpc    *grpc.Server
	id      uint64        // identity of the socket it listens on
	served  chan struct{} // closed when Serve returns
	streams *streamCounter
}

// serveAt listens on a fresh socket at path and serves res on it. A stale
// socket (nobody answers) is replaced; a live one belongs to another
// instance (e.g. during a rolling update) and is left alone.
func serveAt(path string, res *Resource, log *slog.Logger, wake chan struct{}) (*pluginServer, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		if served(path) {
			return nil, fmt.Errorf("%s is served by another process (another plugin instance?); waiting for it to go", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// Closing must not unlink the path: by then it may name a successor's
	// socket. stop removes it only if it is still ours.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	s := &pluginServer{id: socketInode(path), served: make(chan struct{}), streams: &streamCounter{wake: wake}}
	s.grpc = newServer(log, s.streams)
	pluginapi.RegisterDevicePluginServer(s.grpc, res)
	go func() {
		defer close(s.served)
		_ = s.grpc.Serve(l) // returns when stopped or the listener fails
	}()
	return s, nil
}

// stop stops the server; on shutdown it also removes the socket if it is
// still ours (a successor may already have replaced it). Identities can
// collide (a reused inode created within the same clock tick), so a socket
// someone still serves is never removed either.
func (s *pluginServer) stop(log *slog.Logger, path string, shutdown bool) {
	s.grpc.Stop()
	<-s.served
	if shutdown && socketInode(path) == s.id && !served(path) {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("cannot remove socket", "socket", path, "err", err)
		}
	}
}

// newServer builds the gRPC server of a device-plugin socket: a handler
// panic becomes codes.Internal and is logged (see recovery.go), and, when
// streams is not nil, its ListAndWatch streams are counted.
func newServer(log *slog.Logger, streams *streamCounter) *grpc.Server {
	unary := []grpc.UnaryServerInterceptor{RecoverUnary(log)}
	stream := []grpc.StreamServerInterceptor{RecoverStream(log)}
	if streams != nil {
		stream = append([]grpc.StreamServerInterceptor{streams.intercept}, stream...)
	}
	return grpc.NewServer(grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
}

// streamCounter counts the ListAndWatch streams open on one server and
// pokes wake (never blocking) when one opens or ends: an open stream is
// kubelet's proof that it holds our endpoint.
type streamCounter struct {
	n      atomic.Int64  // open now
	opened atomic.Uint64 // opened so far
	wake   chan struct{}
}

func (c *streamCounter) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != pluginapi.DevicePlugin_ListAndWatch_FullMethodName {
		return handler(srv, ss)
	}
	c.n.Add(1)
	c.opened.Add(1)
	c.poke()
	defer func() {
		c.n.Add(-1)
		c.poke()
	}()
	return handler(srv, ss)
}

func (c *streamCounter) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// errKubeletChanged: kubelet.sock is no longer the one decide chose.
var errKubeletChanged = errors.New("kubelet.sock was replaced before Register")

// register calls kubelet's Register for res on exactly the kubelet.sock
// whose identity is kubelet: the socket is opened by path once and dialled
// through /proc/self/fd, so a kubelet.sock replaced in between cannot get a
// Register meant for its predecessor.
func register(ctx context.Context, kubeletSock string, kubelet uint64, res *Resource) registerResult {
	fd, err := unix.Open(kubeletSock, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return registerResult{err: fmt.Errorf("open %s: %w", kubeletSock, err)}
	}
	defer unix.Close(fd)
	if socketID(fd, "", unix.AT_EMPTY_PATH) != kubelet {
		return registerResult{err: errKubeletChanged}
	}
	target := fmt.Sprintf("/proc/self/fd/%d", fd)
	var dialed atomic.Bool
	conn, err := grpc.NewClient("passthrough:///kubelet.sock",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", target)
			if err == nil {
				dialed.Store(true)
			}
			return c, err
		}))
	if err != nil {
		return registerResult{err: fmt.Errorf("dial kubelet: %w", err)}
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     res.SocketName(),
		ResourceName: res.Name,
		Options:      res.options(),
	})
	if err != nil {
		return registerResult{err: fmt.Errorf("register %s: %w", res.Name, err),
			ambiguous: registerAmbiguous(err, dialed.Load()), unanswered: !dialed.Load()}
	}
	return registerResult{}
}

// registerAmbiguous reports whether a failed Register may have been
// accepted: it reached kubelet and failed in transport or by deadline,
// rather than with kubelet's own refusal (a plain error from its handler
// arrives as codes.Unknown).
func registerAmbiguous(err error, dialed bool) bool {
	if !dialed {
		return false
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable, codes.Internal, codes.ResourceExhausted:
		return true
	}
	return false
}

// served reports whether a process accepts connections on the socket at
// path (a socket nobody serves is stale).
func served(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// socketInode identifies the socket at path (0: none). kubelet removes its
// kubelet.sock and creates the next one microseconds later; ext4 then hands
// out the same inode number and the same (clock-tick) birth time, so the
// identity is the file handle (name_to_handle_at: inode and its generation,
// which differs on every reuse; ext4, xfs, btrfs and tmpfs have one), mixed
// with inode and birth time for file systems without handles. Not the
// change time: chmod, chown or a relabel change that, not the socket.
func socketInode(path string) uint64 {
	return socketID(unix.AT_FDCWD, path, 0)
}

// socketID is socketInode for the file at (dirfd, path); flags may be
// unix.AT_EMPTY_PATH (dirfd is the file).
func socketID(dirfd int, path string, flags int) uint64 {
	var st unix.Statx_t
	if err := unix.Statx(dirfd, path, flags, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_BTIME, &st); err != nil ||
		uint32(st.Mode)&unix.S_IFMT != unix.S_IFSOCK {
		return 0
	}
	id := st.Ino
	if st.Mask&unix.STATX_BTIME != 0 {
		id ^= uint64(st.Btime.Sec)<<32 ^ uint64(st.Btime.Nsec)
	}
	if h, _, err := unix.NameToHandleAt(dirfd, path, flags|unix.AT_SYMLINK_FOLLOW); err == nil {
		f := fnv.New64a()
		var typ [4]byte
		binary.LittleEndian.PutUint32(typ[:], uint32(h.Type()))
		f.Write(typ[:])
		f.Write(h.Bytes())
		id ^= f.Sum64()
	}
	return id | 1
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
