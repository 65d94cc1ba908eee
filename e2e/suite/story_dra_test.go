package suite

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
)

// This file holds the DRA story: the chart installed with api=dra, the
// same devices handed out through ResourceClaims instead of extended
// resources, and the same view from inside a pod.

const (
	draDriver    = "accel.io"
	computeClass = "ac.accel.io"
	monitorClass = "ac-monitor.accel.io"
	taintKey     = "accel.io/unhealthy"
	adminLabel   = "resource.kubernetes.io/admin-access"
)

// devicePluginView is what TestEndToEnd's compute pod saw under the
// device-plugin API (empty when that test did not run first): the DRA
// story's compute pod must see the same.
var devicePluginView string

// TestDRA is the DRA user story, in order; each step depends on the last.
func TestDRA(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	step := func(name string) { t.Logf("%6.1fs  %s", time.Since(start).Seconds(), name) }
	m := mode{name: "dra", dra: true}
	pods := []string{"compute", "extended", "monitor-a", "monitor-b", "exporter", "too-many", "numa", "avoid", "after-restart", "during-roll",
		"debug-open", "accel-tool", "host-tool"}
	templates := []string{"one", "all-monitors", "five", "numa-pair", "avoid", "monitor-of"}
	t.Cleanup(func() {
		for _, name := range pods {
			e.deletePodIn(namespace, name)
		}
		for _, name := range templates {
			_ = e.cs.ResourceV1().ResourceClaimTemplates(namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
		e.runErr(e.helm, "uninstall", release, "--namespace", namespace, "--wait")
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{"plugin", "sim"} {
				t.Logf("--- %s pods:\n%s", p, e.podLogsByComponent(p))
			}
			t.Logf("--- events in %s (the last %d):\n%s", namespace, maxDumpedEvents, e.namespaceEvents())
		}
	})

	step("helm install api=dra: simulator with 4 devices on 2 NUMA nodes, the DRA driver, DeviceClasses")
	e.helmInstall(m)
	e.awaitChartPods(m)
	e.labelNamespace(adminLabel, ptr.To("true")) // admin-access claims are allowed only in such namespaces
	t.Cleanup(func() { e.labelNamespace(adminLabel, nil) })
	e.createPod("accel-tool", "", withImage(e.image, "/accel-plugin", "events", "--dir", e.devDir), e.hostAccess(true))
	e.createPod("host-tool", "sleep 3600", e.hostAccess(true), e.cdiAccess, hostDir("dra-plugins", "/var/lib/kubelet/plugins"),
		hostDir("dra-registry", "/var/lib/kubelet/plugins_registry"))
	e.awaitPhase("accel-tool", corev1.PodRunning, 2*time.Minute)
	e.awaitPhase("host-tool", corev1.PodRunning, 2*time.Minute)

	step("the node's ResourceSlices list 4 compute and 4 monitor devices with their attributes; no extended resources")
	e.slicesListDevices()
	for _, name := range []string{computeClass, monitorClass} {
		if _, err := e.cs.ResourceV1().DeviceClasses().Get(context.Background(), name, metav1.GetOptions{}); err != nil {
			t.Fatalf("DeviceClass %s: %v", name, err)
		}
	}
	// Kubelet keeps a device plugin's capacity on the node for a while after
	// it went (TestEndToEnd's), but nothing is allocatable through it.
	if _, a, _ := e.quantities(acRes); a > 0 {
		t.Errorf("node allocatable %s = %d under api=dra, want none (one API per node)", acRes, a)
	}

	step("a pod with a ResourceClaimTemplate gets /dev/accel/acK, holds it, sees what the device plugin's pod saw")
	e.claimTemplate("one", resourcev1.ExactDeviceRequest{DeviceClassName: computeClass})
	e.createPod("compute", computeScript, withClaim("one"))
	e.awaitRunning("compute", "operational")
	var dev string
	fmt.Sscanf(e.logs("compute"), "opened /dev/accel/%s", &dev)
	if dev == "" {
		t.Fatalf("compute pod log: %s", e.logs("compute"))
	}
	if got := e.claimDevices("compute"); !slices.Equal(got, []string{dev}) {
		t.Errorf("compute's claim is allocated %v, the pod opened %s", got, dev)
	}
	view := viewOf(e.logs("compute"))
	switch {
	case devicePluginView == "":
		t.Logf("TestEndToEnd did not run first: not comparing with the device plugin's view; the pod sees:\n%s", view)
	case view != devicePluginView:
		t.Errorf("the compute pod saw, under DRA:\n%s\nunder the device plugin:\n%s\nwant the same", view, devicePluginView)
	}
	holder := e.holderIn(dev, "compute")
	claimUID := e.claimUIDs("compute")[0]
	id := e.resourceID("compute", "claim:ac")
	if want := draDriver + "/claim=" + claimUID + "-ac"; id != want {
		t.Errorf("kubelet's resource ID for the claim: %q, want the CDI device %q", id, want)
	}
	e.claimState(claimUID, true)

	step("a second client opening the held compute node gets EBUSY")
	e.secondOpenBusy(dev)
	e.deletePod("debug-open")

	step("an unchanged pod requesting accel.io/ac: 1 runs through the DeviceClass's extendedResourceName")
	e.createPod("extended", computeScript, requests(acRes, 1))
	e.awaitRunning("extended", "operational")
	var extDev string
	fmt.Sscanf(e.logs("extended"), "opened /dev/accel/%s", &extDev)
	if p, _ := e.cs.CoreV1().Pods(namespace).Get(context.Background(), "extended", metav1.GetOptions{}); p == nil || p.Status.ExtendedResourceClaimStatus == nil {
		t.Errorf("pod extended: no extendedResourceClaimStatus: the scheduler did not map accel.io/ac to a claim")
	}
	if extDev == "" || extDev == dev || !slices.Equal(e.claimDevices("extended"), []string{extDev}) {
		t.Errorf("pod extended opened %q (compute holds %s), its claim has %v", extDev, dev, e.claimDevices("extended"))
	}
	e.deletePod("extended")

	step("two pods share the held device's monitor device (allowMultipleAllocations, 1 of 8 clients each)")
	idx := strings.TrimPrefix(dev, "ac")
	e.claimTemplate("monitor-of", resourcev1.ExactDeviceRequest{DeviceClassName: monitorClass,
		Selectors: []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{Expression: `device.attributes["accel.io"].index == ` + idx}}}})
	for _, name := range []string{"monitor-a", "monitor-b"} {
		e.createPod(name, `exec 3<"/dev/accel/${ACCEL_MONITOR_DEVICES}_monitor"; echo "watching $ACCEL_MONITOR_DEVICES"; ls /dev/accel; exec sleep 3600`, withClaim("monitor-of"))
	}
	for _, name := range []string{"monitor-a", "monitor-b"} {
		e.awaitRunning(name, "watching")
		if got := e.claimDevices(name); !slices.Equal(got, []string{dev + "-monitor"}) {
			t.Errorf("%s's claim: %v, want %s-monitor", name, got, dev)
		}
		if l := e.logs(name); !strings.Contains(l, "watching "+dev) || !slices.Equal(linesExcept(l, "watching "), []string{dev + "_monitor"}) {
			t.Errorf("%s: %q, want %s's monitor node only", name, l, dev)
		}
	}
	if i := e.devInfo(dev); i.MonitorClients < 3 || !i.ComputeInUse { // two pods + the query
		t.Errorf("%s while held, with two monitor pods: %+v", dev, i)
	}

	step("an admin-access claim on the compute class reads every monitor node while compute is held, and gets no compute node")
	e.claimTemplate("all-monitors", resourcev1.ExactDeviceRequest{DeviceClassName: computeClass,
		AllocationMode: resourcev1.DeviceAllocationModeAll, AdminAccess: ptr.To(true)})
	e.createPod("exporter", `ls /dev/accel; for f in /dev/accel/*_monitor; do head -c 40 "$f"; echo; done; env | grep ACCEL_; echo exported; exec sleep 3600`, withClaim("all-monitors"))
	e.awaitRunning("exporter", "exported")
	l := e.logs("exporter")
	lines := strings.Split(l, "\n")
	for n := 0; n < devices; n++ {
		d := fmt.Sprintf("ac%d", n)
		if !slices.Contains(lines, d+"_monitor") || !strings.Contains(l, d+" operational") {
			t.Errorf("exporter lacks %s's monitor node or its text: %s", d, l)
		}
		if slices.Contains(lines, d) {
			t.Errorf("exporter got the compute node %s: %s", d, l)
		}
	}
	if !strings.Contains(l, "ACCEL_MONITOR_DEVICES=ac0,ac1,ac2,ac3") || strings.Contains(l, "ACCEL_VISIBLE_DEVICES") {
		t.Errorf("exporter env: %s", l)
	}
	for _, name := range []string{"monitor-a", "monitor-b", "exporter"} {
		e.deletePod(name)
	}

	step("a claim for more devices than exist stays Pending: cannot allocate all claims")
	e.claimTemplate("five", resourcev1.ExactDeviceRequest{DeviceClassName: computeClass, Count: devices + 1})
	e.createPod("too-many", "sleep 3600", withClaim("five"))
	e.awaitSchedulingFailure("too-many", "cannot allocate all claims")
	e.deletePod("too-many")

	step("a two-device claim with matchAttribute numaNode lands on one NUMA node (the one compute does not use)")
	e.claimTemplate("numa-pair", resourcev1.ExactDeviceRequest{DeviceClassName: computeClass, Count: 2},
		resourcev1.DeviceConstraint{Requests: []string{"ac"}, MatchAttribute: ptr.To(resourcev1.FullyQualifiedName(draDriver + "/numaNode"))})
	e.createPod("numa", `echo "got $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`, withClaim("numa-pair"))
	e.awaitRunning("numa", "got ac")
	pair := e.claimDevices("numa")
	numa := e.numaOf()
	if len(pair) != 2 || numa[pair[0]] != numa[pair[1]] || slices.Contains(pair, dev) {
		t.Errorf("numa pair %v on NUMA nodes %v (compute holds %s), want two devices of one node", pair, numa, dev)
	}
	t.Logf("numa pair %v on NUMA node %d; compute's %s is on %d", pair, numa[pair[0]], dev, numa[dev])
	e.deletePod("numa")

	step("fault: the held device and a free one are tainted within 1 s; a claim for the free one waits; the holder shows Unhealthy with the message")
	free := e.freeDevice(dev)
	e.faultTaints(dev, free, holder, id)

	step("plugin restarted: the claim stays prepared (CDI spec, checkpoint), the pod keeps its device, new claims are prepared")
	pluginPods := e.podsByComponent("plugin")
	for _, p := range pluginPods {
		e.deletePodIn(p.Namespace, p.Name)
	}
	e.awaitNewPlugin(pluginPods[0].Name)
	e.claimState(claimUID, true)
	e.computeStillHeld(dev, holder)
	e.createPod("after-restart", `echo "got $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`, withClaim("one"))
	e.awaitRunning("after-restart", "got ac")
	e.deletePod("after-restart")

	step("rolling update (helm upgrade of the plugin; maxSurge 1): a new driver pod serves beside the old one, a claim is prepared meanwhile, the held claim stays prepared")
	e.rollingUpdate(m, claimUID, dev, holder)

	if e.restartCmd == "" {
		t.Log("ACCEL_E2E_RESTART_KUBELET not set: skipping the kubelet restart step")
	} else {
		step("kubelet restarted: the driver registers again, the claim stays prepared, new claims are prepared")
		if out, err := exec.Command("sh", "-c", e.restartCmd).CombinedOutput(); err != nil {
			t.Fatalf("restart kubelet (%s): %v\n%s", e.restartCmd, err, out)
		}
		e.awaitChartPods(m)
		e.createPod("after-restart", `echo "got $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`, withClaim("one"))
		e.awaitRunning("after-restart", "got ac")
		e.computeStillHeld(dev, holder)
		e.claimState(claimUID, true)
		e.deletePod("after-restart")
	}

	step("the pod goes: its claim is unprepared (spec and checkpoint entry gone)")
	e.deletePod("compute")
	e.eventually(time.Minute, "claim "+claimUID+" unprepared", func() (bool, string) { return !e.claimPrepared(claimUID), "still prepared" })

	step("helm uninstall: no slices, classes, CDI specs or checkpoint left")
	e.deletePod("accel-tool")
	for _, name := range templates {
		_ = e.cs.ResourceV1().ResourceClaimTemplates(namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
	}
	e.run(e.helm, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m")
	e.eventually(time.Minute, "no ResourceSlices, DeviceClasses, claim specs or checkpoint", func() (bool, string) {
		sl, err := e.cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{FieldSelector: "spec.driver=" + draDriver})
		if err != nil || len(sl.Items) > 0 {
			return false, fmt.Sprintf("slices: %v %v", err, sl)
		}
		for _, name := range []string{computeClass, monitorClass} {
			if _, err := e.cs.ResourceV1().DeviceClasses().Get(context.Background(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, "DeviceClass " + name + ": " + fmt.Sprint(err)
			}
		}
		out, err := e.exec("host-tool", "sh", "-c", "ls "+e.cdiSpecDir+" /var/lib/kubelet/plugins/"+draDriver+" /var/lib/kubelet/plugins_registry")
		if err != nil {
			return false, err.Error() + out
		}
		return !strings.Contains(out, draDriver+"-claim_") && !strings.Contains(out, "checkpoint") && !strings.Contains(out, ".sock"), out
	})
	e.deletePod("host-tool")
	step("done")
}

// hostDir mounts a host directory at the same path.
func hostDir(name, path string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: path}}})
		p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: name, MountPath: path})
	}
}

