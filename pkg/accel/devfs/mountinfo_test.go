package devfs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestIsMountpointEscapedPath: a mount point whose name mountinfo escapes
// (a space, a tab) is found; its parent, which is not a mount point, is not.
func TestIsMountpointEscapedPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	parent := t.TempDir()
	dir := filepath.Join(parent, "a b\tc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := IsMountpoint(dir); got || err != nil {
		t.Fatalf("IsMountpoint(%q) before mount = %v, %v; want false, nil", dir, got, err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if got, err := IsMountpoint(dir); !got || err != nil {
		t.Errorf("IsMountpoint(%q) = %v, %v; want true, nil", dir, got, err)
	}
	if got, err := IsMountpoint(parent); got || err != nil {
		t.Errorf("IsMountpoint(%q) = %v, %v; want false, nil", parent, got, err)
	}
}
