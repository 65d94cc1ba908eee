package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
)

// SimSource follows the devices a device daemon (`accel-plugin sim`) serves
// in one directory. It is a monitor client only: identity and status come
// from the monitor nodes, never from opening a compute node.
//
// It opens the daemon's event file first and lists the nodes second, so no
// change between the two is missed; then it updates one device per event.
// A resync event (it fell behind), the periodic safety resync and every
// reconnect re-read everything. When the daemon dies (reads fail with
// ENOTCONN, or the event stream ends), every device it served turns
// unhealthy at once and the source reconnects with backoff.
type SimSource struct {
	// Dir is where this process sees the nodes.
	Dir string
	// HostDir is where kubelet and the container runtime see them.
	HostDir string
	// Resync is the safety-net full re-read interval (0: 30 s).
	Resync time.Duration
	// Store receives the snapshots.
	Store  *Store
	Logger *slog.Logger

	devices deviceSet
}

// SourceName is the store key of a SimSource for dir.
func simSourceName(dir string) string { return "sim:" + dir }

const (
	reconnectMin = 50 * time.Millisecond
	reconnectMax = 5 * time.Second
	closeTimeout = 2 * time.Second
)

// Run follows the devices until ctx ends.
func (s *SimSource) Run(ctx context.Context) error {
	if s.Resync <= 0 {
		s.Resync = 30 * time.Second
	}
	if s.HostDir == "" {
		s.HostDir = s.Dir
	}
	s.devices = deviceSet{}
	log := s.Logger.With("source", simSourceName(s.Dir))
	backoff := reconnectMin
	lastErr := ""
	for {
		err := s.follow(ctx, log, &lastErr)
		if ctx.Err() != nil {
			return nil
		}
		s.markAllUnhealthy(log, err)
		if errors.Is(err, errStreamWasUp) {
			backoff = reconnectMin
		}
		if msg := err.Error(); msg != lastErr {
			log.Warn("cannot follow device daemon; retrying with backoff", "dir", s.Dir, "err", err)
			lastErr = msg
		}
		log.Debug("reconnecting to device daemon", "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, reconnectMax)
	}
}

// errStreamWasUp marks a follow that had connected before it failed, so the
// next reconnect starts from the shortest backoff.
var errStreamWasUp = errors.New("connected, then lost")

type streamLost struct{ err error }

func (e streamLost) Error() string { return e.err.Error() }
func (e streamLost) Unwrap() error { return errStreamWasUp }

// follow connects to the daemon, reads every device, and applies events
// until the stream fails or ctx ends.
func (s *SimSource) follow(ctx context.Context, log *slog.Logger, lastErr *string) error {
	stream, err := devfs.OpenEvents(s.Dir)
	if err != nil {
		return err
	}
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
		// Close ends a read blocked in the daemon (see EventStream.Close).
		// It waits for the daemon to answer, so a frozen (not dead) daemon
		// would hold us here: give up on the reader after a while.
		go stream.Close()
		select {
		case <-readerDone:
		case <-time.After(closeTimeout):
			log.Warn("device daemon does not answer; leaving its event reader behind", "dir", s.Dir)
		}
	}()

	if err := s.rescan(log); err != nil {
		return err
	}
	log.Info("following device daemon", "dir", s.Dir, "devices", len(s.devices))
	*lastErr = ""
	resync := time.NewTicker(s.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return streamLost{err}
		case <-resync.C:
			if err := s.rescan(log); err != nil {
				return streamLost{err}
			}
		case ev := <-events:
			if err := s.apply(log, ev); err != nil {
				return streamLost{err}
			}
		}
	}
}

// apply updates the devices for one event and publishes the result.
func (s *SimSource) apply(log *slog.Logger, ev accel.Event) error {
	switch ev.Type {
	case accel.EventResync:
		log.Warn("fell behind the device daemon's events; re-reading every device", "lost", ev.Lost)
		return s.rescan(log)
	case accel.EventRemoved:
		s.devices.remove(log, ev.Name)
	case accel.EventAdded, accel.EventStatus:
		d, err := s.read(ev.Name)
		switch {
		case isGone(err):
			// Removed again before we read it; its removed event follows.
			s.devices.remove(log, ev.Name)
		case isDaemonDead(err):
			return err
		case err != nil:
			d = s.devices[ev.Name]
			if d.ID == "" {
				log.Warn("cannot read a new device; skipping it until the next resync", "name", ev.Name, "err", err)
				return nil
			}
			d.Healthy, d.Reason = false, "info query failed: "+err.Error()
			s.devices.put(log, d)
		default:
			s.devices.put(log, d)
		}
	default:
		log.Debug("ignoring unknown event", "type", ev.Type)
		return nil
	}
	s.publish()
	return nil
}

// rescan re-reads every device from the directory.
func (s *SimSource) rescan(log *slog.Logger) error {
	indices, err := devfs.Nodes(s.Dir)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, i := range indices {
		name := accel.ComputeName(i)
		d, err := s.read(name)
		switch {
		case isGone(err):
			continue
		case isDaemonDead(err):
			return err
		case err != nil:
			log.Warn("cannot read device info", "name", name, "err", err)
			old, ok := s.devices[name]
			if !ok {
				continue
			}
			d = old
			d.Healthy, d.Reason = false, "info query failed: "+err.Error()
		}
		seen[name] = true
		s.devices.put(log, d)
	}
	s.devices.keepOnly(log, seen)
	s.publish()
	return nil
}

// read queries one device through its monitor node.
func (s *SimSource) read(name string) (Device, error) {
	info, err := accel.ReadInfo(filepath.Join(s.Dir, name))
	if err != nil {
		return Device{}, fmt.Errorf("read info of %s: %w", name, err)
	}
	if info.Serial == "" {
		return Device{}, fmt.Errorf("read info of %s: device reports no serial", name)
	}
	d := Device{
		ID:       info.Serial,
		Name:     name,
		Index:    int(info.Index),
		Driver:   info.Driver,
		Model:    info.Model,
		NUMANode: int(info.NUMANode),
		Status:   info.Status,
		Source:   simSourceName(s.Dir),
		HostDir:  s.HostDir,
	}
	d.health()
	return d, nil
}

// markAllUnhealthy reports every known device unhealthy because the daemon
// cannot be reached.
func (s *SimSource) markAllUnhealthy(log *slog.Logger, cause error) {
	reason := "device daemon unreachable: " + cause.Error()
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
	s.publish()
}

func (s *SimSource) publish() {
	s.Store.Publish(simSourceName(s.Dir), s.devices.list())
}

// isGone reports an error meaning the device's nodes no longer exist.
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

// isDaemonDead reports an error meaning the daemon serving the nodes died.
func isDaemonDead(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}
