package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

// This file holds the device story the suite runs twice, once per way the
// plugin hands devices to containers: bind mounts in the Allocate answer
// (cdi.enabled=false) and CDI device names resolved by the runtime from the
// plugin's spec files (cdi.enabled=true). A pod must not tell them apart.

// mode is one way of handing devices over.
type mode struct {
	name string
	cdi  bool
	dra  bool // the DRA driver (api=dra) instead of the device-plugin API
}

var modes = []mode{{name: "mounts"}, {name: "cdi", cdi: true}}

// story is what one run of the device story leaves for the rest of the
// suite: the compute pod's device, its ID and holder, and what the pod saw.
type story struct {
	dev    string // the compute pod's device name (acN)
	id     string // its device ID (kubelet's resourceID, the CDI device name's suffix)
	holder int    // the host pid holding its compute node
	view   string // what the compute pod saw, the device name replaced by acN
}

// with is e for a subtest: failures go to t.
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// computeScript opens the pod's device and prints what the container was
// given, the device name replaced by acN (so two runs compare): the ACCEL_*
// env, the nodes under /dev/accel (mode, owner, name), their mounts' options
// (rw, ro) and what writing the monitor node does, then the monitor's text.
const computeScript = `set -e
d=/dev/accel/$ACCEL_VISIBLE_DEVICES
exec 3<>"$d"
echo "opened $d"
{
  env | grep '^ACCEL_' | sort
  stat -c '%A %u:%g %n' /dev/accel/*
  awk '$5 ~ "^/dev/accel/" { split($6, o, ","); print $5, o[1] }' /proc/self/mountinfo | sort
  (echo x > "${d}_monitor") 2>&1 | sed 's/^[^:]*: //' || true
} | sed "s/$ACCEL_VISIBLE_DEVICES/acN/g; s/^/view: /"
cat "${d}_monitor"
exec sleep 3600`

// deviceStory is the story of one mode, on the chart installed in that
// mode: a pod gets a device (its holder, its view, how the runtime got it),
// a non-root pod opens its own, a greedy pod stays Pending, monitor pods
// share a device whose compute node a second client cannot open, the plugin
// container cannot write the simulator's directory, and a fault on the held
// device reaches the pod's status, a reset clears it. The compute pod stays
// running (the restart steps use it); the other pods are gone at the end.
func (e *env) deviceStory(m mode, step func(string)) story {
	e.t.Helper()
	step("a pod requesting 1 device runs and holds /dev/accel/acK")
	e.createPod("compute", computeScript, requests(acRes, 1))
	e.awaitRunning("compute", "operational")
	var s story
	fmt.Sscanf(e.logs("compute"), "opened /dev/accel/%s", &s.dev)
	if s.dev == "" {
		e.t.Fatalf("compute pod log: %s", e.logs("compute"))
	}
	s.view = viewOf(e.logs("compute"))
	s.holder = e.holderIn(s.dev, "compute")
	e.t.Logf("%s is held by pid %d of pod compute; the pod sees:\n%s", s.dev, s.holder, s.view)
	s.id = e.resourceID("compute", acRes)

	step("the container got its device through " + map[bool]string{false: "bind mounts", true: "CDI"}[m.cdi])
	e.specFiles(m.cdi, s.id)
	e.containerDevices(m, "compute", s)

	step("a non-root pod (uid 1000, no capabilities) opens its compute node read-write and reads its monitor node")
	e.nonRootWorkload()

	step("a pod asking for more than is free stays Pending: Insufficient accel.io/ac")
	e.createPod("too-many", "sleep 3600", requests(acRes, devices))
	e.awaitSchedulingFailure("too-many", "Insufficient accel.io/ac")
	e.deletePod("too-many")

	step("monitor pods share the device; a debug pod opening its compute node gets EBUSY")
	for _, name := range []string{"monitor-a", "monitor-b"} {
		e.createPod(name, `set -e
n=3; IFS=,
for d in $ACCEL_MONITOR_DEVICES; do eval "exec $n<\"/dev/accel/${d}_monitor\""; n=$((n+1)); done
echo "watching $ACCEL_MONITOR_DEVICES"
exec sleep 3600`, requests(monRes, devices))
	}
	for _, name := range []string{"monitor-a", "monitor-b"} {
		e.awaitRunning(name, "watching")
		if l := e.logs(name); !strings.Contains(l, s.dev) {
			e.t.Errorf("%s (4 slots, spread) did not get %s: %s", name, s.dev, l)
		}
	}
	e.secondOpenBusy(s.dev)
	if i := e.devInfo(s.dev); i.MonitorClients < 3 || !i.ComputeInUse { // two pods + the query itself
		e.t.Errorf("%s while held with two monitor pods: %+v", s.dev, i)
	}

	step("the plugin's /metrics names the holders, from kubelet's pod-resources API: accel_device_holder")
	e.awaitHolders(s.id, "compute/compute", "monitor-a/monitor", "monitor-b/monitor")
	e.deletePod("debug-open")

	step("the plugin container cannot write the simulator's directory: EROFS (recursively read-only)")
	e.pluginWriteFails(s.dev)

	step("fault on the held device: allocatable drops and the pod's allocatedResourcesStatus turns Unhealthy; reset: both recover")
	e.healthReachesPod("compute", s.dev, s.id)

	for _, name := range []string{"monitor-a", "monitor-b"} {
		e.deletePod(name)
	}
	return s
}

