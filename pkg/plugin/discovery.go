package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// SimSource follows the devices a device daemon (`accel-plugin sim`) serves
// in one directory. It is a monitor client only: identity and status come
// from the monitor nodes, never from opening a compute node (daemonFS has
// no way to). A device whose monitor node is missing is unhealthy, with
// that reason, if it was known already, and cannot be identified (so is not
// advertised) if not; a device whose compute node is missing (seen with
// READDIR or lstat) is unhealthy with that reason.
//
// It opens the daemon's event file first and lists the nodes second, so no
// change between the two is missed; then it updates one device per event.
// A resync event (it fell behind), the periodic safety resync and every
// reconnect re-read everything. When the daemon dies (reads fail with
// ENOTCONN, or the event stream ends), every device it served turns
// unhealthy at once and the source reconnects with backoff.
//
// Every access to the daemon goes through a daemonGate and so is bounded by
// Timeout. The event stream legitimately blocks for as long as nothing
// happens, so a frozen daemon shows only when it is asked something: while
// no access has been answered for half of Timeout, a liveness check lists
// the directory (READDIR, which FUSE always sends to the daemon, unlike a
// stat that the kernel may answer from its attribute cache), every Timeout.
// The check's answer is discarded: it is a round trip to see the daemon
// answer, like a keepalive, not a poll of device state, which still
// arrives as events only. A daemon that does not answer makes every device
// it serves unhealthy ("device daemon not responding"); when the stuck
// access finally returns the source reconnects at once and re-reads
// everything.
type SimSource struct {
	// Dir is where this process sees the nodes.
	Dir string
	// HostDir is where kubelet and the container runtime see them.
	HostDir string
	// Resync is the safety-net full re-read interval (0: 30 s).
	Resync time.Duration
	// Timeout bounds every access to the daemon (0: DefaultDaemonTimeout).
	Timeout time.Duration
	// StaleGrace: when the daemon's mount has been dead (ENOTCONN) or
	// absent for this long and this process's view of Dir cannot receive
	// new mounts (see DirView), Run returns a *StaleViewError, since a new
	// daemon's mount will never be seen without a restart. 0: never.
	StaleGrace time.Duration
	// Store receives the snapshots.
	Store  *Store
	Logger *slog.Logger

	fs   daemonFS                          // nil: the real file system
	view func(dir string) (DirView, error) // nil: ReadDirView

	initOnce   sync.Once
	gate       *daemonGate
	problem    atomic.Pointer[string] // why not ready ("" or nil: ready)
	devices    deviceSet
	dupIDs     map[string]bool // IDs seen shared by two devices (see uniqueIDs)
	warned     map[string]bool // one-time warnings already given
	streamDone chan struct{}   // closed once the last event stream is closed (nil: none open)
}

// DefaultDaemonTimeout is the default bound on one access to a device
// daemon (`serve --daemon-timeout`).
const DefaultDaemonTimeout = 3 * time.Second

// SourceName is the store key of a SimSource for dir.
func simSourceName(dir string) string { return "sim:" + dir }

const (
	reconnectMin = 50 * time.Millisecond
	reconnectMax = 5 * time.Second
)

// errDaemonAbsent marks a directory that holds no device daemon (no event
// file): nothing is mounted there, or a dead mount was detached.
var errDaemonAbsent = errors.New("no device daemon")

// errNoMonitor marks a device whose monitor node is missing.
var errNoMonitor = errors.New("monitor node missing")

func (s *SimSource) init() {
	s.initOnce.Do(func() {
		if s.Timeout <= 0 {
			s.Timeout = DefaultDaemonTimeout
		}
		if s.fs == nil {
			s.fs = osFS{}
		}
		if s.view == nil {
			s.view = ReadDirView
		}
		s.gate = newDaemonGate(s.Timeout)
		s.devices, s.dupIDs, s.warned = deviceSet{}, map[string]bool{}, map[string]bool{}
	})
}

