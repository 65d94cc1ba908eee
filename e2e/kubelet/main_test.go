package kubelet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// inNamespaceEnv marks the re-executed test binary inside its private
// mount namespace.
const inNamespaceEnv = "ACCEL_E2E_KUBELET_NS"

// pluginBin is the accel-plugin binary under test, built by TestMain with
// the race detector, so the plugin is race-checked against the real manager.
var pluginBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e/kubelet: skipped: needs root (mount namespace, FUSE); run `make test` as root")
		os.Exit(0)
	}
	if os.Getenv(inNamespaceEnv) == "" {
		os.Exit(reexecInNamespace())
	}
	os.Exit(runInNamespace(m))
}

// reexecInNamespace runs this test binary again in a new mount namespace
// (Go makes its mounts private) and removes the directories it had to
// create on the host for the tmpfs mountpoint.
func reexecInNamespace() int {
	created, err := mkdirAllTracked(pluginapi.DevicePluginPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kubelet:", err)
		return 1
	}
	defer func() {
		for i := len(created) - 1; i >= 0; i-- {
			os.Remove(created[i])
		}
	}()
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), inNamespaceEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e/kubelet: re-exec in a mount namespace:", err)
		return 1
	}
	return 0
}

// mkdirAllTracked is os.MkdirAll that returns the directories it created.
func mkdirAllTracked(dir string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if d == "/" {
			break
		}
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o750); err != nil {
			return created, fmt.Errorf("create %s: %w", missing[i], err)
		}
		created = append(created, missing[i])
	}
	return created, nil
}

func runInNamespace(m *testing.M) int {
	if err := syscall.Mount("tmpfs", pluginapi.DevicePluginPath, "tmpfs", 0, "mode=0750"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kubelet: mount tmpfs on the device-plugin directory:", err)
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
