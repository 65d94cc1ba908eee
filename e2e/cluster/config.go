package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// writeConfigs writes the components' configuration files: containerd's,
// kubelet's and the CNI network's.
func (c *Cluster) writeConfigs() error {
	kubelet, err := yaml.Marshal(c.kubeletConfig())
	if err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	files := map[string][]byte{
		c.config("containerd.toml"):                        []byte(c.containerdConfig()),
		c.config("kubelet.yaml"):                           kubelet,
		filepath.Join(c.cniConfDir(), "10-accel.conflist"): []byte(c.cniConfig()),
	}
	for f, data := range files {
		if err := os.WriteFile(f, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
