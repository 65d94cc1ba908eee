package kind

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

func TestRenderConfig(t *testing.T) {
	for _, top := range Topologies {
		path := filepath.Join("..", top.Config)
		for _, fixes := range []HostFixes{{}, {CgroupV1: true}, {MissingCaps: []string{"CAP_SYS_RESOURCE"}},
			{CgroupV1: true, MissingCaps: []string{"CAP_SYS_RESOURCE"}}} {
			out, err := renderConfig(path, top.Cluster, fixes)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			var cfg v1alpha4.Cluster
			if err := yaml.UnmarshalStrict(out, &cfg); err != nil {
				t.Fatalf("%s rendered: %v\n%s", path, err, out)
			}
			if cfg.Kind != "Cluster" || cfg.Name != top.Cluster || len(cfg.Nodes) != top.Nodes {
				t.Errorf("%s: kind %q name %q nodes %d; want Cluster %q %d", path, cfg.Kind, cfg.Name, len(cfg.Nodes), top.Cluster, top.Nodes)
			}
			kubeadm, containerd := 0, 0
			if fixes.CgroupV1 {
				kubeadm = 1
			}
			if len(fixes.MissingCaps) > 0 {
				containerd = 1
			}
			if len(cfg.KubeadmConfigPatches) != kubeadm || (kubeadm == 1 && !strings.Contains(cfg.KubeadmConfigPatches[0], "failCgroupV1: false")) {
				t.Errorf("%s with %+v: kubeadm patches %q", path, fixes, cfg.KubeadmConfigPatches)
			}
			if len(cfg.ContainerdConfigPatches) != containerd || (containerd == 1 && !strings.Contains(cfg.ContainerdConfigPatches[0], "restrict_oom_score_adj = true")) {
				t.Errorf("%s with %+v: containerd patches %q", path, fixes, cfg.ContainerdConfigPatches)
			}
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: Pod\napiVersion: v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := renderConfig(bad, "x", HostFixes{}); err == nil || !strings.Contains(err.Error(), "not a kind Cluster") {
		t.Errorf("a Pod as kind config: %v", err)
	}
	typo := filepath.Join(dir, "typo.yaml")
	if err := os.WriteFile(typo, []byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnode: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := renderConfig(typo, "x", HostFixes{}); err == nil || !strings.Contains(err.Error(), "node") {
		t.Errorf("a misspelt field: %v", err)
	}
	if _, err := renderConfig(filepath.Join(dir, "missing.yaml"), "x", HostFixes{}); err == nil {
		t.Error("a missing config: no error")
	}
}

// capBit reports whether bit is set in the CapBnd line of a
// /proc/PID/status.
func capBit(t *testing.T, status string, bit uint) bool {
	t.Helper()
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n&(1<<bit) != 0
		}
	}
	t.Fatal(fmt.Errorf("no CapBnd in %q", status))
	return false
}
