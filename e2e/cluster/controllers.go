package cluster

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// controllerManagerArgs is kube-controller-manager's command line.
func (c *Cluster) controllerManagerArgs() []string {
	kc := c.kubeconfig(certControllerMgr)
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + c.pki(keyServiceAccount+".key"),
		"--root-ca-file=" + c.pki(certCA+".crt"),
		"--client-ca-file=" + c.pki(certCA+".crt"),
		"--requestheader-client-ca-file=" + c.pki(certFrontProxyCA+".crt"),
		"--cluster-signing-cert-file=" + c.pki(certCA+".crt"),
		"--cluster-signing-key-file=" + c.pki(certCA+".key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--profiling=false",
		"--v=1",
	}
}

// schedulerArgs is kube-scheduler's command line.
func (c *Cluster) schedulerArgs() []string {
	kc := c.kubeconfig(certScheduler)
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
}

// waitNamespacesReady waits for the `default` ServiceAccount and the
// kube-root-ca.crt ConfigMap in default and kube-system: pods are rejected
// or cannot start before them.
func (c *Cluster) waitNamespacesReady(ctx context.Context, cs *kubernetes.Clientset) error {
	return c.waitFor(ctx, "the default ServiceAccounts and kube-root-ca.crt", []string{compAPIServer, compCtrlMgr}, 120*time.Second, 200*time.Millisecond, func(ctx context.Context) error {
		for _, ns := range []string{"default", "kube-system"} {
			if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
				return fmt.Errorf("serviceaccount %s/default: %s", ns, shortErr(err))
			}
			if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
				return fmt.Errorf("configmap %s/kube-root-ca.crt: %s", ns, shortErr(err))
			}
		}
		return nil
	})
}

func shortErr(err error) string {
	if apierrors.IsNotFound(err) {
		return "not found"
	}
	return err.Error()
}
