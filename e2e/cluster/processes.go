package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The components, in start order (Down stops them in reverse).
const (
	compEtcd       = "etcd"
	compContainerd = "containerd"
	compAPIServer  = "kube-apiserver"
	compCtrlMgr    = "kube-controller-manager"
	compScheduler  = "kube-scheduler"
	compKubelet    = "kubelet"
)

var components = []string{compEtcd, compContainerd, compAPIServer, compCtrlMgr, compScheduler, compKubelet}

// command is the executable and arguments of a component.
func (c *Cluster) command(name string) (string, []string) {
	if c, ok := c.commands[name]; ok { // tests: stand-ins
		return c[0], c[1:]
	}
	switch name {
	case compEtcd:
		return "/usr/bin/etcd", c.etcdArgs()
	case compContainerd:
		return c.containerdBin("containerd"), c.containerdArgs()
	case compAPIServer:
		return c.bin(name), c.apiServerArgs()
	case compCtrlMgr:
		return c.bin(name), c.controllerManagerArgs()
	case compScheduler:
		return c.bin(name), c.schedulerArgs()
	case compKubelet:
		return c.bin(name), c.kubeletArgs()
	}
	panic("unknown component " + name)
}

// record is what a PID file holds: "PID STARTTIME EXE". STARTTIME is field
// 22 of /proc/PID/stat (clock ticks after boot), so a PID that the kernel
// has since given to another process — PIDs wrap within minutes on these
// machines during test runs — is never taken for the component. Files
// written before the start time was recorded ("PID EXE") have Start 0.
type record struct {
	PID   int
	Start uint64
	Exe   string
}

func (r record) String() string { return fmt.Sprintf("%d %d %s", r.PID, r.Start, r.Exe) }

// parseRecord reads a PID file's content.
func parseRecord(s string) (record, error) {
	f := strings.Fields(s)
	var r record
	var err error
	switch len(f) {
	case 2: // before start times were recorded
		r.Exe = f[1]
	case 3:
		if r.Start, err = strconv.ParseUint(f[1], 10, 64); err != nil || r.Start == 0 {
			return record{}, fmt.Errorf("PID file %q: bad start time", strings.TrimSpace(s))
		}
		r.Exe = f[2]
	default:
		return record{}, fmt.Errorf("PID file %q: want \"PID STARTTIME EXE\"", strings.TrimSpace(s))
	}
	if r.PID, err = strconv.Atoi(f[0]); err != nil || r.PID <= 1 {
		return record{}, fmt.Errorf("PID file %q: bad PID", strings.TrimSpace(s))
	}
	return r, nil
}

// procStat is what /proc/PID/stat says about a process: its state letter
// and start time.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold anything
	if i < 0 || i+2 >= len(s) {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+2:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return f[0][0], start, nil
}

// recordOf records a live process.
func recordOf(pid int, exe string) (record, error) {
	_, start, err := procStat(pid)
	if err != nil {
		return record{}, err
	}
	return record{PID: pid, Start: start, Exe: exe}, nil
}

// live reports whether r's process still runs (not a zombie): same PID,
// same start time (when recorded), same executable.
func (r record) live() bool {
	st, start, err := procStat(r.PID)
	if err != nil || st == 'Z' || st == 'X' {
		return false
	}
	if r.Start != 0 && start != r.Start {
		return false // the PID now belongs to another process
	}
	return exeIs(r.PID, r.Exe)
}

