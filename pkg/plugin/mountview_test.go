package plugin

import (
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// parseMountinfo parses fixture text with the same parser ReadDirView uses.
func parseMountinfo(t *testing.T, text string) []*mountinfo.Info {
	t.Helper()
	mounts, err := mountinfo.GetMountsFromReader(strings.NewReader(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	return mounts
}

func TestDirView(t *testing.T) {
	const base = "1 0 0:30 / / rw,relatime - overlay overlay rw\n" +
		"2 1 0:5 / /proc rw - proc proc rw\n"
	for _, tc := range []struct {
		name, mountinfo, dir string
		point, prop          string
		receives             bool
	}{
		{"recursiveReadOnly (propagation None): private bind, private FUSE below", base +
			"3 1 254:0 /run/accel /run/accel ro,relatime - ext4 /dev/vda rw\n" +
			"4 3 0:50 / /run/accel/dev ro,nosuid,nodev,relatime - fuse.accel-sim accel-sim rw,user_id=0,group_id=0,allow_other\n",
			"/run/accel/dev", "/run/accel", "", false},
		{"HostToContainer: slave bind and FUSE", base +
			"3 1 254:0 /run/accel /run/accel ro,relatime master:5 - ext4 /dev/vda rw\n" +
			"4 3 0:50 / /run/accel/dev ro,relatime master:9 - fuse.accel-sim accel-sim rw\n",
			"/run/accel/dev", "/run/accel", "master:5", true},
		{"Bidirectional", base + "3 1 254:0 /run/accel /run/accel rw shared:3 master:1 - ext4 /dev/vda rw\n",
			"/run/accel/dev", "/run/accel", "shared:3 master:1", true},
		{"dead FUSE mount still listed; the volume is the mount itself", base +
			"3 1 254:0 /run/accel/dev /run/accel/dev ro - ext4 /dev/vda rw\n" +
			"4 3 0:50 / /run/accel/dev ro - fuse.accel-sim accel-sim rw\n",
			"/run/accel/dev", "/run/accel/dev", "", false},
		{"only the root mount holds it", base, "/var/run/accel/dev", "/", "", false},
		{"escaped space in the mount point", base + "3 1 254:0 /x /run/my\\040accel rw master:2 - ext4 /dev/vda rw\n",
			"/run/my accel/dev", "/run/my accel", "master:2", true},
		{"a prefix that is not a parent", base + "3 1 254:0 /x /run/acc rw master:2 - ext4 /dev/vda rw\n",
			"/run/accel/dev", "/", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := dirView(parseMountinfo(t, tc.mountinfo), tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			if v.MountPoint != tc.point || v.Propagation != tc.prop || v.ReceivesMounts() != tc.receives {
				t.Errorf("view = %+v (receives %v); want mount %s, propagation %q, receives %v", v, v.ReceivesMounts(), tc.point, tc.prop, tc.receives)
			}
		})
	}
	if _, err := ReadDirView(t.TempDir()); err != nil {
		t.Errorf("ReadDirView on this machine: %v", err)
	}
}
