package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
// directory (inotify) and, when kubelet.sock gets a new inode or one of our
// sockets vanishes, serves on a fresh socket and registers again; no process
// restart is needed. While kubelet is absent or refuses, it retries with
// backoff. If kubelet does not keep a ListAndWatch stream open after
// registering (or drops it and does not come back), it registers again.
//
// It never registers an endpoint kubelet still holds: kubelet refuses that
// ("device plugin already connected") and drops its record of the endpoint,
// so a spurious re-registration would lose the resource.
type Registrar struct {
	// Dir is kubelet's device-plugin directory.
	Dir       string
	Resources []*Resource
	Logger    *slog.Logger
	// Timeout bounds one Register call (0: 5 s).
	Timeout time.Duration
	// StreamGrace is how long a registered resource may go without a
	// ListAndWatch stream before it registers again (0: 5 s).
	StreamGrace time.Duration

	// registered is poked after every successful registration (tests).
	registered chan string
}

// endpoint is the registrar's state for one resource.
type endpoint struct {
	res    *Resource
	path   string
	srv    *grpc.Server
	served chan struct{} // closed when srv.Serve returns
	ino    uint64        // our socket's inode

	kubeletIno uint64 // kubelet.sock identity we registered with (0: not registered)
	registers  int
	noStreamAt time.Time // when it was seen without a stream after registering
	retryAt    time.Time
	backoff    time.Duration
	lastErr    string
	waitLogged bool
}

const (
	registerBackoffMin = 100 * time.Millisecond
	// handoverGrace is how long to wait before registering a new socket
	// with the same kubelet, so it can drop the old endpoint first.
	handoverGrace      = time.Second
	registerBackoffMax = 10 * time.Second
	safetyRecheck      = 30 * time.Second
)

