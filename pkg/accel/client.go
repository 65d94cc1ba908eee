package accel

import (
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

// InfoPath returns the node to query for the info of the node at path: the
// monitor node when path names a compute node whose monitor exists, since
// opening the compute node would take it from its one client (or fail with
// EBUSY while someone holds it).
func InfoPath(path string) string {
	dir, base := filepath.Split(path)
	if index, kind, ok := ParseNodeName(base); ok && kind == NodeCompute {
		mon := filepath.Join(dir, MonitorName(index))
		if _, err := os.Stat(mon); err == nil {
			return mon
		}
	}
	return path
}

// ReadInfo returns the info of the device behind the node at path, read
// through its monitor node where there is one (see InfoPath).
func ReadInfo(path string) (Info, error) {
	f, err := os.Open(InfoPath(path))
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	return QueryInfo(f)
}
