package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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

// Options configure Up, Down and RestartKubelet. The zero value works:
// Defaults fills it in.
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

	// commands replaces components' command lines (executable first):
	// the tests' stand-ins.
	commands map[string][]string
}

// Defaults returns o with every empty field filled in.
func (o Options) Defaults() Options {
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

func (o Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Log, "localcluster: "+format+"\n", args...)
}

// paths of everything the cluster writes, derived from Options.
type paths struct {
	o Options
	// kids are the components this Up or RestartKubelet started (nil
	// elsewhere): whether they still run is what their watchers saw.
	kids *children
}

func (p paths) pki(name string) string        { return filepath.Join(p.o.StateDir, "pki", name) }
func (p paths) config(name string) string     { return filepath.Join(p.o.StateDir, "config", name) }
func (p paths) kubeconfig(name string) string { return filepath.Join(p.o.StateDir, name+".kubeconfig") }
func (p paths) etcdData() string              { return filepath.Join(p.o.StateDir, "etcd") }
func (p paths) containerdRoot() string        { return filepath.Join(p.o.StateDir, "containerd") }
func (p paths) containerdState() string       { return filepath.Join(p.o.RunDir, "containerd") }
func (p paths) containerdSock() string        { return filepath.Join(p.o.RunDir, "containerd.sock") }
func (p paths) cniConfDir() string            { return filepath.Join(p.o.StateDir, "cni", "net.d") }
func (p paths) cniDataDir() string            { return filepath.Join(p.o.StateDir, "cni", "networks") }
func (p paths) pidFile(name string) string    { return filepath.Join(p.o.RunDir, name+".pid") }
func (p paths) logFile(name string) string    { return filepath.Join(p.o.LogDir, name+".log") }
func (p paths) sysctlFile() string            { return filepath.Join(p.o.StateDir, "sysctl.orig") }
func (p paths) binDir() string {
	return filepath.Join(p.o.CacheDir, "k8s-"+KubeVersion)
}
func (p paths) bin(name string) string { return filepath.Join(p.binDir(), name) }
func (p paths) imageCache() string     { return filepath.Join(p.o.CacheDir, "images") }

// AdminKubeconfig is the path of the admin (system:masters) kubeconfig.
func (o Options) AdminKubeconfig() string {
	return paths{o: o.Defaults()}.kubeconfig("admin")
}

// findModuleDir walks up from dir to the e2e module's root.
func findModuleDir(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && modulePath(string(b)) == e2eModule {
			return d, nil
		}
		if sub := filepath.Join(d, "e2e"); d != sub {
			if b, err := os.ReadFile(filepath.Join(sub, "go.mod")); err == nil && modulePath(string(b)) == e2eModule {
				return sub, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("the e2e module (" + e2eModule + ") was not found above " + dir + ": run from the repository or set Options.ModuleDir")
		}
		d = parent
	}
}

func modulePath(gomod string) string {
	for _, line := range strings.Split(gomod, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
