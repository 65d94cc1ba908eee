package suite

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// TestMultiNode is the story a single node cannot tell, on a cluster with
// at least two worker nodes (make e2e-kind's second topology): every node
// runs its own simulator and plugin, device IDs never collide across nodes,
// each node is labelled with its own devices, a pod pinned to a node gets
// that node's devices (its plugin names the pod as holder), pods reach each
// other across nodes, a pod asking for more devices than one node has stays
// Pending although the cluster has enough, and deleting one node's plugin
// pod leaves every other node's allocatable untouched.
func TestMultiNode(t *testing.T) {
	e := newEnvAnyNodes(t)
	nodes := e.nodeNames()
	workers := e.workerNames()
	if len(workers) < 2 && os.Getenv("ACCEL_E2E_TOPOLOGY") == "multi" {
		t.Fatalf("ACCEL_E2E_TOPOLOGY=multi, but the cluster has %d worker nodes (want 2 or more)", len(workers))
	}
	if len(workers) < 2 {
		t.Skipf("the multi-node story wants two worker nodes or more; this cluster has %d (make e2e-kind runs it on its second topology)", len(workers))
	}
	start := time.Now()
	step := func(name string) { t.Logf("%6.1fs  %s", time.Since(start).Seconds(), name) }
	pinned := func(node string) string { return "on-" + node }

	step(fmt.Sprintf("helm install on %d nodes (%s): a simulator and a plugin on each", len(nodes), strings.Join(nodes, ", ")))
	e.helmInstall(modes[0])
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{"plugin", "sim"} {
				t.Logf("--- %s pods:\n%s", p, e.podLogsByComponent(p))
			}
		}
		for _, w := range workers {
			e.deletePodIn(namespace, pinned(w))
		}
		for _, name := range []string{"too-many", "web", "client"} {
			e.deletePodIn(namespace, name)
		}
		e.runErr(e.helm, "uninstall", release, "--namespace", namespace, "--wait")
	})
	e.eventually(3*time.Minute, "a ready plugin and a running simulator on every node", func() (bool, string) {
		return e.chartPodsOnEveryNode(nodes)
	})

	step("every node advertises its own 4 devices and 32 monitor slots, and is labelled with them")
	for _, n := range nodes {
		e.onNode(n).awaitAllocatable(time.Minute, devices, devices, devices*slots, devices*slots)
		e.eventually(30*time.Second, "labels of node "+n, func() (bool, string) {
			_, _, l := e.onNode(n).quantities(acRes)
			return l["accel.io/ac.present"] == "true" && l["accel.io/ac.count"] == "4", fmt.Sprint(l)
		})
	}

	step("a pod pinned to each worker, asking for all 4 devices, runs there and opens them")
	const openAll = `set -e; n=3; IFS=,
for d in $ACCEL_VISIBLE_DEVICES; do eval "exec $n<>\"/dev/accel/$d\""; n=$((n+1)); done
echo "holding $ACCEL_VISIBLE_DEVICES"; exec sleep 3600`
	for _, w := range workers {
		e.createPod(pinned(w), openAll, requests(acRes, devices), onNodeNamed(w))
	}
	ids := map[string][]string{} // worker → device IDs kubelet gave its pod
	owner := map[string]string{} // device ID → worker
	for _, w := range workers {
		p := e.awaitRunning(pinned(w), "holding")
		if p.Spec.NodeName != w {
			t.Fatalf("pod %s runs on %s, want %s", p.Name, p.Spec.NodeName, w)
		}
		ids[w] = e.resourceIDs(pinned(w), acRes, devices)
		for _, id := range ids[w] {
			if other, dup := owner[id]; dup {
				t.Errorf("device ID %s is both %s's and %s's: IDs collide across nodes", id, other, w)
			}
			owner[id] = w
		}
		t.Logf("%s: %s", w, strings.Join(ids[w], " "))
	}

	step("each node's plugin names its own node's pod as the holder of every one of its devices")
	for _, w := range workers {
		for _, id := range ids[w] {
			e.awaitHoldersOn(w, id, pinned(w)+"/compute")
		}
	}

	step("pods on different nodes reach each other (the CNI routes between the nodes' pod CIDRs)")
	e.createPod("web", `mkdir -p /www && echo "served from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www`, onNodeNamed(workers[0]))
	web := e.awaitPhase("web", corev1.PodRunning, 2*time.Minute)
	// nc, not wget: the static busybox's wget crashes in its resolver (glibc NSS in a static binary).
	e.createPod("client", fmt.Sprintf(`until printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s 8080; do sleep 1; done; exec sleep 3600`, web.Status.PodIP),
		onNodeNamed(workers[1]))
	e.awaitRunning("client", "served from web")

	step("a pod asking for 5 devices stays Pending (Insufficient accel.io/ac), although the cluster has more than 5 free")
	for _, w := range workers {
		e.deletePod(pinned(w))
	}
	free := int64(0)
	for _, n := range nodes {
		_, a, _ := e.onNode(n).quantities(acRes)
		free += a
	}
	if free <= devices {
		t.Fatalf("the cluster has %d accel.io/ac allocatable in all; the step wants more than %d", free, devices)
	}
	e.createPod("too-many", "sleep 3600", requests(acRes, devices+1))
	e.awaitSchedulingFailure("too-many", "Insufficient accel.io/ac")
	e.deletePod("too-many")

	step(fmt.Sprintf("deleting %s's plugin pod: its node recovers with a new one; no other node's allocatable changes meanwhile", workers[0]))
	e.pluginPodDeletionIsLocal(workers[0], nodes)
}

