// Package devfs exposes the nodes of an accel registry as files that any
// process (on the host or in a container) can open, ioctl and read, by
// serving them through FUSE.
//
// Layout of a mount:
//
//	acN           compute node (one client at a time)
//	acN_monitor   monitor node (shared; read() gives a one-line summary)
//	sys/events    read() blocks until the next device event and returns it
//	              as a JSON line; each open descriptor starts from "now"
//	sys/control   write a control command, read back the result line
//	              (present only with a Controller; root only)
//
// FUSE gives no inotify events for changes the daemon makes, so consumers
// wait on sys/events instead of polling.
package devfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Names of the files in the sys directory.
const (
	SysDir      = "sys"
	EventsFile  = "events"
	ControlFile = "control"
)

// Controller runs control commands written to sys/control.
type Controller interface {
	Control(ctx context.Context, command string) (string, error)
}

// Options configure a mount. The zero value is usable.
type Options struct {
	// ComputeMode is the permission of compute nodes (default 0666).
	ComputeMode os.FileMode
	// MonitorMode is the permission of monitor nodes (default 0444).
	MonitorMode os.FileMode
	// GID owns the device nodes (default 0), for ComputeMode 0660 setups.
	GID uint32
	// Control, if set, serves sys/control.
	Control Controller
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// FSName is the mount's source name in /proc/mounts (default "accel-sim").
	FSName string
}

// Server is a mounted devfs.
type Server struct {
	dir  string
	reg  *accel.Registry
	opts Options
	log  *slog.Logger
	srv  *fuse.Server
	root *rootNode

	mounted time.Time // timestamps of the sys files

	ctx    context.Context // ends when unmounting: wakes blocked readers
	cancel context.CancelFunc

	unmountOnce sync.Once
	unmountErr  error
}

// CheckMountpoint reports, as one actionable error, why dir cannot be used
// as a mountpoint: FUSE missing, not root, dir not a directory, not empty,
// or already a mountpoint. A missing dir is created, and the dead mount of
// a simulator that was killed is detached.
func CheckMountpoint(dir string) error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse is missing: load the fuse module (modprobe fuse), or give the container the device (--device /dev/fuse)")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root: mounting %s with allow_other needs root (run with sudo)", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("mountpoint %q: %w", dir, err)
	}
	if mounted, err := IsMountpoint(abs); err != nil {
		return err
	} else if mounted {
		// A simulator that was killed (SIGKILL, OOM) leaves its mount
		// behind, dead: every access fails with ENOTCONN. Nothing can use
		// it again, so detach it and take its place.
		if _, err := os.Stat(abs); !errors.Is(err, syscall.ENOTCONN) {
			return fmt.Errorf("%s is already a mountpoint (another simulator? unmount it with: umount %s)", abs, abs)
		}
		if err := syscall.Unmount(abs, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("%s is a dead mount of a simulator that died, and detaching it failed: %w", abs, err)
		}
	}
	st, err := os.Stat(abs)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return fmt.Errorf("create mountpoint: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: give --dir an empty directory", abs)
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s is not empty (%d entries, e.g. %s): give --dir an empty directory", abs, len(entries), entries[0].Name())
	}
	return nil
}

// IsMountpoint reports whether abs (an absolute, clean path) is a mountpoint
// in this mount namespace.
func IsMountpoint(abs string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMountPath(fields[4]) == abs {
			return true, nil
		}
	}
	return false, nil
}

// unescapeMountPath undoes the octal escapes of /proc/self/mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount checks dir with CheckMountpoint, mounts the registry's nodes on it
// (allow_other, default_permissions) and serves them until Unmount.
func Mount(dir string, reg *accel.Registry, opts Options) (*Server, error) {
	if err := CheckMountpoint(dir); err != nil {
		return nil, err
	}
	abs, _ := filepath.Abs(dir)
	if opts.ComputeMode == 0 {
		opts.ComputeMode = 0o666
	}
	if opts.MonitorMode == 0 {
		opts.MonitorMode = 0o444
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.FSName == "" {
		opts.FSName = "accel-sim"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{dir: abs, reg: reg, opts: opts, log: opts.Logger, mounted: time.Now(), ctx: ctx, cancel: cancel}
	s.root = &rootNode{srv: s, nodes: make(map[string]*fs.Inode)}

	entryTimeout := time.Second
	srv, err := fs.Mount(abs, s.root, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:  true,
			Options:     []string{"default_permissions"},
			FsName:      opts.FSName,
			Name:        "accel",
			DirectMount: true,
		},
		EntryTimeout: &entryTimeout,
		AttrTimeout:  &entryTimeout,
		GID:          opts.GID,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	s.srv = srv
	if err := closeOnExecFUSE(); err != nil {
		s.log.Warn("cannot mark /dev/fuse close-on-exec; child processes may keep the mount alive", "err", err)
	}
	s.log.Info("devfs mounted", "dir", abs)
	return s, nil
}

// Dir returns the absolute mountpoint.
func (s *Server) Dir() string { return s.dir }

// Wait blocks until the file system is unmounted.
func (s *Server) Wait() { s.srv.Wait() }

// Unmount wakes blocked readers and unmounts. If the regular unmount does
// not finish within timeout (other mount namespaces can hold copies of the
// mount), it detaches the mount lazily instead, so the caller can exit.
func (s *Server) Unmount(timeout time.Duration) error {
	s.unmountOnce.Do(func() {
		s.cancel()
		done := make(chan error, 1)
		go func() { done <- s.srv.Unmount() }()
		var reason string
		select {
		case err := <-done:
			if err == nil {
				break
			}
			reason = err.Error() // typically EBUSY: files are still open
		case <-time.After(timeout):
			reason = "unmount did not finish within " + timeout.String()
		}
		if reason != "" {
			// Open files (or copies of the mount in other namespaces)
			// keep the mount busy: detach it so the directory is free at
			// once; the open files fail with ENOTCONN when we exit.
			s.log.Warn("detaching mount lazily", "dir", s.dir, "reason", reason)
			if err := unix.Unmount(s.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				s.unmountErr = fmt.Errorf("lazy unmount %s: %w", s.dir, err)
			}
		}
		if s.unmountErr == nil {
			s.log.Info("devfs unmounted", "dir", s.dir)
		}
	})
	return s.unmountErr
}

// closeOnExecFUSE marks this process's /dev/fuse descriptors close-on-exec.
// go-fuse's direct mount opens /dev/fuse without O_CLOEXEC, and a child
// holding a copy keeps the FUSE connection (and so Unmount) alive.
func closeOnExecFUSE() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			fd, err := strconv.Atoi(e.Name())
			if err == nil {
				unix.CloseOnExec(fd)
			}
		}
	}
	return nil
}

// callerPID returns the process (thread group) behind a FUSE request. The
// kernel reports the calling thread's id, which differs from the process
// id in any multi-threaded program, so it is mapped through /proc.
func callerPID(ctx context.Context) int32 {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return 0
	}
	return tgid(int32(c.Pid))
}

// tgid returns the thread group id of thread tid, or tid itself when /proc
// does not say (the thread is gone, or lives in a pid namespace we cannot see).
func tgid(tid int32) int32 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(tid)) + "/status")
	if err != nil {
		return tid
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return int32(n)
			}
		}
	}
	return tid
}

// toErrno maps an error to the errno a FUSE reply carries.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
