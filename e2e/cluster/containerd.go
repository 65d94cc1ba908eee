package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ContainerdVersion is the containerd release the cluster runs, built from
// its Go module (containerdModule) into the cache.
const ContainerdVersion = "v2.4.2"

const containerdModule = "github.com/containerd/containerd/v2"

// containerdBinaries are what the cluster uses of containerd: the daemon,
// the runc shim it starts per pod, and ctr (images, teardown).
var containerdBinaries = []string{"containerd", "containerd-shim-runc-v2", "ctr"}

// runcBinary is the OCI runtime: Debian's runc.
const runcBinary = "/usr/bin/runc"

// CDISpecDirs are the directories containerd reads CDI specs from (its
// defaults, set explicitly): the chart's cdi.specDir must be one of them.
var CDISpecDirs = []string{"/etc/cdi", "/var/run/cdi"}

// containerdConfig is containerd's config (version 3, containerd 2.x, where
// the CRI plugin is split into io.containerd.cri.v1.runtime and
// io.containerd.cri.v1.images, streaming staying in io.containerd.grpc.v1.cri):
// its own root, state and socket, and the shims' sockets and runc's state
// under RunDir too (both default to /run/containerd), so it never meets a
// containerd the distribution may run. The shim is named by its path
// (runtime_path), runc by its path (BinaryName); CDI is always on in 2.x.
func (c *Cluster) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = %q

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    enable_selinux = false
    cdi_spec_dirs = [%s]
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        runtime_path = %q
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          Root = %q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = %q
      max_conf_num = 1
`, c.containerdRoot(), c.containerdState(), c.containerdSock(), c.containerdSock()+".ttrpc",
		c.shimSocketDir(), PauseImage, quoteList(CDISpecDirs), c.containerdBin("containerd-shim-runc-v2"),
		runcBinary, c.runcRoot(), c.cniConfDir())
}

// quoteList renders strings as the items of a TOML array.
func quoteList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// containerdArgs is containerd's command line.
func (c *Cluster) containerdArgs() []string {
	return []string{"--config=" + c.config("containerd.toml")}
}

// waitContainerd waits until ctr can talk to containerd.
func (c *Cluster) waitContainerd(ctx context.Context) error {
	return c.waitFor(ctx, "containerd", []string{compContainerd}, 60*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		if _, err := os.Stat(c.containerdSock()); err != nil {
			return errors.New("no socket yet")
		}
		if out, err := c.ctr(ctx, "version"); err != nil {
			return errors.New(out)
		}
		return nil
	})
}