// newEnvAnyNodes is newEnv for a cluster of any number of nodes: node is
// left empty (onNode sets it).
func newEnvAnyNodes(t *testing.T) *env { return newEnvOn(t, true) }

// onNode is e with node n as the node quantities and awaitAllocatable read.
func (e *env) onNode(n string) *env {
	c := *e
	c.node = n
	return &c
}

// nodeNames lists the cluster's nodes; workerNames those without the
// control-plane role.
func (e *env) nodeNames() []string { return e.nodesWhere(func(corev1.Node) bool { return true }) }

func (e *env) workerNames() []string {
	return e.nodesWhere(func(n corev1.Node) bool {
		_, cp := n.Labels["node-role.kubernetes.io/control-plane"]
		return !cp
	})
}

func (e *env) nodesWhere(keep func(corev1.Node) bool) []string {
	e.t.Helper()
	l, err := e.cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatalf("list nodes: %v", err)
	}
	var names []string
	for _, n := range l.Items {
		if keep(n) {
			names = append(names, n.Name)
		}
	}
	sort.Strings(names)
	return names
}

// onNodeNamed pins a pod to a node by its hostname label (the scheduler
// still decides, so resources are checked).
func onNodeNamed(node string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	}
}

// chartPodsOnEveryNode reports whether every node has a ready plugin pod
// and a running simulator pod of the chart, and no node has two.
func (e *env) chartPodsOnEveryNode(nodes []string) (bool, string) {
	var missing []string
	for _, c := range []string{"plugin", "sim"} {
		per := map[string]int{}
		for _, p := range e.podsByComponent(c) {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && (c == "sim" || podReady(&p)) {
				per[p.Spec.NodeName]++
			}
		}
		for _, n := range nodes {
			if per[n] != 1 {
				missing = append(missing, fmt.Sprintf("%s: %d %s", n, per[n], c))
			}
		}
	}
	return len(missing) == 0, strings.Join(missing, ", ")
}

// pluginPodOn is the chart's plugin pod on node (not being deleted).
func (e *env) pluginPodOn(node string) (corev1.Pod, bool) {
	for _, p := range e.podsByComponent("plugin") {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			return p, true
		}
	}
	return corev1.Pod{}, false
}

// resourceIDs waits for n Healthy IDs of res in the pod's
// allocatedResourcesStatus and returns them sorted.
func (e *env) resourceIDs(pod string, res corev1.ResourceName, n int) []string {
	e.t.Helper()
	var ids []string
	e.eventually(30*time.Second, fmt.Sprintf("pod %s: %d Healthy %s in allocatedResourcesStatus", pod, n, res), func() (bool, string) {
		p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		h := healthOf(p, res)
		ids = ids[:0]
		for id, s := range h {
			if s != corev1.ResourceHealthStatusHealthy {
				return false, fmt.Sprint(h)
			}
			ids = append(ids, id)
		}
		return len(ids) == n, fmt.Sprint(h)
	})
	sort.Strings(ids)
	return ids
}

