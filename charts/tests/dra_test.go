package tests

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// api=dra: the plugin runs as the DRA driver, with kubelet's plugin
// directories instead of the device-plugin one, the CDI spec directory,
// its pod UID for rolling updates (maxSurge 1, maxUnavailable 0 by
// default), and the uninstall check.
func TestDRA(t *testing.T) {
	r := render(t, "dra.yaml")
	plugin, _ := daemonSets(t, r)
	c := onlyContainer(t, plugin)
	for _, a := range []string{"serve", "--api=dra", "--dra-plugin-dir=/var/lib/kubelet/plugins/accel.io",
		"--dra-registrar-dir=/var/lib/kubelet/plugins_registry", "--cdi-spec-dir=/var/run/cdi", "--pod-uid=$(POD_UID)",
		"--uninstall-daemonset=" + namespace + "/" + pluginDS, "--resource-prefix=accel.io", "--monitor-slots=8", "--node-name=$(NODE_NAME)"} {
		if !hasArg(c.Args, a) {
			t.Errorf("plugin args %q lack %q", c.Args, a)
		}
	}
	for _, p := range []string{"--kubelet-dir", "--cdi="} {
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, p) }) {
			t.Errorf("plugin args %q: %s... is for the device-plugin API", c.Args, p)
		}
	}
	if got := envFieldRef(c, "POD_UID"); got != "metadata.uid" {
		t.Errorf("POD_UID from %q, want the downward API's metadata.uid", got)
	}
	if tok := plugin.Spec.Template.Spec.AutomountServiceAccountToken; tok == nil || !*tok {
		t.Errorf("automountServiceAccountToken %v: the driver needs its token", deref(tok))
	}
	wantHostPathMount(t, plugin, "/var/lib/kubelet/plugins/accel.io", "/var/lib/kubelet/plugins/accel.io", corev1.HostPathDirectoryOrCreate, false, nil)
	wantHostPathMount(t, plugin, "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins_registry", corev1.HostPathDirectory, false, nil)
	wantHostPathMount(t, plugin, "/var/run/cdi", "/var/run/cdi", corev1.HostPathDirectoryOrCreate, false, nil)
	if m, _ := mountAt(t, plugin, "/var/lib/kubelet/device-plugins"); m != nil {
		t.Errorf("device-plugin directory mounted in DRA mode: %+v", m)
	}
	if s := plugin.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxSurge == nil || *s.RollingUpdate.MaxSurge != intstr.FromInt32(1) ||
		s.RollingUpdate.MaxUnavailable == nil || *s.RollingUpdate.MaxUnavailable != intstr.FromInt32(0) {
		t.Errorf("DRA updateStrategy %+v, want RollingUpdate maxSurge 1 maxUnavailable 0", s)
	}
	// An explicit strategy wins; the device-plugin default stays as it was.
	plugin, _ = daemonSets(t, render(t, "dra.yaml", "--set", "plugin.updateStrategy.type=OnDelete"))
	if s := plugin.Spec.UpdateStrategy; s.Type != appsv1.OnDeleteDaemonSetStrategyType || s.RollingUpdate != nil {
		t.Errorf("plugin.updateStrategy OnDelete: got %+v", s)
	}
	plugin, _ = daemonSets(t, render(t, "defaults.yaml"))
	if s := plugin.Spec.UpdateStrategy; s.RollingUpdate == nil || s.RollingUpdate.MaxSurge != nil ||
		s.RollingUpdate.MaxUnavailable == nil || *s.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("device-plugin updateStrategy %+v, want maxUnavailable 1 only", s)
	}
	if slices.ContainsFunc(onlyContainer(t, plugin).Env, func(e corev1.EnvVar) bool { return e.Name == "POD_UID" }) {
		t.Errorf("POD_UID set for the device plugin")
	}

	// Other directories, and the cluster-wide permissions of a driver.
	plugin, _ = daemonSets(t, render(t, "dra.yaml", "--set", "dra.pluginsDir=/k/plugins/", "--set", "dra.registrarDir=/k/reg",
		"--set", "plugin.resourcePrefix=npu.example.com", "--set", "cdi.specDir=/etc/cdi"))
	args := onlyContainer(t, plugin).Args
	for _, a := range []string{"--dra-plugin-dir=/k/plugins/npu.example.com", "--dra-registrar-dir=/k/reg", "--cdi-spec-dir=/etc/cdi"} {
		if !hasArg(args, a) {
			t.Errorf("plugin args %q lack %q", args, a)
		}
	}
	wantHostPathMount(t, plugin, "/k/plugins/npu.example.com", "/k/plugins/npu.example.com", corev1.HostPathDirectoryOrCreate, false, nil)
}

