package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// containerdConfig is containerd's config (version 2, containerd 1.6):
// its own root, state and socket, so it never meets a containerd the
// distribution may run.
func (c *Cluster) containerdConfig() string {
	return fmt.Sprintf(`version = 2
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
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %q
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = %q
      max_conf_num = 1
`, c.containerdRoot(), c.containerdState(), c.containerdSock(), c.containerdSock()+".ttrpc",
		PauseImage, c.cniConfDir())
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
