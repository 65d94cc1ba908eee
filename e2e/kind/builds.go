package kind

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// parts are the binaries the node image is assembled from, each in its
// cached directory.
type parts struct {
	kube       string // kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
	kubeNode   string // kubeadm, kubectl, kube-proxy
	containerd string // containerd, containerd-shim-runc-v2, ctr
	kind       string // kind
	cni        string // the CNI plugins
	crictl     string
	etcd       string
	coredns    string
	kubeRouter string
}

var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap", "ptp"}

func (k *Kind) dir(name string) string { return filepath.Join(k.o.CacheDir, name) }

// KindBinary is the kind CLI, built from its module into the cache.
func (k *Kind) KindBinary(ctx context.Context) (string, error) {
	b := k.kindBuild()
	if _, err := k.lc.Ensure(ctx, b); err != nil {
		return "", err
	}
	return filepath.Join(b.Dir, "kind"), nil
}

func (k *Kind) kindBuild() cluster.CachedBuild {
	return goInstallBuild("kind "+KindVersion, k.dir("kind-"+KindVersion), []string{"kind"}, "kind-build", "under a minute",
		nil, kindModule+"@"+KindVersion)
}

// builds are the cached builds the node image needs beyond the local
// cluster's, in the order Build makes them (longest last, so that a cold
// run reports the quick failures first).
func (k *Kind) builds() []cluster.CachedBuild {
	cni := make([]string, len(cniPlugins))
	for i, p := range cniPlugins {
		dir := "main"
		switch p {
		case "host-local":
			dir = "ipam"
		case "portmap":
			dir = "meta"
		}
		cni[i] = "github.com/containernetworking/plugins/plugins/" + dir + "/" + p + "@" + CNIPluginsVersion
	}
	return []cluster.CachedBuild{
		k.kindBuild(),
		goInstallBuild("the CNI plugins "+CNIPluginsVersion, k.dir("cni-plugins-"+CNIPluginsVersion), cniPlugins,
			"cni-build", "under a minute", nil, cni...),
		k.lc.KubeBuild(k.dir("k8s-"+cluster.KubeVersion+"-node"), "kubeadm", "kubectl", "kube-proxy"),
		etcdBuild(k.dir("etcd-" + EtcdVersion)),
		goInstallBuild("crictl "+CrictlVersion, k.dir("crictl-"+CrictlVersion), []string{"crictl"}, "crictl-build", "1-2 min",
			[]string{"-X", "sigs.k8s.io/cri-tools/pkg/version.Version=" + CrictlVersion},
			"sigs.k8s.io/cri-tools/cmd/crictl@"+CrictlVersion),
		goInstallBuild("kube-router "+KubeRouterVersion, k.dir("kube-router-"+KubeRouterVersion), []string{"kube-router"},
			"kube-router-build", "3 min", []string{"-X", "github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=" + KubeRouterVersion},
			"github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@"+KubeRouterVersion),
		goInstallBuild("CoreDNS "+CoreDNSVersion, k.dir("coredns-"+CoreDNSVersion), []string{"coredns"}, "coredns-build", "5 min",
			nil, "github.com/coredns/coredns@"+CoreDNSVersion),
	}
}

// buildParts builds every part into the cache unless it is there.
func (k *Kind) buildParts(ctx context.Context) (parts, error) {
	var p parts
	var err error
	if p.kube, err = k.lc.KubeBinaries(ctx); err != nil {
		return p, err
	}
	if p.containerd, err = k.lc.ContainerdBinaries(ctx); err != nil {
		return p, err
	}
	dirs := []*string{&p.kind, &p.cni, &p.kubeNode, &p.etcd, &p.crictl, &p.kubeRouter, &p.coredns}
	for i, b := range k.builds() {
		if _, err := k.lc.Ensure(ctx, b); err != nil {
			return p, err
		}
		*dirs[i] = b.Dir
	}
	return p, nil
}

// goInstallBuild is the cached `go install` of pkgs (path@version, all of
// one module) into dir, statically linked.
func goInstallBuild(what, dir string, names []string, log, took string, ldflags []string, pkgs ...string) cluster.CachedBuild {
	return cluster.CachedBuild{What: what, Dir: dir, Names: names, Log: log, Took: took,
		Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
			flags := "-s -w"
			for _, f := range ldflags {
				flags += " " + f
			}
			args := append([]string{"install", "-trimpath", "-ldflags", flags}, pkgs...)
			cmd := exec.CommandContext(ctx, cluster.GoTool(), args...)
			cmd.Dir = tmp // outside any module
			cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
			return cmd, nil
		}}
}

// etcdBuild builds etcd's server. Its module's go.mod has replace lines, so
// `go install go.etcd.io/etcd/server/v3@…` refuses: a throwaway module
// that requires it builds its main package instead.
func etcdBuild(dir string) cluster.CachedBuild {
	return cluster.CachedBuild{What: "etcd " + EtcdVersion, Dir: dir, Names: []string{"etcd"}, Log: "etcd-build", Took: "1 min",
		Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
			src := filepath.Join(tmp, ".src")
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module accel-e2e/etcd-build\n\ngo 1.26.0\n"), 0o644); err != nil {
				return nil, err
			}
			script := fmt.Sprintf(`set -e
go get go.etcd.io/etcd/server/v3@%[1]s
go build -trimpath -ldflags "-s -w" -o %[2]q go.etcd.io/etcd/server/v3
rm -rf %[3]q`, EtcdVersion, filepath.Join(tmp, "etcd"), src)
			cmd := exec.CommandContext(ctx, "sh", "-c", script)
			cmd.Dir = src
			cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(cluster.GoTool())+":"+os.Getenv("PATH"),
				"CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
			return cmd, nil
		}}
}
