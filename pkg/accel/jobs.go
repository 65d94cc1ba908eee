package accel

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
)

// The core's job engine: drivers turn their submit commands into Jobs and
// the core runs them, one at a time per device in submission order, as
// DRM's GPU scheduler does for its drivers. The core keeps what every
// device reports the same way: busy time (the sum of the jobs' run times,
// as DRM's fdinfo drm-engine-* keys count it) and jobs completed.
//
// Rules:
//   - a job holds the buffers it uses: freeing one while the job waits or
//     runs only drops its handle, and its memory stays until the job is
//     done;
//   - before a job is queued the CPU's cached writes to its buffers are
//     written back, and after it ran the CPU's cached copies of the
//     buffers it wrote are dropped (see MappingSyncer), so a client that
//     writes through its mapping, submits, waits and reads through its
//     mapping sees the device's answer without any cache call;
//   - a client has at most MaxJobsPerFile jobs that it has not waited for
//     (ENOSPC past it): a client that never waits cannot grow the
//     daemon's memory;
//   - a job that starts while its device is not operational fails with
//     EIO; when its client is released, jobs not yet run are cancelled
//     and a running job's remaining time is cut short.

// MaxJobsPerFile is how many jobs one client may have submitted and not
// yet waited for.
const MaxJobsPerFile = 64

// Job is one piece of device work.
type Job struct {
	// Reads and Writes are the buffers the job reads and writes (a buffer
	// may be in both). They must belong to the submitting file.
	Reads, Writes []*Buffer
	// Duration is how long the device takes for the job, counted from its
	// start (Run's own time included).
	Duration time.Duration
	// Run does the work over the buffers (see Buffer.Access) and returns
	// the job's result word, or an error (a syscall.Errno is reported to
	// the client as is, anything else as EIO).
	Run func() (uint64, error)
}

// JobResult is what a waiter learns of a completed job.
type JobResult struct {
	Err     error  // nil on success; a syscall.Errno
	Value   uint64 // Run's result word
	RunTime time.Duration
}

// job is a submitted Job.
type job struct {
	Job
	file *File
	seq  uint64
	done chan struct{}
	res  JobResult
}

// engine is one device's job queue and its accounting.
type engine struct {
	mu      sync.Mutex
	queue   []*job
	running bool
	nextSeq uint64
	busy    time.Duration
	jobs    uint64
	byFile  map[*File]map[uint64]*job // submitted, not yet waited for
	cancel  map[*File]context.CancelFunc
}

// Usage returns the device's busy time and the number of jobs completed
// (successfully or not) since it appeared.
func (d *Device) Usage() (busy time.Duration, jobs uint64) {
	e := &d.eng
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.busy, e.jobs
}

// Submit queues j for f and returns its sequence number, unique on the
// device. It fails with EINVAL for a buffer that is not f's, ENOSPC when f
// already has MaxJobsPerFile jobs it has not waited for, EBADF for a
// released f.
func (d *Device) Submit(f *File, j Job) (uint64, error) {
	if j.Run == nil || j.Duration < 0 {
		return 0, fmt.Errorf("submit on %s: a job needs Run and a duration of at least 0: %w", d.name, syscall.EINVAL)
	}
	bufs := j.buffers()
	for _, b := range bufs {
		if b == nil || b.owner != f || b.mem != d.mem {
			return 0, fmt.Errorf("submit on %s: a buffer the client does not hold: %w", d.name, syscall.EINVAL)
		}
	}
	e := &d.eng
	e.mu.Lock()
	if f.isClosed() {
		e.mu.Unlock()
		return 0, syscall.EBADF
	}
	if len(e.byFile[f]) >= MaxJobsPerFile {
		e.mu.Unlock()
		return 0, fmt.Errorf("submit on %s: the client already has %d jobs it has not waited for: %w", d.name, MaxJobsPerFile, syscall.ENOSPC)
	}
	e.mu.Unlock()

	// Take the buffers (one reference per use, as releaseBuffers drops
	// them) and bring device memory up to date, then queue. A buffer
	// freed since the driver looked it up is refused; once taken, a free
	// leaves its memory to the job.
	if err := d.mem.refLive(f, bufs); err != nil {
		return 0, fmt.Errorf("submit on %s: %w", d.name, err)
	}
	for _, b := range unique(bufs) {
		d.syncMapping(b)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if f.isClosed() || len(e.byFile[f]) >= MaxJobsPerFile { // released or filled meanwhile
		defer releaseBuffers(j) // takes the memory lock only, never e.mu
		if f.isClosed() {
			return 0, syscall.EBADF
		}
		return 0, fmt.Errorf("submit on %s: the client already has %d jobs it has not waited for: %w", d.name, MaxJobsPerFile, syscall.ENOSPC)
	}
	e.nextSeq++
	jb := &job{Job: j, file: f, seq: e.nextSeq, done: make(chan struct{})}
	if e.byFile == nil {
		e.byFile = make(map[*File]map[uint64]*job)
		e.cancel = make(map[*File]context.CancelFunc)
	}
	if e.byFile[f] == nil {
		e.byFile[f] = make(map[uint64]*job)
	}
	e.byFile[f][jb.seq] = jb
	e.queue = append(e.queue, jb)
	if !e.running {
		e.running = true
		go d.runJobs()
	}
	return jb.seq, nil
}

// buffers returns the job's buffers, reads then writes, once per use (a
// buffer both read and written appears twice, and holds two references).
func (j Job) buffers() []*Buffer {
	return append(j.Reads[:len(j.Reads):len(j.Reads)], j.Writes...)
}

// unique returns bufs without repeats, in order. A job has a few buffers,
// so a scan beats a map on this path (every submit and completion).
func unique(bufs []*Buffer) []*Buffer {
	var out []*Buffer
	for _, b := range bufs {
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// releaseBuffers drops the references Submit took for j.
func releaseBuffers(j Job) {
	for _, b := range j.buffers() {
		b.unref()
	}
}

// runJobs runs queued jobs until the queue is empty.
func (d *Device) runJobs() {
	e := &d.eng
	for {
		e.mu.Lock()
		if len(e.queue) == 0 {
			e.running = false
			e.mu.Unlock()
			return
		}
		jb := e.queue[0]
		e.queue = e.queue[1:]
		ctx, cancel := context.WithCancel(context.Background())
		e.cancel[jb.file] = cancel
		e.mu.Unlock()

		res := d.runJob(ctx, jb)
		cancel()

		e.mu.Lock()
		delete(e.cancel, jb.file)
		e.busy += res.RunTime
		e.jobs++
		jb.res = res
		e.mu.Unlock()
		close(jb.done)
	}
}

// runJob runs one job and syncs the buffers it wrote.
func (d *Device) runJob(ctx context.Context, jb *job) JobResult {
	defer releaseBuffers(jb.Job)
	if st := d.Status(); st != StatusOperational {
		return JobResult{Err: syscall.EIO}
	}
	start := time.Now()
	v, err := runSafely(jb.Run)
	if err == nil {
		err = waitUntil(ctx, start.Add(jb.Duration))
	}
	res := JobResult{Value: v, Err: errnoOf(err), RunTime: time.Since(start)}
	for _, b := range unique(jb.Writes) {
		d.syncMapping(b)
	}
	return res
}

// spinBelow is the remaining time under which a job's wait yields in a
// loop instead of sleeping on a timer: the Go runtime sleeps in
// millisecond steps when idle, so a 4 µs job waited for on a timer took
// 1.1 ms in half the round trips measured (BenchmarkJobRoundTrip p50 1.1 ms
// instead of 0.1 ms). Spinning costs the daemon at most this much CPU per
// job, and only for jobs that short.
const spinBelow = time.Millisecond

// waitUntil waits until deadline, or ECANCELED when ctx ends first.
func waitUntil(ctx context.Context, deadline time.Time) error {
	if left := time.Until(deadline); left >= spinBelow {
		t := time.NewTimer(left - spinBelow/2)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return syscall.ECANCELED
		}
	}
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return syscall.ECANCELED
		}
		runtime.Gosched()
	}
	return nil
}

