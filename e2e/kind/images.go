package kind

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// component is one image the node's kubeadm, kind or CNI starts: a binary
// on the shared Debian layer.
type component struct {
	ref        string
	bin        string // path of the binary on the host
	entrypoint []string
}

// components are the images the node carries besides pause: those
// `kubeadm config images list` names, and the CNI's.
func components(p parts) []component {
	k := func(n string) component {
		return component{ref: "registry.k8s.io/" + n + ":" + cluster.KubeVersion, bin: filepath.Join(p.kube, n)}
	}
	proxy := k("kube-proxy")
	proxy.bin = filepath.Join(p.kubeNode, "kube-proxy")
	return []component{
		k("kube-apiserver"), k("kube-controller-manager"), k("kube-scheduler"), proxy,
		{ref: "registry.k8s.io/etcd:" + etcdImageTag, bin: filepath.Join(p.etcd, "etcd")},
		{ref: "registry.k8s.io/coredns/coredns:" + CoreDNSVersion, bin: filepath.Join(p.coredns, "coredns"),
			entrypoint: []string{"/usr/local/bin/coredns"}},
		{ref: KubeRouterImage, bin: filepath.Join(p.kubeRouter, "kube-router"),
			entrypoint: []string{"/usr/local/bin/kube-router"}},
	}
}

// writeComponentImages writes the component images into one docker
// archive at out, all on the shared layer base (a rootfs tar), with
// go-containerregistry (build/image/cmd/components, in the module that
// carries it, so that the e2e module's dependencies stay Kubernetes').
func (k *Kind) writeComponentImages(ctx context.Context, comps []component, base, out string) error {
	dir, err := k.imageModuleDir()
	if err != nil {
		return err
	}
	args := []string{"run", "./cmd/components", "--base", base, "--out", out}
	for _, c := range comps {
		args = append(args, c.ref+"="+c.bin+"="+strings.Join(c.entrypoint, " "))
	}
	cmd := exec.CommandContext(ctx, cluster.GoTool(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write the component images: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// importIntoRootfs imports image archives into the containerd store of the
// node rootfs at root (/var/lib/containerd, namespace k8s.io), pinned so
// that the node's image garbage collection keeps them, and not unpacked
// (the node's containerd unpacks on first use). It runs the cached
// containerd on the host against that store, with nothing but its content
// and metadata plugins.
func (k *Kind) importIntoRootfs(ctx context.Context, containerdDir, root string, archives []string) error {
	run, err := os.MkdirTemp("/run", "accel-kind-img-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(run)
	sock := filepath.Join(run, "c.sock")
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.sandbox.controller.v1.shim", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(root, "var/lib/containerd"), filepath.Join(run, "state"), sock, sock+".ttrpc")
	cfg := filepath.Join(run, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		return err
	}
	logPath := filepath.Join(k.o.LogDir, "kind-node-import.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	d := exec.Command(filepath.Join(containerdDir, "containerd"), "--config", cfg)
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		return fmt.Errorf("start containerd for the node's images: %w", err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = d.Wait(); close(exited) }()
	defer func() {
		_ = d.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = d.Process.Kill()
			<-exited
		}
	}()
	ctr := func(args ...string) (string, error) {
		full := append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)
		b, err := exec.CommandContext(ctx, filepath.Join(containerdDir, "ctr"), full...).CombinedOutput()
		return string(b), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("containerd for the node's images exited (%w): see %s", waitErr, logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd for the node's images did not answer within 30 s: see %s", logPath)
		}
	}
	for _, a := range archives {
		if out, err := ctr("images", "import", "--label=io.cri-containerd.pinned=pinned", "--all-platforms",
			"--no-unpack", "--digests", a); err != nil {
			return fmt.Errorf("import %s into the node image: %w: %s", a, err, strings.TrimSpace(out))
		}
	}
	return nil
}
