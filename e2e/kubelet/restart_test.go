package kubelet

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// restarts per scenario in TestManagerRestartLatency.
const restarts = 20

// A kubelet restart, as the plugin sees it, against kubelet's real device
// manager: the old manager ends, a new one starts (its Start runs
// CleanupPluginDirectory, then listens on a new kubelet.sock). After each
// of 20 restarts per scenario, the plugin's resources must be registered
// again and their devices healthy in the new manager. The test measures
// how long after the new kubelet.sock was created (its birth time) that
// took, and logs median and max; its only deadline is a generous one. It
// also checks that the plugin registered exactly once per manager life and
// was never refused as "device plugin already connected" (a Register while
// kubelet holds the endpoint, which loses the resource).
//
// Scenarios:
//   - killed: the manager ends as a killed kubelet does (kubelet.sock stays
//     behind), then the new manager's own cleanup removes the sockets in
//     the directory's order.
//   - killed, our sockets first: the same, but the plugin's sockets are
//     removed first and the plugin has served them again before the stale
//     kubelet.sock goes (the order CleanupPluginDirectory takes on tmpfs
//     when the plugin's sockets are newer, or by hash order on ext4/xfs):
//     12137fa took this for a new socket with the same kubelet and waited
//     its 1 s hand-over grace.
//   - stopped: the manager's own Stop (kubelet.sock removed first).
func TestManagerRestartLatency(t *testing.T) {
	t.Run("tmpfs", func(t *testing.T) { restartLatency(t) })
	// Most nodes keep /var/lib/kubelet on ext4 or xfs, where a kubelet.sock
	// removed and created again at once gets the old inode number and birth
	// time: bind-mount a directory of the disk there.
	t.Run("disk", func(t *testing.T) {
		dir := t.TempDir()
		fs := fsName(t, dir)
		if fs == "tmpfs" {
			t.Skipf("%s is on tmpfs too; set TMPDIR to a disk", dir)
		}
		if err := unix.Mount(dir, pluginapi.DevicePluginPath, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind-mount %s on %s: %v", dir, pluginapi.DevicePluginPath, err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(pluginapi.DevicePluginPath, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", pluginapi.DevicePluginPath, err)
			}
		})
		t.Logf("device-plugin directory on %s (%s)", fs, dir)
		restartLatency(t)
	})
}

// fsName names the file system of dir.
func fsName(t testing.TB, dir string) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	}
	return fmt.Sprintf("file system %#x", st.Type)
}

