package cluster

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// requireRoot fails unless this process runs as root.
func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (it runs kubelet, containerd and changes iptables): run as root")
	}
	return nil
}

// foreignKube lists kubelet and kube-apiserver processes that this
// provider did not start: a machine that is already a Kubernetes node must
// not be taken over (Up would rewrite /var/lib/kubelet and its device-plugin
// directory under it).
func (c *Cluster) foreignKube() []string {
	ours := map[int]bool{}
	for _, comp := range []string{compKubelet, compAPIServer} {
		if pid, ok := c.running(comp); ok {
			ours[pid] = true
		}
	}
	var found []string
	procsWhere(func(pid int, proc string) bool {
		comm, err := os.ReadFile(proc + "/comm")
		// Ours: recorded, or naming our directories (its PID file lost).
		if err != nil || ours[pid] || isZombie(pid) || c.startedByUs(pid) {
			return false
		}
		switch name := strings.TrimSpace(string(comm)); name {
		case compKubelet, compAPIServer, "k3s", "k3s-server", "k3s-agent", "k0s", "kubelite", "rke2":
			where := ""
			if inDockerContainer(proc) {
				where = ", in a Docker container: a kind node (make e2e-kind-down, or kind delete cluster, stops it)"
			}
			found = append(found, fmt.Sprintf("%s (pid %d%s)", name, pid, where))
		}
		return false
	})
	return found
}

// inDockerContainer reports whether the process at proc (/proc/PID) runs
// in a Docker container (its cgroup path names docker): a kind node's
// kubelet does.
func inDockerContainer(proc string) bool {
	b, err := os.ReadFile(proc + "/cgroup")
	return err == nil && (strings.Contains(string(b), "/docker/") || strings.Contains(string(b), "docker-"))
}