// notReady says why the source cannot serve its devices now ("" when it
// can, or when no daemon is installed in Dir at all).
func (s *SimSource) notReady() string {
	if p := s.problem.Load(); p != nil {
		return *p
	}
	return ""
}

func (s *SimSource) setProblem(p string) {
	s.problem.Store(&p)
}

// Run follows the devices until ctx ends. It returns an error only for a
// stale view (see StaleGrace).
func (s *SimSource) Run(ctx context.Context) error {
	s.init()
	if s.Resync <= 0 {
		s.Resync = 30 * time.Second
	}
	if s.HostDir == "" {
		s.HostDir = s.Dir
	}
	log := s.Logger.With("source", simSourceName(s.Dir))
	backoff := reconnectMin
	lastErr := ""
	var downSince time.Time // dead or absent since (zero: neither)
	staleLogged := false
	for {
		err := s.follow(ctx, log, &lastErr)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // a cancelled ctx is how Run ends; err is only its echo
		}
		if errors.Is(err, errStreamWasUp) {
			backoff = reconnectMin
		}
		// Readiness first, devices second: whoever sees them unhealthy
		// sees the reason in /readyz too.
		switch {
		case errors.Is(err, ErrDaemonNotResponding):
			s.setProblem(fmt.Sprintf("device daemon at %s not responding: %v", s.Dir, err))
		case isDaemonDead(err):
			s.setProblem(fmt.Sprintf("device daemon at %s is dead (its mount fails with ENOTCONN or ECONNABORTED: the process serving it is gone): %v", s.Dir, err))
		case errors.Is(err, errDaemonAbsent):
			s.setProblem("") // not installed here (yet): nothing is broken
		default:
			s.setProblem(fmt.Sprintf("cannot follow device daemon at %s: %v", s.Dir, err))
		}
		s.markAllUnhealthy(log, err)
		if isDaemonDead(err) || errors.Is(err, errDaemonAbsent) {
			if downSince.IsZero() {
				downSince = time.Now()
			}
		} else {
			downSince, staleLogged = time.Time{}, false
		}
		if msg := err.Error(); msg != lastErr {
			log.Warn("cannot follow device daemon; retrying with backoff", "dir", s.Dir, "err", err)
			lastErr = msg
		}
		wait := backoff
		if s.StaleGrace > 0 && !downSince.IsZero() {
			left := s.StaleGrace - time.Since(downSince)
			if left <= 0 {
				if err := s.staleView(log, err, &staleLogged); err != nil {
					return err
				}
			} else {
				wait = min(wait, left)
			}
		}
		log.Debug("reconnecting to device daemon", "in", wait)
		_, gateChanged := s.gate.watch()
		prev := s.streamDone
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
			backoff = min(2*backoff, reconnectMax)
		case <-gateChanged: // a stuck access returned (or one got stuck): look again now
			backoff = reconnectMin
		case <-prev: // the daemon answered the close of the last stream
			backoff = reconnectMin
		}
	}
}

// staleView returns a *StaleViewError if this process's view of Dir cannot
// receive the new mount of a restarted daemon.
func (s *SimSource) staleView(log *slog.Logger, cause error, logged *bool) error {
	view, err := s.view(s.Dir)
	switch {
	case err != nil:
		if !*logged {
			log.Warn("device daemon gone; cannot tell whether a new one would be visible here, so waiting for it", "dir", s.Dir, "err", err)
		}
	case !view.ReceivesMounts():
		return &StaleViewError{Dir: s.Dir, Grace: s.StaleGrace, View: view, Cause: cause}
	default:
		if !*logged {
			log.Warn("device daemon gone; this view of its directory receives new mounts, so waiting for a new daemon",
				"dir", s.Dir, "mount", view.MountPoint, "propagation", view.Propagation, "for", s.StaleGrace)
		}
	}
	*logged = true
	return nil
}

