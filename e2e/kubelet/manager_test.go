package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cadvisorapi "github.com/google/cadvisor/lib/model"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

const (
	acRes      = "accel.io/ac"
	monitorRes = "accel.io/ac-monitor"
	slots      = 8
)

// node is a kubelet's device manager with the pods it considers active.
type node struct {
	t      testing.TB
	logger klog.Logger
	mgr    *devicemanager.ManagerImpl

	mu   sync.Mutex
	pods []*v1.Pod
}

type readySources struct{}

func (readySources) AddSource(string) {}
func (readySources) AllReady() bool   { return true }

// startManager starts a device manager as kubelet does, on two NUMA nodes.
// It serves kubelet.sock in the (private) device-plugin directory.
func (n *node) startManager() {
	n.t.Helper()
	topo := []cadvisorapi.Node{{Id: 0}, {Id: 1}}
	mgr, err := devicemanager.NewManagerImpl(n.logger, topo, topologymanager.NewFakeManager(n.logger))
	if err != nil {
		n.t.Fatalf("new device manager: %v", err)
	}
	active := func() []*v1.Pod {
		n.mu.Lock()
		defer n.mu.Unlock()
		return slices.Clone(n.pods)
	}
	if err := mgr.Start(n.logger, active, readySources{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		n.t.Fatalf("start device manager: %v", err)
	}
	n.mgr = mgr
}

func (n *node) stopManager() {
	if n.mgr != nil {
		if err := n.mgr.Stop(n.logger); err != nil {
			n.t.Errorf("stop device manager: %v", err)
		}
		n.mgr = nil
	}
}

// awaitCapacity waits until the manager reports the given capacity and
// allocatable for both resources. The manager has no change notification
// for capacity (kubelet polls it for the node status), so this polls.
func (n *node) awaitCapacity(d time.Duration, acCap, acAlloc, monCap, monAlloc int64) time.Duration {
	n.t.Helper()
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var got string
	want := fmt.Sprintf("ac %d/%d, ac-monitor %d/%d", acCap, acAlloc, monCap, monAlloc)
	for {
		capacity, alloc, _ := n.mgr.GetCapacity(n.logger)
		q := func(l v1.ResourceList, r string) int64 { v := l[v1.ResourceName(r)]; return v.Value() }
		got = fmt.Sprintf("ac %d/%d, ac-monitor %d/%d", q(capacity, acRes), q(alloc, acRes), q(capacity, monitorRes), q(alloc, monitorRes))
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > d {
			n.t.Fatalf("capacity/allocatable = %s, want %s within %s", got, want, d)
		}
		<-tick.C
	}
}

// admit allocates a pod's devices like kubelet admitting it, and returns
// what its container is given.
func (n *node) admit(name string, res string, count int64) (*devicemanager.DeviceRunContainerOptions, *v1.Pod, error) {
	qty := v1.ResourceList{v1.ResourceName(res): *resource.NewQuantity(count, resource.DecimalSI)}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "main", Resources: v1.ResourceRequirements{Limits: qty, Requests: qty},
		}}},
	}
	ctx := klog.NewContext(context.Background(), n.logger)
	n.mu.Lock()
	n.pods = append(n.pods, pod)
	n.mu.Unlock()
	if err := n.mgr.Allocate(ctx, pod, &pod.Spec.Containers[0], lifecycle.AddOperation); err != nil {
		n.forget(pod)
		return nil, nil, err
	}
	opts, err := n.mgr.GetDeviceRunContainerOptions(ctx, pod, &pod.Spec.Containers[0])
	return opts, pod, err
}

func (n *node) forget(pod *v1.Pod) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pods = slices.DeleteFunc(n.pods, func(p *v1.Pod) bool { return p == pod })
}

func env(opts *devicemanager.DeviceRunContainerOptions, name string) string {
	for _, e := range opts.Envs {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

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
	n := &node{t: t, logger: logger}
	freshNode(t)
	// ac0, ac2 on NUMA node 0; ac1, ac3 on NUMA node 1.
	devDir := startSim(t, "--devices", "4", "--numa-nodes", "2", "--reset-duration", "20ms")
	n.startManager()
	t.Cleanup(n.stopManager)
	serve := startProc(t, "serve", "--dev-dir", devDir, "--monitor-slots", fmt.Sprint(slots), "--log-level", "debug")

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
	if devs := n.mgr.GetDevices("uid-pair-a", "main")[acRes]; len(devs) != 2 {
		t.Errorf("after restart the manager lost pair-a's devices: %v", devs)
	}
	if opts, err := n.mgr.GetDeviceRunContainerOptions(klog.NewContext(context.Background(), logger),
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
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.Name == name {
			return p
		}
	}
	n.t.Fatalf("no pod %s", name)
	return nil
}
