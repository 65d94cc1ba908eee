package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

const (
	sharedMarker = "shared-mounts"  // file in RunDir: the shared bind mounts Up made
	fuseDevDir   = "/run/accel/dev" // the chart's default devDir (TestChartDefaults checks it)
)

// SharedMounts are host directories made shared mount points, so pods can
// mount them with Bidirectional/HostToContainer propagation (the root mount
// of these machines is private): the parent of the simulator's device
// directory, the host path the chart mounts.
var SharedMounts = []string{filepath.Dir(fuseDevDir)}

// makeSharedMounts makes each of SharedMounts a shared mount point (a bind
// mount of itself unless it is one already), and records in RunDir what it
// created, for Down.
func (c *Cluster) makeSharedMounts() error {
	var made []string // "bind DIR" / "mkdir DIR" lines for Down
	for _, m := range SharedMounts {
		if _, err := os.Stat(m); os.IsNotExist(err) {
			if err := os.MkdirAll(m, 0o755); err != nil {
				return err
			}
			made = append(made, "mkdir "+m)
		}
		if mps := mountPoints(m); len(mps) == 0 || mps[len(mps)-1] != m {
			if err := syscall.Mount(m, m, "", syscall.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind mount %s: %w", m, err)
			}
			made = append(made, "bind "+m)
		}
		if err := syscall.Mount("", m, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s shared: %w", m, err)
		}
	}
	// The CDI spec directory the chart writes to (cdi.specDir, hostPath
	// DirectoryOrCreate): made here when missing, so that Down knows it
	// is the cluster's and removes it with any spec a killed plugin left.
	if _, err := os.Stat(ChartCDISpecDir); os.IsNotExist(err) {
		if err := os.MkdirAll(ChartCDISpecDir, 0o755); err != nil {
			return err
		}
		made = append(made, "cdidir "+ChartCDISpecDir)
	}
	return os.WriteFile(filepath.Join(c.o.RunDir, sharedMarker), []byte(strings.Join(made, "\n")+"\n"), 0o644)
}

// ChartCDISpecDir is the chart's default cdi.specDir, one of CDISpecDirs.
const ChartCDISpecDir = "/var/run/cdi"

// unmountAll unmounts what the cluster mounted: the pods' network
// namespaces (those the sandboxes had, and any of our pod CIDR left
// behind), kubelet's pod volumes and its bind mount of its root,
// containerd's rootfs/shm, the FUSE mount of a dead simulator, and the
// shared bind mounts Up made (and removes the directories it made for
// them, when empty, and the CDI spec directory if Up made it).
func (c *Cluster) unmountAll(ctx context.Context, netns []string) error {
	var errs []error
	for _, n := range append(netns, orphanPodNetns(ctx)...) {
		_ = unmountTree(n) // a pod's netns: gone with the pod or not, nothing to report
		os.Remove(n)
	}
	errs = append(errs, unmountTree(KubeletDir))
	errs = append(errs, unmountTree(c.o.RunDir))
	errs = append(errs, unmountTree(c.o.StateDir))
	errs = append(errs, unmountDeadFUSE(fuseDevDir))
	var madeDirs []string
	if b, err := os.ReadFile(filepath.Join(c.o.RunDir, sharedMarker)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			op, m, _ := strings.Cut(line, " ")
			switch op {
			case "bind":
				if mps := mountPoints(m); len(mps) > 1 {
					// Something still mounted below (e.g. a live FUSE file
					// system served from outside the cluster): leave the
					// shared bind mount under it alone.
					c.logf("leaving %s bind-mounted: %s is still mounted", m, mps[0])
					continue
				}
				errs = append(errs, unmountTree(m))
			case "mkdir":
				madeDirs = append(madeDirs, m)
			case "cdidir":
				errs = append(errs, removeAllNoMounts(m))
			}
		}
	}
	for _, d := range madeDirs {
		os.Remove(d) // only if empty
	}
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
		return fmt.Errorf("still mounted after unmounting: %s (%w)", strings.Join(left, " "), errors.Join(errs...))
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
