package accel

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stubDriver is the smallest Driver: it records opens and releases.
type stubDriver struct {
	serial string

	mu       sync.Mutex
	opens    int
	releases int
	resetErr error
	resetGo  chan struct{} // if set, Reset waits for it
}

func (s *stubDriver) Identity() Identity {
	return Identity{Driver: "stub", Model: "Stub 1", Serial: s.serial, MemoryTotal: 1 << 30, NUMANode: 0}
}
func (s *stubDriver) Open(*File) error { s.mu.Lock(); s.opens++; s.mu.Unlock(); return nil }
func (s *stubDriver) Release(*File)    { s.mu.Lock(); s.releases++; s.mu.Unlock() }
func (s *stubDriver) Command(f *File, cmd uint32, in, out []byte) error {
	if IoctlNR(cmd) == DriverCommandBase {
		return nil
	}
	return syscall.ENOTTY
}
func (s *stubDriver) Reset(ctx context.Context) error {
	if s.resetGo != nil {
		<-s.resetGo
	}
	return s.resetErr
}

func newTestRegistry(t *testing.T, opts Options) *Registry {
	t.Helper()
	r := NewRegistry(opts)
	t.Cleanup(r.Close)
	return r
}

func mustRegister(t *testing.T, r *Registry, serial string) *Device {
	t.Helper()
	d, err := r.Register(&stubDriver{serial: serial})
	if err != nil {
		t.Fatalf("register %s: %v", serial, err)
	}
	return d
}

func mustOpen(t *testing.T, d *Device, kind NodeKind) *File {
	t.Helper()
	f, err := d.Open(context.Background(), kind, 100)
	if err != nil {
		t.Fatalf("open %s %s: %v", d.Name(), kind, err)
	}
	return f
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v (%d)", what, err, want, want)
	}
}

func TestParseNodeName(t *testing.T) {
	for _, tc := range []struct {
		in    string
		index int
		kind  NodeKind
		ok    bool
	}{
		{"ac0", 0, NodeCompute, true},
		{"ac17", 17, NodeCompute, true},
		{"ac3_monitor", 3, NodeMonitor, true},
		{"ac", 0, 0, false},
		{"ac_monitor", 0, 0, false},
		{"ac01", 0, 0, false},
		{"ac1x", 0, 0, false},
		{"accel0", 0, 0, false},
		{"ac-1", 0, 0, false},
		{"ac1_monitorx", 0, 0, false},
		{"sys", 0, 0, false},
	} {
		index, kind, ok := ParseNodeName(tc.in)
		if ok != tc.ok || (ok && (index != tc.index || kind != tc.kind)) {
			t.Errorf("ParseNodeName(%q) = %d, %v, %v; want %d, %v, %v", tc.in, index, kind, ok, tc.index, tc.kind, tc.ok)
		}
		if ok {
			name := ComputeName(index)
			if kind == NodeMonitor {
				name = MonitorName(index)
			}
			if name != tc.in {
				t.Errorf("name of %q round-trips to %q", tc.in, name)
			}
		}
	}
}

func TestRegistryAssignsLowestFreeIndex(t *testing.T) {
	r := newTestRegistry(t, Options{})
	a, b, c := mustRegister(t, r, "A"), mustRegister(t, r, "B"), mustRegister(t, r, "C")
	if a.Name() != "ac0" || b.Name() != "ac1" || c.Name() != "ac2" || b.MonitorName() != "ac1_monitor" {
		t.Fatalf("names %s %s %s %s", a.Name(), b.Name(), c.Name(), b.MonitorName())
	}
	if err := r.Unregister(b); err != nil {
		t.Fatal(err)
	}
	d := mustRegister(t, r, "D")
	if d.Index() != 1 {
		t.Fatalf("new device got index %d after ac1 was removed with no open files, want 1", d.Index())
	}
	if got := len(r.Devices()); got != 3 {
		t.Fatalf("Devices() has %d entries, want 3", got)
	}
	if _, err := r.Lookup("ac1_monitor"); err != nil {
		t.Fatalf("lookup by monitor name: %v", err)
	}
	_, err := r.Lookup("ac7")
	wantErrno(t, "lookup of an unknown device", err, syscall.ENODEV)
}

