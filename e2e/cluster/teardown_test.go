package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// TestMountPointsFromMountinfo: the mount points at or below a directory
// come out of mountinfo unescaped (\040 space, \011 tab, \012 newline,
// \134 backslash), deepest first, stacked mounts once each, and nothing
// outside the directory (not even a sibling sharing its name as a prefix).
func TestMountPointsFromMountinfo(t *testing.T) {
	const table = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:25 / /run/accel rw,relatime shared:5 - tmpfs tmpfs rw
31 30 0:26 / /run/accel/dev rw,nosuid - fuse.accel-sim accel-sim rw
32 30 0:27 / /run/accel/a\040b rw - tmpfs tmpfs rw
33 32 0:28 / /run/accel/a\040b/t\011n\012 rw - tmpfs tmpfs rw
34 30 0:29 / /run/accel/b\134s rw - tmpfs tmpfs rw
35 30 0:30 / /run/accel/end\040 rw - tmpfs tmpfs rw
36 31 0:26 / /run/accel/dev rw,nosuid - fuse.accel-sim accel-sim rw
37 22 0:31 / /run/accelerator rw - tmpfs tmpfs rw
`
	for dir, want := range map[string][]string{
		"/run/accel/":    {"/run/accel/a b/t\tn\n", "/run/accel/dev", "/run/accel/a b", "/run/accel/b\\s", "/run/accel/end ", "/run/accel/dev", "/run/accel"},
		"/run/accel/a b": {"/run/accel/a b/t\tn\n", "/run/accel/a b"},
		"/run/accel/dev": {"/run/accel/dev", "/run/accel/dev"},
		"/run/acc":       nil,
	} {
		mounts, err := mountinfo.GetMountsFromReader(strings.NewReader(table), mountinfo.PrefixFilter(filepath.Clean(dir)))
		if err != nil {
			t.Fatal(err)
		}
		if got := deepestFirst(mounts); !slices.Equal(got, want) {
			t.Errorf("mount points at or below %q = %q, want %q", dir, got, want)
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
