package kind

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

// Topology is a kind cluster the suite runs on.
type Topology struct {
	Name    string // single, multi
	Cluster string // the kind cluster's name
	Config  string // kind config in the e2e module (relative to its root)
	Nodes   int    // how many nodes it has
}

// Topologies are the clusters `make e2e-kind` runs the suite on: one
// node, then a control plane and two workers.
var Topologies = []Topology{
	{Name: "single", Cluster: "accel-e2e", Config: "kind.yaml", Nodes: 1},
	{Name: "multi", Cluster: "accel-e2e-multi", Config: "kind-multinode.yaml", Nodes: 3},
}

// TopologyNamed returns the topology called name.
func TopologyNamed(name string) (Topology, error) {
	var names []string
	for _, t := range Topologies {
		if t.Name == name {
			return t, nil
		}
		names = append(names, t.Name)
	}
	return Topology{}, fmt.Errorf("unknown topology %q (have: %s)", name, strings.Join(names, ", "))
}

// HostFixes are the changes to kind's nodes this host needs, each found by
// looking at the host, not assumed.
type HostFixes struct {
	// CgroupV1: the host mounts cgroup v1 (no cgroup2 at /sys/fs/cgroup);
	// kubelet 1.35+ refuses it unless failCgroupV1 is false.
	CgroupV1 bool
	// MissingCaps: the bounding set lacks capabilities (CAP_SYS_RESOURCE
	// here), so a negative oom_score_adj fails: the nodes' containerd must
	// restrict it (restrict_oom_score_adj).
	MissingCaps []string
}

// DetectHostFixes looks at this host.
func DetectHostFixes() (HostFixes, error) {
	var f HostFixes
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		f.CgroupV1 = true
	}
	missing, err := MissingCapabilities()
	if err != nil {
		return f, err
	}
	f.MissingCaps = missing
	return f, nil
}

// kubeletCgroupV1Patch lets kubelet run on a cgroup v1 host.
const kubeletCgroupV1Patch = `kind: KubeletConfiguration
apiVersion: kubelet.config.k8s.io/v1beta1
failCgroupV1: false
`

// containerdOOMPatch keeps containerd from asking for negative
// oom_score_adj values, which need CAP_SYS_RESOURCE.
const containerdOOMPatch = `[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
`

// renderConfig is the kind config at path (kind's v1alpha4 Cluster, read
// strictly: an unknown field is an error) with the cluster's name set and
// the host's fixes added to its patches.
func renderConfig(path, name string, fixes HostFixes) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return nil, fmt.Errorf("kind config %s: %w", path, err)
	}
	if cfg.Kind != "Cluster" || cfg.APIVersion != "kind.x-k8s.io/v1alpha4" {
		return nil, fmt.Errorf("kind config %s: not a kind Cluster (kind.x-k8s.io/v1alpha4) but %s %s", path, cfg.APIVersion, cfg.Kind)
	}
	cfg.Name = name
	if fixes.CgroupV1 {
		cfg.KubeadmConfigPatches = append(cfg.KubeadmConfigPatches, kubeletCgroupV1Patch)
	}
	if len(fixes.MissingCaps) > 0 {
		cfg.ContainerdConfigPatches = append(cfg.ContainerdConfigPatches, containerdOOMPatch)
	}
	return yaml.Marshal(cfg)
}

// describe is a line for the log saying which fixes apply.
func (f HostFixes) describe() string {
	var s []string
	if f.CgroupV1 {
		s = append(s, "cgroup v1 host: kubelet failCgroupV1=false")
	}
	if len(f.MissingCaps) > 0 {
		caps := append([]string(nil), f.MissingCaps...)
		sort.Strings(caps)
		s = append(s, "bounding set lacks "+strings.Join(caps, ",")+": containerd restrict_oom_score_adj, dockerd through the runc wrapper")
	}
	if len(s) == 0 {
		return "none needed"
	}
	return strings.Join(s, "; ")
}

func (k *Kind) configPath(t Topology) string {
	return filepath.Join(k.o.OutDir, "kind-"+t.Cluster+".yaml")
}

// KubeconfigPath is where Up writes the cluster's kubeconfig.
func (k *Kind) KubeconfigPath(t Topology) string {
	return filepath.Join(k.o.OutDir, "kind-"+t.Cluster+".kubeconfig")
}
