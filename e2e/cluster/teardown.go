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
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A cluster of an earlier version of this provider ran Debian's containerd
// 1.6, whose shims keep their sockets in /run/containerd/s and runc its
// state in /run/containerd/runc whatever containerd's state setting says:
// Down still cleans those up after such a cluster. containerd 2 is told to
// keep both in RunDir (shimSocketDir, runcRoot), which Down removes.
const (
	legacyShimExe       = "/usr/bin/containerd-shim-runc-v2"
	legacyShimSocketDir = "/run/containerd/s"
	legacyRuncRoot      = "/run/containerd/runc/" + criNamespace
)

// removePods removes the pods: their sandboxes through the CRI (CNI DEL,
// netns unmount, container removal), then whatever is left by killing and
// deleting tasks and containers. It returns the netns paths the sandboxes
// had (to unmount any containerd left behind) and the containers it saw.
func (c *Cluster) removePods(ctx context.Context) (netns, containers []string) {
	if _, ok := c.running(compContainerd); !ok {
		return nil, nil
	}
	netns, err := c.removeSandboxes(ctx)
	if err != nil {
		c.logf("removing pod sandboxes through CRI: %v (killing tasks instead)", err)
	}
	if out, err := c.ctr(ctx, "containers", "ls", "-q"); err == nil {
		containers = strings.Fields(out)
	}
	if out, err := c.ctr(ctx, "tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, "tasks", "kill", "-a", "-s", "SIGKILL", id) // best effort, as every step here
		}
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, "tasks", "delete", "-f", id)
		}
	}
	for _, id := range containers {
		_, _ = c.ctr(ctx, "containers", "delete", id)
	}
	return netns, containers
}

// stopComponents stops every component but kubelet, in reverse start
// order, then any of ours that no PID file names.
func (c *Cluster) stopComponents() error {
	var errs []error
	for i := len(components) - 2; i >= 0; i-- { // all but kubelet, reverse order
		errs = append(errs, c.stop(components[i], 15*time.Second))
	}
	errs = append(errs, c.stopStrays(components...))
	return errors.Join(errs...)
}

// stopPodProcesses stops the shims of our containerd and kills any process
// left in a pod cgroup. Each is checked again once a pidfd holds it: a PID
// seen in the scan may be someone else's by the time it is signalled.
func (c *Cluster) stopPodProcesses() error {
	var errs []error
	sock := c.containerdSock()
	for _, shim := range []string{c.containerdBin("containerd-shim-runc-v2"), legacyShimExe} {
		for _, pid := range procsWith(shim, sock) {
			errs = append(errs, terminate(pid, 2*time.Second, func() bool { return procHas(pid, shim, sock) }))
		}
	}
	for _, pid := range podProcesses() {
		killIf(pid, syscall.SIGKILL, func() bool { return inPodCgroup(pid) })
	}
	return errors.Join(errs...)
}

// removeFiles removes the files: device-plugin sockets (kubelet's and every
// plugin's), kubelet's state, the CNI cache, and StateDir and RunDir (with
// the shim sockets and runc's state), and what a containerd 1.6 cluster left
// in /run/containerd. It never removes through a mount.
func (c *Cluster) removeFiles(containers []string) error {
	var errs []error
	errs = append(errs, cleanDevicePluginDir())
	errs = append(errs, removeKubeletState())
	for _, id := range containers {
		os.RemoveAll(filepath.Join(legacyRuncRoot, id))
	}
	removeStaleSockets(legacyShimSocketDir)
	if m, _ := filepath.Glob("/var/lib/cni/results/" + CNINetworkName + "-*"); len(m) > 0 {
		for _, f := range m {
			os.Remove(f)
		}
	}
	for _, d := range []string{c.o.StateDir, c.o.RunDir} {
		errs = append(errs, removeAllNoMounts(d))
	}
	return errors.Join(errs...)
}

// podProcesses are processes in a cgroup of our kubelet's pods.
func podProcesses() []int {
	return procsWhere(func(pid int, _ string) bool { return inPodCgroup(pid) })
}

func inPodCgroup(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	return err == nil && strings.Contains(string(b), ":/"+CgroupRoot+"/")
}

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
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
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
		return nil //nolint:nilerr // no directory: nothing to clean
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
		return nil //nolint:nilerr // no kubelet directory: nothing to remove
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