func restartLatency(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	n := newNode(t, logger)
	freshNode(t)
	devDir := startSim(t, "--devices", "4", "--numa-nodes", "2")
	n.startManager()
	t.Cleanup(n.stopManager)
	serve := startProc(t, "serve", "--dev-dir", devDir, "--monitor-slots", fmt.Sprint(slots), "--log-level", "info", "--metrics-addr", "127.0.0.1:0")
	n.awaitCapacity(10*time.Second, 4, 4, 4*slots, 4*slots)
	for _, res := range []string{acRes, monitorRes} {
		serve.waitLog(5*time.Second, `msg="registered with kubelet`, "resource="+res+" ", "registrations=1 ")
	}

	type scenario struct {
		name string
		end  func()
	}
	kill := func() {
		if err := n.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	scenarios := []scenario{
		{"killed", kill},
		{"killed, our sockets first", func() {
			kill()
			removePluginSockets(t)
			awaitPluginSockets(t, 10*time.Second)
			if err := os.Remove(filepath.Join(pluginapi.DevicePluginPath, "kubelet.sock")); err != nil {
				t.Fatal(err)
			}
		}},
		{"stopped", n.stopManager},
	}
	total := 0
	var summary []string
	for _, sc := range scenarios {
		var lat []time.Duration
		missed := 0
		for range restarts {
			sc.end()
			n.startManager()
			born := kubeletSockBirth(t)
			total++
			if !n.capacityWithin(10*time.Second, 4, 4, 4*slots, 4*slots) {
				missed++
				t.Errorf("%s, restart %d: resources not registered with healthy devices within 10 s", sc.name, len(lat)+missed)
				continue
			}
			lat = append(lat, time.Since(born))
			// kubelet shows the devices before our Register call returns;
			// let it return before the next restart (restarts of a real
			// kubelet are seconds apart).
			for _, res := range []string{acRes, monitorRes} {
				serve.waitLog(5*time.Second, `msg="registered with kubelet`, "resource="+res+" ", fmt.Sprintf("registrations=%d ", total+1))
			}
		}
		slices.Sort(lat)
		line := fmt.Sprintf("%-26s %d of %d within 10 s", sc.name+":", len(lat), restarts)
		if len(lat) > 0 {
			line += fmt.Sprintf(": median %6.1f ms, max %6.1f ms", ms(lat[len(lat)/2]), ms(lat[len(lat)-1]))
		}
		summary = append(summary, line)
		t.Logf("new kubelet.sock → registered, devices healthy in the manager: %s", line)
		if missed > 0 {
			break // the rest would measure the aftermath
		}
	}
	for _, line := range summary {
		fmt.Fprintf(os.Stderr, "restart latency (%s): %s\n", t.Name(), line)
	}

	// One accepted registration per resource and manager life, and no
	// Register refused as a duplicate.
	log := serve.log()
	if strings.Contains(log, "already connected") {
		t.Errorf("kubelet refused a duplicate registration:\n%s", grepLines(log, "already connected"))
	}
	for _, res := range []string{acRes, monitorRes} {
		calls, ok := 0, 0
		for _, line := range strings.Split(log, "\n") {
			if !strings.Contains(line, "resource="+res+" ") {
				continue
			}
			switch {
			case strings.Contains(line, `msg="registering with kubelet"`):
				calls++
			case strings.Contains(line, `msg="registered with kubelet`):
				ok++
			}
		}
		// A call may find the new kubelet.sock bound but not yet listening
		// (refused, nothing delivered) and is then retried at once.
		if ok != total+1 {
			t.Errorf("%s: %d registrations over %d manager lives, want one each:\n%s", res, ok, total+1, grepLines(log, "regist"))
		}
		t.Logf("%s: %d Register calls for %d manager lives (%d refused before kubelet listened)", res, calls, total+1, calls-ok)
	}
}

// capacityWithin reports whether the capacity was reached within d,
// polling every millisecond (the latency it bounds is measured in ms).
func (n *node) capacityWithin(d time.Duration, acCap, acAlloc, monCap, monAlloc int64) bool {
	_, _, ok := n.pollCapacity(d, time.Millisecond, acCap, acAlloc, monCap, monAlloc)
	return ok
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// kubeletSockBirth is when the running manager's kubelet.sock was created.
func kubeletSockBirth(t testing.TB) time.Time {
	t.Helper()
	var st unix.Statx_t
	path := filepath.Join(pluginapi.DevicePluginPath, "kubelet.sock")
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_BTIME, &st); err != nil {
		t.Fatalf("statx %s: %v", path, err)
	}
	if st.Mask&unix.STATX_BTIME == 0 {
		t.Fatalf("%s has no birth time on this file system", path)
	}
	return time.Unix(st.Btime.Sec, int64(st.Btime.Nsec))
}

// pluginSockets are the plugin's sockets in the device-plugin directory.
var pluginSockets = []string{"accel.io-ac.sock", "accel.io-ac-monitor.sock"}

func removePluginSockets(t testing.TB) {
	t.Helper()
	for _, name := range pluginSockets {
		if err := os.Remove(filepath.Join(pluginapi.DevicePluginPath, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// awaitPluginSockets waits (inotify) until the plugin serves its sockets.
func awaitPluginSockets(t testing.TB, d time.Duration) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, pluginapi.DevicePluginPath, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(d)
	buf := make([]byte, 4096)
	for _, name := range pluginSockets {
		for {
			if fi, err := os.Lstat(filepath.Join(pluginapi.DevicePluginPath, name)); err == nil && fi.Mode()&os.ModeSocket != 0 {
				break
			}
			left := time.Until(deadline)
			if left <= 0 {
				t.Fatalf("the plugin did not serve %s again within %s", name, d)
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
				t.Fatal(err)
			}
			_, _ = unix.Read(fd, buf) // drain; the Lstat above decides
		}
	}
}

func grepLines(log, s string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
