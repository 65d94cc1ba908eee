package kind

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// What Up saves before it starts dockerd, for Down to put back.
func (k *Kind) dockerPIDFile() string { return filepath.Join(k.o.RunDir, "dockerd.pid") }
func (k *Kind) savedRules(v6 bool) string {
	if v6 {
		return filepath.Join(k.o.RunDir, "ip6tables.orig")
	}
	return filepath.Join(k.o.RunDir, "iptables.orig")
}
func (k *Kind) savedSysctls() string { return filepath.Join(k.o.RunDir, "sysctl.orig") }

// absentSysctl records a sysctl that did not exist before dockerd started.
const absentSysctl = "absent"

// dockerSysctls are what dockerd changes on the host (forwarding for its
// bridges, br_netfilter's bridge-nf-call-*).
var dockerSysctls = []string{
	"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding",
	"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
}

// dockerUp reports whether a Docker engine answers.
func (k *Kind) dockerUp(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").Run() == nil
}

// ourDockerd is the PID of the dockerd this provider started, if it runs.
func (k *Kind) ourDockerd() (int, bool) { return pidFrom(k.dockerPIDFile(), "dockerd") }

// ensureDocker makes sure a Docker engine answers: the machine's if one
// runs, else dockerd (Debian's docker.io) started here, after saving the
// iptables rules and sysctls it changes. Where the host lacks capabilities
// docker grants privileged containers, dockerd started here runs containers
// through the runc wrapper; a machine's own dockerd cannot be changed, so
// that case is an error naming the fix.
func (k *Kind) ensureDocker(ctx context.Context) error {
	missing, err := MissingCapabilities()
	if err != nil {
		return err
	}
	if k.dockerUp(ctx) {
		if _, ours := k.ourDockerd(); ours || len(missing) == 0 {
			return nil
		}
		rt, _ := k.dockerOut(ctx, "info", "--format", "{{.DefaultRuntime}}")
		if strings.TrimSpace(rt) == RuncWrapperName {
			return nil
		}
		return fmt.Errorf("this machine's dockerd runs privileged containers with every capability, but its bounding set lacks %s: kind's nodes cannot start. Stop that dockerd (this provider then starts its own with a runc wrapper) or run it with a runtime that drops them",
			strings.Join(missing, ", "))
	}
	if err := k.lc.InstallPackages(ctx, hostPackages...); err != nil {
		return err
	}
	if err := os.MkdirAll(k.o.RunDir, 0o755); err != nil {
		return err
	}
	if err := k.saveHostState(ctx); err != nil {
		return err
	}
	args := []string{"--pidfile", k.dockerPIDFile(), "--host", "unix:///var/run/docker.sock"}
	if len(missing) > 0 {
		wrapper, err := installRuncWrapper(k.o.RunDir)
		if err != nil {
			return err
		}
		args = append(args, "--add-runtime", RuncWrapperName+"="+wrapper, "--default-runtime", RuncWrapperName)
		k.logf("the bounding set lacks %s: dockerd runs containers through %s, which drops them", strings.Join(missing, ", "), wrapper)
	}
	if err := os.MkdirAll(k.o.LogDir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(k.o.LogDir, "dockerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // it outlives this process, until Down
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	k.logf("started dockerd (pid %d, log %s)", pid, logPath)
	deadline := time.Now().Add(90 * time.Second)
	for !k.dockerUp(ctx) {
		if err := syscall.Kill(pid, 0); err != nil || isZombie(pid) {
			return fmt.Errorf("dockerd exited at start: see %s", logPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer within 90 s: see %s", logPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// saveHostState records the iptables rules and the sysctls dockerd will
// change, unless a record is there already (an earlier Up whose Down has
// not run: that record is the host as it was).
func (k *Kind) saveHostState(ctx context.Context) error {
	for _, v6 := range []bool{false, true} {
		path := k.savedRules(v6)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		save := map[bool]string{false: "iptables-save", true: "ip6tables-save"}[v6]
		out, err := exec.CommandContext(ctx, save).Output()
		if err != nil {
			if v6 {
				continue // no IPv6 tables on this host
			}
			return fmt.Errorf("%s: %w", save, err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			return err
		}
	}
	if _, err := os.Stat(k.savedSysctls()); err == nil {
		return nil
	}
	var b strings.Builder
	for _, s := range dockerSysctls {
		v, err := os.ReadFile("/proc/sys/" + s)
		switch {
		case err == nil:
			fmt.Fprintf(&b, "%s=%s\n", s, strings.TrimSpace(string(v)))
		case errors.Is(err, os.ErrNotExist):
			// br_netfilter not loaded yet: dockerd loads it, and its
			// bridge-nf-call-* default to 1. Down sets them to 0, which is
			// what an absent module does.
			fmt.Fprintf(&b, "%s=%s\n", s, absentSysctl)
		}
	}
	return os.WriteFile(k.savedSysctls(), []byte(b.String()), 0o600)
}

// stopDocker stops the dockerd this provider started (none: nothing to
// do) and puts the host back as saveHostState found it: iptables rules,
// sysctls, no docker0 bridge, no mounts left under dockerd's directories.
func (k *Kind) stopDocker(ctx context.Context) error {
	pid, ours := k.ourDockerd()
	if !ours && !exists(k.savedRules(false)) {
		return nil // not started here
	}
	if !ours && k.dockerUp(ctx) {
		// A record of an earlier start whose Down did not finish, and a
		// dockerd that is not ours: its bridge, mounts and rules are not
		// ours to undo.
		return fmt.Errorf("a dockerd this provider did not start is running, and %s holds the host state saved before an earlier start of ours: stop that dockerd and run down again, or remove %s if the host is as it should be",
			k.o.RunDir, k.o.RunDir)
	}
	if ours {
		// dockerd's own containerd (it started one: none ran) goes with it
		// on SIGTERM; after a SIGKILL it is stopped by its PID file.
		child, _ := pidFrom("/var/run/docker/containerd/containerd.pid", "containerd")
		if err := stopPID(pid, 60*time.Second); err != nil {
			return err
		}
		if child > 0 {
			if err := stopPID(child, 30*time.Second); err != nil {
				return err
			}
		}
		k.logf("stopped dockerd (pid %d)", pid)
	}
	var errs []error
	for _, link := range []string{"docker0"} {
		if _, err := os.Stat("/sys/class/net/" + link); err == nil {
			if out, err := exec.CommandContext(ctx, "ip", "link", "delete", link).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link delete %s: %w: %s", link, err, strings.TrimSpace(string(out))))
			}
		}
	}
	errs = append(errs, unmountUnder("/run/docker", "/var/lib/docker"))
	errs = append(errs, k.restoreRules(ctx, false), k.restoreRules(ctx, true), k.restoreSysctls())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, f := range []string{k.savedRules(false), k.savedRules(true), k.savedSysctls(), k.dockerPIDFile(), filepath.Join(k.o.RunDir, RuncWrapperName)} {
		_ = os.Remove(f)
	}
	return nil
}

// restoreRules puts back the saved iptables (v6: ip6tables) rules. Tables
// the saved rules do not name (docker made them: nat, when nothing had
// used it) are emptied, their policies ACCEPT.
func (k *Kind) restoreRules(ctx context.Context, v6 bool) error {
	if !exists(k.savedRules(v6)) {
		return nil // nothing saved: no such tables here
	}
	saved, err := os.ReadFile(k.savedRules(v6))
	if err != nil {
		return err
	}
	prog := map[bool]string{false: "iptables", true: "ip6tables"}[v6]
	restore := exec.CommandContext(ctx, prog+"-restore")
	restore.Stdin = strings.NewReader(string(saved))
	if out, err := restore.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore %s: %w: %s", prog, k.savedRules(v6), err, strings.TrimSpace(string(out)))
	}
	had := map[string]bool{}
	for _, line := range strings.Split(string(saved), "\n") {
		if strings.HasPrefix(line, "*") {
			had[strings.TrimPrefix(line, "*")] = true
		}
	}
	now, err := exec.CommandContext(ctx, prog+"-save").Output()
	if err != nil {
		return fmt.Errorf("%s-save: %w", prog, err)
	}
	var errs []error
	for _, line := range strings.Split(string(now), "\n") {
		table, ok := strings.CutPrefix(line, "*")
		if !ok || had[table] {
			continue
		}
		for _, args := range [][]string{{"-F"}, {"-X"}} {
			if out, err := exec.CommandContext(ctx, prog, append([]string{"-t", table}, args...)...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s -t %s %s: %w: %s", prog, table, args[0], err, strings.TrimSpace(string(out))))
			}
		}
		for _, chain := range builtinChains[table] {
			_ = exec.CommandContext(ctx, prog, "-t", table, "-P", chain, "ACCEPT").Run()
		}
	}
	return errors.Join(errs...)
}

var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// restoreSysctls writes back the saved sysctls.
func (k *Kind) restoreSysctls() error {
	if !exists(k.savedSysctls()) {
		return nil
	}
	b, err := os.ReadFile(k.savedSysctls())
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if val == absentSysctl {
			if !strings.HasPrefix(key, "net/bridge/") {
				continue
			}
			val = "0"
		}
		if cur, err := os.ReadFile("/proc/sys/" + key); err == nil && strings.TrimSpace(string(cur)) == val {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+key, []byte(val), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", key, val, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount at or below each of dirs (what a
// stopped dockerd may leave: network namespaces, overlays).
func unmountUnder(dirs ...string) error {
	var errs []error
	for _, d := range dirs {
		errs = append(errs, cluster.UnmountTree(d))
	}
	return errors.Join(errs...)
}

func isZombie(pid int) bool { return cluster.IsZombie(pid) }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// pidFrom reads a PID file and returns the PID if that process runs the
// command comm.
func pidFrom(path, comm string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(c)) != comm {
		return 0, false
	}
	return pid, true
}

// stopPID sends SIGTERM and waits up to grace for the process to end (a
// zombie counts as ended), then SIGKILL and waits again.
func stopPID(pid int, grace time.Duration) error {
	gone := func() bool { return syscall.Kill(pid, 0) != nil || isZombie(pid) }
	wait := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for !gone() {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(100 * time.Millisecond)
		}
		return true
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if wait(grace) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if wait(10 * time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d did not end after SIGKILL", pid)
}
