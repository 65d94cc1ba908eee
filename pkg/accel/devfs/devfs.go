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
//	sys/control   write control commands, one per line, read back the
//	              result lines (present only with a Controller; writers
//	              need CAP_SYS_ADMIN in the simulator's user namespace; see
//	              control.go)
//
// FUSE gives no inotify events for changes the daemon makes, so consumers
// wait on sys/events instead of polling.
//
// Security: the tree is immutable to every caller, root included (unlink,
// rmdir, rename, create, mkdir, mknod, link, symlink and attribute changes
// fail with EPERM; see immutable.go). The root directory is root-owned
// with Options.DirMode (default 0700), so a host user who is not root
// cannot reach the compute nodes at all, while a container that has a
// node bind-mounted (as /dev/accel/acN) opens it by the node's own mode.
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
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Controller runs control commands written to sys/control.
type Controller interface {
	Control(ctx context.Context, command string) (string, error)
}

// Default modes of a mount's files, used where Options leaves a mode nil.
const (
	DefaultComputeMode os.FileMode = 0o666
	DefaultMonitorMode os.FileMode = 0o444
	DefaultDirMode     os.FileMode = 0o700
)

// Options configure a mount. The zero value is usable.
//
// A nil mode means its default; any other value is honoured exactly, 0000
// included, and Mount refuses one with bits outside 0777 (no setuid,
// setgid or sticky bit). Use Mode to fill the fields.
type Options struct {
	// ComputeMode is the permission of compute nodes (DefaultComputeMode).
	ComputeMode *os.FileMode
	// MonitorMode is the permission of monitor nodes (DefaultMonitorMode).
	MonitorMode *os.FileMode
	// DirMode is the permission of the mount's root directory
	// (DefaultDirMode): it decides who can reach the nodes through the
	// mount at all. Bind mounts of single nodes do not pass through it.
	DirMode *os.FileMode
	// GID owns the device nodes and the root directory (default 0), for
	// 0660 / 0750 setups.
	GID uint32
	// Control, if set, serves sys/control.
	Control Controller
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// FSName is the mount's source name in /proc/mounts (default "accel-sim").
	FSName string
}

// Mode returns a pointer to m, for the mode fields of Options.
func Mode(m os.FileMode) *os.FileMode { return &m }

// modes are the resolved, checked modes of a mount.
type modes struct {
	compute, monitor, dir uint32
}

// resolveModes applies the defaults and refuses modes beyond 0777.
func (o *Options) resolveModes() (modes, error) {
	pick := func(what string, m *os.FileMode, def os.FileMode) (uint32, error) {
		if m == nil {
			return uint32(def), nil
		}
		if *m&^0o777 != 0 {
			return 0, fmt.Errorf("%s mode %#o: only permission bits (at most 0777) are allowed", what, uint32(*m))
		}
		return uint32(*m), nil
	}
	var out modes
	var err error
	if out.compute, err = pick("compute node", o.ComputeMode, DefaultComputeMode); err != nil {
		return modes{}, err
	}
	if out.monitor, err = pick("monitor node", o.MonitorMode, DefaultMonitorMode); err != nil {
		return modes{}, err
	}
	if out.dir, err = pick("root directory", o.DirMode, DefaultDirMode); err != nil {
		return modes{}, err
	}
	return out, nil
}

// Server is a mounted devfs.
type Server struct {
	dir   string
	reg   *accel.Registry
	opts  Options
	modes modes
	log   *slog.Logger
	srv   *fuse.Server
	root  *rootNode

	holders *holders  // who holds each open compute file
	maps    *mappings // keeps mappings of compute nodes coherent

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
// in this mount namespace. It reads /proc/self/mountinfo only and never
// touches abs, which may be a FUSE mount whose daemon does not answer.
func IsMountpoint(abs string) (bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(abs))
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	return len(mounts) > 0, nil
}

// Mount checks dir with CheckMountpoint, mounts the registry's nodes on it
// (allow_other, default_permissions) and serves them until Unmount.
func Mount(dir string, reg *accel.Registry, opts Options) (*Server, error) {
	m, err := opts.resolveModes()
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	if err := CheckMountpoint(dir); err != nil {
		return nil, err
	}
	abs, _ := filepath.Abs(dir)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.FSName == "" {
		opts.FSName = "accel-sim"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{dir: abs, reg: reg, opts: opts, modes: m, log: opts.Logger, mounted: time.Now(), ctx: ctx, cancel: cancel,
		holders: newHolders(), maps: newMappings()}
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
		// Every node reports its mode itself; without this go-fuse would
		// turn a mode of 0000 into 0644.
		NullPermissions: true,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	s.srv = srv
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		_ = s.Unmount(2 * time.Second)
		return nil, fmt.Errorf("stat the new mount %s: %w", abs, err)
	}
	s.holders.mounted(st.Dev)
	reg.AttachMappings(s.maps)
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
func callerPID(ctx context.Context) int32 { return callerOf(ctx).pid }

// tgid returns the thread group id of thread tid, or tid itself when /proc
// does not say (the thread is gone, or lives in a pid namespace we cannot see).
func tgid(tid int32) int32 {
	v, err := procStatusField(tid, "Tgid")
	if err != nil {
		return tid
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return tid
	}
	return int32(n)
}

// procStatusField returns the value of one field ("Tgid", "CapEff") of
// /proc/TID/status: the one reader of that file for tgid and capEff.
func procStatusField(tid int32, key string) (string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(tid)) + "/status")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("/proc/%d/status has no %s field", tid, key)
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

// ParseMode parses a permission mode as the simulator's flags take it:
// three octal digits, optionally after a leading 0 ("660", "0660", "000"),
// and nothing above 0777 — no setuid, setgid or sticky bit, no other
// spelling.
func ParseMode(s string) (os.FileMode, error) {
	digits := s
	if len(s) == 4 && s[0] == '0' {
		digits = s[1:]
	}
	if len(digits) != 3 || strings.Trim(digits, "01234567") != "" {
		return 0, fmt.Errorf("mode %q: want 3 octal digits with an optional leading 0, at most 0777 (e.g. 0660)", s)
	}
	v, err := strconv.ParseUint(digits, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("mode %q: %w", s, err)
	}
	return os.FileMode(v), nil
}
