package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
)

// asBinaryEnv makes the test binary behave as accel-plugin itself.
const asBinaryEnv = "ACCEL_PLUGIN_AS_BINARY"

func TestMain(m *testing.M) {
	if os.Getenv(asBinaryEnv) != "" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestBadInputGivesOneLineError(t *testing.T) {
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"sim", "--devices", "999", "--dir", t.TempDir()}, 1, "--devices 999 is out of range: want 0 to 256"},
		{[]string{"sim", "--devices", "-1", "--dir", t.TempDir()}, 1, "out of range"},
		{[]string{"sim", "--dir", full}, 1, "is not empty"},
		{[]string{"sim", "--dir", filepath.Join(full, "x")}, 1, "is not a directory"},
		{[]string{"sim", "--compute-mode", "rw", "--dir", t.TempDir()}, 1, "--compute-mode"},
		{[]string{"sim", "--log-level", "loud", "--dir", t.TempDir()}, 1, "--log-level"},
		{[]string{"sim", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"sim", "extra"}, 1, "unexpected argument"},
		{[]string{"sim", "ctl", "--dir", t.TempDir(), "add"}, 1, "is `accel-plugin sim --dir"},
		{[]string{"info", filepath.Join(full, "x")}, 1, "could not be read"},
		{[]string{"info"}, 2, "usage: accel-plugin info"},
		{[]string{"serve", "--monitor-slots", "-2"}, 1, "--monitor-slots must be between 0 and 1024, got -2"},
		{[]string{"serve", "--resource-prefix", "Accel_IO"}, 1, "--resource-prefix must be a DNS subdomain"},
		{[]string{"serve", "--dev-dir", "relative/dev"}, 1, "--dev-dir must be an absolute path"},
		{[]string{"serve", "--resync", "1ms"}, 1, "--resync must be at least 1s"},
		{[]string{"serve", "--resync", "soon"}, 2, "invalid value"},
		{[]string{"serve", "--kubelet-dir", filepath.Join(full, "none")}, 1, "kubelet creates it"},
		{[]string{"serve", "--kubelet-dir", full, "--log-level", "loud"}, 1, "--log-level"},
		{[]string{"serve", "extra"}, 1, "unexpected argument"},
		{[]string{"serve", "--metrics-addr", "9490"}, 1, "--metrics-addr must be host:port"},
		{[]string{"serve", "--label-node", "--node-name", ""}, 1, "--label-node needs --node-name"},
		{[]string{"serve", "--label-node", "--node-name", "n1", "--kubeconfig", filepath.Join(full, "nope")}, 1, "Kubernetes client config"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{nil, 2, "usage:"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("accel-plugin %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

// serve --help explains every flag.
func TestServeHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"serve", "--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	for _, flag := range []string{"-metrics-addr", "-label-node", "-node-name", "-kubeconfig", "-kernel-class-dir", "-dev-dir", "-host-dev-dir", "-kubelet-dir", "-resource-prefix", "-monitor-slots", "-resync", "-log-level", "/var/lib/kubelet/device-plugins", "accel.io"} {
		if !strings.Contains(stderr.String(), flag) {
			t.Errorf("serve --help does not mention %s:\n%s", flag, stderr.String())
		}
	}
}

// The simulator mounts, serves info/list/ctl, and on SIGTERM unmounts and
// exits 0 leaving no mount behind.
func TestSimLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE; run `make test` as root")
	}
	dir := filepath.Join(t.TempDir(), "dev")
	cmd := exec.Command(os.Args[0], "sim", "--devices", "3", "--dir", dir, "--numa-nodes", "2")
	logs := startBinary(t, cmd)
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var logText strings.Builder
	for logs.Scan() {
		logText.WriteString(logs.Text() + "\n")
		if strings.Contains(logs.Text(), "simulator running") {
			break
		}
	}
	go func() {
		for logs.Scan() {
		}
	}()
	if mounted, _ := devfs.IsMountpoint(dir); !mounted {
		t.Fatalf("simulator did not mount %s; logs:\n%s", dir, logText.String())
	}

	var out, errOut bytes.Buffer
	if code := run([]string{"info", filepath.Join(dir, "ac0"), filepath.Join(dir, "ac1_monitor")}, &out, &errOut); code != 0 {
		t.Fatalf("info: exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("info printed %d lines, want 2: %s", len(lines), out.String())
	}
	var fields map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "serial", "driver", "model", "status", "compute_in_use", "holder_pid",
		"monitor_clients", "memory_total", "memory_used", "numa_node", "reset_count"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("info JSON lacks %q: %s", k, lines[1])
		}
	}
	if fields["name"] != "ac1" || fields["numa_node"] != float64(1) || fields["status"] != "operational" {
		t.Errorf("info of ac1: %s", lines[1])
	}

	out.Reset()
	if code := run([]string{"sim", "ctl", "--dir", dir, "fault", "ac2"}, &out, &errOut); code != 0 || out.String() != "ac2: malfunction\n" {
		t.Fatalf("sim ctl fault: exit %d, %q %q", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := run([]string{"list", "--dir", dir}, &out, &errOut); code != 0 {
		t.Fatalf("list: exit %d: %s", code, errOut.String())
	}
	table := out.String()
	if !strings.HasPrefix(table, "DEVICE") || strings.Count(table, "\n") != 4 || !strings.Contains(table, "malfunction") {
		t.Fatalf("list table:\n%s", table)
	}
	errOut.Reset()
	if code := run([]string{"sim", "ctl", "--dir", dir, "remove", "ac7"}, &out, &errOut); code != 1 ||
		strings.TrimSpace(errOut.String()) != `accel-plugin sim ctl: no device named "ac7": no such device` {
		t.Fatalf("sim ctl remove ac7: exit %d, %q", code, errOut.String())
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("simulator exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("simulator did not exit within 10s of SIGTERM")
	}
	if mounted, err := devfs.IsMountpoint(dir); mounted || err != nil {
		t.Fatalf("mount left behind after SIGTERM (%v)", err)
	}
	if _, err := accel.ReadInfo(filepath.Join(dir, "ac0")); err == nil {
		t.Fatal("device still answers after the simulator exited")
	}
}

// startBinary starts cmd, whose executable is this test binary, as the
// accel-plugin binary (see asBinaryEnv) and returns a scanner over its
// stderr, where its logs go. The caller stops it.
func startBinary(t *testing.T, cmd *exec.Cmd) *bufio.Scanner {
	t.Helper()
	cmd.Env = append(os.Environ(), asBinaryEnv+"=1", "GORACE=atexit_sleep_ms=0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return bufio.NewScanner(stderr)
}
