package devfs

import (
	"bytes"
	"context"
	"fmt"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Limits of sys/control.
const (
	// MaxControlLine is the longest control command line (see
	// devfsclient.MaxControlLine, which clients check before sending).
	MaxControlLine = devfsclient.MaxControlLine
	// MaxControlResults caps the result lines a descriptor keeps until they
	// are read; older lines are dropped first (and the drop is reported).
	MaxControlResults = 64 << 10
)

// controlNode is sys/control. What it accepts, exactly:
//
//   - Only callers in the simulator's user namespace whose calling thread
//     has CAP_SYS_ADMIN in its effective capability set may open it for
//     writing and write to it (EPERM otherwise, logged with the caller's
//     pid and the reason; see hasSysAdmin). Anyone the mode (0600,
//     root) lets in may open it read-only, which is useless: results belong
//     to the descriptor that wrote the commands.
//   - A command is one line. The bytes written to one descriptor form a
//     stream (the kernel splits a write(2) over 128 KiB into several
//     requests; they are joined again), and each complete line runs as one
//     command, in order, as soon as its newline arrives. Blank lines are
//     skipped; surrounding white space is trimmed.
//   - A line longer than MaxControlLine bytes is refused whole with an
//     "error:" result and none of it runs.
//   - Text after the last newline waits for the rest of its line. A read
//     or a close of the descriptor ends it, and it then runs as one
//     command: so a write without a trailing newline followed by a read
//     (what older `sim ctl` binaries do) or a close (`printf 'add' >
//     sys/control`) still runs exactly one command.
//   - Each command adds one result line: its output, or "error: MESSAGE".
//     A read returns the result lines not read yet (at most
//     MaxControlResults bytes are kept).
//   - A write request that holds exactly one command line, newline
//     included, and nothing else (what `sim ctl` and `echo CMD >` send)
//     fails with that command's errno. Any other write succeeds as a whole
//     and its failures are reported only in the result lines: failing a
//     later piece of a split write would make the writer resend it and
//     run its lines twice.
//   - A truncate to size 0 (what a shell's `>` sends after opening) is
//     accepted as a no-op from a caller allowed to write; every other
//     attribute change is EPERM.
type controlNode struct {
	fs.Inode
	immutable
	srv *Server
}

var (
	_ = (fs.NodeOpener)((*controlNode)(nil))
	_ = (fs.NodeGetattrer)((*controlNode)(nil))
	_ = (fs.NodeSetattrer)((*controlNode)(nil))
)

func (n *controlNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.srv.fileAttr(out, 0o600)
	return 0
}

// Setattr accepts only the truncate to 0 that open(O_TRUNC) sends.
func (n *controlNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	const allowed = fuse.FATTR_SIZE | fuse.FATTR_FH | fuse.FATTR_LOCKOWNER | fuse.FATTR_MTIME | fuse.FATTR_MTIME_NOW | fuse.FATTR_CTIME
	if in.Valid&fuse.FATTR_SIZE == 0 || in.Valid&^allowed != 0 || in.Size != 0 {
		return syscall.EPERM
	}
	if errno := n.srv.mayControl(ctx, "truncate"); errno != 0 {
		return errno
	}
	n.srv.fileAttr(out, 0o600)
	return 0
}

func (n *controlNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		if errno := n.srv.mayControl(ctx, "open for writing"); errno != 0 {
			return nil, 0, errno
		}
	}
	return &controlHandle{srv: n.srv}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, 0
}

// mayControl checks that the caller of a request may drive the simulator:
// CAP_SYS_ADMIN in the calling thread's effective set, in the simulator's
// user namespace. A refusal is logged with the caller's pid.
func (s *Server) mayControl(ctx context.Context, what string) syscall.Errno {
	c := callerOf(ctx)
	ok, err := hasSysAdmin(c)
	if ok {
		return 0
	}
	reason := "caller lacks CAP_SYS_ADMIN"
	if err != nil {
		reason = err.Error()
	}
	s.log.Warn("sys/control refused", "op", what, "pid", c.pid, "tid", c.tid, "reason", reason)
	return syscall.EPERM
}

type controlHandle struct {
	srv *Server

	mu      sync.Mutex
	lines   lineAssembler
	results []byte // result lines not read yet
	dropped int    // result lines dropped since the last read
}

var (
	_ = (fs.FileReader)((*controlHandle)(nil))
	_ = (fs.FileWriter)((*controlHandle)(nil))
	_ = (fs.FileFlusher)((*controlHandle)(nil))
)

