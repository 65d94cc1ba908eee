package accel

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"
)

// memDriver is a stub whose devices have total bytes of memory and room
// for maxBuffers buffers per client.
type memDriver struct {
	stubDriver
	total      uint64
	maxBuffers int
}

func (m *memDriver) Identity() Identity {
	id := m.stubDriver.Identity()
	id.MemoryTotal, id.MaxBuffers = m.total, m.maxBuffers
	return id
}

func memDevice(t *testing.T, total uint64, maxBuffers int) (*Device, *File) {
	t.Helper()
	r := newTestRegistry(t, Options{})
	d, err := r.Register(&memDriver{stubDriver: stubDriver{serial: "M"}, total: total, maxBuffers: maxBuffers})
	if err != nil {
		t.Fatal(err)
	}
	f := mustOpen(t, d, NodeCompute)
	return d, f
}

// The memory manager refuses every bad input with its own errno, and what
// it accepts keeps memory_used the sum of the rounded sizes.
func TestMemoryBadInputs(t *testing.T) {
	d, f := memDevice(t, 5*PageSize, 3)
	mon := mustOpen(t, d, NodeMonitor)

	_, err := d.Alloc(f, 0)
	wantErrno(t, "alloc of 0 bytes", err, syscall.EINVAL)
	_, err = d.Alloc(mon, 1)
	wantErrno(t, "alloc on the monitor file", err, syscall.EINVAL)
	_, err = d.Alloc(f, 5*PageSize+1)
	wantErrno(t, "alloc beyond memory_total", err, syscall.ENOMEM)
	_, err = d.Alloc(f, ^uint64(0))
	wantErrno(t, "alloc of 2^64-1 bytes (would wrap when rounded)", err, syscall.ENOMEM)

	a, err := d.Alloc(f, 1)
	if err != nil {
		t.Fatal(err)
	}
	if a.MapSize() != PageSize || a.MapOffset() != MapBase || a.MapOffset()%PageSize != 0 {
		t.Fatalf("1-byte buffer: offset %#x size %d, want a page at MapBase", a.MapOffset(), a.MapSize())
	}
	b, err := d.Alloc(f, 2*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.MemoryUsed(); got != 3*PageSize {
		t.Fatalf("memory_used %d, want 3 pages (1 byte rounded up, and 2 pages)", got)
	}
	_, err = d.Alloc(f, 2*PageSize+1)
	wantErrno(t, "alloc of 3 pages with 2 free", err, syscall.ENOMEM)
	if _, err := d.Alloc(f, PageSize); err != nil {
		t.Fatal(err)
	}
	_, err = d.Alloc(f, 1)
	wantErrno(t, "fourth buffer past the limit of 3", err, syscall.ENOSPC)

	if err := d.Free(f, a.Handle()); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "double free", d.Free(f, a.Handle()), syscall.EINVAL)
	wantErrno(t, "free of a handle never made", d.Free(f, 999), syscall.EINVAL)
	_, err = d.LookupBuffer(f, a.Handle())
	wantErrno(t, "lookup of a freed handle", err, syscall.ENOENT)

	// A freed place is reused: first fit.
	c, err := d.Alloc(f, 10)
	if err != nil {
		t.Fatal(err)
	}
	if c.MapOffset() != MapBase || c.Handle() == a.Handle() {
		t.Fatalf("buffer after a free: offset %#x handle %d, want the freed place and a new handle", c.MapOffset(), c.Handle())
	}
	// 5 pages of memory: a mapping space of 5 × (log2(5) + 2) = 20 pages.
	if b.MapOffset() != MapBase+PageSize || d.MapSpaceEnd() != MapBase+20*PageSize {
		t.Fatalf("second buffer at %#x, mapping space ends at %#x", b.MapOffset(), d.MapSpaceEnd())
	}

	// Release frees everything, and the next client cannot use the
	// earlier client's handles.
	f.Release()
	if got := d.MemoryUsed(); got != 0 {
		t.Fatalf("memory_used after release = %d, want 0", got)
	}
	g := mustOpen(t, d, NodeCompute)
	_, err = d.LookupBuffer(g, b.Handle())
	wantErrno(t, "lookup of the earlier client's handle", err, syscall.ENOENT)
	wantErrno(t, "free of the earlier client's handle", d.Free(g, b.Handle()), syscall.EINVAL)
	_, err = d.Alloc(f, 1)
	wantErrno(t, "alloc on a released file", err, syscall.EBADF)
}

