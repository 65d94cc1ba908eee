package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

const (
	shimExe       = "/usr/bin/containerd-shim-runc-v2"
	sharedMarker  = "shared-mounts"     // file in RunDir: the shared bind mounts Up made
	fuseDevDir    = "/run/accel/dev"    // the chart's default devDir (TestChartDefaults checks it)
	shimSocketDir = "/run/containerd/s" // containerd 1.6 puts shim sockets here whatever its state dir
	runcRoot      = "/run/containerd/runc/" + criNamespace
)

// Down stops and removes everything Up started and changed. It is
// idempotent and keeps going after errors; it returns them joined.
func Down(ctx context.Context, o Options) error {
	o, unlock, err := o.begin()
	if err != nil {
		return err
	}
	defer unlock()
	p := paths{o: o}
	if foreign := p.foreignKube(); len(foreign) > 0 {
		return fmt.Errorf("refusing to tear down: this machine runs Kubernetes components that localcluster did not start (%s); stop them first", strings.Join(foreign, ", "))
	}
	if !p.anyState() {
		o.logf("no local cluster state in %s or %s: nothing to tear down", o.StateDir, o.RunDir)
		return nil
	}
	return down(ctx, o)
}

func down(ctx context.Context, o Options) error {
	p := paths{o: o}
	start := time.Now()
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	// kubelet first, so it restarts nothing.
	add(p.stop(compKubelet, 15*time.Second))
	add(p.stopStrays(compKubelet))

	// Pods: through the CRI (CNI DEL, netns unmount, container removal).
	var netns, ids []string
	if _, ok := p.running(compContainerd); ok {
		ns, err := p.removeSandboxes(ctx)
		netns = ns
		if err != nil {
			o.logf("removing pod sandboxes through CRI: %v (killing tasks instead)", err)
		}
		// Whatever is left: kill tasks, delete them and their containers.
		if out, err := p.ctr(ctx, "containers", "ls", "-q"); err == nil {
			ids = strings.Fields(out)
		}
		if out, err := p.ctr(ctx, "tasks", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				p.ctr(ctx, "tasks", "kill", "-a", "-s", "SIGKILL", id)
			}
			for _, id := range strings.Fields(out) {
				p.ctr(ctx, "tasks", "delete", "-f", id)
			}
		}
		for _, id := range ids {
			p.ctr(ctx, "containers", "delete", id)
		}
	}

	for i := len(components) - 2; i >= 0; i-- { // all but kubelet, reverse order
		add(p.stop(components[i], 15*time.Second))
	}
	add(p.stopStrays(components...))

	// Shims of our containerd and any process left in a pod cgroup. Each is
	// checked again once a pidfd holds it: a PID seen in the scan may be
	// someone else's by the time it is signalled.
	sock := p.containerdSock()
	for _, pid := range procsWith(shimExe, sock) {
		add(terminate(pid, 2*time.Second, func() bool { return procHas(pid, shimExe, sock) }))
	}
	for _, pid := range podProcesses() {
		killIf(pid, syscall.SIGKILL, func() bool { return inPodCgroup(pid) })
	}

	// Mounts: netns, kubelet's pod volumes and its bind mount of its root,
	// containerd's rootfs/shm, the FUSE mount of a dead simulator, our shared
	// bind mounts.
	for _, n := range append(netns, orphanPodNetns(ctx)...) {
		unmountTree(n)
		os.Remove(n)
	}
	add(unmountTree(KubeletDir))
	add(unmountTree(o.RunDir))
	add(unmountTree(o.StateDir))
	add(unmountDeadFUSE(fuseDevDir))
	var madeDirs []string
	if b, err := os.ReadFile(filepath.Join(o.RunDir, sharedMarker)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			op, m, _ := strings.Cut(line, " ")
			switch op {
			case "bind":
				if mps := mountPoints(m); len(mps) > 1 {
					// Something still mounted below (e.g. a live FUSE file
					// system served from outside the cluster): leave the
					// shared bind mount under it alone.
					o.logf("leaving %s bind-mounted: %s is still mounted", m, mps[0])
					continue
				}
				add(unmountTree(m))
			case "mkdir":
				madeDirs = append(madeDirs, m)
			}
		}
	}
	for _, d := range madeDirs {
		os.Remove(d) // only if empty
	}

	add(removeKubepodsCgroups())
	add(deleteBridge(ctx))
	errs = append(errs, removeRules(ctx)...)
	errs = append(errs, restoreSysctls(p.sysctlFile())...)

	// Files: device-plugin sockets (kubelet's and every plugin's), kubelet's
	// state, shim sockets and runc state of our containers, CNI cache,
	// our state. Never remove through a mount.
	add(cleanDevicePluginDir())
	add(removeKubeletState())
	for _, id := range ids {
		os.RemoveAll(filepath.Join(runcRoot, id))
	}
	removeStaleSockets(shimSocketDir)
	if m, _ := filepath.Glob("/var/lib/cni/results/" + CNINetworkName + "-*"); len(m) > 0 {
		for _, f := range m {
			os.Remove(f)
		}
	}
	for _, d := range []string{o.StateDir, o.RunDir} {
		add(removeAllNoMounts(d))
	}
	o.logf("down in %s", time.Since(start).Round(100*time.Millisecond))
	return errors.Join(errs...)
}

// mountPoints returns the mount points at or below dir, deepest first.
// The mount table is /proc/thread-self/mountinfo, its octal escapes (\040
// for a space, \011, \012, \134) undone by the parser.
func mountPoints(dir string) []string {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil
	}
	return deepestFirst(mounts)
}

