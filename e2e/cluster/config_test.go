package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	"k8s.io/client-go/tools/clientcmd"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"
	"sigs.k8s.io/yaml"
)

func testCluster() *Cluster {
	return New(Options{StateDir: "/s", RunDir: "/r", LogDir: "/l", CacheDir: "/c"})
}

// TestKubeconfig: client-go reads the kubeconfig Up writes as the given
// user of the accel-e2e cluster at the API server, with the CA, certificate
// and key embedded.
func TestKubeconfig(t *testing.T) {
	pki, err := GeneratePKI("vm", nil)
	if err != nil {
		t.Fatal(err)
	}
	kp := pki.Pairs[certAdmin]
	data, err := clientcmd.Write(*kubeconfigFor(apiServerURL(), "admin", pki.Pairs[certCA].CertPEM, kp.CertPEM, kp.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" {
		t.Errorf("host %q", cfg.Host)
	}
	if string(cfg.CAData) != string(pki.Pairs[certCA].CertPEM) || string(cfg.CertData) != string(kp.CertPEM) || string(cfg.KeyData) != string(kp.KeyPEM) {
		t.Errorf("embedded data differ")
	}
	raw, err := clientcmd.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	ctx := raw.Contexts[raw.CurrentContext]
	if raw.CurrentContext != "accel-e2e" || ctx == nil || ctx.Cluster != "accel-e2e" || ctx.AuthInfo != "admin" {
		t.Errorf("current context %q: %+v, want cluster accel-e2e, user admin", raw.CurrentContext, ctx)
	}
	if u := raw.AuthInfos["admin"]; u == nil || string(u.ClientCertificateData) != string(kp.CertPEM) {
		t.Errorf("user admin: %+v", u)
	}
}

// loadKubeletConfig writes c's KubeletConfiguration as Up does and reads
// it back with kubelet's own loader (strict decoding, then defaults).
func loadKubeletConfig(t *testing.T, c *Cluster) *kubeletconfig.KubeletConfiguration {
	t.Helper()
	b, err := yaml.Marshal(c.kubeletConfig())
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "kubelet.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, f)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := loader.Load(context.Background())
	if err != nil {
		t.Fatalf("kubelet does not load its config: %v\n%s", err, b)
	}
	return kc
}

func TestKubeletConfig(t *testing.T) {
	kc := loadKubeletConfig(t, testCluster())
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"failCgroupV1", kc.FailCgroupV1, false},
		{"cgroupRoot", kc.CgroupRoot, "/" + CgroupRoot},
		{"oomScoreAdj", kc.OOMScoreAdj, int32(0)},
		{"address", kc.Address, "127.0.0.1"},
		{"port", kc.Port, int32(10250)},
		{"readOnlyPort", kc.ReadOnlyPort, int32(0)},
		{"healthzBindAddress", kc.HealthzBindAddress, "127.0.0.1"},
		{"healthzPort", kc.HealthzPort, int32(10248)},
		{"cgroupDriver", kc.CgroupDriver, "cgroupfs"},
		{"imageGCHighThresholdPercent", kc.ImageGCHighThresholdPercent, int32(100)},
		{"imageGCLowThresholdPercent", kc.ImageGCLowThresholdPercent, int32(99)},
		{"serializeImagePulls", kc.SerializeImagePulls, false},
		{"containerRuntimeEndpoint", kc.ContainerRuntimeEndpoint, "unix:///r/containerd.sock"},
		{"tlsCertFile", kc.TLSCertFile, "/s/pki/kubelet-server.crt"},
		{"tlsPrivateKeyFile", kc.TLSPrivateKeyFile, "/s/pki/kubelet-server.key"},
		{"authorization.mode", string(kc.Authorization.Mode), "Webhook"},
		{"authentication.webhook.enabled", kc.Authentication.Webhook.Enabled, true},
		{"authentication.anonymous.enabled", kc.Authentication.Anonymous.Enabled, false},
		{"authentication.x509.clientCAFile", kc.Authentication.X509.ClientCAFile, "/s/pki/ca.crt"},
		{"evictionHard[memory.available]", kc.EvictionHard["memory.available"], "20Mi"},
		{"evictionHard[nodefs.available]", kc.EvictionHard["nodefs.available"], "1%"},
		{"evictionHard[imagefs.inodesFree]", kc.EvictionHard["imagefs.inodesFree"], "1%"},
		{"evictionPressureTransitionPeriod", kc.EvictionPressureTransitionPeriod.Duration, 30 * time.Second},
		{"nodeStatusUpdateFrequency", kc.NodeStatusUpdateFrequency.Duration, 5 * time.Second},
		{"shutdownGracePeriod", kc.ShutdownGracePeriod.Duration, time.Duration(0)},
		{"resolvConf", kc.ResolverConfig, "/etc/resolv.conf"},
		{"maxPods", kc.MaxPods, int32(110)},
	} {
		if c.got != c.want {
			t.Errorf("kubelet reads %s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
	if len(kc.EvictionHard) != 5 {
		t.Errorf("evictionHard %v: want exactly the five thresholds set", kc.EvictionHard)
	}
}

// TestContainerdConfig decodes the containerd config as TOML and checks the
// values containerd 2 reads (config version 3 plugin IDs): every path is the
// cluster's own, the shim and runc are named by path, CDI reads both spec
// directories.
func TestContainerdConfig(t *testing.T) {
	c := testCluster()
	var cfg map[string]any
	if err := toml.Unmarshal([]byte(c.containerdConfig()), &cfg); err != nil {
		t.Fatalf("containerd config is not TOML: %v\n%s", err, c.containerdConfig())
	}
	get := func(path ...string) any {
		var v any = cfg
		for _, k := range path {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		}
		return v
	}
	const (
		runtime = "io.containerd.cri.v1.runtime"
		images  = "io.containerd.cri.v1.images"
	)
	runc := []string{"plugins", runtime, "containerd", "runtimes", "runc"}
	for _, k := range []struct {
		path []string
		want any
	}{
		{[]string{"version"}, int64(3)},
		{[]string{"root"}, "/s/containerd"},
		{[]string{"state"}, "/r/containerd"},
		{[]string{"grpc", "address"}, "/r/containerd.sock"},
		{[]string{"ttrpc", "address"}, "/r/containerd.sock.ttrpc"},
		{[]string{"plugins", "io.containerd.shim.v1.manager", "socket_dir"}, "/r/s"},
		{[]string{"plugins", "io.containerd.grpc.v1.cri", "stream_server_address"}, "127.0.0.1"},
		{[]string{"plugins", images, "snapshotter"}, "overlayfs"},
		{[]string{"plugins", images, "pinned_images", "sandbox"}, PauseImage},
		{[]string{"plugins", runtime, "restrict_oom_score_adj"}, true},
		{[]string{"plugins", runtime, "enable_selinux"}, false},
		{[]string{"plugins", runtime, "containerd", "default_runtime_name"}, "runc"},
		{append(runc, "runtime_type"), "io.containerd.runc.v2"},
		{append(runc, "runtime_path"), "/c/containerd-" + ContainerdVersion + "/containerd-shim-runc-v2"},
		{append(runc, "options", "BinaryName"), "/usr/bin/runc"},
		{append(runc, "options", "Root"), "/r/runc"},
		{append(runc, "options", "SystemdCgroup"), false},
		{[]string{"plugins", runtime, "cni", "conf_dir"}, "/s/cni/net.d"},
		{[]string{"plugins", runtime, "cni", "max_conf_num"}, int64(1)},
	} {
		if got := get(k.path...); got != k.want {
			t.Errorf("%s = %#v, want %#v", strings.Join(k.path, "."), got, k.want)
		}
	}
	for _, k := range []struct {
		path []string
		want []string
	}{
		{[]string{"plugins", runtime, "cdi_spec_dirs"}, []string{"/etc/cdi", "/var/run/cdi"}},
		{[]string{"plugins", runtime, "cni", "bin_dirs"}, []string{"/usr/lib/cni"}},
	} {
		if got := fmt.Sprint(get(k.path...)); got != fmt.Sprint(k.want) {
			t.Errorf("%s = %s, want %v", strings.Join(k.path, "."), got, k.want)
		}
	}
	// The 1.x CRI plugin keys would be ignored (or refused) by containerd 2.
	for _, old := range []string{"sandbox_image", "snapshotter", "cni", "containerd"} {
		if get("plugins", "io.containerd.grpc.v1.cri", old) != nil {
			t.Errorf("io.containerd.grpc.v1.cri.%s is set: containerd 2 reads it from the cri.v1 plugins", old)
		}
	}
	if len(c.shimSocketDir()) > 42 {
		t.Errorf("shim socket dir %s is longer than containerd's limit (42)", c.shimSocketDir())
	}
	if d := New(Options{}).shimSocketDir(); len(d) > 42 {
		t.Errorf("default shim socket dir %s is longer than containerd's limit (42)", d)
	}
	if s := c.containerdConfig(); strings.Contains(s, "/run/containerd") || strings.Contains(s, "/var/lib/containerd") {
		t.Errorf("containerd config uses the distribution's paths")
	}
}

// TestContainerdBuild: containerd is installed at ContainerdVersion from its
// module, without cgo, into the directory given, with its version stamped.
func TestContainerdBuild(t *testing.T) {
	cmd := containerdBuild(context.Background(), "/c/tmp")
	args := strings.Join(cmd.Args[1:], " ")
	for _, b := range containerdBinaries {
		if !strings.Contains(args, "github.com/containerd/containerd/v2/cmd/"+b+"@"+ContainerdVersion) {
			t.Errorf("go %s: does not install %s@%s", args, b, ContainerdVersion)
		}
	}
	if !strings.HasPrefix(args, "install -trimpath ") || !strings.Contains(args, "version.Version="+ContainerdVersion) {
		t.Errorf("go %s", args)
	}
	env := strings.Join(cmd.Env, "\n")
	for _, want := range []string{"GOBIN=/c/tmp", "CGO_ENABLED=0"} {
		if !strings.Contains(env, "\n"+want+"\n") && !strings.HasSuffix(env, "\n"+want) {
			t.Errorf("build environment lacks %s", want)
		}
	}
}

func TestCNIConfig(t *testing.T) {
	var m struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(testCluster().cniConfig()), &m); err != nil {
		t.Fatal(err)
	}
	if m.Name != CNINetworkName || len(m.Plugins) != 2 || m.Plugins[0]["type"] != "bridge" || m.Plugins[1]["type"] != "loopback" {
		t.Fatalf("conflist %+v", m)
	}
	br := m.Plugins[0]
	if br["bridge"] != BridgeName || br["isGateway"] != true || br["ipMasq"] != false {
		t.Errorf("bridge %v", br)
	}
	ipam := br["ipam"].(map[string]any)
	if ipam["type"] != "host-local" || ipam["dataDir"] != "/s/cni/networks" {
		t.Errorf("ipam %v", ipam)
	}
	if len(BridgeName) > 15 {
		t.Errorf("bridge name %q longer than IFNAMSIZ-1", BridgeName)
	}
	_, pods, _ := net.ParseCIDR(PodCIDR)
	if !pods.Contains(net.ParseIP(BridgeGateway)) {
		t.Errorf("gateway outside the pod CIDR")
	}
	_, svc, _ := net.ParseCIDR(ServiceCIDR)
	if !svc.Contains(net.ParseIP(KubernetesSvcIP)) {
		t.Errorf("kubernetes service IP outside the service CIDR")
	}
}

func argMap(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		m[k] = v
	}
	return m
}