// StaleViewError says that the device daemon's mount stayed dead or absent
// and that this process will never see a new one: its view of the
// directory has no mount propagation from the host (a recursively
// read-only volume, whose propagation is None).
type StaleViewError struct {
	Dir   string
	Grace time.Duration
	View  DirView
	Cause error
}

func (e *StaleViewError) Error() string {
	return fmt.Sprintf("the device daemon's mount at %s has been dead or absent for %s (%v), and this container's view of it "+
		"(mount %s, %s) cannot receive the simulator's new mount: the container must restart to see it (kubelet restarts it)",
		e.Dir, e.Grace, e.Cause, e.View.MountPoint, e.View.describe())
}

func (e *StaleViewError) Unwrap() error { return e.Cause }

// errStreamWasUp marks a follow that had connected before it failed, so the
// next reconnect starts from the shortest backoff.
var errStreamWasUp = errors.New("connected, then lost")

type streamLost struct{ err error }

func (e streamLost) Error() string { return e.err.Error() }
func (e streamLost) Unwrap() []error {
	return []error{errStreamWasUp, e.err}
}

// follow connects to the daemon, reads every device, and applies events
// until the stream fails, the daemon stops answering, or ctx ends.
func (s *SimSource) follow(ctx context.Context, log *slog.Logger, lastErr *string) error {
	if s.streamDone != nil {
		select {
		case <-s.streamDone:
			s.streamDone = nil
		default:
			// Opening another stream would leave one more reader blocked in
			// a daemon that does not answer.
			return fmt.Errorf("close of the previous event stream: %w (the daemon has not answered it)", ErrDaemonNotResponding)
		}
	}
	stream, err := gated(ctx, s.gate, "open of "+filepath.Join(s.Dir, devfsclient.SysDir, devfsclient.EventsFile),
		func() (eventStream, error) { return s.openEvents() },
		func(st eventStream) { _ = st.Close() })
	if errors.Is(err, errDaemonAbsent) {
		return s.withoutEvents(ctx, log, err)
	}
	if err != nil {
		return err
	}
	done := make(chan struct{})
	s.streamDone = done
	// The reader lives until follow returns, whichever way it returns.
	rctx, cancel := context.WithCancel(ctx)
	events := make(chan accel.Event)
	failed := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			ev, err := stream.Next()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = errors.New("device daemon ended its event stream (stopping or restarted)")
				}
				failed <- err
				return
			}
			select {
			case events <- ev:
			case <-rctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel()
		// Close ends a read blocked in the daemon (see EventStream.Close),
		// but it waits for the daemon to answer, and a frozen daemon
		// answers only when it thaws. So follow does not wait for it; the
		// next follow opens no stream before this one is closed, so at most
		// one reader and one close are ever left waiting in the daemon.
		go func() {
			_ = stream.Close()
			<-readerDone
			close(done)
		}()
	}()

	if err := s.rescan(ctx, log, false); err != nil {
		return err
	}
	s.setProblem("") // before the devices turn healthy, so no reader sees them healthy and the daemon not ready
	s.publish(log)
	log.Info("following device daemon", "dir", s.Dir, "devices", len(s.devices))
	*lastErr = ""
	resync := time.NewTicker(s.Resync)
	defer resync.Stop()
	probe := time.NewTicker(s.Timeout)
	defer probe.Stop()
	for {
		closed, gateChanged := s.gate.watch()
		if closed {
			// Another access (a scrape, say) is stuck in the daemon.
			return streamLost{s.gate.notResponding("access")}
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return streamLost{err}
		case <-gateChanged:
		case <-resync.C:
			if err := s.rescan(ctx, log, true); err != nil {
				return streamLost{err}
			}
		case ev := <-events:
			s.gate.answered()
			if err := s.apply(ctx, log, ev); err != nil {
				return streamLost{err}
			}
		case <-probe.C:
			if s.gate.answeredWithin(s.Timeout / 2) {
				continue
			}
			if _, err := gated(ctx, s.gate, "liveness check (READDIR of "+s.Dir+")", func() ([]string, error) {
				return s.fs.ReadDir(s.Dir)
			}, nil); err != nil && ctx.Err() == nil {
				return streamLost{err}
			}
		}
	}
}

