package cluster

import (
	"os"
	"path/filepath"
)

// Where the cluster keeps everything: StateDir for what persists until
// Down, RunDir for PID files and sockets, LogDir for the components' logs,
// CacheDir for what outlives the cluster.

func (c *Cluster) pki(name string) string    { return filepath.Join(c.o.StateDir, "pki", name) }
func (c *Cluster) config(name string) string { return filepath.Join(c.o.StateDir, "config", name) }
func (c *Cluster) kubeconfig(name string) string {
	return filepath.Join(c.o.StateDir, name+".kubeconfig")
}
func (c *Cluster) etcdData() string           { return filepath.Join(c.o.StateDir, "etcd") }
func (c *Cluster) containerdRoot() string     { return filepath.Join(c.o.StateDir, "containerd") }
func (c *Cluster) containerdState() string    { return filepath.Join(c.o.RunDir, "containerd") }
func (c *Cluster) containerdSock() string     { return filepath.Join(c.o.RunDir, "containerd.sock") }
func (c *Cluster) cniConfDir() string         { return filepath.Join(c.o.StateDir, "cni", "net.d") }
func (c *Cluster) cniDataDir() string         { return filepath.Join(c.o.StateDir, "cni", "networks") }
func (c *Cluster) pidFile(name string) string { return filepath.Join(c.o.RunDir, name+".pid") }
func (c *Cluster) logFile(name string) string { return filepath.Join(c.o.LogDir, name+".log") }
func (c *Cluster) sysctlFile() string         { return filepath.Join(c.o.StateDir, "sysctl.orig") }
func (c *Cluster) binDir() string             { return filepath.Join(c.o.CacheDir, "k8s-"+KubeVersion) }
func (c *Cluster) bin(name string) string     { return filepath.Join(c.binDir(), name) }
func (c *Cluster) imageCache() string         { return filepath.Join(c.o.CacheDir, "images") }
func (c *Cluster) containerdDir() string {
	return filepath.Join(c.o.CacheDir, "containerd-"+ContainerdVersion)
}
func (c *Cluster) containerdBin(name string) string { return filepath.Join(c.containerdDir(), name) }

// shimSocketDir holds the runc shims' sockets; containerd limits its length
// (42 bytes on Linux), so it sits directly in RunDir.
func (c *Cluster) shimSocketDir() string { return filepath.Join(c.o.RunDir, "s") }

// runcRoot is runc's state directory (runc adds the namespace).
func (c *Cluster) runcRoot() string { return filepath.Join(c.o.RunDir, "runc") }

// makeDirs makes the directories the components write to.
func (c *Cluster) makeDirs() error {
	for _, d := range []string{c.o.StateDir, c.o.RunDir, c.o.LogDir, c.config(""), c.cniConfDir(), c.cniDataDir(), c.containerdRoot(), c.containerdState()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}
