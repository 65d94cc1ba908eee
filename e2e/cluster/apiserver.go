package cluster

import (
	"context"
	"errors"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
)

// apiServerURL is where the components reach the API server.
func apiServerURL() string { return "https://127.0.0.1:" + strconv.Itoa(APIServerPort) }

// apiServerArgs is kube-apiserver's command line.
func (c *Cluster) apiServerArgs() []string {
	return []string{
		"--etcd-servers=" + etcdURL(etcdClientPort),
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--tls-cert-file=" + c.pki(certAPIServer+".crt"),
		"--tls-private-key-file=" + c.pki(certAPIServer+".key"),
		"--client-ca-file=" + c.pki(certCA+".crt"),
		"--kubelet-client-certificate=" + c.pki(certKubeletClient+".crt"),
		"--kubelet-client-key=" + c.pki(certKubeletClient+".key"),
		"--kubelet-certificate-authority=" + c.pki(certCA+".crt"),
		"--kubelet-preferred-address-types=Hostname,InternalIP",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki(keyServiceAccount+".pub"),
		"--service-account-signing-key-file=" + c.pki(keyServiceAccount+".key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--requestheader-client-ca-file=" + c.pki(certFrontProxyCA+".crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + c.pki(certFrontProxyClient+".crt"),
		"--proxy-client-key-file=" + c.pki(certFrontProxyClient+".key"),
		"--profiling=false",
		"--v=1",
	}
}

// waitAPIServer waits for /readyz.
func (c *Cluster) waitAPIServer(ctx context.Context, cs *kubernetes.Clientset) error {
	return c.waitFor(ctx, "kube-apiserver /readyz", []string{compEtcd, compAPIServer}, 120*time.Second, 200*time.Millisecond, func(ctx context.Context) error {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return err
		}
		if string(b) != "ok" {
			return errors.New(string(b))
		}
		return nil
	})
}