// openEvents opens the event file, telling an absent daemon apart.
func (s *SimSource) openEvents() (eventStream, error) {
	st, err := s.fs.OpenEvents(s.Dir)
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, os.ErrNotExist) && !isDaemonDead(err) {
		// devfs words ENOENT without wrapping it; ask once more.
		if serr := s.fs.Lstat(filepath.Join(s.Dir, devfsclient.SysDir, devfsclient.EventsFile)); errors.Is(serr, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", err, os.ErrNotExist)
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: %w", errDaemonAbsent, s.Dir, err)
	}
	return nil, err
}

// apply updates the devices for one event and publishes the result.
func (s *SimSource) apply(ctx context.Context, log *slog.Logger, ev accel.Event) error {
	switch ev.Type {
	case accel.EventResync:
		log.Warn("fell behind the device daemon's events; re-reading every device", "lost", ev.Lost)
		return s.rescan(ctx, log, true)
	case accel.EventRemoved, accel.EventAdded, accel.EventStatus:
	default:
		log.Debug("ignoring unknown event", "type", cleanText(string(ev.Type)))
		return nil
	}
	index, kind, ok := accel.ParseNodeName(ev.Name)
	if !ok || kind != accel.NodeCompute {
		log.Warn("ignoring an event that names no device", "type", ev.Type, "name", cleanText(ev.Name))
		return nil
	}
	name := accel.ComputeName(index)
	if ev.Type == accel.EventRemoved {
		s.devices.remove(log, name)
		s.publish(log)
		return nil
	}
	d, err := s.read(ctx, log, index, nil)
	switch {
	case isGone(err):
		// Removed again before we read it; its removed event follows.
		s.devices.remove(log, name)
	case isDaemonDead(err) || errors.Is(err, ErrDaemonNotResponding):
		return err
	case err != nil:
		d = s.devices[name]
		if d.ID == "" {
			s.cannotIdentify(log, name, err)
			return nil
		}
		d.Healthy, d.Reason = false, err.Error()
		s.devices.put(log, d)
	default:
		s.devices.put(log, d)
	}
	s.publish(log)
	return nil
}

// nodes is which of a device's two nodes a directory listing showed.
type nodes struct{ compute, monitor bool }

// withoutEvents handles a directory without an event file. Usually no
// daemon is mounted there (cause is returned as it is); but when device
// nodes are there all the same (the file was deleted from an old daemon's
// mount), the devices that can be identified are read and advertised,
// unhealthy, since they cannot be followed.
func (s *SimSource) withoutEvents(ctx context.Context, log *slog.Logger, cause error) error {
	names, err := s.list(ctx)
	if err != nil {
		return cause
	}
	if !slices.ContainsFunc(names, func(n string) bool { _, _, ok := accel.ParseNodeName(n); return ok }) {
		return cause
	}
	if err := s.update(ctx, log, names, false); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s has device nodes but no %s/%s, so the daemon cannot be followed", errNoEvents, s.Dir, devfsclient.SysDir, devfsclient.EventsFile)
}

// errNoEvents marks a daemon directory with device nodes but no event file.
var errNoEvents = errors.New("no event file")

// rescan re-reads every device from the directory, and publishes the
// result if publish is set.
func (s *SimSource) rescan(ctx context.Context, log *slog.Logger, publish bool) error {
	names, err := s.list(ctx)
	if err != nil {
		return err
	}
	return s.update(ctx, log, names, publish)
}

// list reads the directory's entry names through the daemon's gate.
func (s *SimSource) list(ctx context.Context) ([]string, error) {
	return gated(ctx, s.gate, "READDIR of "+s.Dir, func() ([]string, error) { return s.fs.ReadDir(s.Dir) }, nil)
}

