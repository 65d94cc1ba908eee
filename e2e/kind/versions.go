package kind

import "github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"

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
	// that changes, so that cached images are rebuilt.
	recipe = "1"
)

// NodeImageName is the node image's tag: the versions it holds.
func NodeImageName() string {
	return "localhost/accel-kind-node:" + cluster.KubeVersion + "-r" + recipe
}

// KubeRouterImage is the CNI's image, built from its Go module.
const KubeRouterImage = "localhost/kube-router:" + KubeRouterVersion