// withClaim gives the pod a claim "ac" from the template, used by its container.
func withClaim(template string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.ResourceClaims = append(p.Spec.ResourceClaims, corev1.PodResourceClaim{Name: "ac", ResourceClaimTemplateName: &template})
		p.Spec.Containers[0].Resources.Claims = append(p.Spec.Containers[0].Resources.Claims, corev1.ResourceClaim{Name: "ac"})
	}
}

// claimTemplate creates a ResourceClaimTemplate with one request "ac".
func (e *env) claimTemplate(name string, req resourcev1.ExactDeviceRequest, constraints ...resourcev1.DeviceConstraint) {
	e.t.Helper()
	rct := &resourcev1.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{
			Requests:    []resourcev1.DeviceRequest{{Name: "ac", Exactly: &req}},
			Constraints: constraints,
		}}},
	}
	if _, err := e.cs.ResourceV1().ResourceClaimTemplates(namespace).Create(context.Background(), rct, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create ResourceClaimTemplate %s: %v", name, err)
	}
}

// labelNamespace sets (or, with nil, removes) a label of the suite's namespace.
func (e *env) labelNamespace(key string, value *string) {
	e.t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	if _, err := e.cs.CoreV1().Namespaces().Patch(context.Background(), namespace, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Errorf("label namespace %s: %v", namespace, err)
	}
}

