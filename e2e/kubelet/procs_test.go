package kubelet

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// proc is an accel-plugin process whose log lines the test can wait for.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	changed chan struct{}
	exited  chan struct{}
}

func startProc(t testing.TB, args ...string) *proc {
	t.Helper()
	return startProcBin(t, pluginBin, args...)
}

func startProcBin(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: args[0], cmd: exec.Command(bin, args...),
		changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start accel-plugin %s: %v", args[0], err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// waitLog waits until a log line contains every one of parts.
func (p *proc) waitLog(d time.Duration, parts ...string) string {
	p.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		lines, ch := p.lines, p.changed
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if containsAll(lines[seen], parts) {
				return lines[seen]
			}
		}
		select {
		case <-ch:
		case <-p.exited:
			p.t.Fatalf("accel-plugin %s exited before logging %q:\n%s", p.name, parts, p.log())
		case <-deadline.C:
			p.t.Fatalf("accel-plugin %s did not log %q within %s:\n%s", p.name, parts, d, p.log())
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, part := range parts {
		if !strings.Contains(s, part) {
			return false
		}
	}
	return true
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			p.t.Errorf("accel-plugin %s exited %d after SIGTERM:\n%s", p.name, code, p.log())
		}
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("accel-plugin %s ignored SIGTERM for 10s", p.name)
	}
}

// startSim runs `accel-plugin sim` on a fresh directory and waits until its
// nodes are mounted.
func startSim(t testing.TB, args ...string) (dir string) {
	t.Helper()
	dir = t.TempDir() + "/dev"
	p := startProc(t, append([]string{"sim", "--dir", dir}, args...)...)
	p.waitLog(10*time.Second, "simulator running")
	t.Cleanup(func() {
		p.stop()
		_ = unix.Unmount(dir, unix.MNT_DETACH) // in case it died
	})
	if _, err := os.Stat(dir + "/ac0"); err != nil {
		t.Fatalf("simulator running but no ac0: %v", err)
	}
	return dir
}

// runPlugin runs a short accel-plugin command and returns its output. The
// binary is built with -race, whose runtime sleeps 1 s at exit unless told
// not to (GORACE atexit_sleep_ms): without it every `sim ctl` took 1.05 s.
func runPlugin(args ...string) (string, error) {
	cmd := exec.Command(pluginBin, args...)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
