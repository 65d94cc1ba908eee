package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

const (
	acRes      = "accel.io/ac"
	monitorRes = "accel.io/ac-monitor"
	slots      = 8
)

// node is a Node that fails the test on errors.
type node struct {
	*Node
	t testing.TB
}

func newNode(t testing.TB, logger klog.Logger) *node {
	return &node{Node: &Node{Logger: logger, NUMANodes: 2}, t: t}
}

func (n *node) startManager() {
	n.t.Helper()
	if err := n.Start(); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) stopManager() {
	if err := n.Stop(); err != nil {
		n.t.Errorf("stop device manager: %v", err)
	}
}

// awaitCapacity waits until the manager reports the given capacity and
// allocatable for both resources (see pollCapacity) and fails the test if
// it does not within d.
func (n *node) awaitCapacity(d time.Duration, acCap, acAlloc, monCap, monAlloc int64) time.Duration {
	n.t.Helper()
	took, got, ok := n.pollCapacity(d, 5*time.Millisecond, acCap, acAlloc, monCap, monAlloc)
	if !ok {
		n.t.Fatalf("capacity/allocatable = %s, want ac %d/%d, ac-monitor %d/%d within %s", got, acCap, acAlloc, monCap, monAlloc, d)
	}
	return took
}

// pollCapacity polls the manager every tick, up to d, until both resources
// have the given capacity and allocatable. The manager has no change
// notification for capacity (kubelet polls it for the node status). It
// returns how long that took, the last figures seen, and whether they
// matched.
func (n *node) pollCapacity(d, every time.Duration, acCap, acAlloc, monCap, monAlloc int64) (time.Duration, string, bool) {
	start := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		c := n.Capacity()
		if c[acRes] == (Resources{acCap, acAlloc}) && c[monitorRes] == (Resources{monCap, monAlloc}) {
			return time.Since(start), "", true
		}
		if time.Since(start) > d {
			return time.Since(start), fmt.Sprintf("ac %d/%d, ac-monitor %d/%d",
				c[acRes].Capacity, c[acRes].Allocatable, c[monitorRes].Capacity, c[monitorRes].Allocatable), false
		}
		<-tick.C
	}
}

func (n *node) admit(name, res string, count int64) (*devicemanager.DeviceRunContainerOptions, *v1.Pod, error) {
	return n.Admit(name, res, count)
}

func (n *node) forget(pod *v1.Pod) { n.Forget(pod) }

func env(opts *devicemanager.DeviceRunContainerOptions, name string) string { return Env(opts, name) }

func mountsOf(opts *devicemanager.DeviceRunContainerOptions) []string {
	var out []string
	for _, m := range opts.Mounts {
		out = append(out, fmt.Sprintf("%s -> %s ro=%v", filepath.Base(m.HostPath), m.ContainerPath, m.ReadOnly))
	}
	slices.Sort(out)
	return out
}