func TestIndexReusedOnlyAfterLastFileClosed(t *testing.T) {
	r := newTestRegistry(t, Options{})
	old := mustRegister(t, r, "OLD")
	compute := mustOpen(t, old, NodeCompute)
	monitor := mustOpen(t, old, NodeMonitor)
	if err := r.Unregister(old); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "unregister twice", r.Unregister(old), syscall.ENODEV)
	if d := mustRegister(t, r, "NEW1"); d.Index() == 0 {
		t.Fatal("index 0 reused while the removed device still had open files")
	}
	wantErrno(t, "ioctl on removed device", compute.Ioctl(IoctlInfo, nil, make([]byte, InfoSize)), syscall.ENODEV)
	compute.Release()
	if d := mustRegister(t, r, "NEW2"); d.Index() == 0 {
		t.Fatal("index 0 reused while a monitor file was still open")
	}
	monitor.Release()
	if d := mustRegister(t, r, "NEW3"); d.Index() != 0 {
		t.Fatalf("after the last file closed, new device got index %d, want 0", d.Index())
	}
}

func TestRegistryFull(t *testing.T) {
	r := newTestRegistry(t, Options{MaxDevices: 2})
	mustRegister(t, r, "A")
	mustRegister(t, r, "B")
	_, err := r.Register(&stubDriver{serial: "C"})
	wantErrno(t, "third device with MaxDevices 2", err, syscall.ENOSPC)
}

func TestComputeExclusiveMonitorShared(t *testing.T) {
	r := newTestRegistry(t, Options{})
	d := mustRegister(t, r, "A")
	holder := mustOpen(t, d, NodeCompute)
	_, err := d.Open(context.Background(), NodeCompute, 200)
	wantErrno(t, "second compute open", err, syscall.EBUSY)

	var monitors []*File
	for i := range 100 { // from 100 processes: one may hold at most DefaultMonitorOpensPerProcess
		m, err := d.Open(context.Background(), NodeMonitor, int32(1000+i))
		if err != nil {
			t.Fatalf("monitor open %d: %v", i, err)
		}
		monitors = append(monitors, m)
	}
	if _, err := d.Alloc(holder, 42); err != nil {
		t.Fatal(err)
	}
	info := d.Info()
	if !info.ComputeInUse || info.HolderPID != 100 || info.MonitorClients != 100 || info.MemoryUsed != PageSize {
		t.Fatalf("info = %+v; want compute held by pid 100, 100 monitor clients, one page (42 bytes rounded up) used", info)
	}
	for _, m := range monitors {
		m.Release()
	}
	holder.Release()
	holder.Release() // idempotent
	f := mustOpen(t, d, NodeCompute)
	drv := d.Driver().(*stubDriver)
	if drv.opens != 2 || drv.releases != 1 {
		t.Fatalf("driver saw %d opens, %d releases; want 2, 1", drv.opens, drv.releases)
	}
	f.Release()
	if info := d.Info(); info.ComputeInUse || info.MonitorClients != 0 {
		t.Fatalf("after all closed: %+v", info)
	}
}

// A flush announces a release: an open waits for it instead of failing.
func TestOpenWaitsForAnnouncedRelease(t *testing.T) {
	r := newTestRegistry(t, Options{ReleaseGrace: time.Minute})
	d := mustRegister(t, r, "A")
	holder := mustOpen(t, d, NodeCompute)
	holder.Flush()
	done := make(chan error, 1)
	go func() {
		f, err := d.Open(context.Background(), NodeCompute, 200)
		if err == nil {
			f.Release()
		}
		done <- err
	}()
	holder.Release()
	if err := <-done; err != nil {
		t.Fatalf("open after an announced release: %v", err)
	}
}