// podClaims returns the pod's allocated ResourceClaims (its own and the
// scheduler's extended-resource claim).
func (e *env) podClaims(pod string) []resourcev1.ResourceClaim {
	e.t.Helper()
	p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get pod %s: %v", pod, err)
	}
	var names []string
	for _, st := range p.Status.ResourceClaimStatuses {
		if st.ResourceClaimName != nil {
			names = append(names, *st.ResourceClaimName)
		}
	}
	if st := p.Status.ExtendedResourceClaimStatus; st != nil {
		names = append(names, st.ResourceClaimName)
	}
	var out []resourcev1.ResourceClaim
	for _, n := range names {
		c, err := e.cs.ResourceV1().ResourceClaims(namespace).Get(context.Background(), n, metav1.GetOptions{})
		if err != nil {
			e.t.Fatalf("get ResourceClaim %s of pod %s: %v", n, pod, err)
		}
		out = append(out, *c)
	}
	return out
}

// claimDevices lists the devices allocated to the pod's claims, sorted.
func (e *env) claimDevices(pod string) []string {
	e.t.Helper()
	var devs []string
	for _, c := range e.podClaims(pod) {
		if c.Status.Allocation != nil {
			for _, r := range c.Status.Allocation.Devices.Results {
				if r.Driver == draDriver {
					devs = append(devs, r.Device)
				}
			}
		}
	}
	slices.Sort(devs)
	return devs
}

