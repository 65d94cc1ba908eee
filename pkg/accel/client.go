package accel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// QueryInfo runs the info ioctl on an open node.
func QueryInfo(f *os.File) (Info, error) {
	buf := make([]byte, InfoSize)
	if err := Ioctl(f, IoctlInfo, buf); err != nil {
		return Info{}, fmt.Errorf("info ioctl on %s: %w", f.Name(), err)
	}
	var info Info
	if err := info.UnmarshalBinary(buf); err != nil {
		return Info{}, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return info, nil
}

// Ioctl issues cmd on f with arg as the in/out buffer, whose length must
// be the size encoded in cmd. The error is the bare syscall.Errno.
func Ioctl(f *os.File, cmd uint32, arg []byte) error {
	if int(IoctlSize(cmd)) != len(arg) {
		return fmt.Errorf("ioctl %#x: argument is %d bytes, command encodes %d", cmd, len(arg), IoctlSize(cmd))
	}
	var p unsafe.Pointer
	if len(arg) > 0 {
		p = unsafe.Pointer(&arg[0])
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := sc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(cmd), uintptr(p))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// InfoPath returns the node to open for the info of the node at path: for
// a compute node name (acN) its monitor node acN_monitor in the same
// directory, for anything else path itself. It only maps names and never
// falls back to the compute node: opening that would take the device from
// its one client (or fail with EBUSY while someone holds it), and a real
// accel driver creates a context on the device for every open.
func InfoPath(path string) string {
	dir, base := filepath.Split(path)
	if index, kind, ok := ParseNodeName(base); ok && kind == NodeCompute {
		return filepath.Join(dir, MonitorName(index))
	}
	return path
}

// ReadInfo returns the info of the device behind the node at path, always
// read through the device's monitor node (see InfoPath); a symbolic link
// to a compute node is followed to find it. When the monitor node of a
// compute node is missing, ReadInfo fails with an error that names the
// missing node and wraps os.ErrNotExist; it never opens the compute node
// instead.
func ReadInfo(path string) (Info, error) {
	target := InfoPath(path)
	if target == path {
		if _, _, ok := ParseNodeName(filepath.Base(path)); !ok {
			// Not a node name: a link (e.g. a container's
			// /dev/accel/mine -> acN) may still point at a compute node.
			if resolved, err := filepath.EvalSymlinks(path); err == nil {
				if mon := InfoPath(resolved); mon != resolved {
					target = mon
				}
			}
		}
	}
	f, err := os.Open(target)
	if err != nil {
		if target != path && errors.Is(err, os.ErrNotExist) {
			return Info{}, fmt.Errorf("read info of %s: its monitor node %s is missing, and a compute node is never opened to read facts: %w",
				path, target, os.ErrNotExist)
		}
		return Info{}, fmt.Errorf("read info: %w", err)
	}
	defer f.Close()
	return QueryInfo(f)
}