// A flush from a copy (dup, fork) while another copy stays open: the waiting
// open gives up after the grace period with EBUSY, and activity of the
// holder ends the grace at once.
func TestAnnouncedReleaseThatDoesNotComeIsBusy(t *testing.T) {
	r := newTestRegistry(t, Options{ReleaseGrace: time.Millisecond})
	d := mustRegister(t, r, "A")
	holder := mustOpen(t, d, NodeCompute)
	holder.Flush()
	_, err := d.Open(context.Background(), NodeCompute, 200)
	wantErrno(t, "open while a flushed holder is still open", err, syscall.EBUSY)

	r2 := newTestRegistry(t, Options{ReleaseGrace: time.Hour})
	d2 := mustRegister(t, r2, "B")
	h2 := mustOpen(t, d2, NodeCompute)
	h2.Flush()
	if err := h2.Ioctl(IoctlInfo, nil, make([]byte, InfoSize)); err != nil {
		t.Fatal(err)
	}
	_, err = d2.Open(context.Background(), NodeCompute, 200) // must not wait an hour
	wantErrno(t, "open after the holder was active again", err, syscall.EBUSY)

	ctx, cancel := context.WithCancel(context.Background())
	h2.Flush()
	cancel()
	_, err = d2.Open(ctx, NodeCompute, 200)
	wantErrno(t, "interrupted open", err, syscall.EINTR)
}

func TestStatusRules(t *testing.T) {
	r := newTestRegistry(t, Options{})
	d := mustRegister(t, r, "A")
	sub := r.Subscribe()

	holder := mustOpen(t, d, NodeCompute)
	if err := d.SetStatus(StatusMalfunction); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "driver command while malfunctioning", holder.Ioctl(IOWR(DriverCommandBase, 8), make([]byte, 8), make([]byte, 8)), syscall.EPERM)
	holder.Release()
	_, err := d.Open(context.Background(), NodeCompute, 1)
	wantErrno(t, "compute open while malfunctioning", err, syscall.EPERM)
	m := mustOpen(t, d, NodeMonitor)
	out := make([]byte, InfoSize)
	if err := m.Ioctl(IoctlInfo, nil, out); err != nil {
		t.Fatalf("info on monitor while malfunctioning: %v", err)
	}
	var info Info
	if err := info.UnmarshalBinary(out); err != nil || info.Status != StatusMalfunction {
		t.Fatalf("info status %v (%v), want malfunction", info.Status, err)
	}

	drv := d.Driver().(*stubDriver)
	drv.resetGo = make(chan struct{})
	resetDone := make(chan error, 1)
	go func() { resetDone <- d.Reset(context.Background()) }()
	next := func() Event {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for event: %v", err)
		}
		return ev
	}
	if ev := next(); ev.Type != EventStatus || ev.Status != StatusMalfunction {
		t.Fatalf("event %+v, want status malfunction", ev)
	}
	if ev := next(); ev.Status != StatusInReset {
		t.Fatalf("event %+v, want in_reset", ev)
	}
	_, err = d.Open(context.Background(), NodeCompute, 1)
	wantErrno(t, "compute open during reset", err, syscall.EAGAIN)
	wantErrno(t, "second reset during reset", d.Reset(context.Background()), syscall.EAGAIN)
	wantErrno(t, "status change during reset", d.SetStatus(StatusMalfunction), syscall.EAGAIN)
	if st := d.Status(); st != StatusInReset {
		t.Fatalf("status %v after a refused change during reset, want in_reset", st)
	}
	close(drv.resetGo)
	if err := <-resetDone; err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Status != StatusOperational {
		t.Fatalf("event %+v, want operational", ev)
	}
	if info := d.Info(); info.Status != StatusOperational || info.ResetCount != 1 {
		t.Fatalf("after reset: %+v", info)
	}

	drv.resetGo, drv.resetErr = nil, errors.New("firmware did not answer")
	if err := d.Reset(context.Background()); err == nil {
		t.Fatal("failing reset returned nil")
	}
	if st := d.Status(); st != StatusMalfunction {
		t.Fatalf("status after failed reset %v, want malfunction", st)
	}
	wantErrno(t, "SetStatus(removed)", d.SetStatus(StatusRemoved), syscall.EINVAL)
	m.Release()
}

