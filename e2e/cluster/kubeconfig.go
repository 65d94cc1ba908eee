package cluster

import (
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFor is a kubeconfig for user with everything embedded: one
// cluster and one context, both named accel-e2e.
func kubeconfigFor(server, user string, caPEM, certPEM, keyPEM []byte) *clientcmdapi.Config {
	const name = "accel-e2e"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	return cfg
}

// writeKubeconfigs writes the kubeconfigs of admin, controller-manager,
// scheduler and kubelet.
func (c *Cluster) writeKubeconfigs(pki *PKI) error {
	ca := pki.Pairs[certCA].CertPEM
	for _, k := range []struct{ name, user string }{
		{certAdmin, "admin"},
		{certControllerMgr, "system:kube-controller-manager"},
		{certScheduler, "system:kube-scheduler"},
		{certKubelet, "kubelet"},
	} {
		kp := pki.Pairs[k.name]
		cfg := kubeconfigFor(apiServerURL(), k.user, ca, kp.CertPEM, kp.KeyPEM)
		if err := clientcmd.WriteToFile(*cfg, c.kubeconfig(k.name)); err != nil {
			return fmt.Errorf("write the %s kubeconfig: %w", k.name, err)
		}
	}
	return nil
}

// AdminKubeconfig is the path of the admin (system:masters) kubeconfig.
func (c *Cluster) AdminKubeconfig() string { return c.kubeconfig(certAdmin) }

// RESTConfig is the admin client configuration of the cluster.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("read the admin kubeconfig %s (is the cluster up?): %w", c.AdminKubeconfig(), err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

func (c *Cluster) clientset() (*kubernetes.Clientset, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}
