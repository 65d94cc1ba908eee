package kubelet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// InNamespaceEnv marks a process re-executed by ReexecInPrivateNamespace.
const InNamespaceEnv = "ACCEL_E2E_KUBELET_NS"

// InPrivateNamespace reports whether this process is the re-executed copy.
func InPrivateNamespace() bool { return os.Getenv(InNamespaceEnv) != "" }

// ReexecInPrivateNamespace runs this program again, with the same
// arguments, in a new mount namespace (Go makes its mounts private), and
// returns its exit code. kubelet's device manager only listens on
// /var/lib/kubelet/device-plugins/kubelet.sock; the copy mounts a tmpfs
// there (PrivateDevicePluginDir), so a kubelet on the same machine is never
// touched. Directories created on the host for the mountpoint are removed
// afterwards.
func ReexecInPrivateNamespace() (int, error) {
	if os.Geteuid() != 0 {
		return 1, errors.New("needs root (a mount namespace and FUSE)")
	}
	created, err := mkdirAllTracked(pluginapi.DevicePluginPath)
	defer func() {
		for i := len(created) - 1; i >= 0; i-- {
			os.Remove(created[i])
		}
	}()
	if err != nil {
		return 1, err
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), InNamespaceEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("re-exec in a mount namespace: %w", err)
	}
	// Pass SIGTERM and SIGINT on, so the copy can shut down cleanly.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), nil
		}
		return 1, fmt.Errorf("re-exec in a mount namespace: %w", err)
	}
	return 0, nil
}

// PrivateDevicePluginDir mounts an empty tmpfs on kubelet's device-plugin
// directory; call it in the re-executed copy only.
func PrivateDevicePluginDir() error {
	if !InPrivateNamespace() {
		return errors.New("refusing to mount over the host's device-plugin directory outside a private mount namespace")
	}
	if err := syscall.Mount("tmpfs", pluginapi.DevicePluginPath, "tmpfs", 0, "mode=0750"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", pluginapi.DevicePluginPath, err)
	}
	return nil
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
