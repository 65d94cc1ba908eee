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
// The device story runs once per mode (mounts, then CDI: a helm upgrade of
// the same release); the restart steps run once, in the CDI mode, on the
// last story's compute pod.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	step := func(name string) {
		t.Logf("%6.1fs  %s", time.Since(start).Seconds(), name)
	}
	step("helm install: simulator with 4 devices, plugin with 8 monitor slots per device (mounts mode)")
	e.helmInstall(modes[0])
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
			t.Logf("--- events in %s (the last %d):\n%s", namespace, maxDumpedEvents, e.namespaceEvents())
		}
	})
	e.awaitChartPods(modes[0])
	if n, err := e.cs.CoreV1().Nodes().Get(context.Background(), e.node, metav1.GetOptions{}); err == nil {
		t.Logf("node %s: %s, kubelet %s", e.node, n.Status.NodeInfo.ContainerRuntimeVersion, n.Status.NodeInfo.KubeletVersion)
	}

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
	e.createPod("host-tool", "sleep 3600", e.hostAccess(true), e.cdiAccess)
	e.awaitPhase("accel-tool", corev1.PodRunning, 2*time.Minute)
	e.awaitPhase("host-tool", corev1.PodRunning, 2*time.Minute)

	var last story
	var views []string
	for i, m := range modes {
		if i > 0 {
			e.deletePod("compute")
			step(fmt.Sprintf("helm upgrade: %s mode (cdi.enabled=%t); the simulator keeps running", m.name, m.cdi))
			e.helmInstall(m)
			e.awaitChartPods(m)
			e.awaitAllocatable(time.Minute, devices, devices, devices*slots, devices*slots)
		}
		ok := t.Run(m.name, func(t *testing.T) {
			last = e.with(t).deviceStory(m, func(name string) { step(m.name + ": " + name) })
		})
		if !ok {
			t.FailNow()
		}
		views = append(views, last.view)
		if i > 0 && last.view != views[0] {
			t.Errorf("the compute pod saw, in %s mode:\n%s\nin %s mode:\n%s\nwant the same", modes[0].name, views[0], m.name, last.view)
		}
	}
	dev, holder := last.dev, last.holder
	devicePluginView = views[0]

	other := "ac0"
	if dev == other {
		other = "ac1"
	}
	step("through the host path, a non-root pod cannot open a compute node (the mount's root is 0700); root can")
	e.hostPathNeedsRoot(dev)

	step("sys/control refuses a root pod without CAP_SYS_ADMIN (EPERM)")
	e.controlNeedsSysAdmin(other)

	step("plugin restarted: running pods keep their devices, allocatable comes back, the CDI specs are still there (kept across restarts)")
	pluginPods := e.podsByComponent("plugin")
	for _, p := range pluginPods {
		e.deletePodIn(p.Namespace, p.Name)
	}
	e.awaitNewPlugin(pluginPods[0].Name)
	e.awaitAllocatable(time.Minute, devices, devices, devices*slots, devices*slots)
	e.specFiles(modes[len(modes)-1].cdi, last.id)
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

	step("helm uninstall: no mounts, sockets, CDI specs or node labels left")
	for _, name := range []string{"compute", "after-restart", "accel-tool"} {
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
	e.eventually(time.Minute, "no sockets, CDI specs and no simulator mount on the node", func() (bool, string) {
		// host-tool mounts /run/accel with HostToContainer propagation: a
		// simulator mount left on the host would show in its mount table.
		out, err := e.exec("host-tool", "sh", "-c", "ls /var/lib/kubelet/device-plugins "+e.cdiSpecDir+"; cat /proc/self/mounts")
		if err != nil {
			return false, err.Error()
		}
		return !strings.Contains(out, "accel.io-ac") && !strings.Contains(out, e.devDir), out
	})
	e.deletePod("host-tool")
	step("done")
}

// awaitChartPods waits for one ready plugin pod of the mode (helm --wait may
// return while DaemonSet pods still start or roll) and a running simulator.
func (e *env) awaitChartPods(m mode) {
	e.t.Helper()
	e.eventually(2*time.Minute, "simulator and plugin pods ready ("+m.name+" mode)", func() (bool, string) {
		sim, plug := e.podsByComponent("sim"), e.podsByComponent("plugin")
		if len(sim) != 1 || len(plug) != 1 {
			return false, fmt.Sprintf("%d sim, %d plugin pods", len(sim), len(plug))
		}
		cdi := slices.Contains(plug[0].Spec.Containers[0].Args, "--cdi=on")
		dra := slices.Contains(plug[0].Spec.Containers[0].Args, "--api=dra")
		return podReady(&plug[0]) && cdi == m.cdi && dra == m.dra && sim[0].Status.Phase == corev1.PodRunning,
			fmt.Sprintf("sim %s, plugin %s (--cdi=on: %t, --api=dra: %t)", sim[0].Status.Phase, plug[0].Status.Phase, cdi, dra)
	})
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

// maxDumpedEvents is how many of the namespace's events a failure prints.
const maxDumpedEvents = 40

// namespaceEvents lists the test namespace's latest events, oldest first,
// one line each: what kubelet and the scheduler said about the pods (a
// back-off, a failed admission, a kill), which the pods' logs do not show.
func (e *env) namespaceEvents() string {
	l, err := e.cs.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "list events: " + err.Error()
	}
	evs := l.Items
	last := func(ev corev1.Event) time.Time {
		return slices.MaxFunc([]time.Time{ev.LastTimestamp.Time, ev.EventTime.Time, ev.FirstTimestamp.Time}, time.Time.Compare)
	}
	slices.SortStableFunc(evs, func(a, b corev1.Event) int { return last(a).Compare(last(b)) })
	evs = evs[max(len(evs)-maxDumpedEvents, 0):]
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "%s %s %s %s/%s (x%d): %s\n", last(ev).Format(time.RFC3339), ev.Type, ev.Reason,
			ev.InvolvedObject.Kind, ev.InvolvedObject.Name, max(ev.Count, 1), ev.Message)
	}
	return b.String()
}

func (e *env) deletePodIn(ns, name string) {
	zero := int64(0)
	_ = e.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}