func (e *env) claimUIDs(pod string) []string {
	e.t.Helper()
	var uids []string
	for _, c := range e.podClaims(pod) {
		uids = append(uids, string(c.UID))
	}
	if len(uids) == 0 {
		e.t.Fatalf("pod %s has no claims", pod)
	}
	return uids
}

// claimPrepared says whether the driver's checkpoint and CDI spec
// directory (read through host-tool) hold the claim.
func (e *env) claimPrepared(uid string) bool {
	e.t.Helper()
	out, err := e.exec("host-tool", "sh", "-c", fmt.Sprintf("cat /var/lib/kubelet/plugins/%s/checkpoint.json; ls %s", draDriver, e.cdiSpecDir))
	if err != nil {
		e.t.Fatalf("read the checkpoint and %s: %v: %s", e.cdiSpecDir, err, out)
	}
	inCkpt, spec := strings.Contains(out, `"`+uid+`"`), strings.Contains(out, draDriver+"-claim_"+uid+".json")
	if inCkpt != spec {
		e.t.Errorf("claim %s: in the checkpoint %t, CDI spec %t: want both or neither\n%s", uid, inCkpt, spec, out)
	}
	return inCkpt && spec
}

func (e *env) claimState(uid string, prepared bool) {
	e.t.Helper()
	if got := e.claimPrepared(uid); got != prepared {
		e.t.Errorf("claim %s prepared (checkpoint and CDI spec): %t, want %t", uid, got, prepared)
	}
}

