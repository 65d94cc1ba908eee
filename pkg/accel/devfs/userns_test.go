package devfs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
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
	logs := &syncBuffer{}
	m := mountSimWith(t, 1, filepath.Join(t.TempDir(), "dev"), accel.Options{},
		Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctl, err := os.OpenFile(m.path("sys/control"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$", m.path("sys/control"))
	cmd.Env = helperEnviron("userns-control")
	cmd.ExtraFiles = []*os.File{ctl}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	out, err := cmd.Output()
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
	if n := len(m.reg.Devices()); n != 1 {
		t.Fatalf("%d devices after the refused write, want 1: a command ran", n)
	}
	pid := fmt.Sprintf("pid=%d", cmd.Process.Pid)
	if l := logs.String(); !strings.Contains(l, "another user namespace") || !strings.Contains(l, pid) {
		t.Errorf("no refusal naming %s and the user namespace:\n%s", pid, l)
	}
	// Root in the initial namespace, through the same descriptor.
	if _, err := ctl.Write([]byte("add\n")); err != nil {
		t.Fatalf("write with CAP_SYS_ADMIN in the initial namespace: %v", err)
	}
	if res, _ := io.ReadAll(ctl); !strings.Contains(string(res), "ac1") || len(m.reg.Devices()) != 2 {
		t.Fatalf("result %q and %d devices, want ac1 added", res, len(m.reg.Devices()))
	}
}