// update makes the device set what names (the directory's entries) show:
// each device with nodes is read again, a device without nodes goes.
func (s *SimSource) update(ctx context.Context, log *slog.Logger, names []string, publish bool) error {
	listed := map[int]*nodes{}
	for _, n := range names {
		index, kind, ok := accel.ParseNodeName(n)
		if !ok {
			continue
		}
		if listed[index] == nil {
			listed[index] = &nodes{}
		}
		if kind == accel.NodeCompute {
			listed[index].compute = true
		} else {
			listed[index].monitor = true
		}
	}
	seen := map[string]bool{}
	for _, index := range slices.Sorted(maps.Keys(listed)) {
		name := accel.ComputeName(index)
		d, err := s.read(ctx, log, index, listed[index])
		switch {
		case isGone(err):
			continue
		case isDaemonDead(err) || errors.Is(err, ErrDaemonNotResponding):
			return err
		case err != nil:
			old, ok := s.devices[name]
			if !ok {
				s.cannotIdentify(log, name, err)
				continue
			}
			d = old
			d.Healthy, d.Reason = false, err.Error()
		}
		seen[name] = true
		s.devices.put(log, d)
	}
	s.devices.keepOnly(log, seen)
	if publish {
		s.publish(log)
	}
	return nil
}

// cannotIdentify warns, once per node and problem, about a device that is
// not advertised because it cannot be identified.
func (s *SimSource) cannotIdentify(log *slog.Logger, name string, err error) {
	key := name + "\x00" + err.Error()
	if s.warned[key] {
		return
	}
	s.warned[key] = true
	if errors.Is(err, errNoMonitor) {
		log.Warn("cannot identify a device without its monitor node (the plugin never opens compute nodes, which would take the device from its user); not advertising it",
			"name", name, "err", err)
		return
	}
	log.Warn("cannot read a device; not advertising it until it can be read", "name", name, "err", err)
}

// look is what one gated look at a device found.
type look struct {
	info       accel.Info
	infoErr    error
	computeErr error
}

// read queries one device through its monitor node; listed says which
// nodes a directory listing just showed (nil: unknown, so the compute node
// is looked up with lstat; it is never opened).
func (s *SimSource) read(ctx context.Context, log *slog.Logger, index int, listed *nodes) (Device, error) {
	name, mon := accel.ComputeName(index), accel.MonitorName(index)
	l, err := gated(ctx, s.gate, "info query of "+mon, func() (look, error) {
		var l look
		switch {
		case listed == nil:
			l.computeErr = s.fs.Lstat(filepath.Join(s.Dir, name))
		case !listed.compute:
			l.computeErr = os.ErrNotExist
		}
		if listed != nil && !listed.monitor {
			l.infoErr = os.ErrNotExist
		} else {
			l.info, l.infoErr = s.fs.ReadInfo(filepath.Join(s.Dir, mon))
		}
		return l, nil
	}, nil)
	if err != nil {
		return Device{}, err
	}
	computeGone := errors.Is(l.computeErr, os.ErrNotExist)
	switch {
	case isDaemonDead(l.computeErr):
		return Device{}, fmt.Errorf("lstat %s: %w", name, l.computeErr)
	case errors.Is(l.infoErr, os.ErrNotExist) && computeGone:
		return Device{}, fmt.Errorf("%s: nodes gone: %w", name, os.ErrNotExist)
	case errors.Is(l.infoErr, os.ErrNotExist):
		return Device{}, fmt.Errorf("%w: %s is missing from %s, so the device's identity and status cannot be read", errNoMonitor, mon, s.Dir)
	case l.infoErr != nil:
		return Device{}, fmt.Errorf("info query of %s: %w", mon, l.infoErr)
	}
	d, err := s.device(log, index, l.info)
	if err != nil {
		return Device{}, err
	}
	switch {
	case computeGone:
		d.Healthy, d.Reason = false, fmt.Sprintf("compute node %s is missing from %s: it cannot be handed to a container", name, s.Dir)
	case l.computeErr != nil:
		d.Healthy, d.Reason = false, fmt.Sprintf("compute node %s: %v", name, l.computeErr)
	}
	return d, nil
}