// secondOpenBusy: a debug pod opening dev's compute node through the host
// path, while a pod holds it, gets EBUSY. It leaves the pod debug-open.
func (e *env) secondOpenBusy(dev string) {
	e.t.Helper()
	// A failed redirection ends a shell: try in a subshell.
	e.createPod("debug-open", fmt.Sprintf(`(exec 3<>%s/%s) 2>&1 && echo OPENED || echo FAILED`, e.devDir, dev), e.hostAccess(true), runOnce)
	e.awaitPhase("debug-open", corev1.PodSucceeded, 2*time.Minute)
	if l := e.logs("debug-open"); !strings.Contains(l, "Device or resource busy") || !strings.Contains(l, "FAILED") {
		e.t.Errorf("a second client opening %s through the host path: %q, want EBUSY", dev, l)
	}
}

// viewOf is the compute pod's "view: " lines.
func viewOf(log string) string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if v, ok := strings.CutPrefix(l, "view: "); ok {
			lines = append(lines, v)
		}
	}
	return strings.Join(lines, "\n")
}

// resourceID is the device ID kubelet reports for the pod's one device of
// res (its allocatedResourcesStatus entry), Healthy.
func (e *env) resourceID(pod string, res corev1.ResourceName) string {
	e.t.Helper()
	var id string
	e.eventually(30*time.Second, "pod "+pod+": one Healthy "+string(res)+" in allocatedResourcesStatus", func() (bool, string) {
		p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		h := healthOf(p, res)
		if len(h) != 1 {
			return false, fmt.Sprint(allocatedStatus(p))
		}
		for k, v := range h {
			id = k
			return v == corev1.ResourceHealthStatusHealthy, fmt.Sprint(h)
		}
		return false, ""
	})
	return id
}

// healthOf maps the device IDs of res in the pod's first container's
// allocatedResourcesStatus to their health.
func healthOf(p *corev1.Pod, res corev1.ResourceName) map[string]corev1.ResourceHealthStatus {
	out := map[string]corev1.ResourceHealthStatus{}
	c := containerStatus(p)
	if c == nil {
		return out
	}
	for _, rs := range c.AllocatedResourcesStatus {
		if rs.Name != res {
			continue
		}
		for _, r := range rs.Resources {
			out[string(r.ResourceID)] = r.Health
		}
	}
	return out
}

func allocatedStatus(p *corev1.Pod) any {
	if c := containerStatus(p); c != nil {
		return c.AllocatedResourcesStatus
	}
	return "no container status"
}

// awaitHealth watches the pod until its entry for id (a device of res) has
// the given health and returns how long that took from since.
func (e *env) awaitHealth(pod string, res corev1.ResourceName, id string, want corev1.ResourceHealthStatus, since time.Time, d time.Duration) time.Duration {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	last := "no pod seen"
	check := func(p *corev1.Pod) bool {
		last = fmt.Sprint(allocatedStatus(p))
		return healthOf(p, res)[id] == want
	}
	p, err := e.cs.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get pod %s: %v", pod, err)
	}
	if check(p) {
		return time.Since(since)
	}
	w, err := e.cs.CoreV1().Pods(namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", pod).String(), ResourceVersion: p.ResourceVersion})
	if err != nil {
		e.t.Fatalf("watch pod %s: %v", pod, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			break
		}
		if p, ok := ev.Object.(*corev1.Pod); ok && check(p) {
			return time.Since(since)
		}
	}
	e.t.Fatalf("pod %s: %s %s of %s not within %s (last: %s)", pod, res, id, want, d, last)
	return 0
}

