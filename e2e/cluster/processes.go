package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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
func (p paths) command(name string) (string, []string) {
	switch name {
	case compEtcd:
		return "/usr/bin/etcd", etcdArgs(p)
	case compContainerd:
		return "/usr/bin/containerd", containerdArgs(p)
	case compAPIServer:
		return p.bin(name), apiServerArgs(p)
	case compCtrlMgr:
		return p.bin(name), controllerManagerArgs(p)
	case compScheduler:
		return p.bin(name), schedulerArgs(p)
	case compKubelet:
		return p.bin(name), kubeletArgs(p)
	}
	panic("unknown component " + name)
}

// start runs a component in its own session, its output appended to its log,
// and records "PID EXE" in its PID file.
func (p paths) start(name string) (int, error) {
	exe, args := p.command(name)
	if err := os.MkdirAll(p.o.LogDir, 0o755); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(p.o.RunDir, 0o755); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(p.logFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s %s\n", time.Now().UTC().Format(time.RFC3339), quoteArgs(append([]string{exe}, args...)))
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it exits while this process lives (otherwise init adopts
	// it), and say in its log how it ended: a signal names no sender, but
	// tells a crash from a kill.
	logPath := p.logFile(name)
	go func() {
		err := cmd.Wait()
		if f, ferr := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
			fmt.Fprintf(f, "==== %s exited: %v\n", time.Now().UTC().Format(time.RFC3339Nano), err)
			f.Close()
		}
	}()
	if err := os.WriteFile(p.pidFile(name), []byte(strconv.Itoa(pid)+" "+exe+"\n"), 0o644); err != nil {
		return pid, err
	}
	return pid, nil
}

// running returns the PID of a component if its PID file names a live
// process running the recorded executable.
func (p paths) running(name string) (int, bool) {
	b, err := os.ReadFile(p.pidFile(name))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, isProcess(pid, f[1]) && p.startedByUs(pid)
}

// startedByUs reports whether pid's command line names our state or run
// directory (every component gets its config from there), so a reused PID
// running the same executable, e.g. the distribution's own containerd, is
// never taken for ours.
func (p paths) startedByUs(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	cmd := string(b)
	return strings.Contains(cmd, p.o.StateDir) || strings.Contains(cmd, p.o.RunDir)
}

// isProcess reports whether pid is alive (not a zombie) and runs exe.
func isProcess(pid int, exe string) bool {
	got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return false
	}
	got = strings.TrimSuffix(got, " (deleted)")
	if filepath.Clean(got) != filepath.Clean(exe) {
		return false
	}
	return !isZombie(pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	st := s[i+2]
	return st == 'Z' || st == 'X'
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	return !isZombie(pid)
}

// stop sends SIGTERM to a component started by start, waits up to grace,
// then SIGKILLs it, and removes its PID file. It never signals a process
// that is not the recorded executable.
func (p paths) stop(name string, grace time.Duration) error {
	pid, ok := p.running(name)
	if !ok {
		os.Remove(p.pidFile(name))
		return nil
	}
	if err := terminate(pid, grace); err != nil {
		return fmt.Errorf("stop %s (pid %d): %w", name, pid, err)
	}
	os.Remove(p.pidFile(name))
	return nil
}

func terminate(pid int, grace time.Duration) error {
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if !alive(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("still alive after SIGKILL")
}

// procsWith lists live processes whose executable is exe and whose command
// line contains every one of args.
func procsWith(exe string, args ...string) []int {
	return procsWhere(func(pid int, proc string) bool {
		if !isProcess(pid, exe) {
			return false
		}
		b, err := os.ReadFile(proc + "/cmdline")
		if err != nil {
			return false
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		for _, a := range args {
			if !strings.Contains(cl, a) {
				return false
			}
		}
		return true
	})
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
