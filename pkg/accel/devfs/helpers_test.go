package devfs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/fakedev"
)

// helperEnv makes the test binary act as a separate client process (see
// runHelper), so that open rules are tested across real processes.
const helperEnv = "DEVFS_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// runHelper implements the helper process modes:
//
//	hold PATH      open PATH read-write, print "ok" or the errno name, then
//	               hold it until stdin closes
//	race PATH      print "ready", wait for a line on stdin, then as hold
//	pingpong PATH  N times: wait for a byte on fd 3, open+close PATH, pass
//	               a byte on fd 4; then print a JSON summary
func runHelper(mode, path string) int {
	in := bufio.NewReader(os.Stdin)
	switch mode {
	case "race":
		fmt.Println("ready")
		if _, err := in.ReadString('\n'); err != nil {
			return 3
		}
		fallthrough
	case "hold":
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		fmt.Println(errName(err))
		_, _ = io.Copy(io.Discard, in)
		if f != nil {
			f.Close()
		}
		return 0
	case "pingpong":
		n, _ := strconv.Atoi(os.Getenv("DEVFS_TEST_N"))
		token, pass := os.NewFile(3, "token-in"), os.NewFile(4, "token-out")
		buf := make([]byte, 1)
		errs := map[string]int{}
		for range n {
			if _, err := io.ReadFull(token, buf); err != nil {
				errs["token: "+err.Error()]++
				break
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				errs[errName(err)]++
			} else {
				f.Close()
			}
			if _, err := pass.Write(buf); err != nil && !errors.Is(err, syscall.EPIPE) {
				errs["pass: "+err.Error()]++
			}
		}
		_ = json.NewEncoder(os.Stdout).Encode(errs)
		return 0
	}
	if code, ok := runHardeningHelper(mode, path); ok {
		return code
	}
	if code, ok := runMmapHelper(mode, path); ok {
		return code
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

// errName returns "ok" for nil and the errno's symbolic name otherwise.
func errName(err error) string {
	var errno syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return unixErrnoName(errno)
	}
	return err.Error()
}

func unixErrnoName(e syscall.Errno) string {
	for _, n := range []struct {
		e    syscall.Errno
		name string
	}{{syscall.EBUSY, "EBUSY"}, {syscall.EPERM, "EPERM"}, {syscall.EAGAIN, "EAGAIN"},
		{syscall.ENODEV, "ENODEV"}, {syscall.ENOENT, "ENOENT"}, {syscall.EACCES, "EACCES"},
		{syscall.EMFILE, "EMFILE"}, {syscall.EINVAL, "EINVAL"}} {
		if e == n.e {
			return n.name
		}
	}
	return fmt.Sprintf("errno %d (%v)", int(e), e)
}

// helperEnviron is the environment of a helper process. The race runtime
// sleeps a second at exit by default (atexit_sleep_ms); helpers skip that.
func helperEnviron(mode string, extra ...string) []string {
	env := append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
	return append(env, extra...)
}

// helper is a client process started from the test binary.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startHelper(t testing.TB, mode, path string, extra ...*os.File) *helper {
	t.Helper()
	return startHelperWith(t, mode, path, nil, extra...)
}

// startHelperEnv starts a helper with extra environment variables.
func startHelperEnv(t testing.TB, mode, path string, env ...string) *helper {
	t.Helper()
	return startHelperWith(t, mode, path, env)
}

func startHelperWith(t testing.TB, mode, path string, env []string, extra ...*os.File) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", path)
	cmd.Env = helperEnviron(mode, env...)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { h.stop() })
	return h
}

// line reads the helper's next output line.
func (h *helper) line(t testing.TB) string {
	t.Helper()
	s, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper pid %d: read: %v", h.cmd.Process.Pid, err)
	}
	return strings.TrimSpace(s)
}

// stop closes the helper's stdin (so it closes its files and exits) and
// waits for it.
func (h *helper) stop() {
	if h.stdin != nil {
		h.stdin.Close()
		h.stdin = nil
		_ = h.cmd.Wait()
	}
}

// testMount is a mounted simulator for one test.
type testMount struct {
	dir string
	sim *fakedev.Sim
	reg *accel.Registry
	srv *Server
}

func (m *testMount) path(name string) string { return filepath.Join(m.dir, name) }

// requireFUSE skips a test that needs root and /dev/fuse, saying so.
func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("FUSE tests need root (mount with allow_other); run `make test` as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("FUSE tests need /dev/fuse (modprobe fuse)")
	}
}

func mountSim(t testing.TB, devices int) *testMount {
	t.Helper()
	return mountSimWith(t, devices, filepath.Join(t.TempDir(), "dev"), accel.Options{}, Options{})
}

// mountSimWith mounts a simulator with devices on dir with the given
// registry and mount options (Control is always the simulator).
func mountSimWith(t testing.TB, devices int, dir string, ropts accel.Options, opts Options) *testMount {
	t.Helper()
	requireFUSE(t)
	reg := accel.NewRegistry(ropts)
	sim := fakedev.New(reg, fakedev.Config{ResetDuration: 5 * time.Millisecond, NUMANodes: 2})
	for range devices {
		if _, err := sim.Add(); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Control == nil {
		opts.Control = sim
	}
	srv, err := Mount(dir, reg, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		reg.Close()
		if err := srv.Unmount(5 * time.Second); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return &testMount{dir: srv.Dir(), sim: sim, reg: reg, srv: srv}
}

// eventReader reads sys/events in the background, stamping arrival times.
type stampedEvent struct {
	accel.Event
	at time.Time
}

func watchEvents(t testing.TB, m *testMount) <-chan stampedEvent {
	t.Helper()
	f, err := os.Open(filepath.Join(m.dir, devfsclient.SysDir, devfsclient.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan stampedEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var ev accel.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				return
			}
			ch <- stampedEvent{ev, time.Now()}
		}
	}()
	// A read blocked in the kernel is not interrupted by close(): end the
	// stream first (the reader then sees EOF), then close.
	t.Cleanup(func() { m.reg.Close(); <-drained(ch); f.Close() })
	return ch
}

// drained returns a channel closed once ch is closed, discarding the rest.
func drained(ch <-chan stampedEvent) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	return done
}

// nextEvent waits for the next event for at most d.
func nextEvent(t testing.TB, ch <-chan stampedEvent, d time.Duration) stampedEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		return ev
	case <-ctx.Done():
		t.Fatalf("no event within %s", d)
	}
	return stampedEvent{}
}

func infoOf(t testing.TB, path string) accel.Info {
	t.Helper()
	info, err := accel.ReadInfo(path)
	if err != nil {
		t.Fatalf("info of %s: %v", path, err)
	}
	return info
}