// start runs a component in its own session, its output appended to its
// log, records it in its PID file, and returns it with a watcher that
// knows when it exits.
func (c *Cluster) start(name string) (*child, error) {
	exe, args := c.command(name)
	if err := os.MkdirAll(c.o.LogDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.o.RunDir, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(c.logFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), quoteArgs(append([]string{exe}, args...)))
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	k := &child{name: name, cmd: cmd, done: make(chan struct{})}
	// The start time is read while the child cannot have been reaped yet:
	// only the watcher below waits for it.
	k.rec, err = recordOf(cmd.Process.Pid, exe)
	// Reap it if it exits while this process lives (otherwise init adopts
	// it), say in its log how it ended (a signal names no sender, but tells
	// a crash from a kill), and tell whoever waits for it.
	logPath := c.logFile(name)
	go func() {
		werr := cmd.Wait()
		if f, ferr := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
			fmt.Fprintf(f, "==== %s exited: %v\n", time.Now().UTC().Format(time.RFC3339Nano), describeExit(werr))
			f.Close()
		}
		k.mu.Lock()
		k.err = werr
		k.mu.Unlock()
		close(k.done)
	}()
	if err != nil {
		_ = cmd.Process.Kill()
		<-k.done
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := os.WriteFile(c.pidFile(name), []byte(k.rec.String()+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		<-k.done
		return nil, fmt.Errorf("record %s: %w", name, err)
	}
	c.kids.add(k)
	return k, nil
}

func describeExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// child is a component this process started.
type child struct {
	name string
	rec  record
	cmd  *exec.Cmd
	done chan struct{} // closed once it exited and was reaped

	mu  sync.Mutex
	err error // how it exited
}

// exited reports whether the child has exited, and how.
func (c *child) exited() (bool, error) {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return true, c.err
	default:
		return false, nil
	}
}

// children are the components a Cluster started, in order.
// While they run, whether one of them exited is what their own watchers
// saw, never a guess from /proc and PID files.
type children struct {
	mu   sync.Mutex
	list []*child
}

func (k *children) add(c *child) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.list = append(k.list, c)
}

// get is the last child started under name (nil if none).
func (k *children) get(name string) *child {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := len(k.list) - 1; i >= 0; i-- {
		if k.list[i].name == name {
			return k.list[i]
		}
	}
	return nil
}

// stopAll stops every child still running, last started first (SIGTERM,
// SIGKILL after grace), and waits until each is reaped.
func (k *children) stopAll(grace time.Duration) error {
	k.mu.Lock()
	list := append([]*child(nil), k.list...)
	k.mu.Unlock()
	var errs []error
	for i := len(list) - 1; i >= 0; i-- {
		c := list[i]
		if done, _ := c.exited(); done {
			continue
		}
		// os.Process signals through a pidfd: it cannot reach another
		// process, even once this one is gone and its PID reused.
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
			continue
		case <-time.After(grace):
		}
		_ = c.cmd.Process.Kill()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("stop %s (pid %d): still alive after SIGKILL", c.name, c.rec.PID))
		}
	}
	return errors.Join(errs...)
}

// readRecord reads a component's PID file.
func (c *Cluster) readRecord(name string) (record, error) {
	b, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return record{}, err
	}
	return parseRecord(string(b))
}

// running returns the PID of a component if its PID file names a live
// process: the recorded executable, started at the recorded time. Only PID
// files without a start time fall back to the command line (it must name
// our state or run directory): a command line is no proof of life, since
// /proc/PID/cmdline is empty for a moment after exec.Cmd.Start returns (the
// kernel closes the close-on-exec pipe Start waits for before it has set up
// the new program's arguments).
func (c *Cluster) running(name string) (int, bool) {
	r, err := c.readRecord(name)
	if err != nil {
		return 0, false
	}
	if r.Start == 0 {
		return r.PID, r.live() && c.startedByUs(r.PID)
	}
	return r.PID, r.live()
}

// startedByUs reports whether pid's command line names our state or run
// directory (every component gets its config from there), so a reused PID
// running the same executable, e.g. the distribution's own containerd, is
// never taken for ours.
func (c *Cluster) startedByUs(pid int) bool {
	cl, ok := cmdline(pid)
	return ok && (strings.Contains(cl, c.o.StateDir) || strings.Contains(cl, c.o.RunDir))
}

// cmdline is pid's command line, its arguments separated by spaces.
func cmdline(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")), true
}

// exeIs reports whether pid runs exe.
func exeIs(pid int, exe string) bool {
	got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return false
	}
	got = strings.TrimSuffix(got, " (deleted)")
	return filepath.Clean(got) == filepath.Clean(exe)
}

// isProcess reports whether pid is alive (not a zombie) and runs exe.
func isProcess(pid int, exe string) bool {
	return exeIs(pid, exe) && !isZombie(pid)
}