// baseIDOf is the identity of a device reporting serial ("" if none).
func baseIDOf(serial string) string {
	switch {
	case serial == "":
		return ""
	case validID(serial):
		return serial
	default:
		return hashedID(serial)
	}
}

// device builds a Device from the info of the device at index.
func (s *SimSource) device(log *slog.Logger, index int, info accel.Info) (Device, error) {
	name := accel.ComputeName(index)
	id := baseIDOf(info.Serial)
	if id == "" {
		return Device{}, fmt.Errorf("info of %s: device reports no serial", name)
	}
	if id != info.Serial {
		if key := "serial\x00" + info.Serial; !s.warned[key] {
			s.warned[key] = true
			log.Warn("device serial cannot be a device ID (not 1-128 of A-Z a-z 0-9 . _ -); using a stable hash of it instead",
				"name", name, "serial", fmt.Sprintf("%q", info.Serial), "id", id)
		}
	}
	numa := int(info.NUMANode)
	if numa < 0 || numa > maxNUMANode {
		numa = -1
	}
	d := Device{
		ID:        id,
		Name:      name,
		Index:     index, // the node's own index, whatever the info says
		Driver:    cleanText(info.Driver),
		Model:     cleanText(info.Model),
		NUMANode:  numa,
		Status:    info.Status,
		Source:    simSourceName(s.Dir),
		Simulated: true,
		Memory:    info.MemoryTotal,
		baseID:    id,
	}
	d.Compute, d.Monitor = simEdits(s.HostDir, index)
	d.health()
	return d, nil
}

// scrapeInfo reads the dynamic facts of d for a metrics scrape, through the
// gate. It fails if the node now belongs to another device.
func (s *SimSource) scrapeInfo(ctx context.Context, d Device) (accel.Info, error) {
	s.init()
	mon := accel.MonitorName(d.Index)
	info, err := gated(ctx, s.gate, "info query of "+mon+" for a scrape", func() (accel.Info, error) {
		return s.fs.ReadInfo(filepath.Join(s.Dir, mon))
	}, nil)
	if err != nil {
		return accel.Info{}, err
	}
	if baseIDOf(info.Serial) != d.baseID {
		return accel.Info{}, fmt.Errorf("%s now holds another device", d.Name)
	}
	return info, nil
}

// markAllUnhealthy reports every known device unhealthy because the daemon
// cannot be reached or does not answer.
func (s *SimSource) markAllUnhealthy(log *slog.Logger, cause error) {
	reason := "device daemon unreachable: " + cause.Error()
	if errors.Is(cause, ErrDaemonNotResponding) {
		reason = cause.Error() // says "device daemon not responding"
	}
	reason = cleanText(reason)
	lost := 0
	for name, d := range s.devices {
		if d.Healthy {
			lost++
			log.Info("device health changed", "id", d.ID, "name", d.Name, "healthy", false, "reason", reason)
		}
		d.Healthy, d.Reason = false, reason
		s.devices[name] = d
	}
	if lost > 0 {
		log.Warn("device daemon lost: every device it served is unhealthy", "devices", len(s.devices), "err", cause)
	}
	s.publish(log)
}

// publish sends the devices to the store, each under an ID of its own.
func (s *SimSource) publish(log *slog.Logger) {
	devs := s.devices.list()
	uniqueIDs(log, devs, s.dupIDs, func(d Device) string { return d.Name })
	s.Store.Publish(simSourceName(s.Dir), devs)
}

// isGone reports an error meaning the device's nodes no longer exist.
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

// isDaemonDead reports an error meaning the daemon serving the nodes died.
func isDaemonDead(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}
