package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
)

// Regression (issue 10, item 6): the simulator's mode, gid and limit flags
// are parsed strictly, each refusal a one-line error naming the flag. On
// 12137fa --dir-mode and the limit flags did not exist and "00666" was
// accepted as a compute mode.
func TestSimFlagErrors(t *testing.T) {
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--compute-mode", "1777"}, "--compute-mode: mode \"1777\": want 3 octal digits with an optional leading 0, at most 0777"},
		{[]string{"--compute-mode", "8"}, "--compute-mode: mode \"8\""},
		{[]string{"--compute-mode", "abc"}, "--compute-mode: mode \"abc\""},
		{[]string{"--compute-mode", "00666"}, "--compute-mode: mode \"00666\""},
		{[]string{"--compute-mode", "0o666"}, "--compute-mode: mode \"0o666\""},
		{[]string{"--compute-mode", "66"}, "--compute-mode: mode \"66\""},
		{[]string{"--compute-mode", ""}, "--compute-mode: mode \"\""},
		{[]string{"--dir-mode", "4755"}, "--dir-mode: mode \"4755\""},
		{[]string{"--dir-mode", "rwx"}, "--dir-mode: mode \"rwx\""},
		{[]string{"--gid", "4294967295"}, "--gid 4294967295 is out of range: want 0 to 4294967294"},
		{[]string{"--monitor-opens-per-process", "0"}, "--monitor-opens-per-process 0 is out of range: want 1 to 65536"},
		{[]string{"--monitor-opens-per-process", "65537"}, "--monitor-opens-per-process 65537 is out of range"},
		{[]string{"--monitor-opens-per-device", "0"}, "--monitor-opens-per-device 0 is out of range: want 1 to 1048576"},
		// Checked before the shift to bytes: 1<<34 GiB would wrap to 0
		// bytes (and so to the 16 GiB default), 1<<34+1 to 1 GiB.
		{[]string{"--memory-gib", "0"}, "--memory-gib 0 is out of range: want 1 to 1048576"},
		{[]string{"--memory-gib", "1048577"}, "--memory-gib 1048577 is out of range: want 1 to 1048576"},
		{[]string{"--memory-gib", "17179869184"}, "--memory-gib 17179869184 is out of range: want 1 to 1048576"},
		{[]string{"--memory-gib", "17179869185"}, "--memory-gib 17179869185 is out of range: want 1 to 1048576"},
		{[]string{"--memory-gib", "18446744073709551615"}, "--memory-gib 18446744073709551615 is out of range: want 1 to 1048576"},
		{[]string{"--devices", "0", "--memory-gib", "1048576"}, "is not empty"}, // accepted: the mountpoint check is next
		{[]string{"--driver", "fakedev:2,fakenpu:2"}, "is not empty"},           // accepted
		{[]string{"--driver", "fakenpu"}, "is not empty"},                       // accepted: one device
		{[]string{"--devices", "2", "--driver", "fakenpu:1"}, "--devices and --driver both say how many devices to start"},
		{[]string{"--driver", "fakegpu:1"}, "--driver: driver list \"fakegpu:1\": unknown driver \"fakegpu\" (want one of [fakedev fakenpu])"},
		{[]string{"--driver", "fakedev:1,fakedev:2"}, "fakedev is named twice"},
		{[]string{"--driver", "fakedev:x"}, "count \"x\" of fakedev: want a number from 0 to 256"},
		{[]string{"--driver", "fakedev:+5"}, "count \"+5\" of fakedev: want a number from 0 to 256"},
		{[]string{"--driver", "fakedev:-0"}, "count \"-0\" of fakedev: want a number from 0 to 256"},
		{[]string{"--driver", "fakedev:257"}, "count \"257\" of fakedev: want a number from 0 to 256"},
		{[]string{"--driver", "fakenpu:256"}, "is not empty"},             // accepted, as the chart's schema
		{[]string{"--driver", "fakedev:128,fakenpu:128"}, "is not empty"}, // accepted
		{[]string{"--driver", "fakenpu,fakedev:0"}, "is not empty"},       // accepted
		{[]string{"--driver", "fakedev:200,fakenpu:100"}, "300 devices in all, more than the 256"},
		{[]string{"--driver", ""}, "empty driver list"},
		{[]string{"--throughput", "0"}, "--throughput 0 is out of range"},
		{[]string{"--throughput", "1125899906842625"}, "--throughput 1125899906842625 is out of range"},
		{[]string{"--memory-budget-mib", "1073741825"}, "--memory-budget-mib 1073741825 is out of range"},
	} {
		// A directory that is not empty: a flag wrongly accepted then
		// fails at the mountpoint check instead of starting a simulator.
		args := append([]string{"sim", "--dir", full}, tc.args...)
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("accel-plugin %v: exit %d, stderr %q; want exit 1 and one line mentioning %q", args, code, stderr.String(), tc.want)
		}
	}
}

