package kind

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// nodePackages are the Debian packages of kind's base image
// (images/base/Dockerfile), less those for storage the suite does not use
// (nfs-common, open-iscsi, e2fsprogs), plus Debian's runc (kind builds its
// own).
var nodePackages = []string{
	"systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux", "mount", "kmod",
	"libseccomp2", "pigz", "fuse-overlayfs", "bash", "ca-certificates", "curl", "jq", "procps", "runc",
}

// basePackages are the component images' shared layer: what kube-proxy
// (iptables, conntrack) and kube-router (ipset, iproute2) run.
var basePackages = []string{"iptables", "ipset", "conntrack", "iproute2", "kmod", "ca-certificates"}

//go:embed kube-router.yaml
var kubeRouterManifest string

// mmdebstrap makes a Debian rootfs of variant with packages at target (a
// directory, or a .tar file).
func (k *Kind) mmdebstrap(ctx context.Context, variant string, packages []string, target, log string) error {
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return fmt.Errorf("mmdebstrap is not installed (apt-get install mmdebstrap): %w", err)
	}
	args := []string{"--variant=" + variant, "--include=" + strings.Join(packages, ","),
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
		DebianSuite, target}
	return k.runLogged(ctx, log, "mmdebstrap", args...)
}

// runLogged runs a command with its output appended to the log named log;
// an error quotes the log's tail.
func (k *Kind) runLogged(ctx context.Context, log, name string, args ...string) error {
	if err := os.MkdirAll(k.o.LogDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(k.o.LogDir, log+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Cancelled: SIGTERM first, so that mmdebstrap unmounts what it
	// mounted in the rootfs; SIGKILL only if it does not end.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (log: %s)", name, firstArgs(args), err, path)
	}
	return nil
}

func firstArgs(args []string) string {
	if len(args) > 3 {
		return strings.Join(args[:3], " ") + " …"
	}
	return strings.Join(args, " ")
}

// kindModuleDir is the sigs.k8s.io/kind module download: kind's base files
// come from it.
func kindModuleDir(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, cluster.GoTool(), "mod", "download", "-json", kindModule+"@"+KindVersion)
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	cmd.Dir = os.TempDir()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", kindModule, KindVersion, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", kindModule, KindVersion, err)
	}
	if m.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", kindModule, KindVersion, m.Error)
	}
	return m.Dir, nil
}