// Run serves and registers every resource until ctx ends, then stops the
// servers and removes the sockets it created.
func (g *Registrar) Run(ctx context.Context) error {
	if g.Timeout <= 0 {
		g.Timeout = 5 * time.Second
	}
	if g.StreamGrace <= 0 {
		g.StreamGrace = 5 * time.Second
	}
	log := g.Logger.With("kubelet_dir", g.Dir)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", g.Dir, err)
	}
	defer w.Close()

	wake := make(chan struct{}, 1)
	eps := make([]*endpoint, len(g.Resources))
	for i, r := range g.Resources {
		r.streamEnded = wake
		eps[i] = &endpoint{res: r, path: filepath.Join(g.Dir, r.SocketName()), backoff: registerBackoffMin}
	}
	defer func() {
		for _, ep := range eps {
			ep.stop(log, true)
			ep.setRegistered(0)
		}
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
		next := g.reconcile(ctx, log, eps)
		if !watching {
			next = min(next, time.Second)
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
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// reconcile brings every endpoint to "serving on its own socket and
// registered with the current kubelet" as far as it can now, and returns
// how long to wait before it must look again.
func (g *Registrar) reconcile(ctx context.Context, log *slog.Logger, eps []*endpoint) time.Duration {
	now := time.Now()
	next := safetyRecheck
	kubeletSock := filepath.Join(g.Dir, KubeletSocketName)
	kubeletIno := socketInode(kubeletSock)
	for _, ep := range eps {
		log := log.With("resource", ep.res.Name)
		// Our socket: serve on a fresh one if it vanished (kubelet deletes
		// every socket when it starts) or the server stopped.
		reason := ""
		switch {
		case ep.srv == nil:
			reason = "starting"
		case socketInode(ep.path) != ep.ino:
			reason = "socket removed (kubelet restarted?)"
		case isClosed(ep.served):
			reason = "server stopped"
		}
		if reason != "" {
			wasRegistered := ep.kubeletIno != 0 && ep.kubeletIno == kubeletIno
			ep.stop(log, false)
			if err := ep.serve(); err != nil {
				if msg := err.Error(); msg != ep.lastErr {
					log.Error("cannot serve device plugin socket; retrying", "socket", ep.path, "err", err)
					ep.lastErr = msg
				}
				next = min(next, time.Second)
				continue
			}
			log.Info("serving device plugin", "socket", ep.path, "reason", reason)
			ep.setRegistered(0)
			if wasRegistered {
				// The same kubelet still holds our old endpoint until it
				// notices the stream we just closed; registering before
				// that is refused and makes kubelet forget the endpoint.
				ep.retryAt = now.Add(handoverGrace)
			}
		}

		if kubeletIno == 0 {
			if ep.kubeletIno != 0 || !ep.waitLogged {
				log.Warn("no kubelet socket; waiting for kubelet", "socket", kubeletSock)
				ep.setRegistered(0)
				ep.waitLogged = true
			}
			continue // its creation wakes us
		}
		why := ""
		switch {
		case ep.kubeletIno == 0 && ep.registers == 0:
			why = "first registration"
		case ep.kubeletIno == 0:
			why = "new kubelet socket or new plugin socket"
		case ep.kubeletIno != kubeletIno:
			why = "kubelet.sock recreated (kubelet restarted)"
		case ep.res.streams.Load() > 0:
			ep.noStreamAt = time.Time{}
		case ep.noStreamAt.IsZero():
			ep.noStreamAt = now
			next = min(next, g.StreamGrace)
		case now.Sub(ep.noStreamAt) >= g.StreamGrace:
			why = "kubelet holds no ListAndWatch stream"
		default:
			next = min(next, g.StreamGrace-now.Sub(ep.noStreamAt))
		}
		if why == "" {
			continue
		}
		if now.Before(ep.retryAt) {
			next = min(next, ep.retryAt.Sub(now))
			continue
		}
		if ep.lastErr != "" && ep.kubeletIno == 0 && ep.res.streams.Load() > 0 {
			// The last Register failed on our side (e.g. timed out), yet
			// kubelet connected and streams: it accepted. Registering
			// again would be refused as a duplicate.
			log.Info("kubelet streams from us although Register failed; treating it as registered", "err", ep.lastErr)
			ep.setRegistered(kubeletIno)
			ep.lastErr, ep.backoff, ep.retryAt = "", registerBackoffMin, time.Time{}
			ep.registers++
			continue
		}
		err := g.register(ctx, ep)
		ep.res.metrics.registered(ep.res.Name, err)
		if err != nil {
			if ctx.Err() != nil {
				return next
			}
			ep.retryAt = now.Add(ep.backoff)
			next = min(next, ep.backoff)
			if msg := err.Error(); msg != ep.lastErr {
				log.Warn("registration with kubelet failed; retrying with backoff", "reason", why, "err", err, "retry_in", ep.backoff)
				ep.lastErr = msg
			}
			ep.backoff = min(2*ep.backoff, registerBackoffMax)
			continue
		}
		ep.setRegistered(kubeletIno)
		ep.registers++
		ep.noStreamAt = time.Now() // not now: Register itself may have taken a while
		ep.retryAt, ep.backoff, ep.lastErr = time.Time{}, registerBackoffMin, ""
		next = min(next, g.StreamGrace)
		log.Info("registered with kubelet", "reason", why, "endpoint", ep.res.SocketName(), "registrations", ep.registers)
		if g.registered != nil {
			select {
			case g.registered <- ep.res.Name:
			default:
			}
		}
	}
	return next
}

// setRegistered records the kubelet.sock identity the endpoint is
// registered with (0: not registered), for readiness too.
func (ep *endpoint) setRegistered(kubeletIno uint64) {
	ep.kubeletIno = kubeletIno
	ep.res.registered.Store(kubeletIno != 0)
}

// register calls kubelet's Register for one endpoint.
func (g *Registrar) register(ctx context.Context, ep *endpoint) error {
	ctx, cancel := context.WithTimeout(ctx, g.Timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+filepath.Join(g.Dir, KubeletSocketName),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial kubelet: %w", err)
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     ep.res.SocketName(),
		ResourceName: ep.res.Name,
		Options:      ep.res.options(),
	})
	if err != nil {
		return fmt.Errorf("register %s: %w", ep.res.Name, err)
	}
	return nil
}

// serve listens on a fresh socket and serves the resource on it. A stale
// socket (nobody answers) is replaced; a live one belongs to another
// instance (e.g. during a rolling update) and is left alone.
func (ep *endpoint) serve() error {
	if fi, err := os.Lstat(ep.path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("%s exists and is not a socket; refusing to replace it", ep.path)
		}
		if served(ep.path) {
			return fmt.Errorf("%s is served by another process (another plugin instance?); waiting for it to go", ep.path)
		}
		if err := os.Remove(ep.path); err != nil {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", ep.path)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Closing must not unlink the path: by then it may name a successor's
	// socket. stop removes it only if it is still ours.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	ep.ino = socketInode(ep.path)
	ep.srv = grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(ep.srv, ep.res)
	ep.served = make(chan struct{})
	go func(srv *grpc.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(l) // returns when stopped or the listener fails
	}(ep.srv, ep.served)
	return nil
}

// stop stops the server; on shutdown it also removes the socket if it is
// still ours (a successor may already have replaced it). Identities can
// collide (a reused inode created within the same clock tick), so a socket
// someone still serves is never removed either.
func (ep *endpoint) stop(log *slog.Logger, shutdown bool) {
	if ep.srv == nil {
		return
	}
	ep.srv.Stop()
	<-ep.served
	ep.srv = nil
	if shutdown && socketInode(ep.path) == ep.ino && !served(ep.path) {
		if err := os.Remove(ep.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("cannot remove socket", "socket", ep.path, "err", err)
		}
	}
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

// socketInode identifies the socket at path (0: none). A file system may
// give a new socket the inode of one just deleted, so the identity mixes in
// the birth time where the file system records it (ext4, xfs, tmpfs). Not
// the change time: chmod, chown or a relabel change that, not the socket.
func socketInode(path string) uint64 {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_BTIME, &st); err != nil ||
		uint32(st.Mode)&unix.S_IFMT != unix.S_IFSOCK {
		return 0
	}
	id := st.Ino
	if st.Mask&unix.STATX_BTIME != 0 {
		id ^= uint64(st.Btime.Sec)<<32 ^ uint64(st.Btime.Nsec)
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
