package plugin

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// DirView is the mount through which this process sees a directory, as
// /proc/self/mountinfo describes it: the mount a new mount at the
// directory would be placed on (a FUSE mount at the directory itself, the
// device daemon's, is looked through).
type DirView struct {
	Dir        string
	MountPoint string
	MountID    int
	// Propagation is the mount's propagation tags ("shared:3",
	// "master:1"), empty for a private mount.
	Propagation string
}

// ReceivesMounts reports whether a mount made at the directory from
// outside this process's mount namespace (the host, where a restarted
// simulator mounts) can show up here: only a mount that is a slave of
// (master:) or a peer in (shared:) a propagation group receives mounts.
func (v DirView) ReceivesMounts() bool {
	for _, tag := range strings.Fields(v.Propagation) {
		if strings.HasPrefix(tag, "master:") || strings.HasPrefix(tag, "shared:") {
			return true
		}
	}
	return false
}

func (v DirView) describe() string {
	if v.ReceivesMounts() {
		return "propagation " + v.Propagation
	}
	return "private: no master:/shared: propagation in /proc/self/mountinfo"
}

// ReadDirView finds the mount holding dir in /proc/self/mountinfo. It
// resolves symlinks in dir's parent only: dir itself may be a FUSE mount
// whose daemon does not answer.
func ReadDirView(dir string) (DirView, error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return DirView{}, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	dir = filepath.Clean(dir)
	if parent, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		dir = filepath.Join(parent, filepath.Base(dir))
	}
	return dirView(mounts, dir)
}

// dirView picks, among mounts, the one a new mount at dir would be placed
// on: the deepest mount covering dir (the last one where mounts are stacked
// on the same point), not counting FUSE mounts at dir itself.
func dirView(mounts []*mountinfo.Info, dir string) (DirView, error) {
	dir = filepath.Clean(dir)
	var best *mountinfo.Info
	bestPoint := ""
	for _, m := range mounts {
		point := filepath.Clean(m.Mountpoint)
		if !covers(point, dir) || (point == dir && strings.HasPrefix(m.FSType, "fuse")) {
			continue
		}
		if best == nil || len(point) >= len(bestPoint) {
			best, bestPoint = m, point
		}
	}
	if best == nil {
		return DirView{}, fmt.Errorf("no mount in /proc/self/mountinfo holds %s", dir)
	}
	// The optional fields, in the kernel's order (shared, master,
	// propagate_from, unbindable); anything else a newer kernel adds is not
	// propagation.
	var tags []string
	for _, f := range strings.Fields(best.Optional) {
		switch k, _, _ := strings.Cut(f, ":"); k {
		case "shared", "master", "propagate_from", "unbindable":
			tags = append(tags, f)
		}
	}
	return DirView{Dir: dir, MountPoint: bestPoint, MountID: best.ID, Propagation: strings.Join(tags, " ")}, nil
}

// covers reports whether the mount point holds path.
func covers(point, path string) bool {
	return point == "/" || path == point || strings.HasPrefix(path, point+"/")
}
