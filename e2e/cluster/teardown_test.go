package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUnescapeMountTable(t *testing.T) {
	for in, want := range map[string]string{
		`/run/accel/dev`: "/run/accel/dev",
		`/a\040b`:        "/a b",
		`/t\011n\012`:    "/t\tn\n",
		`/b\134s`:        `/b\s`,
		`/short\04`:      `/short\04`,
		`/end\040`:       "/end ",
		`/not\999`:       `/not\999`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMountPointsEscaped: mountPoints finds mounts below dir whose names
// mountinfo escapes, deepest first, and nothing outside dir. It mounts
// tmpfs in a temporary directory (root only) and unmounts it.
func TestMountPointsEscaped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	base := t.TempDir()
	outer := filepath.Join(base, "a b")
	inner := filepath.Join(outer, "c\td")
	if err := os.Mkdir(outer, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", outer, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(outer, unix.MNT_DETACH) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(inner, unix.MNT_DETACH) })
	if got, want := mountPoints(base), []string{inner, outer}; !slices.Equal(got, want) {
		t.Errorf("mountPoints(%q) = %q, want %q", base, got, want)
	}
	if got := mountPoints(base + " b"); len(got) != 0 {
		t.Errorf("mountPoints(%q) = %q, want none", base+" b", got)
	}
	if err := unmountTree(outer); err != nil {
		t.Fatalf("unmountTree: %v", err)
	}
	if got := mountPoints(base); len(got) != 0 {
		t.Errorf("after unmountTree: %q still mounted", got)
	}
}