// sliceDevices merges the devices of this node's ResourceSlices of the driver.
func (e *env) sliceDevices() (map[string]resourcev1.Device, string, error) {
	sel := fields.AndSelectors(fields.OneTermEqualSelector("spec.driver", draDriver), fields.OneTermEqualSelector("spec.nodeName", e.node))
	l, err := e.cs.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return nil, "", err
	}
	out := map[string]resourcev1.Device{}
	for _, s := range l.Items {
		for _, d := range s.Spec.Devices {
			out[d.Name] = d
		}
	}
	return out, l.ResourceVersion, nil
}

// slicesListDevices: acN (compute, memory 16Gi) and acN-monitor (shared,
// 8 clients) for each device, with the serial, model, driver, numaNode,
// simulated, index and kind attributes; no taints.
func (e *env) slicesListDevices() {
	e.t.Helper()
	var devs map[string]resourcev1.Device
	e.eventually(time.Minute, "8 devices in the node's ResourceSlices", func() (bool, string) {
		var err error
		devs, _, err = e.sliceDevices()
		return err == nil && len(devs) == 2*devices, fmt.Sprint(len(devs), " devices ", err)
	})
	for n := 0; n < devices; n++ {
		c, m := devs[fmt.Sprintf("ac%d", n)], devs[fmt.Sprintf("ac%d-monitor", n)]
		for _, d := range []resourcev1.Device{c, m} {
			a := d.Attributes
			if a["kind"].StringValue == nil || a["serial"].StringValue == nil || !strings.HasPrefix(*a["serial"].StringValue, "SIM-") ||
				ptr.Deref(a["model"].StringValue, "") != "Simulated Accel SA-1" || ptr.Deref(a["driver"].StringValue, "") != "fakedev" ||
				ptr.Deref(a["index"].IntValue, -1) != int64(n) || ptr.Deref(a["numaNode"].IntValue, -1) != int64(n%2) ||
				!ptr.Deref(a["simulated"].BoolValue, false) || len(d.Taints) != 0 {
				e.t.Errorf("device %s: attributes %v taints %v", d.Name, a, d.Taints)
			}
		}
		if mem := c.Capacity["memory"].Value; mem.String() != "16Gi" || ptr.Deref(c.Attributes["kind"].StringValue, "") != "compute" {
			e.t.Errorf("compute device %s: memory %s, kind %v", c.Name, mem.String(), c.Attributes["kind"])
		}
		if cl := m.Capacity["clients"].Value; cl.Value() != slots || !ptr.Deref(m.AllowMultipleAllocations, false) ||
			ptr.Deref(m.Attributes["kind"].StringValue, "") != "monitor" {
			e.t.Errorf("monitor device %s: clients %s, allowMultipleAllocations %v, kind %v", m.Name, cl.String(), m.AllowMultipleAllocations, m.Attributes["kind"])
		}
	}
}

// numaOf maps each compute device to its numaNode attribute.
func (e *env) numaOf() map[string]int64 {
	e.t.Helper()
	devs, _, err := e.sliceDevices()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	for name, d := range devs {
		if v := d.Attributes["numaNode"].IntValue; v != nil && !strings.HasSuffix(name, "-monitor") {
			out[name] = *v
		}
	}
	return out
}

