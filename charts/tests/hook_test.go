package tests

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// The post-delete hook removes the node labels after `helm uninstall`
// (the plugin's own removal races with the deletion of its RBAC). It must
// be small: list and patch nodes, non-root, no capabilities, and it exists
// only when the plugin labels nodes.
func TestCleanupHook(t *testing.T) {
	r := render(t, "defaults.yaml")
	const name = pluginDS + "-cleanup"
	var kinds []string
	for _, h := range r.hooks {
		kinds = append(kinds, h.Kind+"/"+h.Name)
		if h.Hook != "post-delete" {
			t.Errorf("%s/%s: hook %q, want post-delete", h.Kind, h.Name, h.Hook)
		}
		if !strings.Contains(h.Raw, "hook-succeeded") || !strings.Contains(h.Raw, "before-hook-creation") {
			t.Errorf("%s/%s: not deleted after it succeeds / before it is created again", h.Kind, h.Name)
		}
	}
	slices.Sort(kinds)
	want := []string{"ClusterRole/" + name, "ClusterRoleBinding/" + name, "Job/" + name, "ServiceAccount/" + name}
	if !slices.Equal(kinds, want) {
		t.Fatalf("hooks %v, want %v", kinds, want)
	}
	find := func(kind string, out any) {
		t.Helper()
		for _, h := range r.hooks {
			if h.Kind == kind {
				if err := yaml.UnmarshalStrict([]byte(h.Raw), out); err != nil {
					t.Fatalf("%s does not decode strictly: %v", kind, err)
				}
				return
			}
		}
	}
	var cr rbacv1.ClusterRole
	find("ClusterRole", &cr)
	if len(cr.Rules) != 1 || !slices.Equal(cr.Rules[0].Resources, []string{"nodes"}) ||
		!slices.Equal(slices.Sorted(slices.Values(cr.Rules[0].Verbs)), []string{"list", "patch"}) {
		t.Errorf("cleanup ClusterRole rules %+v, want list and patch on nodes only", cr.Rules)
	}
	var job batchv1.Job
	find("Job", &job)
	ps := job.Spec.Template.Spec
	if ps.ServiceAccountName != name || ps.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("job pod: service account %q, restart %q", ps.ServiceAccountName, ps.RestartPolicy)
	}
	c := ps.Containers[0]
	wantArgs(t, "cleanup", c.Args, []string{"unlabel-nodes", "--resource-prefix=accel.io", "--labels=true", "--resource-slices=false"})
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("cleanup container security context %+v", sc)
	}

	for _, values := range []string{"labelnode-off.yaml", "rbac-off.yaml"} {
		if r := render(t, values); len(r.hooks) != 0 {
			t.Errorf("%s: cleanup hook rendered without node labels/RBAC", values)
		}
	}
	if r := render(t, "custom.yaml"); !strings.Contains(r.hooks[len(r.hooks)-1].Raw, "--resource-prefix=") {
		t.Errorf("custom prefix not passed to the cleanup job")
	}
}

// Node permissions never go to the namespace's default ServiceAccount.
func TestRBACNeedsOwnServiceAccount(t *testing.T) {
	out := mustFail(t, "--set", "serviceAccount.create=false")
	if !strings.Contains(out, "needs serviceAccount.name") {
		t.Errorf("helm output %q, want the serviceAccount.name message", out)
	}
	r := render(t, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=node-labeler")
	var crb rbacv1.ClusterRoleBinding
	r.decode(t, "ClusterRoleBinding", pluginDS, &crb)
	if crb.Subjects[0].Name != "node-labeler" {
		t.Errorf("binding subject %q", crb.Subjects[0].Name)
	}
}

// A value cannot inject YAML into the pod spec.
func TestValuesCannotInjectYAML(t *testing.T) {
	r := render(t, "--set", "priorityClassName=x\nhostNetwork: true", "--set", "image.tag=1\n        securityContext: {privileged: true}")
	plugin, sim := daemonSets(t, r)
	for _, ds := range []*appsv1.DaemonSet{plugin, sim} {
		if ds.Spec.Template.Spec.HostNetwork {
			t.Errorf("%s: priorityClassName injected hostNetwork", ds.Name)
		}
	}
	if c := onlyContainer(t, plugin); c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
		t.Errorf("image.tag injected a privileged security context")
	}
}
