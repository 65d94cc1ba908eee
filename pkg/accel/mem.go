package accel

import (
	"cmp"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The core's memory manager: every device's memory is handed out here, in
// buffers that belong to one compute file, as DRM's GEM does for graphics
// and accel drivers. Drivers decide when to allocate (their own commands)
// and the core decides everything else:
//
//   - a buffer has a handle, unique on its device and never reused, so a
//     handle of an earlier client never names a later client's buffer;
//   - a buffer has a page-aligned place in the compute node's mapping
//     space (from MapBase, see mapSpace): mmap of the compute node at that
//     offset reaches the buffer's memory, as GEM's fake offsets do. Places
//     are reused once a buffer is freed (first fit);
//   - sizes are rounded up to whole pages, and memory_used is the sum of
//     the rounded sizes of live buffers (a freed buffer that a job still
//     uses counts until the job is done): it never exceeds memory_total;
//   - a client holds at most Identity.MaxBuffers buffers at once (ENOSPC
//     past it), so no client grows the daemon's tables without bound;
//   - everything a file holds is freed when it is released.
//
// Memory is backed by anonymous mappings of the daemon, made when a buffer
// is first written (a buffer never written reads as zeros and costs no
// memory), and given back to the system when the buffer is freed.

// MapBase is where the compute node's mapping space begins: the offset of
// the first buffer. As with DRM's DRM_FILE_PAGE_OFFSET_START, offset 0 is
// never a buffer, so a client that maps without asking for an offset gets
// an error instead of someone's memory.
const MapBase = 1 << 32

// DefaultMaxBuffers is how many buffers one client may hold by default.
const DefaultMaxBuffers = 4096

// PageSize is the granule of buffer sizes and offsets: the system's page
// size, at least 4 KiB.
var PageSize = uint64(max(os.Getpagesize(), 4096))

// Buffer is one allocation of device memory.
type Buffer struct {
	mem    *memory
	owner  *File
	handle uint64
	offset uint64 // in the mapping space; 0 once freed
	size   uint64 // requested
	span   uint64 // size rounded up to pages: what memory_used counts

	refs int // guarded by mem.mu: the handle's reference and each job's

	// dataMu guards data's contents (and its creation): device-side work
	// holds it while it runs, page-cache reads and writes briefly.
	dataMu sync.RWMutex
	data   []byte // nil until first written
}

// Handle returns the buffer's handle.
func (b *Buffer) Handle() uint64 { return b.handle }

// Size returns the size the client asked for.
func (b *Buffer) Size() uint64 { return b.size }

// MapOffset returns the buffer's offset in the compute node's mapping
// space: what a client passes to mmap (0 once freed).
func (b *Buffer) MapOffset() uint64 {
	b.mem.mu.Lock()
	defer b.mem.mu.Unlock()
	return b.offset
}

// MapSize returns the buffer's size rounded up to whole pages: how much of
// the mapping space it takes.
func (b *Buffer) MapSize() uint64 { return b.span }

// AccessBuffers runs fn over the memory of bufs (Size bytes each, in the
// order given), for device-side work: fn may read and change it. Each
// distinct buffer is locked once, in handle order, so a buffer may appear
// more than once (an in-place operation) and two calls never deadlock;
// page-cache reads and writes of the buffers wait meanwhile. Memory never
// written reads as zeros.
func AccessBuffers(bufs []*Buffer, fn func(data [][]byte) error) error {
	uniq := make([]*Buffer, 0, len(bufs))
	for _, b := range bufs {
		if !slices.Contains(uniq, b) {
			uniq = append(uniq, b)
		}
	}
	slices.SortFunc(uniq, func(a, b *Buffer) int { return cmp.Compare(a.handle, b.handle) })
	for _, b := range uniq {
		b.dataMu.Lock()
		defer b.dataMu.Unlock()
		if err := b.backLocked(); err != nil {
			return err
		}
	}
	data := make([][]byte, len(bufs))
	for i, b := range bufs {
		data[i] = b.data[:b.size]
	}
	return fn(data)
}

// backLocked makes the buffer's memory if it has none yet; b.dataMu is
// held for writing.
func (b *Buffer) backLocked() error {
	if b.data != nil {
		return nil
	}
	data, err := unix.Mmap(-1, 0, int(b.span), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("back buffer %d (%d bytes): %w", b.handle, b.span, syscall.ENOMEM)
	}
	b.data = data
	return nil
}

// unback gives the buffer's memory back; no one can reach b any more.
func (b *Buffer) unback() {
	b.dataMu.Lock()
	defer b.dataMu.Unlock()
	if b.data != nil {
		_ = unix.Munmap(b.data)
		b.data = nil
	}
}

// budget is the registry-wide cap on memory held by buffers (see
// Options.MemoryBudget).
type budget struct {
	limit uint64 // 0: none

	mu   sync.Mutex
	used uint64
}

// take reserves n bytes, reporting false when they do not fit.
func (b *budget) take(n uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limit > 0 && n > b.limit-b.used {
		return false
	}
	b.used += n
	return true
}

func (b *budget) give(n uint64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// memory is one device's memory manager.
type memory struct {
	total      uint64
	space      uint64 // the mapping space's size: see mapSpace
	maxBuffers int
	budget     *budget

	mu         sync.Mutex
	used       uint64
	nextHandle uint64
	byFile     map[*File]map[uint64]*Buffer
	placed     []*Buffer // live buffers by offset: the mapping space's map
}

func newMemory(total uint64, maxBuffers int, b *budget) *memory {
	if maxBuffers <= 0 {
		maxBuffers = DefaultMaxBuffers
	}
	return &memory{total: total, space: mapSpace(total), maxBuffers: maxBuffers, budget: b, byFile: make(map[*File]map[uint64]*Buffer)}
}

// maxMapSpace bounds the mapping space so that its end fits an off_t.
const maxMapSpace = 1 << 62

// mapSpace is the size of the mapping space of a device with total bytes
// of memory: total × (log2(pages) + 2), as a fake offset space may be far
// larger than the memory (GEM's is). Placing buffers first fit in a space
// only as large as the memory would fail once it fragments (free buffers
// one and three of four, and no hole holds two); first fit never needs
// more than about total × log2(pages) (Robson's bound), and a placement
// that would pass the end anyway is ENOMEM, never a buffer past the file's
// end.
func mapSpace(total uint64) uint64 {
	span := roundPage(total)
	factor := uint64(bits.Len64(span/PageSize) + 1)
	if span > maxMapSpace/factor {
		return maxMapSpace
	}
	return span * factor
}

// MapSpaceEnd is the end of d's mapping space: no buffer reaches past it,
// and it is the compute node's file size.
func (d *Device) MapSpaceEnd() uint64 { return MapBase + d.mem.space }

// MemoryUsed returns the bytes of live buffers (rounded to pages).
func (d *Device) MemoryUsed() uint64 {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return d.mem.used
}

func roundPage(n uint64) uint64 {
	if n > ^uint64(0)-PageSize {
		return ^uint64(0) &^ (PageSize - 1)
	}
	return (n + PageSize - 1) &^ (PageSize - 1)
}

// Alloc allocates a buffer of size bytes for the compute file f. It fails
// with EINVAL for size 0 or a file that is not an open compute file of d,
// ENOMEM when the rounded size does not fit the free memory, and ENOSPC
// when f already holds its device's limit of buffers.
func (d *Device) Alloc(f *File, size uint64) (*Buffer, error) {
	if f == nil || f.dev != d || f.kind != NodeCompute {
		return nil, fmt.Errorf("alloc on %s: not a compute file of this device: %w", d.name, syscall.EINVAL)
	}
	if size == 0 {
		return nil, fmt.Errorf("alloc on %s: size 0: %w", d.name, syscall.EINVAL)
	}
	m := d.mem
	span := roundPage(size)
	m.mu.Lock()
	defer m.mu.Unlock()
	bufs, ok := m.byFile[f]
	if !ok {
		if f.isClosed() {
			return nil, fmt.Errorf("alloc on %s: file released: %w", d.name, syscall.EBADF)
		}
		bufs = make(map[uint64]*Buffer)
		m.byFile[f] = bufs
	}
	switch {
	case size > m.total || span > m.total-m.used:
		return nil, fmt.Errorf("alloc %d bytes on %s: %d of %d bytes free: %w", size, d.name, m.total-m.used, m.total, syscall.ENOMEM)
	case len(bufs) >= m.maxBuffers:
		return nil, fmt.Errorf("alloc on %s: the client already holds its limit of %d buffers: %w", d.name, m.maxBuffers, syscall.ENOSPC)
	case !m.budget.take(span):
		return nil, fmt.Errorf("alloc %d bytes on %s: the daemon's memory budget of %d bytes for all devices is used up: %w", size, d.name, m.budget.limit, syscall.ENOMEM)
	}
	// First fit in the mapping space (see mapSpace for its size).
	off, at := uint64(MapBase), len(m.placed)
	for i, p := range m.placed {
		if p.offset-off >= span {
			at = i
			break
		}
		off = p.offset + p.span
	}
	if end := MapBase + m.space; off > end || span > end-off {
		m.budget.give(span)
		return nil, fmt.Errorf("alloc %d bytes on %s: no hole of %d bytes left in the fragmented mapping space of %d bytes: %w", size, d.name, span, m.space, syscall.ENOMEM)
	}
	m.nextHandle++
	b := &Buffer{mem: m, owner: f, handle: m.nextHandle, offset: off, size: size, span: span, refs: 1}
	m.placed = append(m.placed, nil)
	copy(m.placed[at+1:], m.placed[at:])
	m.placed[at] = b
	bufs[b.handle] = b
	m.used += span
	return b, nil
}

// LookupBuffer returns f's buffer with handle h: ENOENT when f holds no
// such buffer (another client's handle, a freed one, one never made), as
// GEM's object lookup answers.
func (d *Device) LookupBuffer(f *File, h uint64) (*Buffer, error) {
	m := d.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.byFile[f][h]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("buffer %d on %s: this client holds no buffer with that handle: %w", h, d.name, syscall.ENOENT)
}

// Free frees f's buffer with handle h: EINVAL when f holds no such buffer
// (so a second free of a handle fails), as GEM's handle close answers. A
// CPU write still cached in a mapping of it is written back first, and
// the buffer's place in the mapping space is free at once; its memory is
// freed when the last job using it completes.
func (d *Device) Free(f *File, h uint64) error {
	b, err := d.LookupBuffer(f, h)
	if err != nil {
		return fmt.Errorf("free buffer %d on %s: this client holds no buffer with that handle: %w", h, d.name, syscall.EINVAL)
	}
	d.syncMapping(b) // outside every lock: see MappingSyncer
	m := d.mem
	m.mu.Lock()
	if m.byFile[f][h] != b { // freed meanwhile by a concurrent call
		m.mu.Unlock()
		return fmt.Errorf("free buffer %d on %s: already freed: %w", h, d.name, syscall.EINVAL)
	}
	delete(m.byFile[f], h)
	off, span := b.offset, b.span
	m.unplaceLocked(b)
	last := m.unrefLocked(b)
	m.mu.Unlock()
	if last {
		b.unback()
	}
	// A page the client touched between the first sync and the unplace is
	// cached again: drop it too, or a later buffer placed there would
	// show it (or take its write-back). Its write-back now fails: the
	// range holds no buffer.
	d.syncRange(off, span)
	return nil
}

// unplaceLocked removes b from the mapping space.
func (m *memory) unplaceLocked(b *Buffer) {
	i := sort.Search(len(m.placed), func(i int) bool { return m.placed[i].offset >= b.offset })
	if i < len(m.placed) && m.placed[i] == b {
		m.placed = append(m.placed[:i], m.placed[i+1:]...)
	}
	b.offset = 0
}

// unrefLocked drops one reference and reports whether it was the last;
// the memory is then no longer used.
func (m *memory) unrefLocked(b *Buffer) bool {
	b.refs--
	if b.refs > 0 {
		return false
	}
	m.used -= b.span
	m.budget.give(b.span)
	return true
}

// refLive takes a reference on each of bufs for a job of f, all or none:
// ENOENT when one of them is no longer f's (freed since the driver looked
// it up), so a job never revives a freed buffer's memory.
func (m *memory) refLive(f *File, bufs []*Buffer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range bufs {
		if m.byFile[f][b.handle] != b {
			return fmt.Errorf("buffer %d was freed: %w", b.handle, syscall.ENOENT)
		}
	}
	for _, b := range bufs {
		b.refs++
	}
	return nil
}

// unref drops a reference a job or a mapped access took.
func (b *Buffer) unref() {
	b.mem.mu.Lock()
	last := b.mem.unrefLocked(b)
	b.mem.mu.Unlock()
	if last {
		b.unback()
	}
}

// releaseMemory frees everything f holds; f is closed.
func (d *Device) releaseMemory(f *File) {
	m := d.mem
	m.mu.Lock()
	bufs := m.byFile[f]
	delete(m.byFile, f)
	var gone []*Buffer
	for _, b := range bufs {
		m.unplaceLocked(b)
		if m.unrefLocked(b) {
			gone = append(gone, b)
		}
	}
	m.mu.Unlock()
	for _, b := range gone {
		b.unback()
	}
}

// Buffers returns how many buffers f holds.
func (d *Device) Buffers(f *File) int {
	d.mem.mu.Lock()
	defer d.mem.mu.Unlock()
	return len(d.mem.byFile[f])
}

// ReadMapped fills p with what f's mapping of the compute node shows at
// offset off: the contents of f's buffers, and zeros between them (a page
// cache read may run past a buffer's end). It fails with EIO when no byte
// of the range lies in one of f's buffers: an access to memory the client
// was never given.
func (f *File) ReadMapped(p []byte, off uint64) error {
	return f.mapped(p, off, false)
}

// WriteMapped stores p, written through f's mapping of the compute node at
// offset off, into f's buffers. Bytes that fall outside them are dropped
// and the write fails with EIO, so the client's msync, fsync or close
// reports the stray write.
func (f *File) WriteMapped(p []byte, off uint64) error {
	return f.mapped(p, off, true)
}

func (f *File) mapped(p []byte, off uint64, write bool) error {
	d := f.dev
	if f.kind != NodeCompute || f.isClosed() {
		return syscall.EBADF
	}
	end := off + uint64(len(p))
	if end < off {
		return syscall.EINVAL
	}
	m := d.mem
	m.mu.Lock()
	i := sort.Search(len(m.placed), func(i int) bool { return m.placed[i].offset+m.placed[i].span > off })
	// The places are read here, under m.mu: a concurrent free unplaces a
	// buffer (its offset becomes 0) while this copies.
	type hit struct {
		b      *Buffer
		offset uint64
	}
	var hits []hit
	for ; i < len(m.placed) && m.placed[i].offset < end; i++ {
		if b := m.placed[i]; b.owner == f {
			b.refs++ // kept alive while copying, without m.mu
			hits = append(hits, hit{b, b.offset})
		}
	}
	m.mu.Unlock()
	defer func() {
		for _, h := range hits {
			h.b.unref()
		}
	}()
	if !write {
		clear(p)
	}
	covered := uint64(0)
	for _, h := range hits {
		b := h.b
		lo, hi := max(off, h.offset), min(end, h.offset+b.span)
		covered += hi - lo
		dst := p[lo-off : hi-off]
		src := lo - h.offset
		if write {
			b.dataMu.Lock()
			err := b.backLocked()
			if err == nil {
				copy(b.data[src:], dst)
			}
			b.dataMu.Unlock()
			if err != nil {
				return err
			}
		} else {
			b.dataMu.RLock()
			if b.data != nil {
				copy(dst, b.data[src:])
			}
			b.dataMu.RUnlock()
		}
	}
	if (write && covered < uint64(len(p))) || (!write && covered == 0 && len(p) > 0) {
		what := "read"
		if write {
			what = "write"
		}
		d.reg.log.Debug("mapped access outside the client's buffers", "device", d.name, "op", what, "offset", off, "len", len(p), "in_buffers", covered)
		return syscall.EIO
	}
	return nil
}

// MappingSyncer keeps CPU mappings of compute nodes coherent with device
// memory (package devfs: the kernel's page cache of the node). The core
// calls Sync before device work reads a buffer (so that the CPU's cached
// writes reach device memory) and after device work wrote one (so that the
// CPU reads the new contents), and before a buffer is freed. Sync writes
// back the CPU's pending writes to [off, off+size) of d's compute node and
// drops its cached copy of the range.
//
// The core calls Sync without holding any of its locks, and Sync may wait
// for the node's reads and writes (ReadMapped, WriteMapped) to be served:
// it must never be called with a lock those need.
type MappingSyncer interface {
	Sync(d *Device, off, size uint64) error
}

// AttachMappings adds a syncer of CPU mappings; see MappingSyncer.
func (r *Registry) AttachMappings(s MappingSyncer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncers = append(r.syncers, s)
}

// syncMapping syncs b's range of the mapping space in every syncer.
func (d *Device) syncMapping(b *Buffer) {
	d.mem.mu.Lock()
	off, span := b.offset, b.span
	d.mem.mu.Unlock()
	if off == 0 {
		return // freed: syncRange at the free dropped its pages
	}
	d.syncRange(off, span)
}

// syncRange syncs [off, off+span) of the mapping space in every syncer.
func (d *Device) syncRange(off, span uint64) {
	d.reg.mu.Lock()
	syncers := d.reg.syncers
	d.reg.mu.Unlock()
	for _, s := range syncers {
		if err := s.Sync(d, off, span); err != nil {
			d.reg.log.Warn("syncing a mapping with device memory failed", "device", d.name, "offset", off, "size", span, "err", err)
		}
	}
}
