package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

var kubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"}

// kubeLDFlags stamps the version into the binaries (they report v0.0.0
// otherwise).
func kubeLDFlags(version string) string {
	minor := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	maj, min := "1", "0"
	if len(minor) >= 2 {
		maj, min = minor[0], minor[1]
	}
	return strings.Join([]string{"-s", "-w",
		"-X", "k8s.io/component-base/version.gitVersion=" + version,
		"-X", "k8s.io/component-base/version.gitMajor=" + maj,
		"-X", "k8s.io/component-base/version.gitMinor=" + min,
		"-X", "k8s.io/component-base/version.gitTreeState=clean",
		"-X", "k8s.io/client-go/pkg/version.gitVersion=" + version,
		"-X", "k8s.io/client-go/pkg/version.gitMajor=" + maj,
		"-X", "k8s.io/client-go/pkg/version.gitMinor=" + min,
	}, " ")
}

// haveAll reports whether dir holds every one of names as a non-empty
// executable file.
func haveAll(dir string, names []string) bool {
	for _, b := range names {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 || st.Size() == 0 {
			return false
		}
	}
	return true
}

// CachedBuild is a set of binaries built once into the cache, keyed by
// version in its directory name. The kind provider (package kind) builds
// what its node image carries the same way.
type CachedBuild struct {
	What  string   // for messages: "the Kubernetes v1.37.2 binaries"
	Dir   string   // where they are kept
	Names []string // the binaries Dir must hold
	Log   string   // name of the build log (in LogDir)
	Took  string   // how long it takes cold, for the progress line
	// Cmd is the build writing into tmp (a fresh, empty directory).
	Cmd func(ctx context.Context, tmp string) (*exec.Cmd, error)
}

// Ensure builds b into the cache unless it is there. The build goes to
// <Dir>.tmp and is renamed when complete, so a partial build is never used;
// one build runs at a time per cache (<Dir>.lock). It reports whether it
// built.
func (c *Cluster) Ensure(ctx context.Context, b CachedBuild) (bool, error) {
	if haveAll(b.Dir, b.Names) {
		return false, nil
	}
	if err := os.MkdirAll(c.o.CacheDir, 0o755); err != nil {
		return false, err
	}
	lock, err := os.OpenFile(b.Dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return false, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if haveAll(b.Dir, b.Names) {
		return false, nil // built by whoever held the lock
	}
	tmp := b.Dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil { // an interrupted build's remains
		return false, err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return false, err
	}
	cmd, err := b.Cmd(ctx, tmp)
	if err != nil {
		return false, fmt.Errorf("%s are not in %s and cannot be built: %w", b.What, b.Dir, err)
	}
	c.logf("building %s into %s (%s the first time; log %s)", b.What, b.Dir, b.Took, c.logFile(b.Log))
	if err := os.MkdirAll(c.o.LogDir, 0o755); err != nil {
		return false, err
	}
	logf, err := os.Create(c.logFile(b.Log))
	if err != nil {
		return false, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("building %s failed (%w): see %s", b.What, err, c.logFile(b.Log))
	}
	if !haveAll(tmp, b.Names) {
		return false, fmt.Errorf("the build of %s in %s is incomplete: see %s", b.What, tmp, c.logFile(b.Log))
	}
	if err := os.RemoveAll(b.Dir); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, b.Dir); err != nil {
		return false, err
	}
	return true, nil
}

// Build builds what the cluster runs (the Kubernetes binaries and
// containerd) into the cache unless it is there, and changes nothing else
// on the host (no root needed): Up then starts at once. CI runs it in the
// background, at low priority, while the unit tests run.
func (c *Cluster) Build(ctx context.Context) error {
	for _, ensure := range []func(context.Context) (bool, error){c.ensureBinaries, c.ensureContainerd} {
		if _, err := ensure(ctx); err != nil {
			return err
		}
	}
	return nil
}

// ensureBinaries builds the four Kubernetes binaries into the cache (from
// the e2e module, which requires k8s.io/kubernetes) unless they are there.
func (c *Cluster) ensureBinaries(ctx context.Context) (bool, error) {
	return c.Ensure(ctx, CachedBuild{
		What: "the Kubernetes " + KubeVersion + " binaries", Dir: c.binDir(), Names: kubeBinaries,
		Log: "k8s-build", Took: "10-15 min",
		Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
			mod, err := c.moduleDir()
			if err != nil {
				return nil, err
			}
			args := []string{"build", "-ldflags", kubeLDFlags(KubeVersion), "-o", tmp + "/"}
			for _, b := range kubeBinaries {
				args = append(args, "k8s.io/kubernetes/cmd/"+b)
			}
			cmd := exec.CommandContext(ctx, goTool(), args...)
			cmd.Dir = mod
			return cmd, nil
		},
	})
}

// ensureContainerd builds containerd, its runc shim and ctr (version
// ContainerdVersion) from containerd's Go module into the cache unless they
// are there. CGO_ENABLED=0 leaves out the btrfs snapshotter (cgo), which
// the cluster disables anyway.
func (c *Cluster) ensureContainerd(ctx context.Context) (bool, error) {
	return c.Ensure(ctx, CachedBuild{
		What: "containerd " + ContainerdVersion, Dir: c.containerdDir(), Names: containerdBinaries,
		Log: "containerd-build", Took: "1-3 min",
		Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
			return containerdBuild(ctx, tmp), nil
		},
	})
}

// containerdBuild is the go install of containerdBinaries into gobin.
func containerdBuild(ctx context.Context, gobin string) *exec.Cmd {
	args := []string{"install", "-trimpath", "-ldflags", containerdLDFlags(ContainerdVersion)}
	for _, b := range containerdBinaries {
		args = append(args, containerdModule+"/cmd/"+b+"@"+ContainerdVersion)
	}
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = gobin // outside any module: pkg@version ignores the current one, and there is none
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	return cmd
}

// containerdLDFlags stamps the version into containerd (it reports
// "2.x.y+unknown" otherwise).
func containerdLDFlags(version string) string {
	return "-s -w -X " + containerdModule + "/version.Version=" + version
}

// moduleDir is the e2e module's root: Options.ModuleDir, or found from the
// working directory upwards.
func (c *Cluster) moduleDir() (string, error) {
	if c.o.ModuleDir != "" {
		return c.o.ModuleDir, nil
	}
	wd, _ := os.Getwd()
	return findModuleDir(wd)
}

// findModuleDir walks up from dir to the e2e module's root.
func findModuleDir(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && modulePath(string(b)) == e2eModule {
			return d, nil
		}
		if sub := filepath.Join(d, "e2e"); d != sub {
			if b, err := os.ReadFile(filepath.Join(sub, "go.mod")); err == nil && modulePath(string(b)) == e2eModule {
				return sub, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("the e2e module (" + e2eModule + ") was not found above " + dir + ": run from the repository or set Options.ModuleDir")
		}
		d = parent
	}
}

func modulePath(gomod string) string {
	for _, line := range strings.Split(gomod, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