// Mapped reads and writes reach only the client's buffers: zeros between
// them, EIO for a range outside all of them (another client's offsets
// included), and a write that strays past a buffer stores what fits and
// reports EIO.
func TestMappedAccess(t *testing.T) {
	d, f := memDevice(t, 1<<20, 0)
	a, _ := d.Alloc(f, 100)
	b, _ := d.Alloc(f, PageSize)
	data := bytes.Repeat([]byte{7}, 100)
	if err := f.WriteMapped(data, a.MapOffset()); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3*PageSize)
	if err := f.ReadMapped(got, a.MapOffset()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:100], data) || !bytes.Equal(got[100:], make([]byte, len(got)-100)) {
		t.Fatalf("read back %v..., want 100 sevens then zeros (b never written, then the gap)", got[:8])
	}
	wantErrno(t, "read at offset 0", f.ReadMapped(make([]byte, 8), 0), syscall.EIO)
	wantErrno(t, "read past every buffer", f.ReadMapped(make([]byte, 8), b.MapOffset()+PageSize), syscall.EIO)
	wantErrno(t, "read wrapping the offset space", f.ReadMapped(make([]byte, 8), ^uint64(0)-3), syscall.EINVAL)

	stray := bytes.Repeat([]byte{9}, 2*int(PageSize))
	wantErrno(t, "write running past the last buffer", f.WriteMapped(stray, b.MapOffset()), syscall.EIO)
	if err := f.ReadMapped(got[:PageSize], b.MapOffset()); err != nil || got[0] != 9 || got[PageSize-1] != 9 {
		t.Fatalf("the part of the stray write inside b was not kept: %v %v", got[:4], err)
	}

	mon := mustOpen(t, d, NodeMonitor)
	wantErrno(t, "read through the monitor file", mon.ReadMapped(got, a.MapOffset()), syscall.EBADF)
	f.Release()
	g := mustOpen(t, d, NodeCompute)
	wantErrno(t, "read of the earlier client's offset", g.ReadMapped(got, a.MapOffset()), syscall.EIO)
	wantErrno(t, "read through a released file", f.ReadMapped(got, a.MapOffset()), syscall.EBADF)
}

// recordingSyncer records the ranges the core syncs.
type recordingSyncer struct {
	mu     sync.Mutex
	ranges [][2]uint64
}

func (r *recordingSyncer) Sync(d *Device, off, size uint64) error {
	r.mu.Lock()
	r.ranges = append(r.ranges, [2]uint64{off, size})
	r.mu.Unlock()
	return nil
}