// awaitHoldersOn is awaitHolders against the plugin pod of node.
func (e *env) awaitHoldersOn(node, id string, want ...string) {
	e.t.Helper()
	slices.Sort(want)
	e.eventually(30*time.Second, "accel_device_holder of "+id+" on "+node, func() (bool, string) {
		plug, ok := e.pluginPodOn(node)
		if !ok {
			return false, "no plugin pod on " + node
		}
		raw, err := e.cs.CoreV1().RESTClient().Get().Namespace(namespace).Resource("pods").
			Name(plug.Name + ":9490").SubResource("proxy").Suffix("metrics").DoRaw(context.Background())
		if err != nil {
			return false, err.Error()
		}
		got := holdersIn(string(raw), id)
		return slices.Equal(got, want), fmt.Sprintf("holders %v, want %v", got, want)
	})
}

// pluginPodDeletionIsLocal deletes node's plugin pod and watches every
// node until node has a new ready plugin pod advertising its devices
// again: no other node's accel.io/ac or accel.io/ac-monitor allocatable may
// change in that time.
func (e *env) pluginPodDeletionIsLocal(node string, nodes []string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	old, ok := e.pluginPodOn(node)
	if !ok {
		e.t.Fatalf("no plugin pod on %s", node)
	}
	nl, err := e.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	before := map[string]string{} // at the list's resource version, where the watch starts
	for i := range nl.Items {
		before[nl.Items[i].Name] = allocatableString(&nl.Items[i])
	}
	for _, n := range nodes {
		if _, ok := before[n]; !ok {
			e.t.Fatalf("node %s is not in the list", n)
		}
	}
	w, err := e.cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: nl.ResourceVersion})
	if err != nil {
		e.t.Fatal(err)
	}
	defer w.Stop()
	// The watch reports other nodes' allocatable changes; a sentinel (an
	// annotation patched on node itself, which the check leaves out) marks
	// the end: once the watch has delivered it, it has delivered every
	// update before it.
	const sentinel = "accel-e2e/watch-sentinel"
	type result struct {
		changes []string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				r.err = fmt.Errorf("the node watch failed: %v", ev.Object)
				done <- r
				return
			}
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type != watch.Modified {
				continue
			}
			if n.Name == node {
				if n.Annotations[sentinel] != "" {
					done <- r
					return
				}
				continue
			}
			if got := allocatableString(n); got != before[n.Name] {
				r.changes = append(r.changes, fmt.Sprintf("%s: %s → %s", n.Name, before[n.Name], got))
			}
		}
		r.err = fmt.Errorf("the node watch ended before the sentinel")
		done <- r
	}()
	zero := int64(0)
	if err := e.cs.CoreV1().Pods(namespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		e.t.Fatalf("delete %s: %v", old.Name, err)
	}
	e.eventually(2*time.Minute, "a new ready plugin pod on "+node+" and its devices advertised again", func() (bool, string) {
		p, ok := e.pluginPodOn(node)
		if !ok || p.UID == old.UID || !podReady(&p) {
			return false, "waiting for the DaemonSet's new pod"
		}
		got := e.onNode(node).allocatableOf()
		return got == before[node], got
	})
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, sentinel, time.Now().Format(time.RFC3339Nano))
	if _, err := e.cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("annotate %s: %v", node, err)
	}
	defer func() {
		unset := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, sentinel)
		_, _ = e.cs.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(unset), metav1.PatchOptions{})
	}()
	r := <-done
	if r.err != nil {
		e.t.Fatal(r.err)
	}
	for _, c := range r.changes {
		e.t.Errorf("while %s's plugin pod was replaced, another node's allocatable changed: %s", node, c)
	}
}

// allocatableOf is the node's accel allocatable as a comparable string.
func (e *env) allocatableOf() string {
	n, err := e.cs.CoreV1().Nodes().Get(context.Background(), e.node, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	return allocatableString(n)
}

func allocatableString(n *corev1.Node) string {
	ac, mon := n.Status.Allocatable[acRes], n.Status.Allocatable[monRes]
	return fmt.Sprintf("ac %d, ac-monitor %d", ac.Value(), mon.Value())
}
