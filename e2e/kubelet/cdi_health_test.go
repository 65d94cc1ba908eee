package kubelet

import (
	"context"
	"encoding/json"
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
)

// cdiSpec is the part of a CDI spec file this test reads.
type cdiSpec struct {
	Version string      `json:"cdiVersion"`
	Kind    string      `json:"kind"`
	Devices []cdiDevice `json:"devices"`
}

type cdiDevice struct {
	Name           string `json:"name"`
	ContainerEdits struct {
		Mounts []struct {
			HostPath      string   `json:"hostPath"`
			ContainerPath string   `json:"containerPath"`
			Options       []string `json:"options"`
		} `json:"mounts"`
	} `json:"containerEdits"`
}

func readCDISpec(t *testing.T, path string) cdiSpec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s cdiSpec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

// With --cdi=on kubelet's real device manager passes the plugin's CDI
// device names on to the container (what the runtime then resolves from
// the spec files), and the spec names exactly the nodes the mounts mode
// hands over. And KEP-4680: a fault on a device a pod holds makes the
// manager signal that pod and report the device Unhealthy in the
// container's allocatedResourcesStatus; a reset makes it Healthy again.
// The specs outlive the plugin process.
func TestRealDeviceManagerCDIAndHealth(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	n := newNode(t, logger)
	freshNode(t)
	devDir := startSim(t, "--devices", "2", "--reset-duration", "20ms")
	specDir := filepath.Join(t.TempDir(), "cdi")
	n.startManager()
	t.Cleanup(n.stopManager)
	serve := startProc(t, "serve", "--dev-dir", devDir, "--monitor-slots", fmt.Sprint(slots), "--log-level", "debug",
		"--metrics-addr", "127.0.0.1:0", "--cdi=on", "--cdi-spec-dir", specDir)
	n.awaitCapacity(10*time.Second, 2, 2, 2*slots, 2*slots)

	opts, pod, err := n.admit("cdi-a", acRes, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Mounts) != 0 || len(opts.Devices) != 0 || len(opts.CDIDevices) != 1 {
		t.Fatalf("container options: mounts %v devices %v CDI %v; want one CDI device only", opts.Mounts, opts.Devices, opts.CDIDevices)
	}
	name := env(opts, "ACCEL_VISIBLE_DEVICES")
	id, ok := strings.CutPrefix(opts.CDIDevices[0].Name, acRes+"=")
	if !ok || (name != "ac0" && name != "ac1") {
		t.Fatalf("CDI device %q, ACCEL_VISIBLE_DEVICES=%q; want %s=ID and ac0 or ac1", opts.CDIDevices[0].Name, name, acRes)
	}
	spec := readCDISpec(t, filepath.Join(specDir, "accel.io-ac.json"))
	i := slices.IndexFunc(spec.Devices, func(d cdiDevice) bool { return d.Name == id })
	if spec.Kind != acRes || i < 0 {
		t.Fatalf("spec kind %q devices %+v: no %s", spec.Kind, spec.Devices, id)
	}
	var mounts []string
	for _, m := range spec.Devices[i].ContainerEdits.Mounts {
		mounts = append(mounts, fmt.Sprintf("%s -> %s %s", m.HostPath, m.ContainerPath, strings.Join(m.Options, ",")))
	}
	want := []string{
		fmt.Sprintf("%s/%s -> /dev/accel/%s bind,rw", devDir, name, name),
		fmt.Sprintf("%s/%s_monitor -> /dev/accel/%s_monitor bind,ro", devDir, name, name),
	}
	if !slices.Equal(mounts, want) {
		t.Errorf("spec mounts %q, want %q", mounts, want)
	}

	// Health in the pod's status, both ways.
	health := func() v1.ResourceHealthStatus {
		t.Helper()
		status := &v1.PodStatus{ContainerStatuses: []v1.ContainerStatus{{Name: "main"}}}
		n.Manager().UpdateAllocatedResourcesStatus(logger, pod, status)
		rs := status.ContainerStatuses[0].AllocatedResourcesStatus
		if len(rs) != 1 || string(rs[0].Name) != acRes || len(rs[0].Resources) != 1 || string(rs[0].Resources[0].ResourceID) != id {
			t.Fatalf("allocatedResourcesStatus %+v, want one %s entry for %s", rs, acRes, id)
		}
		return rs[0].Resources[0].Health
	}
	awaitUpdate := func(what string, start time.Time) time.Duration {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case u := <-n.Manager().Updates():
				if slices.Contains(u.PodUIDs, string(pod.UID)) {
					return time.Since(start)
				}
			case <-deadline:
				t.Fatalf("%s: the device manager did not signal pod %s within 5s", what, pod.UID)
			}
		}
	}
	if h := health(); h != v1.ResourceHealthStatusHealthy {
		t.Fatalf("before the fault: %s", h)
	}
	drain(n)
	ctl := func(cmd ...string) {
		t.Helper()
		if out, err := runPlugin(append([]string{"sim", "ctl", "--dir", devDir}, cmd...)...); err != nil {
			t.Fatalf("sim ctl %v: %v: %s", cmd, err, out)
		}
	}
	start := time.Now()
	ctl("fault", name, "malfunction")
	ctlTook := time.Since(start)
	took := awaitUpdate("fault", start)
	if h := health(); h != v1.ResourceHealthStatusUnhealthy {
		t.Fatalf("after the fault: %s, want Unhealthy", h)
	}
	t.Logf("fault on %s → pod signalled, allocatedResourcesStatus Unhealthy after %s (of which sim ctl %s)", name, took, ctlTook)
	start = time.Now()
	ctl("reset", name)
	took = awaitUpdate("reset", start)
	if h := health(); h != v1.ResourceHealthStatusHealthy {
		t.Fatalf("after the reset: %s, want Healthy", h)
	}
	t.Logf("reset of %s → pod signalled, allocatedResourcesStatus Healthy after %s (sim ctl and the 20ms reset included)", name, took)

	// The container options still name the CDI device, and the specs stay
	// when the plugin stops: kubelet restarts a container of a running pod
	// with the names it saved, without asking the plugin.
	if again, err := n.Manager().GetDeviceRunContainerOptions(klog.NewContext(context.Background(), logger), pod, &pod.Spec.Containers[0]); err != nil ||
		len(again.CDIDevices) != 1 || again.CDIDevices[0].Name != opts.CDIDevices[0].Name {
		t.Errorf("container options after the reset: %+v, %v", again, err)
	}
	serve.stop()
	for _, f := range []string{"accel.io-ac.json", "accel.io-ac-monitor.json"} {
		if _, err := os.Stat(filepath.Join(specDir, f)); err != nil {
			t.Errorf("%s after the plugin stopped: %v, want it kept", f, err)
		}
	}
}

// drain empties the manager's pod-update channel.
func drain(n *node) {
	for {
		select {
		case <-n.Manager().Updates():
		default:
			return
		}
	}
}
