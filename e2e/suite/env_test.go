package suite

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
)

const (
	namespace = "accel-e2e"
	release   = "accel-e2e"
	acRes     = corev1.ResourceName("accel.io/ac")
	monRes    = corev1.ResourceName("accel.io/ac-monitor")
	devices   = 4
	slots     = 8
)

// env is the cluster under test.
type env struct {
	t          *testing.T
	kubeconfig string
	helm       string
	image      string
	devDir     string // the chart's default devDir: the chart is installed without setting it
	cdiSpecDir string // the chart's default cdi.specDir
	busybox    string
	restartCmd string
	ctr        []string // ctr against the node's containerd, namespace k8s.io (empty: not available)
	cfg        *rest.Config
	cs         kubernetes.Interface
	node       string
}

func newEnv(t *testing.T) *env { return newEnvOn(t, false) }

// newEnvOn is newEnv; anyNodes accepts a cluster of several nodes (the
// single-node stories skip on one).
func newEnvOn(t *testing.T, anyNodes bool) *env {
	kc := os.Getenv("ACCEL_E2E_KUBECONFIG")
	if kc == "" {
		t.Skip("ACCEL_E2E_KUBECONFIG is not set: run `make e2e` (local cluster) or `make e2e-kind`")
	}
	chart, err := cluster.ReadChart("../..")
	if err != nil {
		t.Fatalf("the repository's version and chart defaults: %v", err)
	}
	e := &env{t: t, kubeconfig: kc,
		helm:       getenv("ACCEL_E2E_HELM", "helm"),
		image:      getenv("ACCEL_E2E_IMAGE", "localhost/accel-device-plugin:"+chart.Version),
		devDir:     chart.DevDir,
		cdiSpecDir: chart.CDISpecDir,
		busybox:    getenv("ACCEL_E2E_BUSYBOX", "localhost/busybox:1.36"),
		restartCmd: os.Getenv("ACCEL_E2E_RESTART_KUBELET"),
		ctr:        strings.Fields(os.Getenv("ACCEL_E2E_CTR")),
	}
	if e.cfg, err = clientcmd.BuildConfigFromFlags("", kc); err != nil {
		t.Fatalf("kubeconfig %s: %v", kc, err)
	}
	if e.cs, err = kubernetes.NewForConfig(e.cfg); err != nil {
		t.Fatal(err)
	}
	nodes, err := e.cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	// ACCEL_E2E_TOPOLOGY (make e2e-kind sets it) says which cluster this
	// is meant to be: a mismatch is an error, not a skip. Unset, a story
	// skips on a cluster of the other shape.
	topology := os.Getenv("ACCEL_E2E_TOPOLOGY")
	switch {
	case len(nodes.Items) == 0:
		t.Fatal("the cluster has no nodes")
	case anyNodes:
	case len(nodes.Items) > 1 && topology == "single":
		t.Fatalf("ACCEL_E2E_TOPOLOGY=single, but the cluster has %d nodes", len(nodes.Items))
	case len(nodes.Items) > 1:
		t.Skipf("this story wants a single-node cluster; this one has %d nodes (TestMultiNode is the story for it)", len(nodes.Items))
	default:
		e.node = nodes.Items[0].Name
	}
	return e
}

// kubeletRestartRounds is how many kubelet restarts the crash-loop step
// makes: ACCEL_E2E_KUBELET_RESTARTS, default 10.
func kubeletRestartRounds() int {
	n, err := strconv.Atoi(getenv("ACCEL_E2E_KUBELET_RESTARTS", "10"))
	if err != nil || n < 1 {
		return 10
	}
	return n
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// run runs a command, failing the test with its output on error.
func (e *env) run(name string, args ...string) string {
	e.t.Helper()
	out, err := e.runErr(name, args...)
	if err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) runErr(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// helmInstall installs the chart with simulated devices, or upgrades the
// release, in the given mode, and waits for it. The plugin's view of the
// simulator's directory is recursively read-only or the plugin does not
// start (plugin.recursiveReadOnly=Enabled: containerd 2, runc, Linux 5.12+).
func (e *env) helmInstall(m mode) {
	e.t.Helper()
	e.run(e.helm, e.helmArgs(m)...)
}

// helmArgs is the helm command line of helmInstall, with extra flags.
func (e *env) helmArgs(m mode, extra ...string) []string {
	// The tag follows the last ':' after the last '/' (a registry may have a port).
	repo, tag := e.image, "latest"
	if i := strings.LastIndex(e.image, ":"); i > strings.LastIndex(e.image, "/") {
		repo, tag = e.image[:i], e.image[i+1:]
	}
	chart, _ := filepath.Abs("../../charts/accel-device-plugin")
	args := []string{"upgrade", "--install", release, chart, "--namespace", namespace, "--create-namespace",
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag,
		"--set", fmt.Sprintf("simulator.devices=%d", devices), "--set", fmt.Sprintf("plugin.monitorSlots=%d", slots),
		"--set", "simulator.numaNodes=2", "--set", "logLevel=debug",
		"--set", "plugin.recursiveReadOnly=Enabled", "--set", fmt.Sprintf("cdi.enabled=%t", m.cdi),
		"--set", "api=" + map[bool]string{false: "devicePlugin", true: "dra"}[m.dra],
		"--wait", "--timeout", "3m"}
	return append(args, extra...)
}

// eventually polls cond every interval until it holds or d passes. The API
// is polled as kubectl wait does; nothing here assumes a timing.
func (e *env) eventually(d time.Duration, what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %s (last: %s)", what, d, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// allocatable returns the node's capacity and allocatable of a resource.
func (e *env) quantities(res corev1.ResourceName) (capacity, allocatable int64, labels map[string]string) {
	n, err := e.cs.CoreV1().Nodes().Get(context.Background(), e.node, metav1.GetOptions{})
	if err != nil {
		return -1, -1, nil
	}
	c, a := n.Status.Capacity[res], n.Status.Allocatable[res]
	return c.Value(), a.Value(), n.Labels
}

func (e *env) awaitAllocatable(d time.Duration, acCap, acAlloc, monCap, monAlloc int64) {
	e.t.Helper()
	want := fmt.Sprintf("ac %d/%d, ac-monitor %d/%d", acCap, acAlloc, monCap, monAlloc)
	e.eventually(d, "node capacity/allocatable "+want, func() (bool, string) {
		c1, a1, _ := e.quantities(acRes)
		c2, a2, _ := e.quantities(monRes)
		got := fmt.Sprintf("ac %d/%d, ac-monitor %d/%d", c1, a1, c2, a2)
		return got == want, got
	})
}

// pod is a pod spec builder for the tests.
type podOpt func(*corev1.Pod)

func requests(res corev1.ResourceName, n int64) podOpt {
	return func(p *corev1.Pod) {
		q := *resource.NewQuantity(n, resource.DecimalSI)
		c := &p.Spec.Containers[0]
		if c.Resources.Limits == nil {
			c.Resources.Limits = corev1.ResourceList{}
		}
		c.Resources.Limits[res] = q
	}
}

// hostAccess gives the pod the node's PID namespace and the simulator's
// directory (devDir's parent, as the chart mounts it) and kubelet's;
// privileged pods can also use nsenter on PID 1.
func (e *env) hostAccess(privileged bool) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.HostPID = true
		prop := corev1.MountPropagationHostToContainer
		dirs := map[string]string{"accel-run": filepath.Dir(e.devDir), "device-plugins": "/var/lib/kubelet/device-plugins"}
		for name, path := range dirs {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path}}})
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts,
				corev1.VolumeMount{Name: name, MountPath: path, MountPropagation: &prop})
		}
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: &privileged}
	}
}