// healthReachesPod: a fault on dev, which the pod holds, makes its
// allocatedResourcesStatus entry for id Unhealthy and takes the device
// (and its monitor slots) out of allocatable; a reset makes it Healthy and
// allocatable again.
func (e *env) healthReachesPod(pod, dev, id string) {
	e.t.Helper()
	const within = 30 * time.Second
	t0 := time.Now()
	e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "fault", dev, "malfunction")
	ctl := time.Since(t0)
	unhealthy := e.awaitHealth(pod, acRes, id, corev1.ResourceHealthStatusUnhealthy, t0, within)
	e.awaitAllocatable(within, devices, devices-1, devices*slots, (devices-1)*slots)
	allocDown := time.Since(t0)
	t1 := time.Now()
	e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "reset", dev)
	healthy := e.awaitHealth(pod, acRes, id, corev1.ResourceHealthStatusHealthy, t1, within)
	e.awaitAllocatable(within, devices, devices, devices*slots, devices*slots)
	allocUp := time.Since(t1)
	e.t.Logf("fault on %s (%s): pod %s Unhealthy after %.2fs (sim ctl exec %.2fs), allocatable down after %.2fs; reset: Healthy after %.2fs, allocatable back after %.2fs",
		dev, id, pod, unhealthy.Seconds(), ctl.Seconds(), allocDown.Seconds(), healthy.Seconds(), allocUp.Seconds())
	if i := e.devInfo(dev); i.Status != "operational" || !i.ComputeInUse {
		e.t.Errorf("%s after the reset: %+v, want operational and still held", dev, i)
	}
}

// pluginWriteFails: the plugin container's view of the simulator's
// directory is recursively read-only (the chart is installed with
// plugin.recursiveReadOnly=Enabled): a control write fails with EROFS in
// the kernel, before the simulator could refuse it (EPERM); the device is
// unchanged.
func (e *env) pluginWriteFails(dev string) {
	e.t.Helper()
	before := e.devInfo(dev)
	plugins := e.podsByComponent("plugin")
	if len(plugins) != 1 {
		e.t.Fatalf("%d plugin pods", len(plugins))
	}
	out, err := e.execIn(namespace, plugins[0].Name, "plugin", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "fault", dev, "malfunction")
	if err == nil || !strings.Contains(strings.ToLower(out), "read-only file system") {
		e.t.Errorf("sim ctl from the plugin container: err %v, output %q; want EROFS", err, out)
	}
	if after := e.devInfo(dev); after.Status != before.Status {
		e.t.Errorf("%s changed from %q to %q after the plugin container's refused write", dev, before.Status, after.Status)
	}
}

// specFiles checks the plugin's CDI spec files on the host (through
// host-tool): in CDI mode both exist and the compute spec names id; in
// mounts mode neither exists.
func (e *env) specFiles(cdi bool, id string) {
	e.t.Helper()
	out, err := e.exec("host-tool", "sh", "-c", "cd "+e.cdiSpecDir+" && for f in accel.io-ac.json accel.io-ac-monitor.json; do [ -f $f ] && echo \"have $f\"; done; cat accel.io-ac.json 2>/dev/null; true")
	if err != nil {
		e.t.Fatalf("list %s on the host: %v: %s", e.cdiSpecDir, err, out)
	}
	have := strings.Contains(out, "have accel.io-ac.json") && strings.Contains(out, "have accel.io-ac-monitor.json")
	switch {
	case cdi && (!have || !strings.Contains(out, `"`+id+`"`)):
		e.t.Errorf("CDI mode: %s on the host: %q; want both spec files, the compute one naming %s", e.cdiSpecDir, out, id)
	case !cdi && strings.Contains(out, "have "):
		e.t.Errorf("mounts mode: %s on the host holds our specs: %q", e.cdiSpecDir, out)
	}
}

// criContainer is the part of `ctr containers info` this suite reads: the
// OCI spec's mounts, and the CRI request kubelet sent (containerd keeps it
// in the container's CRI metadata extension).
type criContainer struct {
	Spec struct {
		Mounts []struct {
			Destination string   `json:"destination"`
			Source      string   `json:"source"`
			Options     []string `json:"options"`
		} `json:"mounts"`
	} `json:"Spec"`
	Extensions map[string]struct {
		Value []byte `json:"value"` // JSON
	} `json:"Extensions"`
}

type criMetadata struct {
	Metadata struct {
		Config struct {
			CDIDevices []struct {
				Name string `json:"name"`
			} `json:"CDI_devices"`
			Mounts []struct {
				ContainerPath string `json:"container_path"`
				HostPath      string `json:"host_path"`
			} `json:"mounts"`
		} `json:"Config"`
	} `json:"Metadata"`
}

// bindMode renders OCI mount options as "bind rw" or "bind ro" (or what
// else they are): whether the mount is a bind mount, and writable.
func bindMode(opts []string) string {
	kind, rw := "not-bind", "rw?"
	for _, o := range opts {
		switch o {
		case "bind", "rbind":
			kind = "bind"
		case "rw", "ro":
			rw = o
		}
	}
	return kind + " " + rw
}