func TestComponentArgs(t *testing.T) {
	p := testCluster()
	api := argMap(p.apiServerArgs())
	for k, v := range map[string]string{
		"bind-address": "0.0.0.0", "secure-port": "6443", "service-cluster-ip-range": ServiceCIDR,
		"kubelet-preferred-address-types": "Hostname,InternalIP", "etcd-servers": "http://127.0.0.1:12379",
		"requestheader-allowed-names": "front-proxy-client", "authorization-mode": "Node,RBAC",
		"service-account-signing-key-file": "/s/pki/sa.key", "service-account-key-file": "/s/pki/sa.pub",
	} {
		if api[k] != v {
			t.Errorf("kube-apiserver --%s=%q, want %q", k, api[k], v)
		}
	}
	cm := argMap(p.controllerManagerArgs())
	if cm["use-service-account-credentials"] != "true" || cm["leader-elect"] != "false" || cm["root-ca-file"] != "/s/pki/ca.crt" {
		t.Errorf("controller-manager %v", cm)
	}
	if s := argMap(p.schedulerArgs()); s["leader-elect"] != "false" || s["kubeconfig"] != "/s/scheduler.kubeconfig" {
		t.Errorf("scheduler %v", s)
	}
	if k := argMap(p.kubeletArgs()); k["config"] != "/s/config/kubelet.yaml" || k["kubeconfig"] != "/s/kubelet.kubeconfig" {
		t.Errorf("kubelet %v", k)
	}
	e := argMap(p.etcdArgs())
	if e["listen-client-urls"] != "http://127.0.0.1:12379" || e["data-dir"] != "/s/etcd" {
		t.Errorf("etcd %v", e)
	}
	for _, c := range components {
		exe, _ := p.command(c)
		if exe == "" {
			t.Errorf("%s: no executable", c)
		}
	}
}

func TestLDFlags(t *testing.T) {
	f := kubeLDFlags("v1.37.2")
	for _, want := range []string{"version.gitVersion=v1.37.2", "version.gitMajor=1", "version.gitMinor=37", "client-go/pkg/version.gitVersion=v1.37.2"} {
		if !strings.Contains(f, want) {
			t.Errorf("ldflags lack %s: %s", want, f)
		}
	}
}