// deepestFirst lists the mounts' mount points, deepest first (a stacked
// mount point once per mount, the order of the table kept among equals).
func deepestFirst(mounts []*mountinfo.Info) []string {
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	sort.SliceStable(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

// unmountTree unmounts every mount at or below dir, deepest first (and each
// one as many times as it is stacked). Busy mounts are detached lazily.
func unmountTree(dir string) error {
	var errs []error
	for round := 0; round < 5; round++ {
		mps := mountPoints(dir)
		if len(mps) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, mp := range mps {
			if err := syscall.Unmount(mp, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				if err2 := syscall.Unmount(mp, syscall.MNT_DETACH); err2 != nil && !errors.Is(err2, syscall.EINVAL) {
					errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err2))
				}
			}
		}
	}
	if left := mountPoints(dir); len(left) > 0 {
		return fmt.Errorf("still mounted after unmounting: %s (%v)", strings.Join(left, " "), errors.Join(errs...))
	}
	return nil
}

// unmountDeadFUSE lazily unmounts a FUSE mount whose server is gone
// (its mount point answers ENOTCONN).
func unmountDeadFUSE(dir string) error {
	if len(mountPoints(dir)) == 0 {
		return nil
	}
	var st syscall.Stat_t
	err := syscall.Stat(dir, &st)
	if !errors.Is(err, syscall.ENOTCONN) {
		return nil // alive (or not FUSE): leave it to its owner
	}
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount dead FUSE %s: %w", dir, err)
	}
	return nil
}

// podProcesses are processes in a cgroup of our kubelet's pods.
func podProcesses() []int {
	return procsWhere(func(pid int, _ string) bool { return inPodCgroup(pid) })
}

func inPodCgroup(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	return err == nil && strings.Contains(string(b), ":/"+CgroupRoot+"/")
}

// stopStrays stops the components of ours that no PID file names (a PID
// file lost or overwritten): processes running a component's executable
// with our state or run directory on their command line.
func (p paths) stopStrays(names ...string) error {
	var errs []error
	for _, c := range names {
		exe, _ := p.command(c)
		recorded, _ := p.running(c)
		for _, pid := range procsWith(exe) {
			if pid == recorded || !p.startedByUs(pid) {
				continue
			}
			p.o.logf("stopping %s (pid %d): ours, but no PID file names it", c, pid)
			pid := pid
			if err := terminate(pid, 15*time.Second, func() bool { return procHas(pid, exe) && p.startedByUs(pid) }); err != nil {
				errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", c, pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// CgroupRoot is our kubelet's cgroupRoot: its pods' cgroups live under
// /CgroupRoot/kubepods in every hierarchy, so Down touches only those.
const CgroupRoot = "accel-e2e"

// removeKubepodsCgroups removes the kubepods trees kubelet made in every
// cgroup hierarchy, deepest first.
func removeKubepodsCgroups() error {
	// Only our kubelet's tree (its cgroupRoot), never another kubelet's.
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + CgroupRoot)
	if _, err := os.Stat("/sys/fs/cgroup/" + CgroupRoot); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+CgroupRoot)
	}
	var errs []error
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 20; try++ {
				if err = syscall.Rmdir(dirs[i]); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond) // tasks still exiting
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// cleanDevicePluginDir removes every socket (and kubelet's checkpoint) in
// kubelet's device-plugin directory; the directory itself stays.
func cleanDevicePluginDir() error {
	ents, err := os.ReadDir(DevicePluginDir)
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range ents {
		if e.Type()&fs.ModeSocket != 0 || e.Name() == "kubelet_internal_checkpoint" {
			if err := os.Remove(filepath.Join(DevicePluginDir, e.Name())); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeKubeletState removes kubelet's state in /var/lib/kubelet except the
// device-plugin directory, unless something is still mounted there.
func removeKubeletState() error {
	ents, err := os.ReadDir(KubeletDir)
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range ents {
		if e.Name() == "device-plugins" {
			continue
		}
		errs = append(errs, removeAllNoMounts(filepath.Join(KubeletDir, e.Name())))
	}
	return errors.Join(errs...)
}

// removeAllNoMounts is os.RemoveAll that refuses when a mount is below path.
func removeAllNoMounts(path string) error {
	if m := mountPoints(path); len(m) > 0 {
		return fmt.Errorf("not removing %s: still mounted: %s", path, strings.Join(m, " "))
	}
	return os.RemoveAll(path)
}

// removeStaleSockets removes unix sockets in dir that nobody listens on.
func removeStaleSockets(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	b, _ := os.ReadFile("/proc/net/unix")
	listening := string(b)
	for _, e := range ents {
		if e.Type()&fs.ModeSocket == 0 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !strings.Contains(listening, path) {
			os.Remove(path)
		}
	}
}

// orphanPodNetns finds CNI network namespaces (/run/netns/cni-*) that still
// hold an address of our pod CIDR: pods of a cluster whose containerd died
// before it could tear their network down.
func orphanPodNetns(ctx context.Context) []string {
	_, pods, err := net.ParseCIDR(PodCIDR)
	if err != nil {
		return nil
	}
	var out []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "cni-") {
				continue
			}
			b, err := exec.CommandContext(ctx, "ip", "-n", e.Name(), "-4", "-o", "addr", "show").Output()
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if ip, _, err := net.ParseCIDR(f); err == nil && pods.Contains(ip) {
					out = append(out, filepath.Join(dir, e.Name()))
					break
				}
			}
		}
	}
	return out
}