// containerDevices checks how the runtime got the pod's device, from the
// container's record in containerd (ACCEL_E2E_CTR): in CDI mode kubelet's
// request names the CDI device accel.io/ac=ID and no /dev/accel mount; in
// mounts mode it has the mounts and no CDI device. Either way the OCI spec
// binds devDir/acN read-write and its monitor read-only at /dev/accel.
func (e *env) containerDevices(m mode, pod string, s story) {
	e.t.Helper()
	if len(e.ctr) == 0 {
		e.t.Log("ACCEL_E2E_CTR not set: not reading the container's record in containerd")
		return
	}
	p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get pod %s: %v", pod, err)
	}
	c := containerStatus(p)
	if c == nil {
		e.t.Fatalf("pod %s: no container status", pod)
	}
	id, ok := strings.CutPrefix(c.ContainerID, "containerd://")
	if !ok {
		e.t.Fatalf("pod %s: container ID %q, want containerd://ID", pod, c.ContainerID)
	}
	args := append(e.ctr[1:], "containers", "info", id)
	out, err := exec.Command(e.ctr[0], args...).Output()
	if err != nil {
		e.t.Fatalf("%s %s: %v", e.ctr[0], strings.Join(args, " "), err)
	}
	var info criContainer
	if err := json.Unmarshal(out, &info); err != nil {
		e.t.Fatalf("container info of %s: %v", id, err)
	}
	var md criMetadata
	if err := json.Unmarshal(info.Extensions["io.cri-containerd.container.metadata"].Value, &md); err != nil {
		e.t.Fatalf("CRI metadata of %s: %v", id, err)
	}
	var cdiNames, criMounts, ociMounts []string
	for _, d := range md.Metadata.Config.CDIDevices {
		cdiNames = append(cdiNames, d.Name)
	}
	for _, mt := range md.Metadata.Config.Mounts {
		if strings.HasPrefix(mt.ContainerPath, "/dev/accel/") {
			criMounts = append(criMounts, mt.HostPath+" -> "+mt.ContainerPath)
		}
	}
	for _, mt := range info.Spec.Mounts {
		if strings.HasPrefix(mt.Destination, "/dev/accel/") {
			ociMounts = append(ociMounts, fmt.Sprintf("%s -> %s %s", mt.Source, mt.Destination, bindMode(mt.Options)))
		}
	}
	slices.Sort(ociMounts)
	// CRI mounts arrive as rbind,rprivate; CDI's as bind (what the spec says).
	want := []string{
		fmt.Sprintf("%s/%s -> /dev/accel/%s bind rw", e.devDir, s.dev, s.dev),
		fmt.Sprintf("%s/%s_monitor -> /dev/accel/%s_monitor bind ro", e.devDir, s.dev, s.dev),
	}
	if !slices.Equal(ociMounts, want) {
		e.t.Errorf("%s: the container's OCI spec mounts %q at /dev/accel, want %q", m.name, ociMounts, want)
	}
	if m.cdi {
		if !slices.Equal(cdiNames, []string{string(acRes) + "=" + s.id}) || len(criMounts) != 0 {
			e.t.Errorf("CDI mode: kubelet asked for CDI devices %q and mounts %q; want only %s=%s", cdiNames, criMounts, acRes, s.id)
		}
	} else if len(cdiNames) != 0 || len(criMounts) != 2 {
		e.t.Errorf("mounts mode: kubelet asked for CDI devices %q and mounts %q; want the two mounts only", cdiNames, criMounts)
	}
	e.t.Logf("%s: kubelet's request: CDI devices %q, /dev/accel mounts %q; OCI spec: %q", m.name, cdiNames, criMounts, ociMounts)
}

// awaitHolders scrapes the plugin's /metrics through the API server's pod
// proxy until accel_device_holder of device id names exactly the given
// pod/use pairs (the test namespace's pods).
func (e *env) awaitHolders(id string, want ...string) {
	e.t.Helper()
	slices.Sort(want)
	e.eventually(30*time.Second, "accel_device_holder of "+id, func() (bool, string) {
		plug := e.podsByComponent("plugin")
		if len(plug) != 1 {
			return false, fmt.Sprintf("%d plugin pods", len(plug))
		}
		raw, err := e.cs.CoreV1().RESTClient().Get().Namespace(namespace).Resource("pods").
			Name(plug[0].Name + ":9490").SubResource("proxy").Suffix("metrics").DoRaw(context.Background())
		if err != nil {
			return false, err.Error()
		}
		got := holdersIn(string(raw), id)
		return slices.Equal(got, want), fmt.Sprintf("holders %v, want %v", got, want)
	})
}

// holdersIn is the sorted pod/use pairs accel_device_holder names for id
// in a /metrics page.
func holdersIn(metrics, id string) []string {
	var got []string
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, "accel_device_holder{") || !strings.Contains(line, `id="`+id+`"`) {
			continue
		}
		label := func(k string) string {
			_, v, _ := strings.Cut(line, k+`="`)
			v, _, _ = strings.Cut(v, `"`)
			return v
		}
		got = append(got, label("pod")+"/"+label("use"))
	}
	slices.Sort(got)
	return got
}