func TestIoctlRouting(t *testing.T) {
	r := newTestRegistry(t, Options{})
	d := mustRegister(t, r, "A")
	c, m := mustOpen(t, d, NodeCompute), mustOpen(t, d, NodeMonitor)
	drvCmd := IOWR(DriverCommandBase, 8)
	for _, tc := range []struct {
		name string
		f    *File
		cmd  uint32
		out  int
		want error
	}{
		{"info on compute", c, IoctlInfo, InfoSize, nil},
		{"info on monitor", m, IoctlInfo, InfoSize, nil},
		{"info with wrong size", m, IOR(0, 128), 128, syscall.EINVAL},
		{"unknown core command", m, IOR(1, 8), 8, syscall.ENOTTY},
		{"foreign ioctl type", m, IOC(2, 'T', 1, 8), 8, syscall.ENOTTY},
		{"driver command on compute", c, drvCmd, 8, nil},
		{"driver command on monitor", m, drvCmd, 8, syscall.EPERM},
		{"unknown driver command", c, IOWR(DriverCommandBase+5, 8), 8, syscall.ENOTTY},
		{"past driver range", c, IOWR(DriverCommandEnd, 8), 8, syscall.ENOTTY},
	} {
		err := tc.f.Ioctl(tc.cmd, make([]byte, tc.out), make([]byte, tc.out))
		if !errors.Is(err, tc.want) { // errors.Is(nil, nil) is true
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestInfoEncoding(t *testing.T) {
	in := Info{Name: "ac3", Index: 3, Serial: "SN-1", Driver: "drv", Model: "M", Status: StatusNeedsReset,
		ComputeInUse: true, HolderPID: 1234, MonitorClients: 7, MemoryTotal: 1 << 40, MemoryUsed: 5,
		NUMANode: -1, ResetCount: 9}
	b, _ := in.MarshalBinary()
	if len(b) != InfoSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	var out Info
	if err := out.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	// Fixed offsets are the uAPI: spot-check a few bytes.
	if b[0] != 0 || b[1] != 1 || b[4] != InfoVersion || b[8] != 3 || b[12] != 3 || b[40] != 0xd2 || b[56] != 'a' || b[184] != 'S' {
		t.Fatalf("layout changed: % x", b[:64])
	}
	// Version 1 (an older daemon) has no job accounting: decoded, it says
	// so; encoded, such an Info is version 1 again with both fields zero.
	jobs := in
	jobs.JobsCompleted, jobs.BusyTime = 5, time.Second
	old := jobs
	old.NoJobAccounting = true
	b, _ = old.MarshalBinary()
	if b[4] != 1 || b[52] != 0 || b[248] != 0 {
		t.Fatalf("info without job accounting: version %d, jobs byte %d, busy byte %d; want version 1 and zeros", b[4], b[52], b[248])
	}
	if err := out.UnmarshalBinary(b); err != nil || !out.NoJobAccounting || out.JobsCompleted != 0 || out.BusyTime != 0 {
		t.Fatalf("version 1 decoded: %+v %v, want NoJobAccounting and no jobs", out, err)
	}
	b, _ = jobs.MarshalBinary()
	if err := out.UnmarshalBinary(b); err != nil || out != jobs {
		t.Fatalf("version 2 round trip: %+v %v, want %+v", out, err, jobs)
	}
	long := Info{Serial: string(make([]byte, 200))}
	b, _ = long.MarshalBinary()
	if b[184+63] != 0 {
		t.Fatal("a long serial must stay NUL-terminated")
	}
	b[4] = 0
	if err := out.UnmarshalBinary(b); err == nil {
		t.Fatal("version 0 accepted")
	}
	if err := out.UnmarshalBinary(b[:100]); err == nil {
		t.Fatal("short buffer accepted")
	}
	if IoctlInfo != 0x8100ac00 {
		t.Fatalf("ACCEL_IOCTL_INFO = %#x, want 0x8100ac00", IoctlInfo)
	}
	for s := StatusOperational; s <= StatusRemoved; s++ {
		if p, err := ParseStatus(s.String()); err != nil || p != s {
			t.Errorf("status %d does not round-trip: %v", s, err)
		}
	}
}

func TestEventsOrderedAndResync(t *testing.T) {
	r := newTestRegistry(t, Options{EventBacklog: 4})
	var hooked []EventType
	r.Attach(func(ev Event) { hooked = append(hooked, ev.Type) })
	sub := r.Subscribe()
	d := mustRegister(t, r, "A")
	_ = d.SetStatus(StatusMalfunction)
	_ = d.SetStatus(StatusMalfunction) // no change, no event
	_ = r.Unregister(d)
	ctx := context.Background()
	for _, want := range []EventType{EventAdded, EventStatus, EventRemoved} {
		ev, err := sub.Next(ctx)
		if err != nil || ev.Type != want || ev.Serial != "A" {
			t.Fatalf("got %+v, %v; want %s", ev, err, want)
		}
	}
	if len(hooked) != 3 {
		t.Fatalf("hook saw %v", hooked)
	}

	lagging := r.Subscribe()
	for i := range 10 {
		mustRegister(t, r, string(rune('a'+i)))
	}
	ev, err := lagging.Next(ctx)
	if err != nil || ev.Type != EventResync || ev.Lost != 6 {
		t.Fatalf("lagging subscriber got %+v, %v; want resync with 6 lost", ev, err)
	}
	ev, _ = lagging.Next(ctx)
	if ev.Type != EventAdded || ev.Serial != "g" {
		t.Fatalf("after resync got %+v, want the oldest kept event", ev)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	idle := r.Subscribe()
	if _, err := idle.Next(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next with a cancelled context: %v", err)
	}
	go r.Close()
	if _, err := idle.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
}

func TestConcurrentOpenersExactlyOneWins(t *testing.T) {
	r := newTestRegistry(t, Options{})
	d := mustRegister(t, r, "A")
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	start := make(chan struct{})
	for i := range 64 {
		wg.Go(func() {
			<-start
			if _, err := d.Open(context.Background(), NodeCompute, int32(i)); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
			m, err := d.Open(context.Background(), NodeMonitor, int32(i))
			if err == nil {
				m.Release()
			}
		})
	}
	close(start)
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d goroutines opened the compute node, want exactly 1", wins)
	}
}

// BenchmarkCoreOpenClose measures a compute open and its release in the
// core alone (no FUSE), the per-open cost the core adds on top of transport.
func BenchmarkCoreOpenClose(b *testing.B) {
	r := NewRegistry(Options{})
	defer r.Close()
	d, _ := r.Register(&stubDriver{serial: "A"})
	ctx := context.Background()
	for b.Loop() {
		f, err := d.Open(ctx, NodeCompute, 1)
		if err != nil {
			b.Fatal(err)
		}
		f.Flush()
		f.Release()
	}
}

func TestConcurrentReleaseReachesDriverOnce(t *testing.T) {
	r := newTestRegistry(t, Options{})
	d := mustRegister(t, r, "A")
	f := mustOpen(t, d, NodeCompute)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(f.Release)
	}
	wg.Wait()
	drv := d.Driver().(*stubDriver)
	drv.mu.Lock()
	defer drv.mu.Unlock()
	if drv.releases != 1 {
		t.Fatalf("driver Release ran %d times for one file, want 1", drv.releases)
	}
	if info := d.Info(); info.ComputeInUse {
		t.Fatal("compute still held after release")
	}
}
