package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// writeKubeconfigs writes the kubeconfigs of admin, controller-manager,
// scheduler and kubelet.
func (p paths) writeKubeconfigs(pki *PKI) error {
	ca := pki.Pairs[certCA].CertPEM
	for _, c := range []struct{ name, user string }{
		{certAdmin, "admin"},
		{certControllerMgr, "system:kube-controller-manager"},
		{certScheduler, "system:kube-scheduler"},
		{certKubelet, "kubelet"},
	} {
		kp := pki.Pairs[c.name]
		cfg := kubeconfig(apiServerURL(), c.user, ca, kp.CertPEM, kp.KeyPEM)
		if err := clientcmd.WriteToFile(*cfg, p.kubeconfig(c.name)); err != nil {
			return fmt.Errorf("write the %s kubeconfig: %w", c.name, err)
		}
	}
	return nil
}

// RESTConfig is the admin client configuration of the cluster.
func (o Options) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("read the admin kubeconfig %s (is the cluster up?): %w", o.AdminKubeconfig(), err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

func (o Options) clientset() (*kubernetes.Clientset, error) {
	cfg, err := o.RESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// poll calls f every interval until it returns true or an error, or until
// timeout; the last "why not yet" it returned is in the timeout error.
func poll(ctx context.Context, what string, timeout, interval time.Duration, f func(context.Context) (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		ok, why, err := f(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if why != "" {
			last = why
		}
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
			}
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		case <-time.After(interval):
		}
	}
}

// ErrComponentExited is returned when a component died while Up waited.
var ErrComponentExited = errors.New("component exited")

// checkAlive fails when a component died, naming its log. For a component
// this Up or RestartKubelet started, "died" is what its watcher saw (it
// reaped it); for others, its PID file no longer names a live process.
func (p paths) checkAlive(names ...string) error {
	for _, n := range names {
		if c := p.child(n); c != nil {
			if done, err := c.exited(); done {
				return fmt.Errorf("%w: %s (pid %d, %s): see %s", ErrComponentExited, n, c.rec.PID, describeExit(err), p.logFile(n))
			}
			continue
		}
		if _, ok := p.running(n); !ok {
			return fmt.Errorf("%w: %s: see %s", ErrComponentExited, n, p.logFile(n))
		}
	}
	return nil
}

// child is the component name as this Up or RestartKubelet started it, or nil.
func (p paths) child(name string) *child {
	if p.kids == nil {
		return nil
	}
	return p.kids.get(name)
}

// waitEtcd waits for etcd's /health.
func (p paths) waitEtcd(ctx context.Context) error {
	cl := &http.Client{Timeout: 2 * time.Second}
	return poll(ctx, "etcd", 60*time.Second, 100*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		if err := p.checkAlive(compEtcd); err != nil {
			return false, "", err
		}
		resp, err := cl.Get(etcdURL(etcdClientPort) + "/health")
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status, nil
	})
}

// waitContainerd waits until ctr can talk to containerd.
func (p paths) waitContainerd(ctx context.Context) error {
	return poll(ctx, "containerd", 60*time.Second, 100*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		if err := p.checkAlive(compContainerd); err != nil {
			return false, "", err
		}
		if _, err := os.Stat(p.containerdSock()); err != nil {
			return false, "no socket yet", nil
		}
		out, err := p.ctr(ctx, "version")
		if err != nil {
			return false, out, nil
		}
		return true, "", nil
	})
}

// waitAPIServer waits for /readyz.
func (p paths) waitAPIServer(ctx context.Context, cs *kubernetes.Clientset) error {
	return poll(ctx, "kube-apiserver /readyz", 120*time.Second, 200*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		if err := p.checkAlive(compEtcd, compAPIServer); err != nil {
			return false, "", err
		}
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return string(b) == "ok", string(b), nil
	})
}

// waitNodeReady waits until the node is Ready (and, when after is not zero,
// has reported Ready since after).
func (p paths) waitNodeReady(ctx context.Context, cs *kubernetes.Clientset, node string, after time.Time, timeout time.Duration) error {
	return poll(ctx, "node "+node+" Ready", timeout, 200*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		if err := p.checkAlive(compAPIServer, compContainerd, compKubelet); err != nil {
			return false, "", err
		}
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status != corev1.ConditionTrue {
					return false, c.Reason + ": " + c.Message, nil
				}
				if !after.IsZero() {
					if !heartbeatAfter(n, after) {
						return false, "no node status from the new kubelet yet", nil
					}
					// The lease's renewTime has microseconds: proof that
					// the new kubelet, not the old one, reported.
					l, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
					if err != nil {
						return false, err.Error(), nil
					}
					if l.Spec.RenewTime == nil || !l.Spec.RenewTime.Time.After(after) {
						return false, "node lease not renewed by the new kubelet yet", nil
					}
				}
				return true, "", nil
			}
		}
		return false, "no Ready condition", nil
	})
}

// heartbeatAfter: the node's Ready condition was written after t (the
// apiserver stores seconds, so allow for truncation).
func heartbeatAfter(n *corev1.Node, t time.Time) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return !c.LastHeartbeatTime.Time.Before(t.Truncate(time.Second))
		}
	}
	return false
}

// waitNamespacesReady waits for the `default` ServiceAccount and the
// kube-root-ca.crt ConfigMap in default and kube-system: pods are rejected
// or cannot start before them.
func (p paths) waitNamespacesReady(ctx context.Context, cs *kubernetes.Clientset) error {
	return poll(ctx, "the default ServiceAccounts and kube-root-ca.crt", 120*time.Second, 200*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		if err := p.checkAlive(compAPIServer, compCtrlMgr); err != nil {
			return false, "", err
		}
		for _, ns := range []string{"default", "kube-system"} {
			if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
				return false, fmt.Sprintf("serviceaccount %s/default: %v", ns, shortErr(err)), nil
			}
			if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
				return false, fmt.Sprintf("configmap %s/kube-root-ca.crt: %v", ns, shortErr(err)), nil
			}
		}
		return true, "", nil
	})
}

func shortErr(err error) string {
	if apierrors.IsNotFound(err) {
		return "not found"
	}
	return err.Error()
}