// Without node labels the driver still gets its Node (owner of its slices).
func TestDRARBAC(t *testing.T) {
	for _, labelNode := range []bool{true, false} {
		r := render(t, "dra.yaml", "--set", "plugin.labelNode="+map[bool]string{true: "true", false: "false"}[labelNode])
		var cr rbacv1.ClusterRole
		r.decode(t, "ClusterRole", pluginDS, &cr)
		checkRules(t, cr.Rules, labelNode, true)
		if r.find("Role", pluginDS) == nil {
			t.Errorf("labelNode=%v: no Role for the uninstall check", labelNode)
		}
	}
	r := render(t, "dra.yaml", "--set", "rbac.create=false")
	if got := r.ofKind("ClusterRole"); len(got) != 0 {
		t.Errorf("rbac.create=false: ClusterRoles %v", got)
	}
	plugin, _ := daemonSets(t, r)
	if args := onlyContainer(t, plugin).Args; slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--uninstall-daemonset") }) {
		t.Errorf("rbac.create=false: %q still asks for the DaemonSet", args)
	}
}

// The DeviceClasses select the driver's compute and monitor devices by the
// kind attribute, and map the extended resources onto them.
func TestDRADeviceClasses(t *testing.T) {
	r := render(t, "dra.yaml")
	want := map[string]struct{ kind, resource string }{
		"ac.accel.io":         {"compute", "accel.io/ac"},
		"ac-monitor.accel.io": {"monitor", "accel.io/ac-monitor"},
	}
	if got := r.ofKind("DeviceClass"); len(got) != len(want) {
		t.Fatalf("DeviceClasses %v, want %d", got, len(want))
	}
	for name, w := range want {
		var dc resourcev1.DeviceClass
		r.decode(t, "DeviceClass", name, &dc)
		if len(dc.Spec.Selectors) != 1 || dc.Spec.Selectors[0].CEL == nil {
			t.Fatalf("%s: selectors %+v, want one CEL selector", name, dc.Spec.Selectors)
		}
		wantExpr := `device.driver == "accel.io" && device.attributes["accel.io"].kind == "` + w.kind + `"`
		if got := dc.Spec.Selectors[0].CEL.Expression; got != wantExpr {
			t.Errorf("%s: CEL %q, want %q", name, got, wantExpr)
		}
		if dc.Spec.ExtendedResourceName == nil || *dc.Spec.ExtendedResourceName != w.resource {
			t.Errorf("%s: extendedResourceName %v, want %s", name, deref(dc.Spec.ExtendedResourceName), w.resource)
		}
	}
	r = render(t, "dra.yaml", "--set", "dra.extendedResources=false", "--set", "plugin.resourcePrefix=npu.example.com")
	var dc resourcev1.DeviceClass
	r.decode(t, "DeviceClass", "ac.npu.example.com", &dc)
	if dc.Spec.ExtendedResourceName != nil || !strings.Contains(dc.Spec.Selectors[0].CEL.Expression, `device.attributes["npu.example.com"].kind`) {
		t.Errorf("extendedResources=false, prefix npu.example.com: %+v", dc.Spec)
	}
	for _, values := range [][]string{{"dra.yaml", "--set", "dra.deviceClasses=false"}, {"defaults.yaml"}} {
		if got := render(t, values...).ofKind("DeviceClass"); len(got) != 0 {
			t.Errorf("%v: DeviceClasses %v rendered", values, got)
		}
	}
}

