package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// foreignKube lists kubelet and kube-apiserver processes that this
// provider did not start: a machine that is already a Kubernetes node must
// not be taken over (Up would rewrite /var/lib/kubelet and its device-plugin
// directory under it).
func (p paths) foreignKube() []string {
	ours := map[int]bool{}
	for _, comp := range []string{compKubelet, compAPIServer} {
		if pid, ok := p.running(comp); ok {
			ours[pid] = true
		}
	}
	var found []string
	procsWhere(func(pid int, proc string) bool {
		comm, err := os.ReadFile(proc + "/comm")
		// Ours: recorded, or naming our directories (its PID file lost).
		if err != nil || ours[pid] || isZombie(pid) || p.startedByUs(pid) {
			return false
		}
		switch name := strings.TrimSpace(string(comm)); name {
		case compKubelet, compAPIServer, "k3s", "k3s-server", "k3s-agent", "k0s", "kubelite", "rke2":
			found = append(found, fmt.Sprintf("%s (pid %d)", name, pid))
		}
		return false
	})
	return found
}

// ensureCgroupRoot creates our kubelet's cgroupRoot in every cgroup
// hierarchy (kubelet refuses a cgroupRoot that is missing anywhere); Down
// removes it with everything below.
func ensureCgroupRoot() error {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil { // cgroup v2
		dir := "/sys/fs/cgroup/" + CgroupRoot
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		// Delegate the controllers kubelet uses, as far as the root allows.
		for _, c := range []string{"cpu", "cpuset", "memory", "pids", "io", "hugetlb"} {
			_ = os.WriteFile(dir+"/cgroup.subtree_control", []byte("+"+c), 0o644)
		}
		return nil
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		dir := filepath.Join(filepath.Dir(procs), CgroupRoot)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	return nil
}
