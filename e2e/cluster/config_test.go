package cluster

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

func testPaths() paths {
	return paths{o: Options{StateDir: "/s", RunDir: "/r", LogDir: "/l", CacheDir: "/c"}.Defaults()}
}

func TestKubeconfig(t *testing.T) {
	pki, err := GeneratePKI("vm", nil)
	if err != nil {
		t.Fatal(err)
	}
	kp := pki.Pairs[certAdmin]
	data := renderKubeconfig(apiServerURL(), "admin", pki.Pairs[certCA].CertPEM, kp.CertPEM, kp.KeyPEM)
	cfg, err := clientcmd.RESTConfigFromKubeConfig([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" {
		t.Errorf("host %q", cfg.Host)
	}
	if string(cfg.CAData) != string(pki.Pairs[certCA].CertPEM) || string(cfg.CertData) != string(kp.CertPEM) || string(cfg.KeyData) != string(kp.KeyPEM) {
		t.Errorf("embedded data differ")
	}
	if !strings.Contains(data, base64.StdEncoding.EncodeToString(kp.CertPEM)) {
		t.Errorf("cert not embedded")
	}
}

func TestKubeletConfig(t *testing.T) {
	var m map[string]any
	if err := yaml.Unmarshal([]byte(renderKubeletConfig(testPaths())), &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"kind": "KubeletConfiguration", "failCgroupV1": false, "oomScoreAdj": float64(0), "address": "127.0.0.1",
		"cgroupDriver": "cgroupfs", "imageGCHighThresholdPercent": float64(100), "imageGCLowThresholdPercent": float64(99),
		"containerRuntimeEndpoint": "unix:///r/containerd.sock", "readOnlyPort": float64(0),
		"tlsCertFile": "/s/pki/kubelet-server.crt",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if m["authorization"].(map[string]any)["mode"] != "Webhook" {
		t.Errorf("authorization %v", m["authorization"])
	}
	authn := m["authentication"].(map[string]any)
	if authn["webhook"].(map[string]any)["enabled"] != true || authn["anonymous"].(map[string]any)["enabled"] != false {
		t.Errorf("authentication %v", authn)
	}
	if authn["x509"].(map[string]any)["clientCAFile"] != "/s/pki/ca.crt" {
		t.Errorf("x509 %v", authn["x509"])
	}
	if m["evictionHard"].(map[string]any)["nodefs.available"] != "1%" {
		t.Errorf("evictionHard %v", m["evictionHard"])
	}
}

func TestContainerdConfig(t *testing.T) {
	c := renderContainerdConfig(testPaths())
	for _, want := range []string{
		`root = "/s/containerd"`, `state = "/r/containerd"`, `address = "/r/containerd.sock"`,
		`sandbox_image = "localhost/pause:3.10"`, `restrict_oom_score_adj = true`, `SystemdCgroup = false`,
		`bin_dir = "/usr/lib/cni"`, `conf_dir = "/s/cni/net.d"`, `version = 2`,
	} {
		if !strings.Contains(c, want) {
			t.Errorf("containerd config lacks %s", want)
		}
	}
	if strings.Contains(c, "/run/containerd/containerd.sock") || strings.Contains(c, "/var/lib/containerd") {
		t.Errorf("containerd config uses the distribution's paths")
	}
}

func TestCNIConfig(t *testing.T) {
	var m struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(renderCNIConfig(testPaths())), &m); err != nil {
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
	p := testPaths()
	api := argMap(apiServerArgs(p))
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
	cm := argMap(controllerManagerArgs(p))
	if cm["use-service-account-credentials"] != "true" || cm["leader-elect"] != "false" || cm["root-ca-file"] != "/s/pki/ca.crt" {
		t.Errorf("controller-manager %v", cm)
	}
	if s := argMap(schedulerArgs(p)); s["leader-elect"] != "false" || s["kubeconfig"] != "/s/scheduler.kubeconfig" {
		t.Errorf("scheduler %v", s)
	}
	if k := argMap(kubeletArgs(p)); k["config"] != "/s/config/kubelet.yaml" || k["kubeconfig"] != "/s/kubelet.kubeconfig" {
		t.Errorf("kubelet %v", k)
	}
	e := argMap(etcdArgs(p))
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