func (h *controlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := h.srv.mayControl(ctx, "write"); errno != 0 {
		return 0, errno
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	whole := h.lines.empty()
	lines := h.lines.feed(data)
	whole = whole && h.lines.empty() && len(lines) == 1 && bytes.Count(data, []byte{'\n'}) == 1
	var first syscall.Errno
	for _, l := range lines {
		if errno := h.run(ctx, l); errno != 0 && first == 0 {
			first = errno
		}
	}
	if whole && first != 0 {
		return 0, first
	}
	return uint32(len(data)), 0
}

// Read ends a pending unterminated line (running it) and returns the
// result lines not read yet.
func (h *controlHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l, ok := h.lines.end(); ok {
		// A read returns results, not errnos: the line's errno is in them.
		_ = h.run(ctx, l)
	}
	if h.dropped > 0 {
		note := fmt.Sprintf("error: %d earlier result line(s) dropped: read results more often (at most %d bytes are kept)\n", h.dropped, MaxControlResults)
		h.results = append([]byte(note), h.results...)
		h.dropped = 0
	}
	n := copy(dest, h.results)
	h.results = h.results[n:]
	return fuse.ReadResultData(dest[:n]), 0
}

// Flush (every close) ends a pending unterminated line and runs it; its
// errno is what close(2) returns.
func (h *controlHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l, ok := h.lines.end(); ok {
		return h.run(ctx, l)
	}
	return 0
}

// run runs one line and records its result line.
func (h *controlHandle) run(ctx context.Context, l controlLine) syscall.Errno {
	if l.tooLong {
		err := fmt.Errorf("control line of %d bytes refused: the limit is %d bytes per line (none of it ran)", l.size, MaxControlLine)
		h.addResult("error: " + err.Error())
		h.srv.log.Warn("control line refused", "bytes", l.size, "limit", MaxControlLine)
		return syscall.EINVAL
	}
	out, err := h.srv.opts.Control.Control(ctx, l.text)
	if err != nil {
		h.addResult("error: " + err.Error())
		h.srv.log.Warn("control command failed", "command", l.text, "err", err)
		return toErrno(err)
	}
	h.addResult(out)
	h.srv.log.Info("control command", "command", l.text, "result", out)
	return 0
}

// addResult appends one result line, dropping the oldest lines past
// MaxControlResults.
func (h *controlHandle) addResult(line string) {
	line = strings.ReplaceAll(line, "\n", " ")
	if len(line) > MaxControlLine {
		line = line[:MaxControlLine] + "…"
	}
	h.results = append(h.results, line+"\n"...)
	for len(h.results) > MaxControlResults {
		i := bytes.IndexByte(h.results, '\n')
		h.results = h.results[i+1:]
		h.dropped++
	}
	if cap(h.results) > 2*MaxControlResults {
		h.results = append([]byte(nil), h.results...)
	}
}

// controlLine is one line of the control stream.
type controlLine struct {
	text    string // the command, trimmed; empty when tooLong
	size    int    // the line's length in bytes, without its newline
	tooLong bool   // longer than MaxControlLine: refused whole
}

// lineAssembler splits the byte stream written to one descriptor into
// lines. It keeps at most MaxControlLine bytes of the current line; of a
// longer line it keeps only the count, so memory stays bounded whatever is
// written.
type lineAssembler struct {
	buf     []byte // the current line so far, if not too long
	size    int    // length of the current line so far
	tooLong bool   // the current line passed MaxControlLine
}

// empty reports whether no unterminated line is pending.
func (a *lineAssembler) empty() bool { return a.size == 0 }

// feed adds data and returns the lines it completed, blank ones omitted.
func (a *lineAssembler) feed(data []byte) []controlLine {
	var out []controlLine
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		chunk := data
		if i >= 0 {
			chunk = data[:i]
		}
		a.add(chunk)
		if i < 0 {
			break
		}
		if l, ok := a.take(); ok {
			out = append(out, l)
		}
		data = data[i+1:]
	}
	return out
}

// end ends the pending unterminated line, if any, and returns it.
func (a *lineAssembler) end() (controlLine, bool) {
	if a.empty() {
		return controlLine{}, false
	}
	return a.take()
}

func (a *lineAssembler) add(b []byte) {
	a.size += len(b)
	if a.tooLong {
		return
	}
	if a.size > MaxControlLine {
		a.tooLong, a.buf = true, nil
		return
	}
	a.buf = append(a.buf, b...)
}

// take returns the current line (false for a blank one) and starts anew.
func (a *lineAssembler) take() (controlLine, bool) {
	l := controlLine{size: a.size, tooLong: a.tooLong}
	if !a.tooLong {
		l.text = strings.TrimSpace(string(a.buf))
	}
	a.buf, a.size, a.tooLong = a.buf[:0], 0, false
	if !l.tooLong && l.text == "" {
		return controlLine{}, false
	}
	return l, true
}

// String renders a line for logs and tests.
func (l controlLine) String() string {
	if l.tooLong {
		return "<too long: " + strconv.Itoa(l.size) + " bytes>"
	}
	return strconv.Quote(l.text)
}
