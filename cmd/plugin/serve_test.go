package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestServeDaemonFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"serve", "--daemon-timeout", "0"}, 1, "--daemon-timeout must be between 100ms and 1m0s, got 0s"},
		{[]string{"serve", "--daemon-timeout", "10ms"}, 1, "--daemon-timeout must be between"},
		{[]string{"serve", "--daemon-timeout", "2m"}, 1, "--daemon-timeout must be between"},
		{[]string{"serve", "--daemon-timeout", "soon"}, 2, "invalid value"},
		{[]string{"serve", "--stale-view-grace", "-1s"}, 1, "--stale-view-grace must be 0 (never exit) or positive"},
		{[]string{"serve", "--cdi", "yes"}, 1, `--cdi must be off or on, got "yes"`},
		{[]string{"serve", "--uninstall-daemonset", "accel-device-plugin"}, 1, `--uninstall-daemonset: DaemonSet "accel-device-plugin": want NAMESPACE/NAME`},
		{[]string{"serve", "--cdi", "on", "--cdi-spec-dir", "var/run/cdi"}, 1, "--cdi-spec-dir must be an absolute path"},
		{[]string{"serve", "--api", "both"}, 1, `--api must be device-plugin or dra, got "both"`},
		{[]string{"serve", "--api", "dra", "--cdi", "on", "--node-name", "n"}, 1, "--cdi=on is for --api=device-plugin"},
		{[]string{"serve", "--api", "dra", "--node-name", ""}, 1, "--api=dra needs this node's name"},
		{[]string{"serve", "--api", "dra", "--node-name", "n", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "build the Kubernetes client config"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("accel-plugin %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"serve", "--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	for _, want := range []string{"-daemon-timeout", "(default 3s)", "device daemon not responding", "-stale-view-grace", "(default 10s)", "-cdi string", "(default \"off\")", "-cdi-spec-dir",
		"-api string", "(default \"device-plugin\")", "-dra-plugin-dir", "-dra-registrar-dir", "-pod-uid"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("serve --help does not mention %q:\n%s", want, stderr.String())
		}
	}
}

// serveIn runs `accel-plugin serve` (this test binary) in a new mount
// namespace whose mounts have the given propagation, against an empty
// device directory (no device daemon), and returns the process and a
// scanner of its log.
func serveIn(t *testing.T, propagation string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace of its own (unshare --mount)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	root := t.TempDir()
	dev, kubelet := filepath.Join(root, "dev"), filepath.Join(root, "device-plugins")
	for _, d := range []string{dev, kubelet} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", propagation, os.Args[0], "serve",
		"--dev-dir", dev, "--kubelet-dir", kubelet, "--kernel-class-dir", "", "--metrics-addr", "",
		"--stale-view-grace", "300ms", "--log-level", "debug")
	logs := startBinary(t, cmd)
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, logs
}

// A plugin whose view of --dev-dir has no propagation from the host (the
// chart's recursively read-only volume) would never see a restarted
// simulator's mount: once the daemon has been gone for the grace, serve
// exits 1 saying that the container must restart.
func TestServeExitsWhenItsViewCannotSeeANewDaemon(t *testing.T) {
	cmd, logs := serveIn(t, "private")
	killed := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	var out strings.Builder
	for logs.Scan() { // until serve exits
		out.WriteString(logs.Text() + "\n")
	}
	err := cmd.Wait()
	if !killed.Stop() {
		t.Fatalf("serve did not exit within 30s\n%s", out.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("serve ended with %v; want exit 1\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "the container must restart to see it") || !strings.Contains(out.String(), "private: no master:/shared: propagation") {
		t.Errorf("exit message does not say why:\n%s", out.String())
	}
}

// With propagation it keeps waiting for a new daemon, and stops cleanly.
func TestServeWaitsWhenItsViewReceivesMounts(t *testing.T) {
	cmd, logs := serveIn(t, "shared")
	var out strings.Builder
	for logs.Scan() {
		out.WriteString(logs.Text() + "\n")
		if strings.Contains(logs.Text(), "receives new mounts, so waiting for a new daemon") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	killed := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	for logs.Scan() { // until serve exits
		out.WriteString(logs.Text() + "\n")
	}
	err := cmd.Wait()
	if !killed.Stop() {
		t.Fatalf("serve did not stop within 30s of SIGTERM\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("serve with propagation: %v (it should wait, then stop on SIGTERM)\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "waiting for a new daemon") {
		t.Errorf("no 'waiting' log:\n%s", out.String())
	}
}
