package cluster

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
)

// This file makes every configuration and command line; it is pure.

// kubeconfig is a kubeconfig for user with everything embedded: one
// cluster and one context, both named accel-e2e.
func kubeconfig(server, user string, caPEM, certPEM, keyPEM []byte) *clientcmdapi.Config {
	const name = "accel-e2e"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	return cfg
}

func apiServerURL() string { return "https://127.0.0.1:" + strconv.Itoa(APIServerPort) }

func etcdURL(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }

// renderContainerdConfig is containerd's config (version 2, containerd 1.6):
// its own root, state and socket, so it never meets a containerd the
// distribution may run.
func renderContainerdConfig(p paths) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %q
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = %q
      max_conf_num = 1
`, p.containerdRoot(), p.containerdState(), p.containerdSock(), p.containerdSock()+".ttrpc",
		PauseImage, p.cniConfDir())
}

// renderCNIConfig is the CNI network: a bridge whose gateway is the node's
// address for pods, host-local addresses, loopback. No IP masquerade: pod
// traffic stays on the node (FORWARD drops what would leave the bridge).
func renderCNIConfig(p paths) string {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       CNINetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      BridgeName,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": p.cniDataDir(),
					"ranges":  []any{[]any{map[string]any{"subnet": PodCIDR, "gateway": BridgeGateway}}},
					"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "loopback"},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return string(b) + "\n"
}

// kubeletConfig is the KubeletConfiguration. The package doc (doc.go)
// says why its unusual settings are there: failCgroupV1, oomScoreAdj, the
// loopback address, image GC off; cgroupRoot keeps kubelet's pods under
// their own cgroup root so Down can remove them.
func kubeletConfig(p paths) *kubeletv1beta1.KubeletConfiguration {
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
		ContainerRuntimeEndpoint:    "unix://" + p.containerdSock(),
		OOMScoreAdj:                 ptr.To[int32](0),
		ImageGCHighThresholdPercent: ptr.To[int32](100),
		ImageGCLowThresholdPercent:  ptr.To[int32](99),
		SerializeImagePulls:         ptr.To(false),
		ClusterDomain:               "cluster.local",
		ResolverConfig:              ptr.To("/etc/resolv.conf"),
		TLSCertFile:                 p.pki(certKubeletServer + ".crt"),
		TLSPrivateKeyFile:           p.pki(certKubeletServer + ".key"),
		Authentication: kubeletv1beta1.KubeletAuthentication{
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: p.pki(certCA + ".crt")},
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

func etcdArgs(p paths) []string {
	return []string{
		"--name=accel-e2e",
		"--data-dir=" + p.etcdData(),
		"--listen-client-urls=" + etcdURL(etcdClientPort),
		"--advertise-client-urls=" + etcdURL(etcdClientPort),
		"--listen-peer-urls=" + etcdURL(etcdPeerPort),
		"--initial-advertise-peer-urls=" + etcdURL(etcdPeerPort),
		"--initial-cluster=accel-e2e=" + etcdURL(etcdPeerPort),
		"--initial-cluster-state=new",
		"--log-level=warn",
		"--logger=zap",
	}
}

func containerdArgs(p paths) []string {
	return []string{"--config=" + p.config("containerd.toml")}
}

func apiServerArgs(p paths) []string {
	return []string{
		"--etcd-servers=" + etcdURL(etcdClientPort),
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--tls-cert-file=" + p.pki(certAPIServer+".crt"),
		"--tls-private-key-file=" + p.pki(certAPIServer+".key"),
		"--client-ca-file=" + p.pki(certCA+".crt"),
		"--kubelet-client-certificate=" + p.pki(certKubeletClient+".crt"),
		"--kubelet-client-key=" + p.pki(certKubeletClient+".key"),
		"--kubelet-certificate-authority=" + p.pki(certCA+".crt"),
		"--kubelet-preferred-address-types=Hostname,InternalIP",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.pki(keyServiceAccount+".pub"),
		"--service-account-signing-key-file=" + p.pki(keyServiceAccount+".key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--requestheader-client-ca-file=" + p.pki(certFrontProxyCA+".crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.pki(certFrontProxyClient+".crt"),
		"--proxy-client-key-file=" + p.pki(certFrontProxyClient+".key"),
		"--profiling=false",
		"--v=1",
	}
}

func controllerManagerArgs(p paths) []string {
	kc := p.kubeconfig(certControllerMgr)
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.pki(keyServiceAccount+".key"),
		"--root-ca-file=" + p.pki(certCA+".crt"),
		"--client-ca-file=" + p.pki(certCA+".crt"),
		"--requestheader-client-ca-file=" + p.pki(certFrontProxyCA+".crt"),
		"--cluster-signing-cert-file=" + p.pki(certCA+".crt"),
		"--cluster-signing-key-file=" + p.pki(certCA+".key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--profiling=false",
		"--v=1",
	}
}

func schedulerArgs(p paths) []string {
	kc := p.kubeconfig(certScheduler)
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

func kubeletArgs(p paths) []string {
	return []string{
		"--config=" + p.config("kubelet.yaml"),
		"--kubeconfig=" + p.kubeconfig(certKubelet),
		"--v=1",
	}
}

// quoteArgs is a shell-like rendering of a command line, for logs.
func quoteArgs(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if strings.ContainsAny(a, " \t'\"") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
