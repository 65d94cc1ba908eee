package cluster

import (
	"fmt"
	"os"
	"strconv"
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
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []string
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || ours[pid] {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if (name == compKubelet || name == compAPIServer) && !isZombie(pid) {
			found = append(found, fmt.Sprintf("%s (pid %d)", name, pid))
		}
	}
	return found
}
