package kind

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

// Versions of what the node image carries. The Kubernetes version is the
// local cluster's (cluster.KubeVersion); etcd, CoreDNS and pause are the
// versions its kubeadm asks for (`kubeadm config images list`).
const (
	KindVersion       = "v0.33.0"
	kindModule        = "sigs.k8s.io/kind"
	EtcdVersion       = "v3.7.0" // kubeadm v1.37: registry.k8s.io/etcd:3.7.0-0
	etcdImageTag      = "3.7.0-0"
	CoreDNSVersion    = "v1.14.6"
	CrictlVersion     = "v1.37.0"
	CNIPluginsVersion = "v1.9.1"
	KubeRouterVersion = "v2.1.0"
	// kubeadm's pause (3.10.2) and the one kind's containerd config names
	// as its sandbox image (3.10): both are the local cluster's pause.
	pauseKubeadmTag = "3.10.2"
	pauseKindTag    = "3.10"
	// DebianSuite is the node's distribution: bookworm's systemd 252 still
	// runs on a cgroup v1 host (kind's own base, trixie, has systemd 257).
	DebianSuite = "bookworm"
	// recipe names this package's way of assembling the image: bump it when
	// that changes in a way the versions and lists below do not show.
	recipe = "1"
)

// NodeImageName is the node image's tag: the Kubernetes version and a
// hash of everything else it is made of (nodeKey).
func NodeImageName() string {
	return "localhost/accel-kind-node:" + cluster.KubeVersion + "-" + nodeKey()
}

// nodeKey is a short hash of what the node image is made of: every
// version, the package lists, the CNI manifest and recipe. The cached file
// systems and the image are named by it, so a change to any of them makes
// a new one.
func nodeKey() string {
	return shortHash(recipe, cluster.KubeVersion, cluster.ContainerdVersion, KindVersion, EtcdVersion, etcdImageTag,
		CoreDNSVersion, CrictlVersion, CNIPluginsVersion, KubeRouterVersion, pauseKubeadmTag, pauseKindTag, DebianSuite,
		nodePackages, basePackages, cniPlugins, kubeRouterManifest)
}

// baseKey is the hash of what the component images' shared layer is made of.
func baseKey() string { return shortHash(recipe, DebianSuite, basePackages) }

func shortHash(parts ...any) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%q\n", p)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// KubeRouterImage is the CNI's image, built from its Go module.
const KubeRouterImage = "localhost/kube-router:" + KubeRouterVersion
