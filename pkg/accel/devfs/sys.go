package devfs

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// fileAttr fills the attributes of a sys file: mode perm, owned by root,
// timestamps from the mount.
func (s *Server) fileAttr(out *fuse.AttrOut, perm uint32) {
	out.Mode = syscall.S_IFREG | perm
	out.Nlink = 1
	out.SetTimes(nil, &s.mounted, &s.mounted)
}

// eventsNode is sys/events: every open gets its own subscription.
type eventsNode struct {
	fs.Inode
	immutable
	srv *Server
}

var (
	_ = (fs.NodeOpener)((*eventsNode)(nil))
	_ = (fs.NodeGetattrer)((*eventsNode)(nil))
)

func (n *eventsNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.srv.fileAttr(out, 0o444)
	return 0
}

func (n *eventsNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	ctx, cancel := context.WithCancel(n.srv.ctx)
	h := &eventsHandle{srv: n.srv, sub: n.srv.reg.Subscribe(), ctx: ctx, cancel: cancel}
	return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, 0
}

// eventsHandle streams JSON lines; a read blocks until at least one event.
//
// close() does not interrupt a read that is blocked in the daemon, but the
// kernel sends FLUSH at once, so Flush ends the stream: a blocked read
// returns end-of-file and so does every later read on the handle (dup'd
// copies included). A reader can therefore stop following events by
// closing the file from another goroutine.
type eventsHandle struct {
	srv    *Server
	ctx    context.Context // ends with the server or on Flush
	cancel context.CancelFunc

	mu      sync.Mutex
	sub     *accel.Subscription
	pending []byte // encoded events that did not fit the last read
}

var (
	_ = (fs.FileReader)((*eventsHandle)(nil))
	_ = (fs.FileFlusher)((*eventsHandle)(nil))
	_ = (fs.FileReleaser)((*eventsHandle)(nil))
)

// Flush ends the stream; see eventsHandle.
func (h *eventsHandle) Flush(ctx context.Context) syscall.Errno {
	h.cancel()
	return 0
}

// Release frees the handle's context.
func (h *eventsHandle) Release(ctx context.Context) syscall.Errno {
	h.cancel()
	return 0
}

func (h *eventsHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel)
	defer stop()

	for len(h.pending) == 0 {
		ev, err := h.sub.Next(rctx)
		switch {
		case errors.Is(err, accel.ErrClosed) || h.ctx.Err() != nil:
			return fuse.ReadResultData(nil), 0 // EOF: the daemon is going away, or the reader closed
		case err != nil:
			return nil, syscall.EINTR
		}
		h.pending = appendEvent(h.pending, ev)
	}
	// Add whatever else is already queued, without blocking.
	for len(h.pending) < len(dest) {
		ev, ok := h.tryNext()
		if !ok {
			break
		}
		h.pending = appendEvent(h.pending, ev)
	}
	n := min(len(dest), len(h.pending))
	if n < len(h.pending) {
		// Prefer whole lines when the buffer is large enough for one.
		if i := strings.LastIndexByte(string(h.pending[:n]), '\n'); i >= 0 {
			n = i + 1
		}
	}
	out := make([]byte, n)
	copy(out, h.pending[:n])
	h.pending = h.pending[n:]
	return fuse.ReadResultData(out), 0
}

func (h *eventsHandle) tryNext() (accel.Event, bool) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev, err := h.sub.Next(ctx)
	return ev, err == nil
}

func appendEvent(b []byte, ev accel.Event) []byte {
	line, _ := json.Marshal(ev)
	return append(append(b, line...), '\n')
}
