package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A kubelet this provider did not start is found (so Up refuses to take
// the machine over).
func TestForeignKubeletIsFound(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fake := filepath.Join(t.TempDir(), "kubelet")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	found := New(Options{StateDir: t.TempDir(), RunDir: t.TempDir()}).foreignKube()
	if !strings.Contains(strings.Join(found, " "), "kubelet (pid") {
		t.Fatalf("foreignKube = %v, want the fake kubelet", found)
	}
}