// A job runs over the client's buffers, its result is waited for once,
// and the device's busy time and job count come from it; its buffers are
// synced before it is queued and the one it wrote after it ran.
func TestJobRunsAndIsAccounted(t *testing.T) {
	d, f := memDevice(t, 1<<20, 0)
	sync := &recordingSyncer{}
	d.reg.AttachMappings(sync)
	src, _ := d.Alloc(f, 8)
	dst, _ := d.Alloc(f, 8)
	if err := f.WriteMapped([]byte{1, 2, 3, 4, 5, 6, 7, 8}, src.MapOffset()); err != nil {
		t.Fatal(err)
	}
	const runFor = 20 * time.Millisecond
	seq, err := d.Submit(f, Job{Reads: []*Buffer{src}, Writes: []*Buffer{dst}, Duration: runFor, Run: func() (uint64, error) {
		return 42, AccessBuffers([]*Buffer{src, dst}, func(m [][]byte) error {
			for i := range m[0] {
				m[1][i] = m[0][i] * 2
			}
			return nil
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Wait(context.Background(), f, seq, 10*time.Second)
	if err != nil || res.Err != nil || res.Value != 42 || res.RunTime < runFor {
		t.Fatalf("wait: %+v, %v; want value 42 after at least %s", res, err, runFor)
	}
	got := make([]byte, 8)
	if err := f.ReadMapped(got, dst.MapOffset()); err != nil || !bytes.Equal(got, []byte{2, 4, 6, 8, 10, 12, 14, 16}) {
		t.Fatalf("dst = %v, %v", got, err)
	}
	info := d.Info()
	if info.JobsCompleted != 1 || info.BusyTime < runFor || info.BusyTime != res.RunTime {
		t.Fatalf("info: %d jobs, busy %s; want 1 job and the job's run time %s", info.JobsCompleted, info.BusyTime, res.RunTime)
	}
	want := [][2]uint64{{src.MapOffset(), PageSize}, {dst.MapOffset(), PageSize}, {dst.MapOffset(), PageSize}}
	sync.mu.Lock()
	if len(sync.ranges) != 3 || sync.ranges[0] != want[0] || sync.ranges[1] != want[1] || sync.ranges[2] != want[2] {
		t.Errorf("synced %v, want %v (src and dst before, dst after)", sync.ranges, want)
	}
	sync.mu.Unlock()
	_, err = d.Wait(context.Background(), f, seq, time.Second)
	wantErrno(t, "second wait of a job", err, syscall.EINVAL)
	_, err = d.Wait(context.Background(), f, 12345, time.Second)
	wantErrno(t, "wait of a job never submitted", err, syscall.EINVAL)
}

// The job engine's bad inputs and limits: buffers of another client, the
// per-client limit of jobs not waited for, a wait that times out, a
// buffer freed while its job runs, a device not operational, a client
// released with jobs queued.
func TestJobLimits(t *testing.T) {
	d, f := memDevice(t, 1<<20, 0)
	buf, _ := d.Alloc(f, 8)
	gate := make(chan struct{})
	blocked := Job{Reads: []*Buffer{buf}, Run: func() (uint64, error) { <-gate; return 0, nil }}
	quick := Job{Reads: []*Buffer{buf}, Run: func() (uint64, error) { return 1, nil }}

	_, err := d.Submit(f, Job{Reads: []*Buffer{buf}})
	wantErrno(t, "job without Run", err, syscall.EINVAL)
	first, err := d.Submit(f, blocked)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Wait(context.Background(), f, first, time.Millisecond)
	wantErrno(t, "wait for a blocked job", err, syscall.ETIMEDOUT)
	if err := d.Free(f, buf.Handle()); err != nil {
		t.Fatal(err)
	}
	if got := d.MemoryUsed(); got != PageSize {
		t.Fatalf("memory_used with the freed buffer still in a job = %d, want a page", got)
	}
	// A job over a buffer freed after the driver looked it up is refused:
	// it must not revive the freed memory (which would count it twice).
	_, err = d.Submit(f, quick)
	wantErrno(t, "job over a freed buffer", err, syscall.ENOENT)
	buf2, _ := d.Alloc(f, 8)
	quick = Job{Reads: []*Buffer{buf2}, Writes: []*Buffer{buf2}, Run: func() (uint64, error) { return 1, nil }}
	for i := 1; i < MaxJobsPerFile; i++ {
		if _, err := d.Submit(f, quick); err != nil {
			t.Fatalf("job %d: %v", i+1, err)
		}
	}
	_, err = d.Submit(f, quick)
	wantErrno(t, "job past MaxJobsPerFile not waited for", err, syscall.ENOSPC)
	close(gate)
	if res, err := d.Wait(context.Background(), f, first, 10*time.Second); err != nil || res.Err != nil {
		t.Fatalf("first job: %+v %v", res, err)
	}
	// Polls (timeout 0) of finished jobs give each job's result, never
	// ETIMEDOUT: the device runs jobs in order, so once the last is done
	// every earlier one is.
	last := first + MaxJobsPerFile - 1
	if res, err := d.Wait(context.Background(), f, last, 10*time.Second); err != nil || res.Value != 1 {
		t.Fatalf("last job: %+v %v", res, err)
	}
	for seq := first + 1; seq < last; seq++ {
		if res, err := d.Wait(context.Background(), f, seq, 0); err != nil || res.Value != 1 {
			t.Fatalf("poll of finished job %d: %+v %v", seq, res, err)
		}
	}
	if got := d.MemoryUsed(); got != PageSize {
		t.Fatalf("memory_used with one live buffer after its jobs = %d, want a page", got)
	}

	other := mustOpen(t, mustRegister(t, d.reg, "other"), NodeCompute)
	otherBuf, err := other.Device().Alloc(other, 8)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Submit(f, Job{Reads: []*Buffer{otherBuf}, Run: quick.Run})
	wantErrno(t, "job over another client's buffer", err, syscall.EINVAL)

	// Release cancels queued jobs and frees everything.
	f.Release()
	if got := d.MemoryUsed(); got != 0 {
		t.Fatalf("memory_used after release = %d, want 0", got)
	}

	g := mustOpen(t, d, NodeCompute)
	b2, _ := d.Alloc(g, 8)
	if err := d.SetStatus(StatusMalfunction); err != nil {
		t.Fatal(err)
	}
	seq, err := d.Submit(g, Job{Reads: []*Buffer{b2}, Run: quick.Run})
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Wait(context.Background(), g, seq, 10*time.Second)
	if err != nil || !errors.Is(res.Err, syscall.EIO) {
		t.Fatalf("job on a malfunctioning device: %+v %v, want EIO", res, err)
	}
}

// The registry's memory budget caps all devices' buffers together, and a
// freed buffer gives its share back.
func TestMemoryBudget(t *testing.T) {
	r := newTestRegistry(t, Options{MemoryBudget: 3 * PageSize})
	var files []*File
	for _, serial := range []string{"A", "B"} {
		d, err := r.Register(&memDriver{stubDriver: stubDriver{serial: serial}, total: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, mustOpen(t, d, NodeCompute))
	}
	a, b := files[0], files[1]
	if _, err := a.Device().Alloc(a, 2*PageSize); err != nil {
		t.Fatal(err)
	}
	_, err := b.Device().Alloc(b, 2*PageSize)
	wantErrno(t, "alloc past the budget on another device", err, syscall.ENOMEM)
	small, err := b.Device().Alloc(b, PageSize)
	if err != nil {
		t.Fatalf("alloc within the budget: %v", err)
	}
	if err := b.Device().Free(b, small.Handle()); err != nil {
		t.Fatal(err)
	}
	a.Release()
	if _, err := b.Device().Alloc(b, 3*PageSize); err != nil {
		t.Fatalf("alloc after the other device's client released: %v", err)
	}
}

// First fit in a fragmented mapping space: the space is larger than the
// memory, so a buffer that fits the free memory finds a place inside the
// file; when none is left the alloc is ENOMEM and takes nothing.
func TestMappingSpaceFragmented(t *testing.T) {
	d, f := memDevice(t, 4*PageSize, 0)
	var bufs []*Buffer
	for range 4 {
		b, err := d.Alloc(f, PageSize)
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, b)
	}
	for _, i := range []int{0, 2} {
		if err := d.Free(f, bufs[i].Handle()); err != nil {
			t.Fatal(err)
		}
	}
	two, err := d.Alloc(f, 2*PageSize)
	if err != nil {
		t.Fatalf("2 pages with 2 free in two holes of one page: %v", err)
	}
	if end := two.MapOffset() + two.MapSize(); end > d.MapSpaceEnd() {
		t.Fatalf("buffer at %#x..%#x past the mapping space's end %#x", two.MapOffset(), end, d.MapSpaceEnd())
	}
	if err := f.WriteMapped([]byte{1}, two.MapOffset()+two.MapSize()-1); err != nil {
		t.Fatalf("write to the buffer's last byte: %v", err)
	}

	// A space with no hole left (made small here: the real one holds
	// first fit's worst case) refuses the alloc and gives its share back.
	if err := f.Device().Free(f, two.Handle()); err != nil {
		t.Fatal(err)
	}
	d.mem.space = 4 * PageSize // [free, B, free, D]
	used := d.MemoryUsed()
	_, err = d.Alloc(f, 2*PageSize)
	wantErrno(t, "alloc with no hole of 2 pages", err, syscall.ENOMEM)
	if got := d.MemoryUsed(); got != used || d.mem.budget.used != used {
		t.Fatalf("after the refused alloc: memory_used %d, budget used %d, want %d", got, d.mem.budget.used, used)
	}
	if _, err := d.Alloc(f, PageSize); err != nil {
		t.Fatalf("a page into a one-page hole: %v", err)
	}
}

func TestMapSpace(t *testing.T) {
	for _, tc := range []struct{ total, want uint64 }{
		{1, 2 * PageSize},             // 1 page × (0 + 2)
		{5 * PageSize, 20 * PageSize}, // 5 × (2 + 2)
		{16 << 30, (16 << 30) * 24},   // 2^22 pages × (22 + 2)
		{1 << 61, maxMapSpace},        // saturated
		{^uint64(0), maxMapSpace},     // rounding saturates first
	} {
		if got := mapSpace(tc.total); got != tc.want {
			t.Errorf("mapSpace(%d) = %d, want %d", tc.total, got, tc.want)
		}
	}
}

// Mapped reads and offset queries while the same client frees and
// allocates: no race (go test -race), no panic, and every read either
// succeeds or is EIO (the range held no buffer at that moment).
func TestMappedAccessWhileFreeing(t *testing.T) {
	d, f := memDevice(t, 1<<20, 0)
	b, err := d.Alloc(f, PageSize)
	if err != nil {
		t.Fatal(err)
	}
	off := b.MapOffset()
	done := make(chan error)
	go func() {
		p := make([]byte, 2*PageSize)
		for range 2000 {
			if err := f.ReadMapped(p, off); err != nil && !errors.Is(err, syscall.EIO) {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 2000 {
		if err := d.Free(f, b.Handle()); err != nil {
			t.Fatal(err)
		}
		if b, err = d.Alloc(f, PageSize); err != nil {
			t.Fatal(err)
		}
		_ = b.MapOffset()
	}
	if err := <-done; err != nil {
		t.Fatalf("read while freeing: %v", err)
	}
}
