package devfs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/run/accel/dev`:     "/run/accel/dev",
		`/a\040b`:            "/a b",
		`/tab\011nl\012`:     "/tab\tnl\n",
		`/back\134slash`:     `/back\slash`,
		`/short\04`:          `/short\04`,
		`/not\999octal`:      `/not\999octal`,
		`/end\040`:           "/end ",
		`/two\040\040spaces`: "/two  spaces",
	} {
		if got := UnescapeMountPath(in); got != want {
			t.Errorf("UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

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
