package devfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// runHolderHelper implements the helper modes of this file:
//
//	fork-exit PATH  open PATH, start an inherit-hold child that inherits
//	                the open file (its stdin is our descriptor 3), print
//	                "child PID" and exit at once
//	inherit-hold    print "holding", keep descriptor 3 until stdin closes
//	pass-exit PATH  open PATH, send the descriptor over the unix socket on
//	                descriptor 3, close our copy, print "sent" and exit
func runHolderHelper(mode, path string) (int, bool) {
	switch mode {
	case "fork-exit":
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			fmt.Println("open:", errName(err))
			return 1, true
		}
		child := exec.Command(os.Args[0], "-test.run=^$", path)
		child.Env = helperEnviron("inherit-hold")
		child.Stdin = os.NewFile(3, "child-stdin")
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		child.ExtraFiles = []*os.File{f}
		if err := child.Start(); err != nil {
			fmt.Println("start:", err)
			return 1, true
		}
		fmt.Println("child", child.Process.Pid)
		return 0, true // exit without waiting: the child lives on
	case "inherit-hold":
		fmt.Println("holding")
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.NewFile(3, "compute").Close()
		return 0, true
	case "pass-exit":
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			fmt.Println("open:", errName(err))
			return 1, true
		}
		if err := unix.Sendmsg(3, []byte{1}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
			fmt.Println("sendmsg:", err)
			return 1, true
		}
		f.Close()
		fmt.Println("sent")
		return 0, true
	}
	return 0, false
}

func monitorInfo(t *testing.T, m *testMount, name string) accel.Info {
	t.Helper()
	info, err := accel.ReadInfo(m.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Regression (issue 10, item 10d): a process opens ac0, forks a child that
// inherits the open file, and exits. holder_pid must name the child, not
// the dead parent (as it did on 12137fa), and the node is free once the
// child is gone too.
func TestHolderPIDFollowsForkedChild(t *testing.T) {
	m := mountSim(t, 1)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	parent := exec.Command(os.Args[0], "-test.run=^$", m.path("ac0"))
	parent.Env = helperEnviron("fork-exit")
	parent.ExtraFiles = []*os.File{r}
	parent.Stderr = os.Stderr
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	lines := bufio.NewReader(out)
	first, _ := lines.ReadString('\n')
	second, _ := lines.ReadString('\n')
	childPID, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(first), "child "))
	if err != nil || strings.TrimSpace(second) != "holding" {
		t.Fatalf("helper said %q, %q", first, second)
	}
	// The child is not ours to wait for (it was the parent's): a pidfd
	// tells when it has exited.
	pidfd, err := unix.PidfdOpen(childPID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	if err := parent.Wait(); err != nil { // the parent has exited and is reaped
		t.Fatal(err)
	}
	info := monitorInfo(t, m, "ac0_monitor")
	if !info.ComputeInUse || int(info.HolderPID) != childPID {
		t.Fatalf("after the parent (pid %d) exited: compute_in_use %v, holder_pid %d; want held by the child, pid %d",
			parent.Process.Pid, info.ComputeInUse, info.HolderPID, childPID)
	}
	// The monitor's read() summary says the same.
	summary, err := os.ReadFile(m.path("ac0_monitor"))
	if err != nil || !strings.Contains(string(summary), fmt.Sprintf("held by pid %d", childPID)) {
		t.Fatalf("monitor summary %q, %v; want held by pid %d", summary, err, childPID)
	}
	w.Close() // the child closes its copy and exits
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, 10_000); n != 1 || err != nil {
		t.Fatalf("child did not exit within 10s: %d, %v", n, err)
	}
	f, err := os.OpenFile(m.path("ac0"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open after the child exited: %v", err)
	}
	f.Close()
}

// A descriptor in flight (sent over a unix socket, not yet received) is
// held by no live process: holder_pid is 0, not the dead sender's pid.
// The process that receives and uses it becomes the holder.
func TestHolderPIDUnknownThenReceiver(t *testing.T) {
	m := mountSim(t, 1)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	theirs := os.NewFile(uintptr(pair[1]), "socket")
	sender := exec.Command(os.Args[0], "-test.run=^$", m.path("ac0"))
	sender.Env = helperEnviron("pass-exit")
	sender.ExtraFiles = []*os.File{theirs}
	sender.Stderr = os.Stderr
	out, err := sender.Output()
	theirs.Close()
	if err != nil || strings.TrimSpace(string(out)) != "sent" {
		t.Fatalf("sender: %v, %q", err, out)
	}
	info := monitorInfo(t, m, "ac0_monitor")
	if !info.ComputeInUse || info.HolderPID != 0 {
		t.Fatalf("with the descriptor in flight and the sender (pid %d) gone: compute_in_use %v, holder_pid %d; want in use, holder 0",
			sender.Process.Pid, info.ComputeInUse, info.HolderPID)
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[0], buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v, %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v, %v", fds, err)
	}
	got := os.NewFile(uintptr(fds[0]), "received ac0")
	defer got.Close()
	// Using the received file makes this process the holder.
	if info, err := accel.QueryInfo(got); err != nil || int(info.HolderPID) != os.Getpid() {
		t.Fatalf("info through the received compute file: %+v, %v; want holder = this process (%d)", info, err, os.Getpid())
	}
	if info := monitorInfo(t, m, "ac0_monitor"); int(info.HolderPID) != os.Getpid() {
		t.Fatalf("holder_pid %d after the receiver used the file, want %d", info.HolderPID, os.Getpid())
	}
}
