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

func haveAll(dir string) bool {
	for _, b := range kubeBinaries {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || st.Mode()&0o111 == 0 || st.Size() == 0 {
			return false
		}
	}
	return true
}

// ensureBinaries builds the four Kubernetes binaries into the cache unless
// they are there. The build goes to <dir>.tmp and is renamed when complete,
// so a partial build is never used. It reports whether it built.
func (c *Cluster) ensureBinaries(ctx context.Context) (bool, error) {
	dir := c.binDir()
	if haveAll(dir) {
		return false, nil
	}
	mod := c.o.ModuleDir
	if mod == "" {
		wd, _ := os.Getwd()
		var err error
		if mod, err = findModuleDir(wd); err != nil {
			return false, fmt.Errorf("the Kubernetes binaries are not in %s and cannot be built: %w", dir, err)
		}
	}
	// One build at a time per cache (another `up` may be building).
	if err := os.MkdirAll(c.o.CacheDir, 0o755); err != nil {
		return false, err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return false, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if haveAll(dir) {
		return false, nil // built by whoever held the lock
	}
	tmp := dir + ".tmp"
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return false, err
	}
	c.logf("building the Kubernetes %s binaries into %s (10-15 min the first time; log %s)", KubeVersion, dir, c.logFile("k8s-build"))
	if err := os.MkdirAll(c.o.LogDir, 0o755); err != nil {
		return false, err
	}
	logf, err := os.Create(c.logFile("k8s-build"))
	if err != nil {
		return false, err
	}
	defer logf.Close()
	args := []string{"build", "-ldflags", kubeLDFlags(KubeVersion), "-o", tmp + "/"}
	for _, b := range kubeBinaries {
		args = append(args, "k8s.io/kubernetes/cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = mod
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("building the Kubernetes binaries failed (%w): see %s", err, c.logFile("k8s-build"))
	}
	if !haveAll(tmp) {
		return false, fmt.Errorf("the Kubernetes build in %s is incomplete: see %s", tmp, c.logFile("k8s-build"))
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return false, err
	}
	return true, nil
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