// awaitSchedulingFailure waits for a FailedScheduling event of the pod
// whose message contains want, and checks the pod is Pending.
func (e *env) awaitSchedulingFailure(pod, want string) {
	e.t.Helper()
	e.eventually(time.Minute, "FailedScheduling ("+want+") for "+pod, func() (bool, string) {
		evs, err := e.cs.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			return false, err.Error()
		}
		var msgs []string
		for _, ev := range evs.Items {
			if ev.Reason == "FailedScheduling" && strings.Contains(ev.Message, want) {
				return true, ""
			}
			msgs = append(msgs, ev.Message)
		}
		return false, strings.Join(msgs, "; ")
	})
	if p, _ := e.cs.CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{}); p == nil || p.Status.Phase != corev1.PodPending {
		e.t.Errorf("%s is not Pending", pod)
	}
}

// awaitTaint watches the node's slices until dev carries the unhealthy
// taint (or none, when want is ""), and returns when that was seen. The
// watch starts at rv, the slices' list version taken before the change.
func (e *env) awaitTaint(rv, dev, want string, d time.Duration) (time.Time, []resourcev1.DeviceTaint) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	w, err := e.cs.ResourceV1().ResourceSlices().Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.driver", draDriver).String(), ResourceVersion: rv})
	if err != nil {
		e.t.Fatalf("watch ResourceSlices: %v", err)
	}
	defer w.Stop()
	var last []resourcev1.DeviceTaint
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			break
		}
		s, ok := ev.Object.(*resourcev1.ResourceSlice)
		if !ok {
			continue
		}
		for _, dv := range s.Spec.Devices {
			if dv.Name != dev {
				continue
			}
			last = dv.Taints
			got := ""
			for _, t := range dv.Taints {
				if t.Key == taintKey {
					got = t.Value + "/" + string(t.Effect)
				}
			}
			if got == want {
				return time.Now(), dv.Taints
			}
		}
	}
	e.t.Fatalf("device %s: taint %q not seen within %s (last: %v)", dev, want, d, last)
	return time.Time{}, nil
}

// faultTaints: a fault on the held device dev and on the free device
// free taints both within a second (NoSchedule, value Malfunction); a claim
// for free waits (the scheduler does not take tainted devices) and the pod
// holding dev shows Unhealthy with the device's reason. A reset of free
// lets the waiting claim's pod run; a reset of dev makes the holder
// Healthy again, and both taints are gone.
func (e *env) faultTaints(dev, free string, holder int, id string) {
	e.t.Helper()
	const within = time.Second
	for _, d := range []string{dev, free} {
		_, rv, err := e.sliceDevices()
		if err != nil {
			e.t.Fatal(err)
		}
		t0 := time.Now()
		e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "fault", d, "malfunction")
		t1 := time.Now()
		seen, taints := e.awaitTaint(rv, d, "Malfunction/NoSchedule", 30*time.Second)
		e.t.Logf("fault on %s: taint %v seen %.3fs after sim ctl started, %.3fs after it returned", d, taints, seen.Sub(t0).Seconds(), seen.Sub(t1).Seconds())
		if seen.Sub(t1) > within {
			e.t.Errorf("the taint on %s came %.3fs after the fault, want within %s", d, seen.Sub(t1).Seconds(), within)
		}
	}
	e.awaitHealth("compute", "claim:ac", id, corev1.ResourceHealthStatusUnhealthy, time.Now(), 30*time.Second)
	p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), "compute", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if msg := healthMessage(p, "claim:ac", id); !strings.Contains(msg, "malfunction") {
		e.t.Errorf("compute pod's Unhealthy entry: message %q, want the device's reason (malfunction)", msg)
	}

	e.claimTemplate("avoid", resourcev1.ExactDeviceRequest{DeviceClassName: computeClass,
		Selectors: []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{Expression: `device.attributes["accel.io"].index == ` + strings.TrimPrefix(free, "ac")}}}})
	e.createPod("avoid", `echo "got $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`, withClaim("avoid"))
	e.awaitSchedulingFailure("avoid", "cannot allocate all claims")

	for _, d := range []string{free, dev} {
		_, rv, err := e.sliceDevices()
		if err != nil {
			e.t.Fatal(err)
		}
		t0 := time.Now()
		e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "reset", d)
		seen, _ := e.awaitTaint(rv, d, "", 30*time.Second)
		e.t.Logf("reset of %s: taint gone %.3fs after sim ctl started", d, seen.Sub(t0).Seconds())
	}
	e.awaitRunning("avoid", "got "+free)
	e.awaitHealth("compute", "claim:ac", id, corev1.ResourceHealthStatusHealthy, time.Now(), 30*time.Second)
	e.computeStillHeld(dev, holder)
	e.deletePod("avoid")
}

