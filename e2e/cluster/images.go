package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
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

// fileEntry is one entry of an image layer.
type fileEntry struct {
	path string // absolute path in the image
	mode int64
	data []byte
	link string // symlink target if not empty
	dir  bool
}

// layerTar writes entries as a tar with fixed timestamps and root ownership.
func layerTar(entries []fileEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, e := range entries {
		h := &tar.Header{Name: strings.TrimPrefix(e.path, "/"), Mode: e.mode, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case e.dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// imageConfig is the part of an OCI/Docker image config this package sets.
type imageConfig struct {
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	Env        []string `json:"Env,omitempty"`
}

// buildImage writes a one-layer image for this machine's platform as a
// docker-archive tarball (what `docker save` writes and `ctr images import`
// reads) tagged ref, at out (via a temporary file). It is written by hand
// rather than with go-containerregistry, whose requirements would raise
// golang.org/x/{net,crypto,text} in the e2e module and so invalidate the
// compiled Kubernetes packages shared with the kubelet tests.
func buildImage(ref string, entries []fileEntry, cfg imageConfig, out string) error {
	if !strings.Contains(ref, "/") || !strings.Contains(ref, ":") {
		return fmt.Errorf("image name %q: want registry/name:tag", ref)
	}
	layer, err := layerTar(entries)
	if err != nil {
		return err
	}
	diffID := sha256.Sum256(layer)
	config := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config":       cfg,
		"rootfs": map[string]any{
			"type":     "layers",
			"diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])},
		},
		"history": []any{map[string]any{"created": "1970-01-01T00:00:00Z", "created_by": "accel-e2e localcluster"}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(configJSON)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, err := json.Marshal([]any{map[string]any{
		"Config":   configName,
		"RepoTags": []string{ref},
		"Layers":   []string{layerName},
	}})
	if err != nil {
		return err
	}
	files := []fileEntry{
		{path: configName, mode: 0o644, data: configJSON},
		{path: hex.EncodeToString(diffID[:]), mode: 0o755, dir: true},
		{path: layerName, mode: 0o644, data: layer},
		{path: "manifest.json", mode: 0o644, data: manifest},
	}
	archive, err := layerTar(files)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, archive, 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// pauseImage builds the pause image archive (a static Go program) into out.
func pauseImage(ctx context.Context, out string) error {
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
		return fmt.Errorf("build the pause program: %v: %s", err, strings.TrimSpace(string(b)))
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	return buildImage(PauseImage, []fileEntry{{path: "/pause", mode: 0o755, data: data}},
		imageConfig{Entrypoint: []string{"/pause"}}, out)
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
	names := make([]string, 0, len(applets))
	for a := range applets {
		names = append(names, a)
	}
	sort.Strings(names)
	entries := []fileEntry{
		{path: "/bin", mode: 0o755, dir: true},
		{path: "/etc", mode: 0o755, dir: true},
		{path: "/root", mode: 0o700, dir: true},
		{path: "/tmp", mode: 0o1777, dir: true},
		{path: "/var", mode: 0o755, dir: true},
		{path: "/usr", mode: 0o755, dir: true},
		{path: "/usr/bin", link: "../bin"},
		{path: "/sbin", link: "bin"},
		{path: "/usr/sbin", link: "../bin"},
		{path: busyboxPath, mode: 0o755, data: data},
	}
	for _, a := range names {
		entries = append(entries, fileEntry{path: "/bin/" + a, link: "busybox"})
	}
	return buildImage(BusyboxImage, entries, imageConfig{
		Cmd: []string{"sh"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, out)
}

// baseImages makes sure the pause and busybox archives are in the cache and
// returns their paths.
func (p paths) baseImages(ctx context.Context) ([]string, error) {
	pause := filepath.Join(p.imageCache(), "pause-3.10.tar")
	busybox := filepath.Join(p.imageCache(), "busybox-1.36.tar")
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
func (p paths) importImages(ctx context.Context, archives []string) error {
	for _, a := range archives {
		if _, err := os.Stat(a); err != nil {
			return fmt.Errorf("image archive %s: %w", a, err)
		}
		out, err := p.ctr(ctx, "images", "import", a)
		if err != nil {
			return fmt.Errorf("import %s into containerd: %v: %s", a, err, strings.TrimSpace(out))
		}
	}
	return nil
}

// ctr runs ctr against this cluster's containerd in the k8s.io namespace.
func (p paths) ctr(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--address", p.containerdSock(), "--namespace", criNamespace}, args...)
	cmd := exec.CommandContext(ctx, "ctr", full...)
	b, err := cmd.CombinedOutput()
	return string(b), err
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
