package kubelet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pluginBin is the accel-plugin binary under test, built by TestMain with
// the race detector, so the plugin is race-checked against the real manager.
var pluginBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e/kubelet: skipped: needs root (mount namespace, FUSE); run `make test` as root")
		os.Exit(0)
	}
	if !InPrivateNamespace() {
		code, err := ReexecInPrivateNamespace()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e/kubelet:", err)
		}
		os.Exit(code)
	}
	os.Exit(runInNamespace(m))
}

func runInNamespace(m *testing.M) int {
	if err := PrivateDevicePluginDir(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kubelet:", err)
		return 1
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kubelet: skipped: needs /dev/fuse")
		return 0
	}
	dir, err := os.MkdirTemp("", "accel-e2e-kubelet-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "accel-plugin")
	build := exec.Command("go", "build", "-race", "-o", pluginBin, "./cmd/plugin")
	build.Dir = filepath.Join("..", "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kubelet: build accel-plugin:", err)
		return 1
	}
	return m.Run()
}
