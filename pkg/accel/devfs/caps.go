package devfs

import (
	"context"
	"fmt"
	"strconv"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// capSysAdmin is CAP_SYS_ADMIN's bit number (linux/capability.h).
const capSysAdmin = 21

// caller is the process behind a FUSE request.
type caller struct {
	tid int32 // the calling thread, as the kernel reports it; 0 when unknown
	pid int32 // its thread group (process)
}

// callerOf returns the caller of a FUSE request.
func callerOf(ctx context.Context) caller {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return caller{}
	}
	tid := int32(c.Pid)
	return caller{tid: tid, pid: tgid(tid)}
}

// hasSysAdmin reports whether the calling thread holds CAP_SYS_ADMIN over
// the simulator: it is in the simulator's user namespace and its effective
// capability set holds CAP_SYS_ADMIN. It reads the thread's own status
// (/proc/TID/status, which also resolves for threads that are not a group
// leader), as the kernel checks capabilities per thread.
//
// CapEff counts in the thread's own user namespace: a process that
// created one (unshare -U, where seccomp allows it) has a full CapEff
// there and none over anything outside it, so a caller in another user
// namespace is refused whatever its CapEff says — an ancestor namespace's
// root too, which this check cannot tell apart from a descendant's (run
// the command inside the simulator's namespace: nsenter -U). A caller it
// cannot identify — pid 0, which FUSE reports for a process in a pid
// namespace the daemon cannot see, a thread that is gone, a namespace it
// may not inspect — has no capabilities.
func hasSysAdmin(c caller) (bool, error) {
	if c.tid == 0 {
		return false, fmt.Errorf("the kernel did not report the caller's pid (a pid namespace the simulator cannot see?)")
	}
	ours, err := userNS("self")
	if err != nil {
		return false, err
	}
	theirs, err := userNS(strconv.Itoa(int(c.tid)))
	if err != nil {
		return false, err
	}
	if theirs != ours {
		return false, fmt.Errorf("the caller is in another user namespace (%s, the simulator's is %s): its capabilities there do not count", theirs, ours)
	}
	eff, err := capEff(c.tid)
	if err != nil {
		return false, err
	}
	return eff&(1<<capSysAdmin) != 0, nil
}

// nsID identifies a namespace: the device and inode numbers of its
// /proc/PID/ns file.
type nsID struct{ dev, ino uint64 }

func (n nsID) String() string { return fmt.Sprintf("user:[%d] on dev %d", n.ino, n.dev) }

// userNS returns the user namespace of process or thread proc ("self" or
// a number).
func userNS(proc string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+proc+"/ns/user", &st); err != nil {
		return nsID{}, fmt.Errorf("read the user namespace of %s: %w", proc, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// capEff returns the CapEff mask of thread tid.
func capEff(tid int32) (uint64, error) {
	v, err := procStatusField(tid, "CapEff")
	if err != nil {
		return 0, fmt.Errorf("read capabilities of the caller: %w", err)
	}
	mask, err := strconv.ParseUint(v, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("parse CapEff of thread %d: %w", tid, err)
	}
	return mask, nil
}
