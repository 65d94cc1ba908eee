package devfs

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// rootNode is the mount's root directory. Device nodes are added and
// removed by a registry hook, so they change in step with the registry's
// events.
type rootNode struct {
	fs.Inode
	immutable
	srv *Server

	mu      sync.Mutex
	nodes   map[string]*fs.Inode
	nextIno uint64
}

var (
	_ = (fs.NodeOnAdder)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
)

// Getattr reports the root directory: owned by root and Options.GID, with
// Options.DirMode.
func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | r.srv.modes.dir
	out.Gid = r.srv.opts.GID
	out.Nlink = 2
	out.SetTimes(nil, &r.srv.mounted, &r.srv.mounted)
	return 0
}

// OnAdd builds the tree once the mount is live.
func (r *rootNode) OnAdd(ctx context.Context) {
	sys := r.NewPersistentInode(ctx, &sysDir{srv: r.srv}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.ino()})
	r.AddChild(devfsclient.SysDir, sys, true)
	sys.AddChild(devfsclient.EventsFile, r.NewPersistentInode(ctx, &eventsNode{srv: r.srv}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.ino()}), true)
	if r.srv.opts.Control != nil {
		sys.AddChild(devfsclient.ControlFile, r.NewPersistentInode(ctx, &controlNode{srv: r.srv}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.ino()}), true)
	}
	for _, d := range r.srv.reg.Attach(r.onEvent) {
		r.expose(d)
	}
}

func (r *rootNode) ino() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextIno++
	return r.nextIno + 1 // 1 is the root
}

// onEvent runs synchronously before consumers see the event.
func (r *rootNode) onEvent(ev accel.Event) {
	switch ev.Type {
	case accel.EventAdded:
		d, err := r.srv.reg.Lookup(ev.Name)
		if err != nil {
			r.srv.log.Error("added device vanished before exposure", "device", ev.Name, "err", err)
			return
		}
		r.expose(d)
	case accel.EventRemoved:
		r.hide(ev.Name)
		r.hide(accel.MonitorName(ev.Index))
		r.srv.maps.forget()
	}
}

func (r *rootNode) expose(d *accel.Device) {
	ctx := context.Background()
	for _, kind := range []accel.NodeKind{accel.NodeCompute, accel.NodeMonitor} {
		name, mode := d.Name(), r.srv.modes.compute
		if kind == accel.NodeMonitor {
			name, mode = d.MonitorName(), r.srv.modes.monitor
		}
		n := &devNode{srv: r.srv, name: name, dev: d, kind: kind, mode: mode, gid: r.srv.opts.GID, born: time.Now()}
		ch := r.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.ino()})
		r.AddChild(name, ch, true)
		r.mu.Lock()
		r.nodes[name] = ch
		r.mu.Unlock()
		// A lookup that failed before may be cached as negative.
		_ = r.NotifyEntry(name)
	}
}

func (r *rootNode) hide(name string) {
	r.mu.Lock()
	ch := r.nodes[name]
	delete(r.nodes, name)
	r.mu.Unlock()
	if ch == nil {
		return
	}
	r.RmChild(name)
	if errno := r.NotifyDelete(name, ch); errno != 0 && errno != syscall.ENOENT {
		_ = r.NotifyEntry(name)
	}
}

// sysDir is the sys directory.
type sysDir struct {
	fs.Inode
	immutable
	srv *Server
}

var _ = (fs.NodeGetattrer)((*sysDir)(nil))

func (n *sysDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.SetTimes(nil, &n.srv.mounted, &n.srv.mounted)
	return 0
}

// devNode is a compute or monitor node of one device.
type devNode struct {
	fs.Inode
	immutable
	srv  *Server
	name string
	dev  *accel.Device
	kind accel.NodeKind
	mode uint32
	gid  uint32
	born time.Time // when the node appeared: its mtime and ctime
}

var (
	_ = (fs.NodeOpener)((*devNode)(nil))
	_ = (fs.NodeGetattrer)((*devNode)(nil))
)

// MonitorReadSize is the size of a monitor node and of what a read of it
// returns: the summary line, padded with spaces. A fixed, true size makes
// the node readable through sendfile/splice too (busybox cat, for one,
// uses sendfile), which go through the page cache and stop at the file
// size; with a size of 0 they would read nothing.
const MonitorReadSize = 512

// Getattr reports the node's permissions; a compute node's size is the
// end of its device's mapping space (the kernel lets a mapping reach only
// that far), a monitor node's MonitorReadSize.
func (n *devNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | n.mode
	out.Gid = n.gid
	out.Nlink = 1
	out.Size = n.dev.MapSpaceEnd()
	// Blocks in use are the device memory in use, so du tells the truth
	// about a file whose size is only an address space.
	out.Blksize = uint32(accel.PageSize)
	out.Blocks = n.dev.MemoryUsed() / 512
	if n.kind == accel.NodeMonitor {
		out.Size, out.Blocks = MonitorReadSize, 1
	}
	out.SetTimes(nil, &n.born, &n.born)
	return 0
}

// Open applies the core's open rules (exclusive compute node, monitor
// limits) on behalf of the calling process.
func (n *devNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	pid := callerPID(ctx)
	f, err := n.dev.Open(ctx, n.kind, pid)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	if n.kind == accel.NodeMonitor {
		return &devHandle{f: f, holders: n.srv.holders}, fuse.FOPEN_DIRECT_IO, 0
	}
	n.srv.holders.opened(f, n.name, n.StableAttr().Ino, pid)
	n.srv.maps.track(n.dev, &n.Inode)
	// No FOPEN_DIRECT_IO: the compute node's data goes through the page
	// cache, which is what lets a client mmap its device memory (the
	// kernel refuses a shared mapping of a direct-I/O file). Without
	// FOPEN_KEEP_CACHE the kernel drops the node's cached pages at every
	// open, so a client never sees what an earlier one left there.
	return &devHandle{f: f, holders: n.srv.holders, maps: n.srv.maps}, 0, 0
}