// After helm uninstall the hook also deletes the driver's ResourceSlices
// (the driver's own deletion races with its RBAC going), with list and
// delete on them only; without node labels it does not touch nodes.
func TestDRACleanupHook(t *testing.T) {
	r := render(t, "dra.yaml", "--set", "plugin.labelNode=false")
	var job batchv1.Job
	var cr rbacv1.ClusterRole
	for _, h := range r.hooks {
		switch h.Kind {
		case "Job":
			if err := yaml.UnmarshalStrict([]byte(h.Raw), &job); err != nil {
				t.Fatal(err)
			}
		case "ClusterRole":
			if err := yaml.UnmarshalStrict([]byte(h.Raw), &cr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(job.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("no cleanup job in DRA mode without node labels")
	}
	wantArgs(t, "cleanup", job.Spec.Template.Spec.Containers[0].Args,
		[]string{"unlabel-nodes", "--resource-prefix=accel.io", "--labels=false", "--resource-slices=true"})
	if len(cr.Rules) != 1 || !slices.Equal(cr.Rules[0].APIGroups, []string{"resource.k8s.io"}) ||
		!slices.Equal(cr.Rules[0].Resources, []string{"resourceslices"}) || !slices.Equal(slices.Sorted(slices.Values(cr.Rules[0].Verbs)), []string{"delete", "list"}) {
		t.Errorf("cleanup rules %+v, want list and delete on resourceslices only", cr.Rules)
	}
}

func TestDRARefusals(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want string
	}{
		{[]string{"--set", "cdi.enabled=true"}, "cdi.enabled is for api=devicePlugin"},
		{[]string{"--set", "dra.registrarDir=/var/lib/kubelet/plugins/"}, "dra.pluginsDir and dra.registrarDir must differ"},
		{[]string{"--set", "cdi.specDir=/var/lib/kubelet/plugins/cdi"}, "cdi.specDir /var/lib/kubelet/plugins/cdi overlaps dra.pluginsDir"},
		{[]string{"--set", "dra.pluginsDir=plugins"}, "'/dra/pluginsDir'"},
		{[]string{"--set", "dra.extendedResources=yes"}, "'/dra/extendedResources'"},
	} {
		if out := mustFail(t, append([]string{"dra.yaml"}, c.set...)...); !strings.Contains(out, c.want) {
			t.Errorf("%v: error %q lacks %q", c.set, out, c.want)
		}
	}
	if out := mustFail(t, "--set", "api=DRA"); !strings.Contains(out, "'/api'") {
		t.Errorf("api=DRA: error %q does not name /api", out)
	}
}

// The DRA examples decode strictly, use the chart's classes, and run the
// same script as the device-plugin examples.
func TestDRAExamples(t *testing.T) {
	classes := map[string]bool{"ac.accel.io": true, "ac-monitor.accel.io": true}
	for _, file := range []string{"claim-template.yaml", "shared-monitor.yaml", "admin-exporter.yaml", "numa-pair.yaml"} {
		data, err := os.ReadFile(filepath.Join(chartDir, "examples", "dra", file))
		if err != nil {
			t.Fatal(err)
		}
		templates := map[string]resourcev1.ResourceClaimTemplate{}
		var pods []corev1.Pod
		for _, part := range docSep.Split(string(data), -1) {
			var head struct{ Kind string }
			if err := yaml.Unmarshal([]byte(part), &head); err != nil || head.Kind == "" {
				t.Fatalf("%s: a document without kind (%v)", file, err)
			}
			switch head.Kind {
			case "ResourceClaimTemplate":
				var rct resourcev1.ResourceClaimTemplate
				if err := yaml.UnmarshalStrict([]byte(part), &rct); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				for _, r := range rct.Spec.Spec.Devices.Requests {
					if r.Exactly == nil || !classes[r.Exactly.DeviceClassName] {
						t.Errorf("%s: request %s: not one of the chart's classes: %+v", file, r.Name, r.Exactly)
					}
				}
				templates[rct.Name] = rct
			case "Pod":
				var pod corev1.Pod
				if err := yaml.UnmarshalStrict([]byte(part), &pod); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				pods = append(pods, pod)
			case "Namespace":
				var ns corev1.Namespace
				if err := yaml.UnmarshalStrict([]byte(part), &ns); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				if ns.Labels["resource.kubernetes.io/admin-access"] != "true" {
					t.Errorf("%s: namespace %s is not labelled for admin access", file, ns.Name)
				}
			default:
				t.Errorf("%s: unexpected kind %s", file, head.Kind)
			}
		}
		if len(pods) == 0 {
			t.Fatalf("%s: no pod", file)
		}
		for _, pod := range pods {
			c := pod.Spec.Containers[0]
			if len(pod.Spec.ResourceClaims) != 1 || len(c.Resources.Claims) != 1 || c.Resources.Claims[0].Name != pod.Spec.ResourceClaims[0].Name {
				t.Fatalf("%s: pod %s: want one claim used by its container", file, pod.Name)
			}
			tn := pod.Spec.ResourceClaims[0].ResourceClaimTemplateName
			if tn == nil || templates[*tn].Name == "" {
				t.Errorf("%s: pod %s: template %v not in the file", file, pod.Name, deref(tn))
			}
			if script := strings.Join(c.Command, " "); !strings.Contains(script, "ls -l /dev/accel") || !strings.Contains(script, "env | grep ACCEL") {
				t.Errorf("%s: pod %s: command %q", file, pod.Name, script)
			}
		}
	}
}
