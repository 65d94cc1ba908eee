package cluster

import (
	"context"
	"os/exec"
	"path/filepath"
)

// What the local cluster builds and caches that the kind provider (package
// kind) uses too, so that both share one cache: the Kubernetes and
// containerd builds, the pause and busybox images and the go command.

// KubeBinaries builds the Kubernetes server binaries the local cluster runs
// (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) into
// the cache unless they are there, and returns their directory.
func (c *Cluster) KubeBinaries(ctx context.Context) (string, error) {
	_, err := c.ensureBinaries(ctx)
	return c.binDir(), err
}

// KubeBuild is the cached build of more k8s.io/kubernetes commands (names
// under k8s.io/kubernetes/cmd), built from the e2e module like
// KubeBinaries, into dir: they share its Go build cache.
func (c *Cluster) KubeBuild(dir string, names ...string) CachedBuild {
	return CachedBuild{
		What: "the Kubernetes " + KubeVersion + " commands " + joinNames(names), Dir: dir, Names: names,
		Log: "k8s-build-" + filepath.Base(dir), Took: "1-10 min",
		Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
			mod, err := c.moduleDir()
			if err != nil {
				return nil, err
			}
			args := []string{"build", "-ldflags", kubeLDFlags(KubeVersion), "-o", tmp + "/"}
			for _, b := range names {
				args = append(args, "k8s.io/kubernetes/cmd/"+b)
			}
			cmd := exec.CommandContext(ctx, goTool(), args...)
			cmd.Dir = mod
			cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
			return cmd, nil
		},
	}
}

// ContainerdBinaries builds containerd (ContainerdVersion: the daemon, its
// runc shim and ctr) into the cache unless it is there, and returns its
// directory.
func (c *Cluster) ContainerdBinaries(ctx context.Context) (string, error) {
	_, err := c.ensureContainerd(ctx)
	return c.containerdDir(), err
}

// BaseImageArchives makes sure the pause (PauseImage) and busybox
// (BusyboxImage) image archives are in the cache and returns their paths.
func (c *Cluster) BaseImageArchives(ctx context.Context) (pause, busybox string, err error) {
	a, err := c.baseImages(ctx)
	if err != nil {
		return "", "", err
	}
	return a[0], a[1], nil
}

// PauseImageArchive writes the pause image, tagged name, to out (kind's
// nodes want it under registry.k8s.io's name).
func PauseImageArchive(ctx context.Context, name, out string) error {
	return pauseImageNamed(ctx, name, out)
}

// GoTool is the go command the builds use.
func GoTool() string { return goTool() }

// LogFile is where the build or component named name logs.
func (c *Cluster) LogFile(name string) string { return c.logFile(name) }

// IsUp reports whether any component of the local cluster runs.
func (c *Cluster) IsUp(ctx context.Context) bool {
	comps, _, _ := c.Status(ctx)
	for _, s := range comps {
		if s.Running {
			return true
		}
	}
	return false
}

func joinNames(names []string) string {
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return s
}

// ModuleDir is the e2e module's root: Options.ModuleDir, or found from the
// working directory upwards.
func (c *Cluster) ModuleDir() (string, error) { return c.moduleDir() }

// UnmountTree unmounts every mount at or below dir, deepest first (the
// kind provider's clean-up of dockerd's and mmdebstrap's leftovers).
func UnmountTree(dir string) error { return unmountTree(dir) }

// IsZombie reports whether pid has exited (a zombie, or gone).
func IsZombie(pid int) bool { return isZombie(pid) }