// nodeRootfs assembles the node's file system in root (a fresh directory):
// Debian with kind's base packages, kind's base files and the steps of its
// base Dockerfile, then what `kind build node-image` adds (the Kubernetes
// binaries, /kind/version, the default CNI manifest). The images are
// imported afterwards (importImages).
func (k *Kind) nodeRootfs(ctx context.Context, p parts, root string) error {
	if err := k.mmdebstrap(ctx, "minbase", nodePackages, root, "kind-node-rootfs"); err != nil {
		return err
	}
	mod, err := kindModuleDir(ctx)
	if err != nil {
		return err
	}
	files := filepath.Join(mod, "images", "base", "files")
	// The COPY lines of kind's images/base/Dockerfile.
	copies := []struct {
		from, to string
		mode     os.FileMode
	}{
		{"usr/local/bin", "usr/local/bin", 0o755},
		{"kind", "kind", 0o644},
		{"kind/bin", "kind/bin", 0o755},
		{"LICENSES", "LICENSES", 0o644},
		{"etc", "etc", 0o644},
	}
	for _, c := range copies {
		if err := copyTree(filepath.Join(files, c.from), filepath.Join(root, c.to), c.mode); err != nil {
			return fmt.Errorf("kind's base files: %w", err)
		}
	}
	// Its RUN steps: systemd as a container's init, with only the units a
	// node needs.
	for _, glob := range []string{
		"lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service",
		"lib/systemd/system/multi-user.target.wants/*",
		"etc/systemd/system/*.wants/*",
		"lib/systemd/system/local-fs.target.wants/*",
		"lib/systemd/system/sockets.target.wants/*udev*",
		"lib/systemd/system/sockets.target.wants/*initctl*",
		"lib/systemd/system/basic.target.wants/*",
	} {
		matches, _ := filepath.Glob(filepath.Join(root, glob))
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				return err
			}
		}
	}
	if err := appendFile(filepath.Join(root, "etc/systemd/journald.conf"), "ReadKMsg=no\n"); err != nil {
		return err
	}
	if err := symlink("/usr/lib/systemd/systemd", filepath.Join(root, "sbin/init")); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "kind"), 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"enable", "kubelet.service", "containerd.service", "undo-mount-hacks.service"},
		{"mask", "systemd-binfmt.service"},
	} {
		if err := k.runLogged(ctx, "kind-node-rootfs", "chroot", append([]string{root, "systemctl"}, args...)...); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/kubernetes/manifests"), 0o755); err != nil {
		return err
	}
	// The binaries.
	bins := []struct{ dir, name, to string }{
		{p.containerd, "containerd", "usr/local/bin"},
		{p.containerd, "ctr", "usr/local/bin"},
		{p.containerd, "containerd-shim-runc-v2", "usr/local/bin"},
		{p.crictl, "crictl", "usr/local/bin"},
		{p.kube, "kubelet", "usr/bin"},
		{p.kubeNode, "kubeadm", "usr/bin"},
		{p.kubeNode, "kubectl", "usr/bin"},
	}
	for _, n := range cniPlugins {
		bins = append(bins, struct{ dir, name, to string }{p.cni, n, "opt/cni/bin"})
	}
	for _, b := range bins {
		if err := copyFile(filepath.Join(b.dir, b.name), filepath.Join(root, b.to, b.name), 0o755); err != nil {
			return err
		}
	}
	spec, err := criBaseSpec(ctx, filepath.Join(p.containerd, "ctr"))
	if err != nil {
		return err
	}
	for name, data := range map[string]string{
		"etc/containerd/cri-base.json":    spec,
		"kind/version":                    cluster.KubeVersion,
		"kind/manifests/default-cni.yaml": strings.ReplaceAll(kubeRouterManifest, "KUBE_ROUTER_IMAGE", KubeRouterImage),
	} {
		if err := writeFile(filepath.Join(root, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// criBaseSpec is the runtime spec every container of the node starts from,
// made as kind's base Dockerfile makes it: containerd's default (`ctr oci
// spec`) with kind's createContainer hook (it mounts the node's product
// UUID) and no rlimits.
func criBaseSpec(ctx context.Context, ctr string) (string, error) {
	out, err := exec.CommandContext(ctx, ctr, "oci", "spec").Output()
	if err != nil {
		return "", fmt.Errorf("ctr oci spec: %w", err)
	}
	var spec map[string]any
	if err := json.Unmarshal(out, &spec); err != nil {
		return "", fmt.Errorf("ctr oci spec: %w", err)
	}
	hooks, _ := spec["hooks"].(map[string]any)
	if hooks == nil {
		hooks = map[string]any{}
	}
	create, _ := hooks["createContainer"].([]any)
	hooks["createContainer"] = append(create, map[string]any{"path": "/kind/bin/mount-product-files.sh"})
	spec["hooks"] = hooks
	if proc, ok := spec["process"].(map[string]any); ok {
		delete(proc, "rlimits")
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(spec); err != nil {
		return "", err
	}
	return b.String(), nil
}

// copyTree copies the regular files under from into to (directories made
// 0755), each with mode.
func copyTree(from, to string, mode os.FileMode) error {
	return filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		return copyFile(path, dst, mode)
	})
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	_ = os.Remove(to) // a symlink or a read-only file in the way
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(to, mode) // the umask does not apply
}

func writeFile(path, data string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(data), mode)
}

func appendFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func symlink(target, link string) error {
	_ = os.Remove(link)
	return os.Symlink(target, link)
}
