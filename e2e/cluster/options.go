package cluster

import (
	"io"
	"os"
	"path/filepath"
)

// KubeVersion is the version of the Kubernetes binaries; it must match the
// k8s.io/kubernetes requirement of the e2e module.
const KubeVersion = "v1.37.2"

// e2eModule is the module path whose go.mod builds the Kubernetes binaries.
const e2eModule = "github.com/accel-device-plugin/accel-device-plugin/e2e"

// Fixed addresses of the cluster. The API server listens on every address so
// that pods reach it through the CNI bridge; the other components listen on
// loopback only.
const (
	APIServerPort   = 6443
	ServiceCIDR     = "10.0.0.0/24"
	KubernetesSvcIP = "10.0.0.1" // first address of ServiceCIDR: the `kubernetes` Service
	PodCIDR         = "10.85.0.0/24"
	BridgeGateway   = "10.85.0.1" // the node's address on the CNI bridge
	BridgeName      = "accel-cni0"
	CNINetworkName  = "accel-e2e"
	etcdClientPort  = 12379
	etcdPeerPort    = 12380
	PauseImage      = "localhost/pause:3.10"
	BusyboxImage    = "localhost/busybox:1.36"
	KubeletDir      = "/var/lib/kubelet"
	DevicePluginDir = "/var/lib/kubelet/device-plugins"
	ruleComment     = "accel-e2e"
	criNamespace    = "k8s.io"
)

// Options configure a Cluster. The zero value works: New fills in the
// defaults.
type Options struct {
	// StateDir holds the PKI, kubeconfigs, component configs, etcd data and
	// containerd's root. Down removes it. Default /var/lib/accel-e2e.
	StateDir string
	// RunDir holds PID files and sockets. Down removes it. Default /run/accel-e2e.
	RunDir string
	// LogDir holds one log per component; Down keeps it and Up truncates it.
	// Default /var/log/accel-e2e.
	LogDir string
	// CacheDir caches the Kubernetes binaries and the base images.
	// Default $HOME/.cache/accel-device-plugin.
	CacheDir string
	// ModuleDir is the e2e module's root, needed to build the Kubernetes
	// binaries when they are not cached. Default: found from the working
	// directory upwards.
	ModuleDir string
	// Imports are extra image archives (docker-archive or OCI) to import into
	// containerd's k8s.io namespace, e.g. the project image from `make image`.
	Imports []string
	// SkipPackages skips the apt-get check (the packages must be installed).
	SkipPackages bool
	// Log receives progress lines; default os.Stderr.
	Log io.Writer
}

// withDefaults returns o with every empty field filled in.
func (o Options) withDefaults() Options {
	if o.StateDir == "" {
		o.StateDir = "/var/lib/accel-e2e"
	}
	if o.RunDir == "" {
		o.RunDir = "/run/accel-e2e"
	}
	if o.LogDir == "" {
		o.LogDir = "/var/log/accel-e2e"
	}
	if o.CacheDir == "" {
		home, err := os.UserHomeDir()
		if err != nil || home == "" {
			home = "/root"
		}
		o.CacheDir = filepath.Join(home, ".cache", "accel-device-plugin")
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	return o
}
