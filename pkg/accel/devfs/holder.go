package devfs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// holders keeps each open compute file's holder_pid true to the process
// that really holds it (see the holder_pid paragraph in accel's uapi.go).
//
// The kernel tells the daemon who opened a node, and who sends each later
// request, but not who still has a descriptor: after a fork both processes
// share the open file, and the opener may exit while its child keeps it.
// So:
//
//   - an ioctl on a compute file from another process than the recorded
//     one makes that process the holder (it demonstrably has the file);
//   - before a device's info is read (the info ioctl on either node, a
//     monitor read), the recorded holder is checked: still alive (same
//     process start time, so a reused pid does not count), and — if a
//     descriptor of the file was closed since the last check — still
//     holding a descriptor of the node. If not, /proc/*/fd is scanned for
//     a live process with a descriptor of the node (matched by its name,
//     then by the device and inode numbers); the lowest such pid becomes
//     the holder, and 0 ("unknown") when there is none — a descriptor in
//     flight in a unix socket, or held in a pid namespace the daemon cannot
//     see. A dead pid is never reported.
type holders struct {
	mu   sync.Mutex
	dev  uint64 // st_dev of the mount, set once it is up
	recs map[*accel.File]*holderRec
}

type holderRec struct {
	name  string // compute node name, acN
	ino   uint64 // its inode number in the mount
	pid   int32  // recorded holder; 0: unknown
	tid   int32  // a thread of pid seen calling, so its requests skip /proc
	start uint64 // its start time (/proc/PID/stat field 22), 0 if not read yet
	stale bool   // a descriptor was closed since the holder was checked
}

func newHolders() *holders { return &holders{recs: make(map[*accel.File]*holderRec)} }

// mounted records the mount's device number.
func (h *holders) mounted(dev uint64) {
	h.mu.Lock()
	h.dev = dev
	h.mu.Unlock()
}

// opened records a new compute file opened by pid.
func (h *holders) opened(f *accel.File, name string, ino uint64, pid int32) {
	h.mu.Lock()
	// The start time is read lazily, at the first check: opens stay cheap.
	h.recs[f] = &holderRec{name: name, ino: ino, pid: pid}
	h.mu.Unlock()
}

// released forgets f.
func (h *holders) released(f *accel.File) {
	h.mu.Lock()
	delete(h.recs, f)
	h.mu.Unlock()
}

// flushed notes that a descriptor of f was closed.
func (h *holders) flushed(f *accel.File) {
	h.mu.Lock()
	if r := h.recs[f]; r != nil {
		r.stale = true
	}
	h.mu.Unlock()
}

// used notes a request on f from thread tid (as FUSE reports the caller).
// A request from the recorded holder — its main thread, or the last thread
// of it seen — costs no /proc read; any other thread is mapped to its
// process, which becomes the holder if it is another one.
func (h *holders) used(f *accel.File, tid int32) {
	if tid == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recs[f]
	if r == nil || tid == r.pid || tid == r.tid {
		return
	}
	pid := tgid(tid)
	if pid == r.pid {
		r.tid = tid
		return
	}
	r.pid, r.tid, r.start, r.stale = pid, tid, 0, false
	f.SetPID(pid)
}

// refresh checks the holder of d's compute node before its info is read.
func (h *holders) refresh(d *accel.Device) {
	f := d.Holder()
	if f == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recs[f]
	if r == nil {
		return
	}
	var now uint64
	if r.pid != 0 {
		now = procStart(r.pid) // 0 if it is gone
		if now != 0 && r.start == 0 && tgid(r.pid) != r.pid {
			// At the first check only (later the start time proves it is
			// the same task): the holder is gone and its number now names a
			// thread of another process, not a holder to report.
			now = 0
		}
		if r.start == 0 {
			r.start = now // first check
		}
	}
	if r.pid != 0 && r.start != 0 && now == r.start {
		if !r.stale {
			return
		}
		if h.holds(r.pid, r) {
			r.stale = false
			return
		}
	} else if r.pid == 0 && !r.stale {
		return // unknown until the file is used or a descriptor is closed
	}
	pid := h.find(r)
	r.pid, r.tid, r.start, r.stale = pid, 0, procStart(pid), false
	f.SetPID(pid)
}

// find scans /proc for the lowest pid with a descriptor of r's node.
func (h *holders) find(r *holderRec) int32 {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var best int32
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n <= 0 {
			continue
		}
		pid := int32(n)
		if best != 0 && pid >= best {
			continue
		}
		if h.holds(pid, r) {
			best = pid
		}
	}
	return best
}

// holds reports whether process pid has a descriptor of r's node; h.mu
// is held.
func (h *holders) holds(pid int32, r *holderRec) bool {
	fdDir := "/proc/" + strconv.Itoa(int(pid)) + "/fd"
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		p := fdDir + "/" + fd.Name()
		target, err := os.Readlink(p)
		// Only a descriptor whose path ends in the node's name (DIR/acN on
		// the host, /dev/accel/acN in a container) is stat'ed: stat'ing
		// every descriptor could block on another process's network file.
		if err != nil || filepath.Base(strings.TrimSuffix(target, " (deleted)")) != r.name {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil && st.Dev == h.dev && st.Ino == r.ino {
			return true
		}
	}
	return false
}

// procStart returns the start time of process pid (clock ticks after
// boot), or 0 when it is gone or unknown.
func procStart(pid int32) uint64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22. A zombie has
	// closed its descriptors already: it counts as gone.
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0
	}
	return v
}
