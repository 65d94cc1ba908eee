package plugin

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// memDaemon is a device daemon in memory, behind the daemonFS interface:
// it can lose nodes, freeze (every call blocks until thawed, as in a FUSE
// daemon stopped with SIGSTOP) and die (every call fails with ENOTCONN), so
// the source's logic is tested without root or FUSE.
type memDaemon struct {
	dir string

	mu      sync.Mutex
	devs    map[int]*memDev
	events  bool // sys/events exists
	dead    bool
	frozen  chan struct{} // non-nil while frozen; closed on thaw
	streams map[*memStream]bool

	calls   atomic.Int64 // calls that reached the daemon
	blocked atomic.Int64 // calls waiting in a frozen daemon now
	opened  []string     // every path opened, in order

	nextSerial int // serial number of the next hot-plugged device: serials are never reused
}

type memDev struct {
	info             accel.Info
	compute, monitor bool
}

func newMemDaemon(devices int) *memDaemon {
	d := &memDaemon{dir: "/mem/dev", devs: map[int]*memDev{}, events: true, streams: map[*memStream]bool{}, nextSerial: devices}
	for i := range devices {
		d.devs[i] = &memDev{compute: true, monitor: true, info: accel.Info{
			Name: accel.ComputeName(i), Index: uint32(i), Serial: fmt.Sprintf("MEM-%04d", i),
			Driver: "memsim", Model: "mem-1", Status: accel.StatusOperational, NUMANode: int32(i % 2),
		}}
	}
	return d
}

// enter is the start of every call: it waits while the daemon is frozen
// and fails once it is dead.
func (d *memDaemon) enter() error {
	d.calls.Add(1)
	d.mu.Lock()
	frozen := d.frozen
	d.mu.Unlock()
	if frozen != nil {
		d.blocked.Add(1)
		<-frozen
		d.blocked.Add(-1)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return syscall.ENOTCONN
	}
	return nil
}

func (d *memDaemon) freeze() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen == nil {
		d.frozen = make(chan struct{})
	}
}

func (d *memDaemon) thaw() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen != nil {
		close(d.frozen)
		d.frozen = nil
	}
}

// kill makes the daemon dead: calls and open streams fail with ENOTCONN.
func (d *memDaemon) kill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dead = true
	for s := range d.streams {
		s.end(syscall.ENOTCONN)
	}
}

func (d *memDaemon) revive() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dead = false
}

// change edits device i and emits ev (if not "") to every stream.
func (d *memDaemon) change(i int, edit func(*memDev), ev accel.EventType) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dev := d.devs[i]; dev != nil && edit != nil {
		edit(dev)
	}
	if ev == "" {
		return
	}
	e := accel.Event{Type: ev, Name: accel.ComputeName(i), Index: i}
	if dev := d.devs[i]; dev != nil {
		e.Serial, e.Status = dev.info.Serial, dev.info.Status
	}
	d.emitLocked(e)
}

// emitLocked sends e to every open event stream; d.mu is held.
func (d *memDaemon) emitLocked(e accel.Event) {
	for s := range d.streams {
		select {
		case s.ch <- e:
		default:
			panic("memDaemon: event stream full")
		}
	}
}

func (d *memDaemon) openedPaths() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.opened...)
}

func (d *memDaemon) ReadDir(dir string) ([]string, error) {
	if err := d.enter(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	names := []string{devfsclient.SysDir}
	for i, dev := range d.devs {
		if dev.compute {
			names = append(names, accel.ComputeName(i))
		}
		if dev.monitor {
			names = append(names, accel.MonitorName(i))
		}
	}
	return names, nil
}

func (d *memDaemon) Lstat(path string) error {
	if err := d.enter(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rel, _ := filepath.Rel(d.dir, path)
	if rel == filepath.Join(devfsclient.SysDir, devfsclient.EventsFile) {
		if d.events {
			return nil
		}
		return os.ErrNotExist
	}
	i, kind, ok := accel.ParseNodeName(rel)
	if dev := d.devs[i]; ok && dev != nil && (kind == accel.NodeCompute && dev.compute || kind == accel.NodeMonitor && dev.monitor) {
		return nil
	}
	return os.ErrNotExist
}

func (d *memDaemon) ReadInfo(path string) (accel.Info, error) {
	if err := d.enter(); err != nil {
		return accel.Info{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.opened = append(d.opened, path)
	i, kind, ok := accel.ParseNodeName(filepath.Base(path))
	dev := d.devs[i]
	if !ok || dev == nil || kind == accel.NodeMonitor && !dev.monitor || kind == accel.NodeCompute && !dev.compute {
		return accel.Info{}, &os.PathError{Op: "open", Path: path, Err: os.ErrNotExist}
	}
	return dev.info, nil
}

func (d *memDaemon) OpenEvents(dir string) (eventStream, error) {
	if err := d.enter(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.events {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(dir, devfsclient.SysDir, devfsclient.EventsFile), Err: os.ErrNotExist}
	}
	s := &memStream{d: d, ch: make(chan accel.Event, 1000), done: make(chan struct{})}
	d.streams[s] = true
	return s, nil
}

// memStream is one open sys/events.
type memStream struct {
	d    *memDaemon
	ch   chan accel.Event
	once sync.Once
	done chan struct{}
	err  error
}

func (s *memStream) end(err error) {
	s.once.Do(func() { s.err = err; close(s.done) })
}

func (s *memStream) Next() (accel.Event, error) {
	select {
	case ev := <-s.ch:
		return ev, nil
	case <-s.done:
		return accel.Event{}, s.err
	}
}

// Close waits for a frozen daemon, as FLUSH does.
func (s *memStream) Close() error {
	err := s.d.enter()
	s.end(io.EOF)
	s.d.mu.Lock()
	delete(s.d.streams, s)
	s.d.mu.Unlock()
	return err
}

// memSource runs a SimSource over d until the test ends.
type memSource struct {
	src   *SimSource
	store *Store
	done  chan error
}

func startMemSource(t *testing.T, d *memDaemon, timeout time.Duration, adjust func(*SimSource)) *memSource {
	t.Helper()
	store := NewStore(nil)
	src := &SimSource{Dir: d.dir, HostDir: "/host/dev", Resync: time.Hour, Timeout: timeout, Store: store, Logger: testLogger(t), fs: d}
	if adjust != nil {
		adjust(src)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &memSource{src: src, store: store, done: make(chan error, 1)}
	go func() { m.done <- src.Run(ctx) }()
	t.Cleanup(func() {
		d.thaw() // nothing may stay blocked
		cancel()
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			t.Errorf("source did not stop")
		}
	})
	return m
}
