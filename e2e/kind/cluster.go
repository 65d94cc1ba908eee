package kind

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// UpOptions say what Up makes.
type UpOptions struct {
	Topology Topology
	// NodeImage is the node image: empty builds the offline one
	// (NodeImage); StockImage uses kind's own default (pulled from its
	// registry).
	NodeImage string
	// Imports are image archives to load into every node (`kind load
	// image-archive`), e.g. the project image from `make image`; the
	// busybox image the suite uses is always loaded.
	Imports []string
}

// StockImage as UpOptions.NodeImage means kind's default node image.
const StockImage = "stock"

// RegistryReachable reports whether kind's registries answer (any HTTP
// answer counts), that is whether kind's stock node image can be pulled.
func RegistryReachable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, u := range []string{"https://registry-1.docker.io/v2/", "https://registry.k8s.io/v2/"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return false
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
	}
	return true
}

// Up makes the topology's kind cluster (unless it is up), with the images
// loaded, and returns its kubeconfig's path. It refuses while the local
// cluster runs. Clusters of the other topologies are deleted first: one
// runs at a time.
func (k *Kind) Up(ctx context.Context, o UpOptions) (string, error) {
	unlock, err := k.begin()
	if err != nil {
		return "", err
	}
	defer unlock()
	if k.lc.IsUp(ctx) {
		return "", errors.New("the local cluster is up (make cluster-down stops it): it and a kind cluster cannot run at the same time (dockerd's iptables rules break the local cluster's pod traffic, and both would be this machine's kubelets)")
	}
	t0 := time.Now()
	if err := k.ensureDocker(ctx); err != nil {
		return "", err
	}
	kindBin, err := k.KindBinary(ctx)
	if err != nil {
		return "", err
	}
	image := o.NodeImage
	switch image {
	case "":
		if image, err = k.NodeImage(ctx); err != nil {
			return "", err
		}
	case StockImage:
		image = ""
	}
	_, busybox, err := k.lc.BaseImageArchives(ctx)
	if err != nil {
		return "", err
	}
	t := o.Topology
	kubeconfig := k.KubeconfigPath(t)
	existing, err := k.clusters(ctx, kindBin)
	if err != nil {
		return "", err
	}
	have := false
	for _, name := range existing {
		if name == t.Cluster {
			have = true
			continue
		}
		if isOurs(name) {
			k.logf("deleting kind cluster %s (one runs at a time)", name)
			if err := k.run(ctx, kindBin, "delete", "cluster", "--name", name); err != nil {
				return "", err
			}
		}
	}
	if have && image != "" {
		// Made from another node image (an older build, or stock): make it
		// again from this one.
		running, err := k.dockerOut(ctx, "inspect", "--format", "{{.Config.Image}}", t.Cluster+"-control-plane")
		if err != nil || strings.TrimSpace(running) != image {
			k.logf("kind cluster %s runs node image %q, not %s: deleting it", t.Cluster, strings.TrimSpace(running), image)
			if err := k.run(ctx, kindBin, "delete", "cluster", "--name", t.Cluster); err != nil {
				return "", err
			}
			have = false
		}
	}
	if have {
		if err := k.run(ctx, kindBin, "export", "kubeconfig", "--name", t.Cluster, "--kubeconfig", kubeconfig); err != nil {
			return "", err
		}
	} else {
		fixes, err := DetectHostFixes()
		if err != nil {
			return "", err
		}
		k.logf("host fixes: %s", fixes.describe())
		cfg, err := renderConfig(filepath.Join(k.o.ModuleDir, t.Config), t.Cluster, fixes)
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(k.o.OutDir, 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(k.configPath(t), cfg, 0o644); err != nil {
			return "", err
		}
		args := []string{"create", "cluster", "--name", t.Cluster, "--config", k.configPath(t), "--kubeconfig", kubeconfig, "--wait", "5m"}
		if image != "" {
			args = append(args, "--image", image)
		}
		tc := time.Now()
		if err := k.run(ctx, kindBin, args...); err != nil {
			// Also after Ctrl-C: the half-made cluster goes.
			cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			logs := filepath.Join(k.o.LogDir, "kind-"+t.Cluster)
			_ = k.run(cleanup, kindBin, "export", "logs", logs, "--name", t.Cluster)
			_ = k.run(cleanup, kindBin, "delete", "cluster", "--name", t.Cluster)
			return "", fmt.Errorf("%w (the nodes' logs: %s)", err, logs)
		}
		k.logf("kind cluster %s created (%d node(s), %s)", t.Cluster, t.Nodes, time.Since(tc).Round(time.Second))
	}
	if err := waitReady(ctx, kubeconfig, t.Nodes, 5*time.Minute); err != nil {
		return "", err
	}
	tl := time.Now()
	for _, a := range append([]string{busybox}, o.Imports...) {
		if err := k.run(ctx, kindBin, "load", "image-archive", a, "--name", t.Cluster); err != nil {
			return "", err
		}
	}
	k.logf("images loaded (%s); up in %s", time.Since(tl).Round(time.Second), time.Since(t0).Round(time.Second))
	return kubeconfig, nil
}

// Image makes sure docker has the node image (starting dockerd as Up does
// when none answers) and returns its name.
func (k *Kind) Image(ctx context.Context) (string, error) {
	unlock, err := k.begin()
	if err != nil {
		return "", err
	}
	defer unlock()
	if err := k.ensureDocker(ctx); err != nil {
		return "", err
	}
	return k.NodeImage(ctx)
}

// Down deletes this provider's kind clusters and, when it started dockerd,
// stops it and puts the host back as it was. It does nothing when nothing
// is up.
func (k *Kind) Down(ctx context.Context) error {
	unlock, err := k.begin()
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	if k.dockerUp(ctx) {
		// A failure here must not keep dockerd from stopping and the host
		// from being put back: the errors are joined.
		kindBin, err := k.KindBinary(ctx)
		errs = append(errs, err)
		if err == nil {
			names, err := k.clusters(ctx, kindBin)
			errs = append(errs, err)
			for _, name := range names {
				if isOurs(name) {
					errs = append(errs, k.run(ctx, kindBin, "delete", "cluster", "--name", name))
				}
			}
		}
		if _, ours := k.ourDockerd(); ours {
			_ = k.docker(ctx, "network", "rm", "kind") // its bridge, before dockerd goes
		}
	}
	errs = append(errs, k.stopDocker(ctx))
	return errors.Join(errs...)
}

// begin is how Up, Image and Down start: root checked, and the provider's
// lock held until unlock (one of them runs at a time, between processes).
func (k *Kind) begin() (unlock func(), err error) {
	if err := requireRoot(); err != nil {
		return nil, err
	}
	return lockFile(filepath.Clean(k.o.RunDir) + ".lock")
}

// isOurs tells this provider's clusters (Topologies) from others.
func isOurs(name string) bool {
	for _, t := range Topologies {
		if t.Cluster == name {
			return true
		}
	}
	return false
}

// clusters lists the kind clusters docker runs.
func (k *Kind) clusters(ctx context.Context, kindBin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, kindBin, "get", "clusters").Output()
	if err != nil {
		return nil, fmt.Errorf("kind get clusters: %w", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "No kind clusters") {
			names = append(names, l)
		}
	}
	return names, nil
}

// run runs a command with its output going to the log.
func (k *Kind) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = k.o.Log, k.o.Log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

// waitReady waits until the cluster has nodes Ready nodes and every pod in
// kube-system runs and is ready (the CNI, CoreDNS, kube-proxy).
func waitReady(ctx context.Context, kubeconfig string, nodes int, timeout time.Duration) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		last = readiness(ctx, cs, nodes)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the kind cluster is not ready after %s: %s", timeout, last)
		case <-time.After(time.Second):
		}
	}
}

// readiness is what the cluster still waits for, empty when nothing.
func readiness(ctx context.Context, cs kubernetes.Interface, want int) string {
	nl, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	ready := 0
	for _, n := range nl.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready++
			}
		}
	}
	if ready != want {
		return fmt.Sprintf("%d of %d nodes Ready", ready, want)
	}
	pl, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	for _, p := range pl.Items {
		ok := p.Status.Phase == corev1.PodRunning
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
				ok = false
			}
		}
		if !ok {
			return fmt.Sprintf("pod kube-system/%s is %s", p.Name, p.Status.Phase)
		}
	}
	if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return "no default ServiceAccount yet"
	}
	return ""
}