// runSafely runs fn and turns a panic into EIO: a driver bug fails the
// job, not the daemon.
func runSafely(fn func() (uint64, error)) (v uint64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("job panicked: %v: %w", r, syscall.EIO)
		}
	}()
	return fn()
}

func errnoOf(err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}

// Wait waits until f's job seq is done, at most timeout, and returns its
// result; the job is then forgotten (a second Wait of it fails). It fails
// with EINVAL for a job f has not submitted (or already waited for),
// ETIMEDOUT when the job is not done in time (it stays waitable), EINTR
// when ctx ends first.
func (d *Device) Wait(ctx context.Context, f *File, seq uint64, timeout time.Duration) (JobResult, error) {
	e := &d.eng
	e.mu.Lock()
	jb, ok := e.byFile[f][seq]
	e.mu.Unlock()
	if !ok {
		return JobResult{}, fmt.Errorf("wait on %s: this client has no job %d to wait for: %w", d.name, seq, syscall.EINVAL)
	}
	select {
	case <-jb.done: // checked first: a poll (timeout 0) of a finished job must not lose to the timer
	default:
		t := time.NewTimer(max(timeout, 0))
		defer t.Stop()
		select {
		case <-jb.done:
		case <-t.C:
			return JobResult{}, fmt.Errorf("wait on %s: job %d not done within %s: %w", d.name, seq, timeout, syscall.ETIMEDOUT)
		case <-ctx.Done():
			return JobResult{}, syscall.EINTR
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byFile[f][seq] != jb { // a concurrent Wait took it
		return JobResult{}, fmt.Errorf("wait on %s: job %d was already waited for: %w", d.name, seq, syscall.EINVAL)
	}
	delete(e.byFile[f], seq)
	return jb.res, nil
}

// releaseJobs ends f's work: queued jobs are cancelled, a running one is
// cut short, and releaseJobs returns once none of f's jobs runs.
func (d *Device) releaseJobs(f *File) {
	e := &d.eng
	e.mu.Lock()
	var cancelled []*job
	kept := e.queue[:0]
	for _, jb := range e.queue {
		if jb.file == f {
			cancelled = append(cancelled, jb)
		} else {
			kept = append(kept, jb)
		}
	}
	clear(e.queue[len(kept):])
	e.queue = kept
	if cancel := e.cancel[f]; cancel != nil {
		cancel()
	}
	var running []*job
	for _, jb := range e.byFile[f] {
		running = append(running, jb)
	}
	delete(e.byFile, f)
	e.mu.Unlock()
	for _, jb := range cancelled {
		releaseBuffers(jb.Job)
		jb.res = JobResult{Err: syscall.ECANCELED}
		close(jb.done)
	}
	for _, jb := range running {
		<-jb.done
	}
}
