package devfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// runUsernsHelper implements the helper mode of this file:
//
//	userns-control PATH  (started in a new user namespace, uid 0 mapped to
//	                     0) print whether CAP_SYS_ADMIN is in the own
//	                     effective set, then write "add\n" to the inherited
//	                     descriptor 3 (opened by the test in the initial
//	                     namespace) and open PATH for writing; print both
//	                     results
func runUsernsHelper(mode, path string) (int, bool) {
	if mode != "userns-control" {
		return 0, false
	}
	eff, err := capEff(int32(os.Getpid()))
	if err != nil {
		fmt.Println("capeff:", err)
		return 1, true
	}
	fmt.Println(eff&(1<<capSysAdmin) != 0)
	_, err = os.NewFile(3, "inherited-control").Write([]byte("add\n"))
	fmt.Println(errName(err))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	fmt.Println(errName(err))
	if f != nil {
		f.Close()
	}
	return 0, true
}

// Regression (review of issue 10): a process that creates its own user
// namespace has a full CapEff there, which gives it no power over the
// simulator; its control writes (through a descriptor a capable process
// opened, and by opening sys/control itself) get EPERM and the refusal is
// logged with the reason. Root in the initial namespace still succeeds.
// Before the fix both were accepted and the command ran.
func TestControlRefusesOtherUserNamespace(t *testing.T) {
	p := probeControl(t, "userns-control", &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	})
	out, err := p.cmd.Output()
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EINVAL) {
		t.Skipf("cannot create a user namespace here: %v", err)
	}
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	got := strings.Fields(string(out))
	if len(got) != 3 || got[0] != "true" {
		t.Fatalf("helper in a new user namespace: %q, want CAP_SYS_ADMIN in its own CapEff and two results", out)
	}
	if got[1] != "EPERM" || got[2] != "EPERM" {
		t.Errorf("write and open for writing from a new user namespace with a full CapEff: %s %s, want EPERM EPERM", got[1], got[2])
	}
	p.refusedThenCapable(t, "another user namespace")
}
