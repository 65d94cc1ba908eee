package suite

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// info is what `accel-plugin info` prints for a node.
type info struct {
	Name           string `json:"name"`
	Serial         string `json:"serial"`
	Status         string `json:"status"`
	ComputeInUse   bool   `json:"compute_in_use"`
	HolderPID      int    `json:"holder_pid"`
	MonitorClients int    `json:"monitor_clients"`
}

// TestEndToEnd is the user's story, in order; each step depends on the last.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	step := func(name string) {
		t.Logf("%6.1fs  %s", time.Since(start).Seconds(), name)
	}
	step("helm install: simulator with 4 devices, plugin with 8 monitor slots per device")
	e.helmInstall()
	t.Cleanup(func() { // on failure: leave nothing behind (runs after the log dump below)
		for _, name := range []string{"compute", "nonroot", "host-nonroot", "host-root", "ctl-denied", "too-many", "monitor-a", "monitor-b",
			"debug-open", "after-restart", "crashloop", "accel-tool", "host-tool"} {
			e.deletePodIn(namespace, name)
		}
		e.runErr(e.helm, "uninstall", release, "--namespace", namespace, "--wait")
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{"plugin", "sim"} {
				t.Logf("--- %s pods:\n%s", p, e.podLogsByComponent(p))
			}
			t.Logf("--- accel-tool:\n%s", e.logs("accel-tool"))
		}
	})
	// helm --wait may return while DaemonSet pods still start: wait for them.
	e.eventually(2*time.Minute, "simulator and plugin pods ready", func() (bool, string) {
		sim, plug := e.podsByComponent("sim"), e.podsByComponent("plugin")
		if len(sim) != 1 || len(plug) != 1 {
			return false, fmt.Sprintf("%d sim, %d plugin pods", len(sim), len(plug))
		}
		return podReady(&plug[0]) && sim[0].Status.Phase == corev1.PodRunning, string(sim[0].Status.Phase) + " " + string(plug[0].Status.Phase)
	})

	step("node allocatable accel.io/ac = 4, accel.io/ac-monitor = 32")
	e.awaitAllocatable(time.Minute, devices, devices, devices*slots, devices*slots)

	step("node labels")
	e.eventually(30*time.Second, "node labels", func() (bool, string) {
		_, _, l := e.quantities(acRes)
		return l["accel.io/ac.present"] == "true" && l["accel.io/ac.count"] == "4" &&
			l["accel.io/ac.simulated"] == "true" && l["accel.io/ac.model"] == "Simulated_Accel_SA-1", fmt.Sprint(l)
	})

	// A tool pod with the plugin image (no shell: exec runs the binary) and
	// the simulator's directory, to query and drive devices from the node.
	// Privileged: sys/control refuses writers without CAP_SYS_ADMIN.
	e.createPod("accel-tool", "", withImage(e.image, "/accel-plugin", "events", "--dir", e.devDir), e.hostAccess(true))
	e.createPod("host-tool", "sleep 3600", e.hostAccess(true))
	e.awaitPhase("accel-tool", corev1.PodRunning, 2*time.Minute)
	e.awaitPhase("host-tool", corev1.PodRunning, 2*time.Minute)

	step("a pod requesting 1 device runs and holds /dev/accel/acK")
	e.createPod("compute", `set -e
d=/dev/accel/$ACCEL_VISIBLE_DEVICES
exec 3<>"$d"
echo "opened $d"
cat "${d}_monitor"
exec sleep 3600`, requests(acRes, 1))
	e.awaitRunning("compute", "opened")
	var dev string
	fmt.Sscanf(e.logs("compute"), "opened /dev/accel/%s", &dev)
	if dev == "" {
		t.Fatalf("compute pod log: %s", e.logs("compute"))
	}
	holder := e.holderIn(dev, "compute")
	t.Logf("%s is held by pid %d of pod compute", dev, holder)

	step("a non-root pod (uid 1000, no capabilities) opens its device read-write and holds it")
	e.nonRootWorkload()

	step("through the host path, a non-root pod cannot open a compute node (the mount's root is 0700); root can")
	e.hostPathNeedsRoot(dev)

	step("a pod asking for more than is free stays Pending: Insufficient accel.io/ac")
	e.createPod("too-many", "sleep 3600", requests(acRes, devices))
	e.eventually(time.Minute, "FailedScheduling event for too-many", func() (bool, string) {
		evs, err := e.cs.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.name=too-many"})
		if err != nil {
			return false, err.Error()
		}
		for _, ev := range evs.Items {
			if strings.Contains(ev.Message, "Insufficient accel.io/ac") {
				return true, ""
			}
		}
		return false, fmt.Sprint(len(evs.Items), " events")
	})
	if p, _ := e.cs.CoreV1().Pods(namespace).Get(context.Background(), "too-many", metav1.GetOptions{}); p.Status.Phase != corev1.PodPending {
		t.Errorf("too-many is %s, want Pending", p.Status.Phase)
	}
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
		if l := e.logs(name); !strings.Contains(l, dev) {
			t.Errorf("%s (4 slots, spread) did not get %s: %s", name, dev, l)
		}
	}
	// A failed redirection ends a shell: try in a subshell.
	e.createPod("debug-open", fmt.Sprintf(`(exec 3<>%s/%s) 2>&1 && echo OPENED || echo FAILED`, e.devDir, dev), e.hostAccess(true), runOnce)
	e.awaitPhase("debug-open", corev1.PodSucceeded, 2*time.Minute)
	if l := e.logs("debug-open"); !strings.Contains(l, "Device or resource busy") || !strings.Contains(l, "FAILED") {
		t.Errorf("a second client opening %s through the host path: %q, want EBUSY", dev, l)
	}
	if i := e.devInfo(dev); i.MonitorClients < 3 || !i.ComputeInUse { // two pods + the query itself
		t.Errorf("%s while held with two monitor pods: %+v", dev, i)
	}

	other := "ac0"
	if dev == other {
		other = "ac1"
	}
	step("sys/control refuses a root pod without CAP_SYS_ADMIN and the plugin container (EPERM)")
	e.controlNeedsSysAdmin(other)

	step("fault: allocatable drops; reset: it recovers")
	e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "fault", other, "malfunction")
	e.awaitAllocatable(30*time.Second, devices, devices-1, devices*slots, (devices-1)*slots)
	e.mustExec("accel-tool", "/accel-plugin", "sim", "ctl", "--dir", e.devDir, "reset", other)
	e.awaitAllocatable(30*time.Second, devices, devices, devices*slots, devices*slots)

	step("plugin restarted: running pods keep their devices, allocatable comes back")
	pluginPods := e.podsByComponent("plugin")
	for _, p := range pluginPods {
		e.deletePodIn(p.Namespace, p.Name)
	}
	e.eventually(2*time.Minute, "a new ready plugin pod", func() (bool, string) {
		for _, p := range e.podsByComponent("plugin") {
			if p.Name != pluginPods[0].Name && podReady(&p) {
				return true, ""
			}
		}
		return false, "waiting"
	})
	e.awaitAllocatable(time.Minute, devices, devices, devices*slots, devices*slots)
	if out, err := e.exec("compute", "cat", "/dev/accel/"+dev+"_monitor"); err != nil || !strings.Contains(out, dev) {
		t.Errorf("compute pod after plugin restart: %v %s", err, out)
	}
	if i := e.devInfo(dev); i.HolderPID != holder || !i.ComputeInUse {
		t.Errorf("%s lost its holder across the plugin restart: %+v", dev, i)
	}

	if e.restartCmd == "" {
		t.Log("ACCEL_E2E_RESTART_KUBELET not set: skipping the kubelet restart step")
	} else {
		step("kubelet restarted: the plugin registers again, allocatable comes back, pods keep running")
		if out, err := exec.Command("sh", "-c", e.restartCmd).CombinedOutput(); err != nil {
			t.Fatalf("restart kubelet (%s): %v\n%s", e.restartCmd, err, out)
		}
		e.awaitAllocatable(2*time.Minute, devices, devices, devices*slots, devices*slots)
		e.createPod("after-restart", `exec 3<>/dev/accel/$ACCEL_VISIBLE_DEVICES && echo "opened $ACCEL_VISIBLE_DEVICES" && exec sleep 3600`, requests(acRes, 1))
		e.awaitRunning("after-restart", "opened")
		if out, err := e.exec("compute", "cat", "/dev/accel/"+dev+"_monitor"); err != nil || !strings.Contains(out, dev) {
			t.Errorf("compute pod after kubelet restart: %v %s", err, out)
		}

		rounds := kubeletRestartRounds()
		step(fmt.Sprintf("a crash-looping pod holding a device survives %d kubelet restarts: never rejected", rounds))
		e.crashLoopSurvivesKubeletRestarts(rounds)
	}

	step("helm uninstall: no mounts, sockets or node labels left")
	for _, name := range []string{"compute", "monitor-a", "monitor-b", "debug-open", "after-restart", "accel-tool"} {
		e.deletePod(name)
	}
	e.run(e.helm, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m")
	e.eventually(time.Minute, "no accel labels on the node", func() (bool, string) {
		_, _, l := e.quantities(acRes)
		for k := range l {
			if strings.HasPrefix(k, "accel.io/") {
				return false, fmt.Sprint(l)
			}
		}
		return true, ""
	})
	e.eventually(time.Minute, "no sockets and no simulator mount on the node", func() (bool, string) {
		// host-tool mounts /run/accel with HostToContainer propagation: a
		// simulator mount left on the host would show in its mount table.
		out, err := e.exec("host-tool", "sh", "-c", "ls /var/lib/kubelet/device-plugins; cat /proc/self/mounts")
		if err != nil {
			return false, err.Error()
		}
		return !strings.Contains(out, "accel.io-ac") && !strings.Contains(out, e.devDir), out
	})
	e.deletePod("host-tool")
	step("done")
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// podsByComponent lists the chart's pods of a component (plugin, sim).
func (e *env) podsByComponent(component string) []corev1.Pod {
	l, err := e.cs.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=" + component})
	if err != nil {
		return nil
	}
	return l.Items
}

func (e *env) podLogsByComponent(component string) string {
	var b strings.Builder
	for _, p := range e.podsByComponent(component) {
		fmt.Fprintf(&b, "== %s (%s)\n%s\n", p.Name, p.Status.Phase, e.logs(p.Name))
	}
	return b.String()
}

func (e *env) deletePodIn(ns, name string) {
	zero := int64(0)
	_ = e.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}
