package main

import (
	"bytes"
	"context"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitResult runs waitForSimulator in a goroutine and returns its result
// channel.
func waitResult(ctx context.Context, dir string, interval time.Duration, probe func(string) error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- waitForSimulator(ctx, dir, interval, probe, discardLogger()) }()
	return done
}

// within fails the test unless done delivers within d.
func within(t *testing.T, done <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s: no answer within %s", what, d)
		return nil
	}
}

// A directory that gains sys/events after the wait started ends the wait.
func TestWaitReturnsWhenEventsAppears(t *testing.T) {
	dir := t.TempDir()
	failed := make(chan struct{})
	var calls atomic.Int32
	probe := func(path string) error {
		err := statProbe(path)
		if err != nil && calls.Add(1) == 1 {
			close(failed) // the wait has seen the directory without sys/events
		}
		return err
	}
	done := waitResult(context.Background(), dir, 10*time.Millisecond, probe)
	select {
	case <-failed:
	case err := <-done:
		t.Fatalf("wait returned %v before sys/events existed", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the wait never probed")
	}
	if err := os.MkdirAll(filepath.Join(dir, devfsclient.SysDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, devfsclient.SysDir, devfsclient.EventsFile), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, 10*time.Second, "wait after sys/events appeared"); err != nil {
		t.Fatalf("wait: %v, want success once sys/events exists", err)
	}
}

// A stat that never returns (a frozen FUSE daemon) does not hold the wait
// past its deadline, and no second stat is started while one hangs.
func TestWaitKeepsDeadlineWhenStatHangs(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var calls atomic.Int32
	probe := func(string) error {
		calls.Add(1)
		<-release
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := within(t, waitResult(ctx, "/run/accel/dev", 10*time.Millisecond, probe), 10*time.Second, "wait on a hanging stat")
	if err == nil || !strings.Contains(err.Error(), "has not answered") || !strings.Contains(err.Error(), "not responding") ||
		!strings.Contains(err.Error(), "/run/accel/dev/sys/events") {
		t.Fatalf("wait on a hanging stat: %v, want an error saying stat of /run/accel/dev/sys/events has not answered", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d stats started, want 1 (never pile up stats on a frozen daemon)", n)
	}
}

// A dead mount (ENOTCONN) keeps the wait going, and the timeout says so.
func TestWaitReportsDeadMount(t *testing.T) {
	var calls atomic.Int32
	probe := func(path string) error {
		calls.Add(1)
		return &fs.PathError{Op: "stat", Path: path, Err: syscall.ENOTCONN}
	}
	// The interval is long against an instant probe: the deadline falling
	// while one runs must not read as "not responding".
	ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
	defer cancel()
	err := within(t, waitResult(ctx, "/run/accel/dev", 100*time.Millisecond, probe), 10*time.Second, "wait on a dead mount")
	if err == nil || !strings.Contains(err.Error(), "transport endpoint is not connected") || !strings.Contains(err.Error(), "dead mount") ||
		!strings.Contains(err.Error(), "no live simulator on /run/accel/dev after") {
		t.Fatalf("wait on a dead mount: %v", err)
	}
	if calls.Load() < 2 {
		t.Errorf("%d probes, want the wait to keep probing a dead mount (the simulator may come back)", calls.Load())
	}
}

// The subcommand: exit 0 on a live directory, 1 with a clear message on
// timeout, usage errors for bad flags.
func TestWaitCommand(t *testing.T) {
	live := t.TempDir()
	if err := os.MkdirAll(filepath.Join(live, devfsclient.SysDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(live, devfsclient.SysDir, devfsclient.EventsFile), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"wait", "--dir", live, "--timeout", "10s"}, 0, []string{"simulator is live"}},
		{[]string{"wait", "--dir", empty, "--timeout", "300ms"}, 1, []string{
			"accel-plugin wait: no live simulator on " + empty + " after", "no such file or directory", "has not mounted yet",
		}},
		{[]string{"wait", "--dir", empty, "--timeout", "0s"}, 1, []string{"--timeout must be positive"}},
		{[]string{"wait", "--dir", "run/accel/dev"}, 1, []string{"--dir must be an absolute path"}},
		{[]string{"wait", "--dir", live, "extra"}, 1, []string{`unexpected argument "extra"`}},
		{[]string{"wait", "--bogus"}, 2, []string{"flag provided but not defined", "usage: accel-plugin wait"}},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("accel-plugin %q: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, stderr.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("accel-plugin %q: stderr lacks %q:\n%s", tc.args, w, stderr.String())
			}
		}
	}
	var stdout, stderr bytes.Buffer
	if run([]string{"--help"}, &stdout, &stderr); !strings.Contains(stdout.String(), "accel-plugin wait --dir DIR") {
		t.Errorf("usage does not list wait:\n%s", stdout.String())
	}
}

// Against a real simulator: live → 0; stopped (SIGSTOP: every FUSE request
// hangs) → 1 within --timeout; continued → 0 again.
func TestWaitFrozenSimulator(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE; run `make test` as root")
	}
	dir := filepath.Join(t.TempDir(), "dev")
	sim := startSimForWait(t, dir)

	// Stop it before anything looked up sys/events, so that no cached
	// entry or attribute can answer for the daemon.
	if err := sim.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A signal is delivered asynchronously: wait for the group stop (every
	// thread stopped), which the parent is told of like an exit.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, sim.Process.Pid, &info, unix.WSTOPPED|unix.WNOWAIT, nil); err != nil {
		t.Fatalf("waitid(WSTOPPED): %v", err)
	}
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() { done <- run([]string{"wait", "--dir", dir, "--timeout", "1s"}, io.Discard, &stderr) }()
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(stderr.String(), "not responding") {
			t.Fatalf("wait on a stopped simulator: exit %d, stderr %q; want 1 and 'not responding'", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("wait on a stopped simulator did not return within 20s (--timeout 1s): its stat is not bounded")
	}
	if err := sim.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := run([]string{"wait", "--dir", dir, "--timeout", "20s"}, io.Discard, &stderr); code != 0 {
		t.Fatalf("wait on the continued simulator: exit %d: %s", code, stderr.String())
	}
}

// startSimForWait runs `accel-plugin sim` (this test binary) on dir until
// the test ends, then stops it with SIGTERM so that no mount is left.
func startSimForWait(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "sim", "--devices", "1", "--dir", dir)
	logs := startBinary(t, cmd)
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = unix.Unmount(dir, unix.MNT_DETACH) // only if it died without unmounting
	})
	var logText strings.Builder
	running := false
	for logs.Scan() {
		logText.WriteString(logs.Text() + "\n")
		if strings.Contains(logs.Text(), "simulator running") {
			running = true
			break
		}
	}
	go func() {
		for logs.Scan() {
		}
		exited <- cmd.Wait()
	}()
	if !running {
		t.Fatalf("the simulator did not start; logs:\n%s", logText.String())
	}
	if mounted, err := devfs.IsMountpoint(dir); !mounted {
		t.Fatalf("the simulator did not mount %s (%v); logs:\n%s", dir, err, logText.String())
	}
	return cmd
}