func isZombie(pid int) bool {
	st, _, err := procStat(pid)
	return err != nil || st == 'Z' || st == 'X'
}

// stop sends SIGTERM to a component recorded in its PID file, waits up to
// grace, then SIGKILLs it, and removes its PID file. It never signals a
// process that is not the recorded one.
func (c *Cluster) stop(name string, grace time.Duration) error {
	r, err := c.readRecord(name)
	if err != nil {
		os.Remove(c.pidFile(name))
		return nil //nolint:nilerr // no (readable) PID file: nothing recorded to stop
	}
	if err := terminate(r.PID, grace, func() bool { _, ok := c.running(name); return ok }); err != nil {
		return fmt.Errorf("stop %s (pid %d): %w", name, r.PID, err)
	}
	os.Remove(c.pidFile(name))
	return nil
}

// stopStrays stops the components of ours that no PID file names (a PID
// file lost or overwritten): processes running a component's executable
// with our state or run directory on their command line.
func (c *Cluster) stopStrays(names ...string) error {
	var errs []error
	for _, comp := range names {
		exe, _ := c.command(comp)
		recorded, _ := c.running(comp)
		for _, pid := range procsWith(exe) {
			if pid == recorded || !c.startedByUs(pid) {
				continue
			}
			c.logf("stopping %s (pid %d): ours, but no PID file names it", comp, pid)
			if err := terminate(pid, 15*time.Second, func() bool { return procHas(pid, exe) && c.startedByUs(pid) }); err != nil {
				errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", comp, pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// terminate stops the process pid if it still is the one meant (isIt is
// checked after a pidfd for pid is open, so the pidfd holds that process
// and every signal goes to it, even once it is gone and its PID reused):
// SIGTERM, SIGKILL after grace, and it waits until it has exited.
func terminate(pid int, grace time.Duration, isIt func() bool) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // gone
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	if !isIt() {
		return nil // gone, or the PID is someone else's now
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("SIGTERM: %w", err)
	}
	if exitedWithin(fd, grace) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("SIGKILL: %w", err)
	}
	if exitedWithin(fd, 10*time.Second) {
		return nil
	}
	return errors.New("still alive after SIGKILL")
}

// exitedWithin waits until the pidfd's process has exited (a zombie counts:
// its parent reaps it), at most d.
func exitedWithin(fd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds()))
		if err == nil && n > 0 {
			return true
		}
		if errors.Is(err, unix.EINTR) && left > 0 {
			continue
		}
		return false
	}
}

// procsWith lists live processes whose executable is exe and whose command
// line contains every one of args.
func procsWith(exe string, args ...string) []int {
	return procsWhere(func(pid int, proc string) bool {
		return procHas(pid, exe, args...)
	})
}

// procHas reports whether pid is alive, runs exe and has every one of args
// on its command line.
func procHas(pid int, exe string, args ...string) bool {
	if !isProcess(pid, exe) {
		return false
	}
	cl, ok := cmdline(pid)
	if !ok {
		return false
	}
	for _, a := range args {
		if !strings.Contains(cl, a) {
			return false
		}
	}
	return true
}

// procsWhere lists the processes (other than this one) for which match,
// given the PID and its /proc directory, is true.
func procsWhere(match func(pid int, proc string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if match(pid, "/proc/"+e.Name()) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killIf sends sig to pid if isIt holds once a pidfd for pid is open.
func killIf(pid int, sig unix.Signal, isIt func() bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if isIt() {
		_ = unix.PidfdSendSignal(fd, sig, nil, 0)
	}
}

// quoteArgs is a shell-like rendering of a command line, for logs.
func quoteArgs(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if strings.ContainsAny(a, " \t'\"") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// rotateLogs keeps each component's previous log as <name>.log.1.
func (c *Cluster) rotateLogs() {
	for _, comp := range components {
		if _, err := os.Stat(c.logFile(comp)); err == nil {
			_ = os.Rename(c.logFile(comp), c.logFile(comp)+".1") // a log kept whole is no harm
		}
	}
}
