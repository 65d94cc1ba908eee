package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ComponentStatus is one line of Status.
type ComponentStatus struct {
	Name    string
	PID     int
	Running bool
	Log     string
}

// Status reports which components run, and whether the node is Ready; ok
// means everything runs and the node is Ready. It changes nothing and
// does not wait for Up, Down or RestartKubelet.
func (c *Cluster) Status(ctx context.Context) (comps []ComponentStatus, summary string, ok bool) {
	var out []ComponentStatus
	for _, comp := range components {
		pid, ok := c.running(comp)
		out = append(out, ComponentStatus{Name: comp, PID: pid, Running: ok, Log: c.logFile(comp)})
	}
	node, _ := nodeName()
	if _, ok := c.running(compAPIServer); !ok {
		return out, "node " + node + ": unknown (kube-apiserver is not running)", false
	}
	cs, err := c.clientset()
	if err != nil {
		return out, "node " + node + ": unknown (" + err.Error() + ")", false
	}
	if err := c.waitNodeReady(ctx, cs, node, time.Time{}, 3*time.Second); err != nil {
		return out, "node " + node + ": not Ready (" + err.Error() + ")", false
	}
	for _, s := range out {
		if !s.Running {
			return out, "node " + node + ": Ready, but " + s.Name + " is not running", false
		}
	}
	return out, "node " + node + ": Ready", true
}

// healthy reports whether every component runs and the node is Ready.
func (c *Cluster) healthy(ctx context.Context, node string) bool {
	for _, comp := range components {
		if _, ok := c.running(comp); !ok {
			return false
		}
	}
	cs, err := c.clientset()
	if err != nil {
		return false
	}
	return c.waitNodeReady(ctx, cs, node, time.Time{}, 2*time.Second) == nil
}

// Leftovers lists what of the cluster is left that Down removes: PID
// files in RunDir, and processes whose command line names StateDir or
// RunDir (every component's does). After Down, and after a failed Up, it
// is empty.
func (c *Cluster) Leftovers() []string {
	var left []string
	if m, _ := filepath.Glob(filepath.Join(c.o.RunDir, "*.pid")); len(m) > 0 {
		left = append(left, "PID files "+strings.Join(m, " "))
	}
	for _, pid := range procsWhere(func(pid int, _ string) bool { return c.startedByUs(pid) }) {
		cl, _ := cmdline(pid)
		left = append(left, fmt.Sprintf("pid %d (%s)", pid, cl))
	}
	return left
}

// anyState reports whether anything of a previous cluster is left.
func (c *Cluster) anyState() bool {
	for _, comp := range components {
		if _, err := os.Stat(c.pidFile(comp)); err == nil {
			return true
		}
	}
	for _, d := range []string{c.o.StateDir, c.o.RunDir} {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}