func TestParseModeRules(t *testing.T) {
	for in, want := range map[string]os.FileMode{"000": 0, "0000": 0, "660": 0o660, "0660": 0o660, "0777": 0o777, "777": 0o777, "0700": 0o700} {
		if got, err := devfs.ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"1777", "2660", "8", "abc", "00666", "0o666", "66", "", " 666", "+666", "-666", "0x1ff", "0888", "07777"} {
		if got, err := devfs.ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) = %v, want an error", in, got)
		}
	}
}

func TestInfoOfComputeNodeWithoutMonitor(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ac0"), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"info", filepath.Join(dir, "ac0")}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "its monitor node "+filepath.Join(dir, "ac0_monitor")+" is missing") {
		t.Fatalf("info of a compute node without its monitor: exit %d, %q", code, stderr.String())
	}
}

// startSim runs `accel-plugin sim` (this test binary) on dir with args and
// waits until it is serving; it is stopped with SIGTERM at cleanup.
func startSim(t *testing.T, dir string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE; run `make test` as root")
	}
	cmd := exec.Command(os.Args[0], append([]string{"sim", "--dir", dir}, args...)...)
	logs := startBinary(t, cmd)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	var text strings.Builder
	for logs.Scan() {
		text.WriteString(logs.Text() + "\n")
		if strings.Contains(logs.Text(), "simulator running") {
			go func() {
				for logs.Scan() {
				}
			}()
			return cmd
		}
	}
	t.Fatalf("simulator did not start; logs:\n%s", text.String())
	return nil
}

// Regression (issue 10, item 6): --compute-mode 0000 is honoured (on
// 12137fa it became 0666), --dir-mode and --gid set the mount's root
// directory, and `info` still reads a compute node through its monitor.
func TestSimModesAndOwnership(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	startSim(t, dir, "--devices", "1", "--compute-mode", "0000", "--dir-mode", "0750", "--gid", "4242")
	for name, want := range map[string]os.FileMode{".": os.ModeDir | 0o750, "ac0": 0, "ac0_monitor": 0o444} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, st.Mode(), want)
		}
		if gid := st.Sys().(*syscall.Stat_t).Gid; gid != 4242 {
			t.Errorf("%s: gid %d, want 4242", name, gid)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"info", filepath.Join(dir, "ac0")}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), `"name":"ac0"`) {
		t.Fatalf("info of ac0: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	if err := os.Remove(filepath.Join(dir, "ac0")); !os.IsPermission(err) {
		t.Fatalf("rm ac0: %v, want EPERM", err)
	}
}

// The default root directory mode is 0700.
func TestSimDefaultDirMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	startSim(t, dir, "--devices", "1")
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != os.ModeDir|0o700 {
		t.Fatalf("root directory mode %v, want drwx------", st.Mode())
	}
	if st, err := os.Stat(filepath.Join(dir, "ac0")); err != nil || st.Mode() != 0o666 {
		t.Fatalf("ac0: %v, %v; want mode 0666", st, err)
	}
}

// --monitor-opens-per-process reaches the core.
func TestSimMonitorLimitFlag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	startSim(t, dir, "--devices", "1", "--monitor-opens-per-process", "2")
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i := range 3 {
		f, err := os.Open(filepath.Join(dir, "ac0_monitor"))
		if i < 2 && err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
		if i == 2 && !strings.Contains(errString(err), "too many open files") {
			t.Fatalf("third open with --monitor-opens-per-process 2: %v, want EMFILE", err)
		}
		if f != nil {
			files = append(files, f)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
