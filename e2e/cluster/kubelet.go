package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
)

// nodeName is the name kubelet registers the node under: the host name,
// lower case.
func nodeName() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", err
	}
	return strings.ToLower(strings.TrimSpace(h)), nil
}

// CgroupRoot is our kubelet's cgroupRoot: its pods' cgroups live under
// /CgroupRoot/kubepods in every hierarchy, so Down touches only those.
const CgroupRoot = "accel-e2e"

// kubeletConfig is the KubeletConfiguration. The package doc (doc.go)
// says why its unusual settings are there: failCgroupV1, oomScoreAdj, the
// loopback address, image GC off; cgroupRoot keeps kubelet's pods under
// their own cgroup root so Down can remove them.
func (c *Cluster) kubeletConfig() *kubeletv1beta1.KubeletConfiguration {
	return &kubeletv1beta1.KubeletConfiguration{
		TypeMeta:                    metav1.TypeMeta{APIVersion: kubeletv1beta1.SchemeGroupVersion.String(), Kind: "KubeletConfiguration"},
		FailCgroupV1:                ptr.To(false),
		CgroupRoot:                  "/" + CgroupRoot,
		Address:                     "127.0.0.1",
		Port:                        10250,
		ReadOnlyPort:                0, // off
		HealthzBindAddress:          "127.0.0.1",
		HealthzPort:                 ptr.To[int32](10248),
		CgroupDriver:                "cgroupfs",
		ContainerRuntimeEndpoint:    "unix://" + c.containerdSock(),
		OOMScoreAdj:                 ptr.To[int32](0),
		ImageGCHighThresholdPercent: ptr.To[int32](100),
		ImageGCLowThresholdPercent:  ptr.To[int32](99),
		SerializeImagePulls:         ptr.To(false),
		ClusterDomain:               "cluster.local",
		ResolverConfig:              ptr.To("/etc/resolv.conf"),
		TLSCertFile:                 c.pki(certKubeletServer + ".crt"),
		TLSPrivateKeyFile:           c.pki(certKubeletServer + ".key"),
		Authentication: kubeletv1beta1.KubeletAuthentication{
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: c.pki(certCA + ".crt")},
		},
		Authorization: kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		EvictionHard: map[string]string{
			"memory.available":   "20Mi",
			"nodefs.available":   "1%",
			"nodefs.inodesFree":  "1%",
			"imagefs.available":  "1%",
			"imagefs.inodesFree": "1%",
		},
		EvictionPressureTransitionPeriod: metav1.Duration{Duration: 30 * time.Second},
		SyncFrequency:                    metav1.Duration{Duration: 10 * time.Second},
		FileCheckFrequency:               metav1.Duration{Duration: 10 * time.Second},
		NodeStatusUpdateFrequency:        metav1.Duration{Duration: 5 * time.Second},
		NodeStatusReportFrequency:        metav1.Duration{Duration: time.Minute},
		ShutdownGracePeriod:              metav1.Duration{}, // no graceful node shutdown
		MaxPods:                          110,
	}
}

// kubeletArgs is kubelet's command line.
func (c *Cluster) kubeletArgs() []string {
	return []string{
		"--config=" + c.config("kubelet.yaml"),
		"--kubeconfig=" + c.kubeconfig(certKubelet),
		"--v=1",
	}
}

// ensureCgroupRoot creates our kubelet's cgroupRoot in every cgroup
// hierarchy (kubelet refuses a cgroupRoot that is missing anywhere); Down
// removes it with everything below.
func ensureCgroupRoot() error {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil { // cgroup v2
		dir := "/sys/fs/cgroup/" + CgroupRoot
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		// Delegate the controllers kubelet uses, as far as the root allows.
		for _, c := range []string{"cpu", "cpuset", "memory", "pids", "io", "hugetlb"} {
			_ = os.WriteFile(dir+"/cgroup.subtree_control", []byte("+"+c), 0o644)
		}
		return nil
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		dir := filepath.Join(filepath.Dir(procs), CgroupRoot)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// RestartKubelet stops kubelet (SIGTERM, then SIGKILL after 15 s), starts it
// with the same configuration, and waits until it has reported the node
// Ready again.
func (c *Cluster) RestartKubelet(ctx context.Context) error {
	node, unlock, err := c.beginOnNode()
	if err != nil {
		return err
	}
	defer unlock()
	if _, ok := c.running(compAPIServer); !ok {
		return errors.New("the cluster is not up: run `localcluster up` first")
	}
	t0 := time.Now()
	if err := c.stop(compKubelet, 15*time.Second); err != nil {
		return err
	}
	stopped := time.Now()
	if _, err := c.start(compKubelet); err != nil {
		return err
	}
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	if err := c.waitNodeReady(ctx, cs, node, stopped, 120*time.Second); err != nil {
		return err
	}
	c.logf("kubelet restarted; node %s Ready in %.1fs", node, time.Since(t0).Seconds())
	return nil
}

// waitNodeReady waits until the node is Ready (and, when after is not zero,
// has reported Ready since after).
func (c *Cluster) waitNodeReady(ctx context.Context, cs *kubernetes.Clientset, node string, after time.Time, timeout time.Duration) error {
	return c.waitFor(ctx, "node "+node+" Ready", []string{compAPIServer, compContainerd, compKubelet}, timeout, 200*time.Millisecond, func(ctx context.Context) error {
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status != corev1.ConditionTrue {
					return errors.New(cond.Reason + ": " + cond.Message)
				}
				if !after.IsZero() {
					if !heartbeatAfter(n, after) {
						return errors.New("no node status from the new kubelet yet")
					}
					// The lease's renewTime has microseconds: proof that
					// the new kubelet, not the old one, reported.
					l, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
					if err != nil {
						return err
					}
					if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(after) {
						return errors.New("node lease not renewed by the new kubelet yet")
					}
				}
				return nil
			}
		}
		return errors.New("no Ready condition")
	})
}

// heartbeatAfter: the node's Ready condition was written after t (the
// apiserver stores seconds, so allow for truncation).
func heartbeatAfter(n *corev1.Node, t time.Time) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return !cond.LastHeartbeatTime.Time.Before(t.Truncate(time.Second))
		}
	}
	return false
}
