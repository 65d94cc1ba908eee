package kind

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// nodeTar is the finished node file system (images imported), cached: a
// docker that lacks the image (a fresh data root) gets it from here in
// seconds.
func (k *Kind) nodeTar() string {
	return k.dir("kind-node-" + cluster.KubeVersion + "-" + nodeKey() + ".tar")
}

// baseTar is the component images' shared layer.
func (k *Kind) baseTar() string {
	return k.dir("kind-images-base-" + DebianSuite + "-" + baseKey() + ".tar")
}

// Build builds everything the node image is made of into the cache
// (binaries, the base layer, the node file system) without Docker: CI runs
// it in the background while the tests run.
func (k *Kind) Build(ctx context.Context) error {
	_, err := k.ensureNodeTar(ctx)
	return err
}

// NodeImage makes sure docker has the node image, building what is not
// cached, and returns its name.
func (k *Kind) NodeImage(ctx context.Context) (string, error) {
	img := NodeImageName()
	if k.docker(ctx, "image", "inspect", img) == nil {
		return img, nil
	}
	tarPath, err := k.ensureNodeTar(ctx)
	if err != nil {
		return "", err
	}
	t0 := time.Now()
	stage := img + "-stage"
	// docker import cannot set STOPSIGNAL: a one-line build on the
	// imported file system adds it (a local image: nothing is pulled).
	if err := k.docker(ctx, "import",
		"--change", `ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]`,
		"--change", "ENV container=docker", tarPath, stage); err != nil {
		return "", err
	}
	dockerfile := "FROM " + stage + "\nSTOPSIGNAL SIGRTMIN+3\n"
	cmd := exec.CommandContext(ctx, "docker", "build", "--network=none", "-t", img, "-")
	cmd.Stdin = strings.NewReader(dockerfile)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker build of %s: %w: %s", img, err, lastLines(string(b), 5))
	}
	_ = k.docker(ctx, "rmi", stage) // the tag only: the layer is the image's
	k.logf("node image %s made from %s in %s", img, tarPath, time.Since(t0).Round(time.Second))
	return img, nil
}

// ensureNodeTar builds the node file system's tar unless it is cached.
func (k *Kind) ensureNodeTar(ctx context.Context) (string, error) {
	out := k.nodeTar()
	if st, err := os.Stat(out); err == nil && st.Size() > 0 {
		return out, nil
	}
	if err := requireRoot(); err != nil {
		return "", err
	}
	if err := k.lc.InstallPackages(ctx, hostPackages...); err != nil {
		return "", err
	}
	unlock, err := lockFile(out + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if st, err := os.Stat(out); err == nil && st.Size() > 0 {
		return out, nil // made by whoever held the lock
	}
	t0 := time.Now()
	p, err := k.buildParts(ctx)
	if err != nil {
		return "", err
	}
	k.logf("binaries ready (%s)", time.Since(t0).Round(time.Second))
	work, err := os.MkdirTemp(k.o.CacheDir, "kind-node-work-")
	if err != nil {
		return "", err
	}
	defer func() {
		// An interrupted mmdebstrap may leave its /proc, /sys and /dev
		// mounts in the rootfs: unmount before removing, never through them.
		if err := unmountUnder(work); err != nil {
			k.logf("%v: leaving %s in place", err, work)
			return
		}
		os.RemoveAll(work)
	}()

	t1 := time.Now()
	if err := k.ensureBaseTar(ctx); err != nil {
		return "", err
	}
	var archives []string
	for _, tag := range []string{pauseKindTag, pauseKubeadmTag} {
		a := filepath.Join(work, "pause-"+tag+".tar")
		if err := cluster.PauseImageArchive(ctx, "registry.k8s.io/pause:"+tag, a); err != nil {
			return "", fmt.Errorf("the pause image: %w", err)
		}
		archives = append(archives, a)
	}
	comps := filepath.Join(work, "components.tar")
	if err := k.writeComponentImages(ctx, components(p), k.baseTar(), comps); err != nil {
		return "", err
	}
	archives = append(archives, comps)
	k.logf("component images written (%s)", time.Since(t1).Round(time.Second))

	t2 := time.Now()
	root := filepath.Join(work, "rootfs")
	k.logf("making the node file system (Debian %s, mmdebstrap; log %s)", DebianSuite, filepath.Join(k.o.LogDir, "kind-node-rootfs.log"))
	if err := k.nodeRootfs(ctx, p, root); err != nil {
		return "", err
	}
	if err := k.importIntoRootfs(ctx, p.containerd, root, archives); err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	if err := k.runLogged(ctx, "kind-node-rootfs", "tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tmp, "."); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	k.removeStale("kind-node-*.tar", out)
	k.logf("node file system %s made (%s; all parts %s)", out, time.Since(t2).Round(time.Second), time.Since(t0).Round(time.Second))
	return out, nil
}

// ensureBaseTar makes the component images' base layer unless cached.
func (k *Kind) ensureBaseTar(ctx context.Context) error {
	out := k.baseTar()
	if st, err := os.Stat(out); err == nil && st.Size() > 0 {
		return nil
	}
	tmp := out + ".tmp.tar"
	os.Remove(tmp)
	if err := k.mmdebstrap(ctx, "essential", basePackages, tmp, "kind-images-base"); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	k.removeStale("kind-images-base-*.tar", out)
	return nil
}

// removeStale removes the cache's files matching glob other than keep:
// file systems of an earlier recipe (hundreds of MB each).
func (k *Kind) removeStale(glob, keep string) {
	old, _ := filepath.Glob(filepath.Join(k.o.CacheDir, glob))
	for _, f := range old {
		if f != keep && !strings.HasSuffix(f, ".tmp") {
			_ = os.Remove(f)
		}
	}
}

// docker runs a docker command; its error carries the command's output.
func (k *Kind) docker(ctx context.Context, args ...string) error {
	_, err := k.dockerOut(ctx, args...)
	return err
}

func (k *Kind) dockerOut(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || errors.Is(err, exec.ErrNotFound) {
			return out.String(), fmt.Errorf("docker %s: %w: %s", firstArgs(args), err, lastLines(errb.String(), 3))
		}
		return out.String(), err
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
