package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/build/image/oci"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// pauseSource is the pod sandbox's program: it sleeps until SIGTERM/SIGINT.
const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

const busyboxPath = "/bin/busybox" // from Debian's busybox-static

// busyboxApplets are linked in the image even when `busybox --list` fails.
var busyboxApplets = []string{"sh", "ls", "cat", "sleep", "env", "grep", "nsenter", "mount", "test", "echo", "ps",
	"[", "true", "false", "stat", "readlink", "head", "tail", "wc", "id", "mkdir", "rm", "touch", "umount", "find", "dd", "timeout"}

// writeImage writes a one-layer image of files for this machine's platform,
// tagged name, at out, with the project's one image writer (package oci of
// build/image, which the plugin's image comes from too).
func writeImage(name string, files []oci.File, cfg v1.ImageConfig, out string) error {
	_, err := oci.Write(out, oci.Image{
		Name:      name,
		Platform:  v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Files:     files,
		Config:    cfg,
		CreatedBy: "accel-e2e localcluster",
		Created:   time.Unix(0, 0),
	})
	return err
}

// pauseImage builds the pause image archive (a static Go program) into out.
func pauseImage(ctx context.Context, out string) error {
	return pauseImageNamed(ctx, PauseImage, out)
}

// pauseImageNamed is pauseImage tagged name.
func pauseImageNamed(ctx context.Context, name, out string) error {
	dir, err := os.MkdirTemp("", "accel-pause-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module pause\n\ngo 1.21\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(pauseSource), 0o644); err != nil {
		return err
	}
	bin := filepath.Join(dir, "pause")
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the pause program: %w: %s", err, strings.TrimSpace(string(b)))
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	return writeImage(name, []oci.File{{Path: "/pause", Mode: 0o755, Data: data}},
		v1.ImageConfig{Entrypoint: []string{"/pause"}}, out)
}

// busyboxImage builds the busybox image archive from the host's static
// busybox into out.
func busyboxImage(ctx context.Context, out string) error {
	data, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("read %s (install busybox-static): %w", busyboxPath, err)
	}
	applets := map[string]bool{}
	for _, a := range busyboxApplets {
		applets[a] = true
	}
	if b, err := exec.CommandContext(ctx, busyboxPath, "--list").Output(); err == nil {
		for _, a := range strings.Fields(string(b)) {
			if !strings.Contains(a, "/") && a != "busybox" {
				applets[a] = true
			}
		}
	}
	return writeImage(BusyboxImage, busyboxFiles(data, applets), v1.ImageConfig{
		Cmd: []string{"sh"},
		Env: []string{oci.DefaultPath},
	}, out)
}

// busyboxFiles is the busybox image's layer: a small FHS tree, busybox at
// /bin/busybox and a symlink to it for each applet, in a fixed order.
func busyboxFiles(busybox []byte, applets map[string]bool) []oci.File {
	names := make([]string, 0, len(applets))
	for a := range applets {
		names = append(names, a)
	}
	sort.Strings(names)
	files := []oci.File{
		{Path: "/bin", Mode: 0o755, Dir: true},
		{Path: "/etc", Mode: 0o755, Dir: true},
		{Path: "/root", Mode: 0o700, Dir: true},
		{Path: "/tmp", Mode: 0o1777, Dir: true},
		{Path: "/var", Mode: 0o755, Dir: true},
		{Path: "/usr", Mode: 0o755, Dir: true},
		{Path: "/usr/bin", Link: "../bin"},
		{Path: "/sbin", Link: "bin"},
		{Path: "/usr/sbin", Link: "../bin"},
		{Path: busyboxPath, Mode: 0o755, Data: busybox},
	}
	for _, a := range names {
		files = append(files, oci.File{Path: "/bin/" + a, Link: "busybox"})
	}
	return files
}

// baseImages makes sure the pause and busybox archives are in the cache and
// returns their paths.
func (c *Cluster) baseImages(ctx context.Context) ([]string, error) {
	pause := filepath.Join(c.imageCache(), "pause-3.10.oci.tar")
	busybox := filepath.Join(c.imageCache(), "busybox-1.36.oci.tar")
	if _, err := os.Stat(pause); err != nil {
		if err := pauseImage(ctx, pause); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(busybox); err != nil {
		if err := busyboxImage(ctx, busybox); err != nil {
			return nil, err
		}
	}
	return []string{pause, busybox}, nil
}

// importImages imports archives into containerd's k8s.io namespace.
func (c *Cluster) importImages(ctx context.Context, archives []string) error {
	for _, a := range archives {
		if _, err := os.Stat(a); err != nil {
			return fmt.Errorf("image archive %s: %w", a, err)
		}
		out, err := c.ctr(ctx, "images", "import", a)
		if err != nil {
			return fmt.Errorf("import %s into containerd: %w: %s", a, err, strings.TrimSpace(out))
		}
	}
	return nil
}

// Ctr runs ctr against the cluster's containerd in the k8s.io namespace
// (Kubernetes' containers) and returns its standard output; its standard
// error (containerd 2 warns there on cgroup v1 hosts) goes to Options.Log.
func (c *Cluster) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := c.ctrCmd(ctx, args)
	cmd.Stderr = c.o.Log
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// ctr is Ctr returning standard output and error together (for messages).
func (c *Cluster) ctr(ctx context.Context, args ...string) (string, error) {
	b, err := c.ctrCmd(ctx, args).CombinedOutput()
	return string(b), err
}

// ctrCmd is the cached ctr (containerd's version) against this cluster's
// containerd, in the k8s.io namespace.
func (c *Cluster) ctrCmd(ctx context.Context, args []string) *exec.Cmd {
	full := append([]string{"--address", c.containerdSock(), "--namespace", criNamespace}, args...)
	return exec.CommandContext(ctx, c.containerdBin("ctr"), full...)
}

// goTool is the go command: $GOROOT/bin/go if set, else go on PATH, else
// /usr/local/go/bin/go.
func goTool() string {
	if r := os.Getenv("GOROOT"); r != "" {
		if _, err := os.Stat(filepath.Join(r, "bin", "go")); err == nil {
			return filepath.Join(r, "bin", "go")
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}