// The whole story against the real device manager: registration of both
// resources, capacity, allocation with preferred allocation honoured,
// unhealthy devices leaving allocatable, and re-registration after the
// manager restarts (kubelet restart).
func TestRealDeviceManager(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	n := newNode(t, logger)
	freshNode(t)
	// ac0, ac2 on NUMA node 0; ac1, ac3 on NUMA node 1.
	devDir := startSim(t, "--devices", "4", "--numa-nodes", "2", "--reset-duration", "20ms")
	n.startManager()
	t.Cleanup(n.stopManager)
	serve := startProc(t, "serve", "--dev-dir", devDir, "--monitor-slots", fmt.Sprint(slots), "--log-level", "debug", "--metrics-addr", "127.0.0.1:0")

	took := n.awaitCapacity(10*time.Second, 4, 4, 4*slots, 4*slots)
	t.Logf("real device manager: both resources registered, capacity 4 and %d after %s", 4*slots, took)

	// Two pods asking for 2 devices each: GetPreferredAllocation keeps each
	// on one NUMA node (kubelet alone would pick any 2 of the free ones).
	numaPairs := map[string]bool{"ac0,ac2": true, "ac1,ac3": true}
	var got []string
	for _, name := range []string{"pair-a", "pair-b"} {
		opts, _, err := n.admit(name, acRes, 2)
		if err != nil {
			t.Fatalf("admit %s: %v", name, err)
		}
		visible := env(opts, "ACCEL_VISIBLE_DEVICES")
		if !numaPairs[visible] {
			t.Errorf("%s got %q, want both devices on one NUMA node (ac0,ac2 or ac1,ac3)", name, visible)
		}
		got = append(got, visible)
		devs := strings.Split(visible, ",")
		want := []string{
			fmt.Sprintf("%s -> /dev/accel/%s ro=false", devs[0], devs[0]),
			fmt.Sprintf("%s -> /dev/accel/%s ro=false", devs[1], devs[1]),
			fmt.Sprintf("%s_monitor -> /dev/accel/%s_monitor ro=true", devs[0], devs[0]),
			fmt.Sprintf("%s_monitor -> /dev/accel/%s_monitor ro=true", devs[1], devs[1]),
		}
		slices.Sort(want)
		if m := mountsOf(opts); !slices.Equal(m, want) {
			t.Errorf("%s mounts = %q, want %q", name, m, want)
		}
		for _, m := range opts.Mounts {
			if _, err := os.Stat(m.HostPath); err != nil {
				t.Errorf("mount source %s: %v", m.HostPath, err)
			}
		}
	}
	if got[0] == got[1] {
		t.Errorf("both pods got %s", got[0])
	}
	// Nothing is left: a fifth device is refused by kubelet itself.
	if _, _, err := n.admit("too-many", acRes, 1); err == nil {
		t.Errorf("admitting a 5th device succeeded")
	} else {
		t.Logf("5th device refused as expected: %v", err)
	}

	// Monitor pods asking for 4 slots get 4 distinct devices each time.
	for i := range 3 {
		opts, _, err := n.admit(fmt.Sprintf("mon-%d", i), monitorRes, 4)
		if err != nil {
			t.Fatalf("admit monitor pod: %v", err)
		}
		if v := env(opts, "ACCEL_MONITOR_DEVICES"); v != "ac0,ac1,ac2,ac3" {
			t.Errorf("monitor pod %d got %q, want slots spread over ac0,ac1,ac2,ac3", i, v)
		}
		if len(opts.Mounts) != 4 {
			t.Errorf("monitor pod %d has %d mounts, want 4 monitor nodes", i, len(opts.Mounts))
		}
	}
	// 3 monitor pods × 4 slots are in use; allocatable counts free + used
	// healthy units (kubelet subtracts pod requests itself).
	n.awaitCapacity(time.Second, 4, 4, 4*slots, 4*slots)

	// A fault takes the device (and its monitor slots) out of allocatable.
	ctl := func(cmd ...string) {
		t.Helper()
		out, err := runPlugin(append([]string{"sim", "ctl", "--dir", devDir}, cmd...)...)
		if err != nil {
			t.Fatalf("sim ctl %v: %v: %s", cmd, err, out)
		}
	}
	start := time.Now()
	ctl("fault", "ac3", "malfunction")
	n.awaitCapacity(2*time.Second, 4, 3, 4*slots, 3*slots)
	t.Logf("fault → allocatable dropped in %s", time.Since(start))
	serve.waitLog(time.Second, "device health changed", "healthy=false", "malfunction")
	start = time.Now()
	ctl("reset", "ac3")
	n.awaitCapacity(2*time.Second, 4, 4, 4*slots, 4*slots)
	t.Logf("reset → allocatable restored in %s", time.Since(start))

	// kubelet restart: the manager stops and a new one starts on a new
	// kubelet.sock, deleting our sockets. The plugin registers again, and
	// the new manager still knows the pods' devices from its checkpoint.
	pairA := got[0]
	n.stopManager()
	start = time.Now()
	n.startManager()
	// (Capacity alone proves nothing here: the new manager restores it from
	// its checkpoint. Wait for the plugin's second registration.)
	for _, res := range []string{acRes, monitorRes} {
		serve.waitLog(time.Second, "registered with kubelet", "resource="+res+" ", "registrations=2")
	}
	t.Logf("manager restarted → both resources re-registered in %s", time.Since(start))
	n.awaitCapacity(time.Second, 4, 4, 4*slots, 4*slots)
	if devs := n.Manager().GetDevices("uid-pair-a", "main")[acRes]; len(devs) != 2 {
		t.Errorf("after restart the manager lost pair-a's devices: %v", devs)
	}
	if opts, err := n.Manager().GetDeviceRunContainerOptions(klog.NewContext(context.Background(), logger),
		podNamed(n, "pair-a"), &podNamed(n, "pair-a").Spec.Containers[0]); err != nil || env(opts, "ACCEL_VISIBLE_DEVICES") != pairA {
		t.Errorf("after restart pair-a's container options = %v, %v; want %s", opts, err, pairA)
	}
	// The new endpoint allocates: free pair-b and admit again.
	n.forget(podNamed(n, "pair-b"))
	opts, _, err := n.admit("pair-c", acRes, 2)
	if err != nil {
		t.Fatalf("admit after restart: %v", err)
	}
	if v := env(opts, "ACCEL_VISIBLE_DEVICES"); v != got[1] {
		t.Errorf("pair-c got %q, want the freed pair %s", v, got[1])
	}

	// SIGTERM: the plugin removes its sockets and exits 0.
	serve.stop()
	entries, _ := os.ReadDir(pluginapi.DevicePluginPath)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "accel.io") {
			t.Errorf("socket %s left after the plugin stopped", e.Name())
		}
	}
	n.awaitCapacity(10*time.Second, 4, 0, 4*slots, 0)
}

// freshNode empties the (private) device-plugin directory, including the
// device manager's checkpoint, as on a node that never ran pods.
func freshNode(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(pluginapi.DevicePluginPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(pluginapi.DevicePluginPath, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func podNamed(n *node, name string) *v1.Pod {
	p, ok := n.Pod(name)
	if !ok {
		n.t.Fatalf("no pod %s", name)
	}
	return p
}