// devHandle is one open file description of a device node.
type devHandle struct {
	f       *accel.File
	holders *holders
	maps    *mappings // compute files only

	mu      sync.Mutex
	summary []byte // monitor read() text, fixed at the read at offset 0
}

var (
	_ = (fs.FileFlusher)((*devHandle)(nil))
	_ = (fs.FileReleaser)((*devHandle)(nil))
	_ = (fs.FileIoctler)((*devHandle)(nil))
	_ = (fs.FileReader)((*devHandle)(nil))
	_ = (fs.FileWriter)((*devHandle)(nil))
	_ = (fs.FileFsyncer)((*devHandle)(nil))
)

// Flush is sent on every close(); see accel.File.Flush.
func (h *devHandle) Flush(ctx context.Context) syscall.Errno {
	h.f.Flush()
	if h.f.Kind() == accel.NodeCompute {
		h.holders.flushed(h.f)
	}
	return 0
}

// Release is sent after the last descriptor is closed.
func (h *devHandle) Release(ctx context.Context) syscall.Errno {
	if h.f.Kind() == accel.NodeCompute {
		h.holders.released(h.f)
	}
	h.f.Release()
	if h.maps != nil {
		h.maps.released(h.f.Device())
	}
	return 0
}

// Ioctl forwards to the core, keeping holder_pid true first (see holders).
func (h *devHandle) Ioctl(ctx context.Context, cmd uint32, arg uint64, input, output []byte) (int32, syscall.Errno) {
	if h.f.Kind() == accel.NodeCompute {
		if c, ok := fuse.FromContext(ctx); ok {
			h.holders.used(h.f, int32(c.Pid))
		}
	}
	if cmd == accel.IoctlInfo {
		h.holders.refresh(h.f.Device())
	}
	if err := h.f.Ioctl(cmd, input, output); err != nil {
		return 0, toErrno(err)
	}
	return 0, 0
}

// Read returns the one-line summary on a monitor node, like a regular
// file of MonitorReadSize bytes: a read returns at most len(dest) bytes
// from offset off (the kernel passes the descriptor's position), so a
// small buffer reads the text in pieces. The text is taken anew by a read
// at offset 0 and stays fixed for the reads after it, so the pieces fit
// together.
//
// On the compute node, reads come from the page cache filling a page of a
// mapping (or a read(2)): they return the client's device memory at that
// offset of the mapping space, always the full length asked for (a short
// reply would make the kernel shrink the file); see accel.File.ReadMapped.
func (h *devHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if h.f.Kind() == accel.NodeCompute {
		if err := h.f.ReadMapped(dest, uint64(off)); err != nil {
			return nil, toErrno(err)
		}
		return fuse.ReadResultData(dest), 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if off == 0 || h.summary == nil {
		if h.f.Device().Status() == accel.StatusRemoved {
			return nil, syscall.ENODEV
		}
		h.holders.refresh(h.f.Device())
		h.summary = monitorText(Summary(h.f.Device().Info()))
	}
	if off >= int64(len(h.summary)) {
		return fuse.ReadResultData(nil), 0
	}
	// A reply longer than the request is a protocol error the kernel
	// turns into EIO.
	n := copy(dest, h.summary[off:])
	return fuse.ReadResultData(dest[:n]), 0
}

// Write stores what the page cache writes back from a mapping of the
// compute node (or a write(2)) into the client's device memory; see
// accel.File.WriteMapped. The monitor node is read-only.
func (h *devHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.f.Kind() != accel.NodeCompute || off < 0 {
		return 0, syscall.EINVAL
	}
	if err := h.f.WriteMapped(data, uint64(off)); err != nil {
		return 0, toErrno(err)
	}
	return uint32(len(data)), 0
}

// Fsync succeeds: a write is in device memory when it is answered, so
// msync and fsync have nothing left to wait for.
func (h *devHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return 0 }

// Summary is the one-line human summary a monitor node's read() returns.
func Summary(i accel.Info) string {
	holder := "free"
	if i.ComputeInUse {
		holder = fmt.Sprintf("held by pid %d", i.HolderPID)
	}
	return fmt.Sprintf("%s %s: %s %s serial %s, memory %s/%s, numa %d, compute %s, %d monitor client(s), %d reset(s), %d job(s), busy %s",
		i.Name, i.Status, i.Driver, i.Model, i.Serial, humanBytes(i.MemoryUsed), humanBytes(i.MemoryTotal),
		i.NUMANode, holder, i.MonitorClients, i.ResetCount, i.JobsCompleted, i.BusyTime.Round(time.Millisecond))
}

func humanBytes(b uint64) string {
	const gib = 1 << 30
	return fmt.Sprintf("%.1fGiB", float64(b)/gib)
}

// monitorText is a summary line padded with spaces to MonitorReadSize.
func monitorText(summary string) []byte {
	b := []byte(summary)
	if len(b) > MonitorReadSize-1 {
		b = b[:MonitorReadSize-1]
	}
	out := make([]byte, MonitorReadSize)
	copy(out, b)
	for i := len(b); i < MonitorReadSize-1; i++ {
		out[i] = ' '
	}
	out[MonitorReadSize-1] = '\n'
	return out
}