// healthMessage is the message of the pod's allocatedResourcesStatus entry
// for id under res.
func healthMessage(p *corev1.Pod, res corev1.ResourceName, id string) string {
	c := containerStatus(p)
	if c == nil {
		return ""
	}
	for _, rs := range c.AllocatedResourcesStatus {
		if rs.Name == res {
			for _, r := range rs.Resources {
				if string(r.ResourceID) == id {
					return ptr.Deref(r.Message, "")
				}
			}
		}
	}
	return ""
}

// computeStillHeld: the compute pod still holds dev (same process) and
// reads its monitor node.
func (e *env) computeStillHeld(dev string, holder int) {
	e.t.Helper()
	if out, err := e.exec("compute", "cat", "/dev/accel/"+dev+"_monitor"); err != nil || !strings.Contains(out, dev) {
		e.t.Errorf("compute pod reading %s's monitor: %v %s", dev, err, out)
	}
	if i := e.devInfo(dev); i.HolderPID != holder || !i.ComputeInUse {
		e.t.Errorf("%s lost its holder %d: %+v", dev, holder, i)
	}
}

// awaitNewPlugin waits for a ready plugin pod other than old.
func (e *env) awaitNewPlugin(old string) {
	e.t.Helper()
	e.eventually(2*time.Minute, "a new ready plugin pod", func() (bool, string) {
		for _, p := range e.podsByComponent("plugin") {
			if p.Name != old && podReady(&p) {
				return true, ""
			}
		}
		return false, "waiting"
	})
}

// linesExcept is the non-empty lines of s that do not start with prefix.
func linesExcept(s, prefix string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// rollingUpdate upgrades the release with a changed plugin template
// (plugin.logLevel=info), so that the DaemonSet rolls the driver with
// maxSurge 1, maxUnavailable 0. It watches the plugin pods: two must be
// ready at once (the new one registered beside the old one), never none;
// a pod whose claim is created while both are ready runs; afterwards one
// new pod serves and the held claim is still prepared.
func (e *env) rollingUpdate(m mode, claimUID, dev string, holder int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sel := "app.kubernetes.io/component=plugin"
	l, err := e.cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		e.t.Fatal(err)
	}
	w, err := e.cs.CoreV1().Pods(namespace).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: l.ResourceVersion})
	if err != nil {
		e.t.Fatal(err)
	}
	defer w.Stop()
	ready := map[string]bool{}
	for _, p := range l.Items {
		ready[p.Name] = podReady(&p) && p.DeletionTimestamp == nil
	}
	count := func() int {
		n := 0
		for _, r := range ready {
			if r {
				n++
			}
		}
		return n
	}
	done := make(chan error, 1)
	go func() {
		out, err := e.runErr(e.helm, e.helmArgs(m, "--set", "plugin.logLevel=info")...)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		done <- err
	}()
	maxReady, minReady, created := count(), count(), false
	for upgraded := false; !upgraded; {
		select {
		case err := <-done:
			if err != nil {
				e.t.Fatalf("helm upgrade: %v", err)
			}
			upgraded = true
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				e.t.Fatalf("plugin pod watch ended during the rolling update")
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(ready, p.Name)
			} else {
				ready[p.Name] = podReady(p) && p.DeletionTimestamp == nil
			}
			n := count()
			maxReady, minReady = max(maxReady, n), min(minReady, n)
			if n >= 2 && !created {
				e.createPod("during-roll", `echo "got $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`, withClaim("one"))
				created = true
			}
		}
	}
	e.t.Logf("rolling update: up to %d driver pods ready at once, never fewer than %d; a claim created while two were ready: %t", maxReady, minReady, created)
	if maxReady < 2 || minReady < 1 {
		e.t.Errorf("ready driver pods during the rolling update: at most %d, at least %d; want 2 at once and never 0", maxReady, minReady)
	}
	e.awaitChartPods(m)
	if p := e.podsByComponent("plugin"); len(p) != 1 || !slices.Contains(p[0].Spec.Containers[0].Args, "--log-level=info") {
		e.t.Errorf("after the rolling update: %d plugin pods, want one with --log-level=info", len(p))
	}
	if created {
		e.awaitRunning("during-roll", "got ac")
		e.deletePod("during-roll")
	}
	e.claimState(claimUID, true)
	e.computeStillHeld(dev, holder)
}
