package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// standinEnv makes the test binary a stand-in component: os.Args[1] says
// what it does (sleep: until a signal; exit: exit 3; ignore-term: sleep,
// ignoring SIGTERM). Its other arguments name the state directory, as a
// real component's do.
const standinEnv = "ACCEL_CLUSTER_STANDIN"

func TestMain(m *testing.M) {
	if os.Getenv(standinEnv) == "1" && len(os.Args) > 1 {
		switch os.Args[1] {
		case "sleep":
			time.Sleep(time.Hour)
		case "exit":
			os.Exit(3)
		case "ignore-term":
			signal.Ignore(syscall.SIGTERM)
			os.Stdout.WriteString("ignoring SIGTERM\n")
			time.Sleep(time.Hour)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// standins returns a cluster whose components are stand-ins (the test binary,
// copied as exe so its /proc/PID/comm is that name) with private state,
// run and log directories.
func standins(t *testing.T, exe string, what map[string]string) *Cluster {
	t.Helper()
	t.Setenv(standinEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), exe)
	copyFile(t, self, bin)
	dir := t.TempDir()
	o := Options{StateDir: dir + "/state", RunDir: dir + "/run", LogDir: dir + "/log", Log: io.Discard}
	commands := map[string][]string{}
	for name, behaviour := range what {
		commands[name] = []string{bin, behaviour, "--config=" + o.StateDir + "/" + name}
	}
	return newWithCommands(o, commands)
}

// newWithCommands is New with components' command lines replaced
// (executable first).
func newWithCommands(o Options, commands map[string][]string) *Cluster {
	c := New(o)
	c.commands = commands
	return c
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// busy keeps every CPU busy until stop is called: it widens the window in
// which a just-started child has not finished its exec.
func busy() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default: //nolint:staticcheck // SA5004: spinning is the point, it keeps the CPU busy
				}
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// The false "component exited: kubelet" of a failed up (while that kubelet
// was alive and its PID file right) and our own kubelet called foreign:
// right after exec.Cmd.Start returns, /proc/PID/cmdline is still empty for
// a moment, so a liveness check that wants our directory on the command
// line fails. A component just started is alive, ours, and not foreign.
func TestJustStartedComponentIsRunningAndOurs(t *testing.T) {
	p := standins(t, "kubelet", map[string]string{compKubelet: "sleep"})
	// A big environment makes the child's exec longer (its arguments and
	// environment are moved after the close-on-exec pipe closed, before
	// the command line is set): the window is wider, not different.
	big := strings.Repeat("x", 100000)
	for i := 0; i < 15; i++ {
		t.Setenv(fmt.Sprintf("ACCEL_CLUSTER_TEST_PAD%d", i), big)
	}
	stop := busy()
	defer stop()
	const starts = 200
	var exited, notRunning, foreign int
	for i := 0; i < starts; i++ {
		c, err := p.start(compKubelet)
		if err != nil {
			t.Fatal(err)
		}
		// What Up does right after starting kubelet (waitNodeReady), and
		// what Down does first (foreignKube).
		if err := p.checkAlive(compKubelet); err != nil {
			exited++
		}
		if _, ok := p.running(compKubelet); !ok {
			notRunning++
		}
		if f := strings.Join(p.foreignKube(), " "); strings.Contains(f, "(pid "+strconv.Itoa(c.rec.PID)+")") {
			foreign++
		}
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	if exited+notRunning+foreign > 0 {
		t.Errorf("of %d components checked right after their start: %d reported exited, %d not running, %d foreign; want 0",
			starts, exited, notRunning, foreign)
	}
}

// The watcher of each child reports that child's exit (and how), whatever
// its PID file says; the others still run.
func TestWatcherReportsTheComponentThatExited(t *testing.T) {
	p := standins(t, "standin", map[string]string{compEtcd: "sleep", compContainerd: "exit"})
	etcd, err := p.start(compEtcd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.kids.stopAll(time.Second)
	ctrd, err := p.start(compContainerd)
	if err != nil {
		t.Fatal(err)
	}
	<-ctrd.done
	os.Remove(p.pidFile(compEtcd)) // a PID file is no proof of death
	if err := p.checkAlive(compEtcd); err != nil {
		t.Errorf("etcd runs, checkAlive: %v", err)
	}
	err = p.checkAlive(compEtcd, compContainerd)
	if !errors.Is(err, ErrComponentExited) || !strings.Contains(err.Error(), "containerd") ||
		!strings.Contains(err.Error(), "exit status 3") || strings.Contains(err.Error(), "etcd") {
		t.Errorf("containerd exited 3, checkAlive: %v", err)
	}
	if done, _ := etcd.exited(); done {
		t.Fatal("etcd exited")
	}
}

// A failed up stops what it started: every child still running gets
// SIGTERM (SIGKILL after the grace, for one that ignores it), and stopAll
// returns once each is reaped; their logs say how they ended.
func TestStopAllStopsWhatWasStarted(t *testing.T) {
	p := standins(t, "standin", map[string]string{compEtcd: "sleep", compContainerd: "ignore-term", compAPIServer: "exit"})
	var kids []*child
	for _, name := range []string{compEtcd, compContainerd, compAPIServer} {
		c, err := p.start(name)
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, c)
	}
	<-kids[2].done
	waitLog(t, p, compContainerd, "ignoring SIGTERM")
	t0 := time.Now()
	if err := p.kids.stopAll(300 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, c := range kids {
		if done, _ := c.exited(); !done {
			t.Errorf("%s still running after stopAll", c.name)
		}
		if _, ok := p.running(c.name); ok {
			t.Errorf("%s: its PID file names a live process", c.name)
		}
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("stopAll took %s", d)
	}
	for name, want := range map[string]string{compEtcd: "signal: terminated", compContainerd: "signal: killed", compAPIServer: "exit status 3"} {
		b, _ := os.ReadFile(p.logFile(name))
		if !strings.Contains(string(b), "exited: "+want) {
			t.Errorf("%s log does not say it %s:\n%s", name, want, b)
		}
	}
}

// A PID file written before the kernel gave its PID to another process
// (PIDs wrap within minutes here during test runs) must not make that
// process the component: not running, and stop leaves it alone. The reuse
// is real: ns_last_pid makes the next fork get the recorded PID.
func TestReusedPIDIsNotTheComponent(t *testing.T) {
	const lastPID = "/proc/sys/kernel/ns_last_pid"
	if f, err := os.OpenFile(lastPID, os.O_WRONLY, 0); err != nil {
		t.Skipf("cannot choose PIDs (%v): needs root", err)
	} else {
		f.Close()
	}
	p := standins(t, "etcd", map[string]string{compEtcd: "sleep"})
	c, err := p.start(compEtcd)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.rec.PID
	_ = c.cmd.Process.Kill()
	<-c.done
	// Start times count clock ticks (10 ms): a reuse minutes later, as on
	// these machines, is one at another tick.
	time.Sleep(30 * time.Millisecond)
	// Another process of the same executable and command line takes the PID.
	exe, args := p.command(compEtcd)
	var other *exec.Cmd
	for try := 0; try < 200 && other == nil; try++ {
		if err := os.WriteFile(lastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			other = cmd
			break
		}
		_ = cmd.Process.Kill() // another fork on the machine was faster
		_ = cmd.Wait()
	}
	if other == nil {
		t.Skip("could not get the PID reused (the machine forks too much)")
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	waitCmdline(t, pid)
	if _, ok := p.running(compEtcd); ok {
		t.Errorf("pid %d is another process now, but running(etcd) says it is etcd", pid)
	}
	if err := p.stop(compEtcd, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("stop(etcd) signalled pid %d, which is not the recorded etcd any more: %v", pid, err)
	}
}

// waitCmdline waits until pid's command line is readable (its exec done).
func waitCmdline(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if len(b) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: no command line after 5s", pid)
		}
		runtime.Gosched()
	}
}

// waitLog waits until a component's log holds s.
func waitLog(t *testing.T, p *Cluster, name, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(p.logFile(name))
		if strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s log has no %q after 10s:\n%s", name, s, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// terminate: SIGTERM, SIGKILL for a process that ignores it, and nothing at
// all once the process is not the one meant.
func TestTerminate(t *testing.T) {
	p := standins(t, "standin", map[string]string{compEtcd: "ignore-term", compContainerd: "sleep"})
	c, err := p.start(compEtcd)
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, compEtcd, "ignoring SIGTERM")
	if err := terminate(c.rec.PID, 200*time.Millisecond, func() bool { return true }); err != nil {
		t.Fatal(err)
	}
	<-c.done
	if _, err := c.exited(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("a process ignoring SIGTERM: %v, want killed", err)
	}
	d, err := p.start(compContainerd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.kids.stopAll(time.Second)
	if err := terminate(d.rec.PID, time.Second, func() bool { return false }); err != nil {
		t.Fatal(err)
	}
	if done, _ := d.exited(); done {
		t.Error("terminate signalled a process that is not the one meant")
	}
}

func TestParseRecord(t *testing.T) {
	for in, want := range map[string]record{
		"123 /usr/bin/etcd\n":       {PID: 123, Exe: "/usr/bin/etcd"},
		"123 4567 /usr/bin/etcd\n":  {PID: 123, Start: 4567, Exe: "/usr/bin/etcd"},
		"  99 1 /x  ":               {PID: 99, Start: 1, Exe: "/x"},
		"":                          {},
		"abc /usr/bin/etcd":         {},
		"1 5 /sbin/init":            {},
		"123 0 /usr/bin/etcd":       {},
		"123 -5 /usr/bin/etcd":      {},
		"123 4567 /usr/bin/etcd x":  {},
		"123 45x67 /usr/bin/etcd\n": {},
	} {
		got, err := parseRecord(in)
		if want.PID == 0 {
			if err == nil {
				t.Errorf("parseRecord(%q) = %+v, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("parseRecord(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if back, err := parseRecord(got.String()); got.Start != 0 && (err != nil || back != got) {
			t.Errorf("round trip of %+v: %+v, %v", got, back, err)
		}
	}
}