// cdiAccess gives the pod the chart's CDI spec directory of the node, at
// the same path (made if missing, as the chart's plugin would).
func (e *env) cdiAccess(p *corev1.Pod) {
	t := corev1.HostPathDirectoryOrCreate
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "cdi-specs", VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: e.cdiSpecDir, Type: &t}}})
	p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts,
		corev1.VolumeMount{Name: "cdi-specs", MountPath: e.cdiSpecDir})
}

func withImage(image string, command ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers[0].Image = image
		p.Spec.Containers[0].Command = command
	}
}

func runOnce(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyNever }

// createPod creates a pod running a shell script in busybox (by default).
func (e *env) createPod(name, script string, opts ...podOpt) *corev1.Pod {
	e.t.Helper()
	zero := int64(0)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &zero,
			RestartPolicy:                 corev1.RestartPolicyAlways,
			Containers: []corev1.Container{{
				Name: "main", Image: e.busybox, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	created, err := e.cs.CoreV1().Pods(namespace).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

func (e *env) deletePod(name string) {
	zero := int64(0)
	err := e.cs.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		e.t.Errorf("delete pod %s: %v", name, err)
	}
	e.eventually(time.Minute, "pod "+name+" gone", func() (bool, string) {
		_, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// awaitPhase waits for a pod phase and returns the pod.
func (e *env) awaitPhase(name string, phase corev1.PodPhase, d time.Duration) *corev1.Pod {
	e.t.Helper()
	var pod *corev1.Pod
	e.eventually(d, "pod "+name+" "+string(phase), func() (bool, string) {
		p, err := e.cs.CoreV1().Pods(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		return p.Status.Phase == phase, fmt.Sprintf("%s %s", p.Status.Phase, p.Status.Message)
	})
	return pod
}

// awaitRunning waits until the pod runs and its log contains marker.
func (e *env) awaitRunning(name, marker string) *corev1.Pod {
	e.t.Helper()
	pod := e.awaitPhase(name, corev1.PodRunning, 2*time.Minute)
	e.eventually(time.Minute, "pod "+name+" logs "+marker, func() (bool, string) {
		l := e.logs(name)
		return strings.Contains(l, marker), l
	})
	return pod
}

func (e *env) logs(name string) string {
	b, err := e.cs.CoreV1().Pods(namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(context.Background())
	if err != nil {
		return "logs: " + err.Error()
	}
	return string(b)
}

// exec runs a command in the container "main" of one of the suite's pods
// and returns stdout+stderr.
func (e *env) exec(pod string, command ...string) (string, error) {
	return e.execIn(namespace, pod, "main", command...)
}

// execIn runs a command in a container of any pod and returns stdout+stderr.
func (e *env) execIn(ns, pod, container string, command ...string) (string, error) {
	req := e.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: container, Command: command, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(e.cfg, "POST", req.URL())
	if err != nil {
		return "", err
	}
	// Stdout and stderr are written from two goroutines: one locked buffer.
	var out lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &out})
	return out.String(), err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (e *env) mustExec(pod string, command ...string) string {
	e.t.Helper()
	out, err := e.exec(pod, command...)
	if err != nil {
		e.t.Fatalf("exec %s %v: %v\n%s", pod, command, err, out)
	}
	return out
}
