package tests

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"sigs.k8s.io/yaml"
)

// valuesFiles are the testdata values files; every one must render to a
// sound chart.
var valuesFiles = []string{
	"defaults.yaml", "sim-disabled.yaml", "custom.yaml", "labelnode-off.yaml",
	"rbac-off.yaml", "kernel.yaml", "plugin-only.yaml", "limits.yaml",
}

// daemonSets decodes the plugin DaemonSet and, when rendered, the simulator's
// (nil otherwise).
func daemonSets(t *testing.T, r *rendered) (plugin, sim *appsv1.DaemonSet) {
	t.Helper()
	plugin = new(appsv1.DaemonSet)
	r.decode(t, "DaemonSet", pluginDS, plugin)
	if r.find("DaemonSet", simDS) != nil {
		sim = new(appsv1.DaemonSet)
		r.decode(t, "DaemonSet", simDS, sim)
	}
	return plugin, sim
}

// onlyContainer returns the DaemonSet's one (main) container; init
// containers are checked apart (waitContainer).
func onlyContainer(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("DaemonSet %s: want exactly one container, got %d", ds.Name, len(spec.Containers))
	}
	return spec.Containers[0]
}

// waitContainer returns the plugin pod's init container, which waits for the
// simulator, or nil; any other init container fails the test.
func waitContainer(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	spec := ds.Spec.Template.Spec
	switch {
	case len(spec.InitContainers) == 0:
		return nil
	case len(spec.InitContainers) > 1 || spec.InitContainers[0].Name != "wait-for-simulator":
		t.Fatalf("DaemonSet %s: init containers %v, want at most wait-for-simulator", ds.Name, containerNames(spec.InitContainers))
	}
	return &spec.InitContainers[0]
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

// mountAt returns the container's mount at path and the volume it mounts.
func mountAt(t *testing.T, ds *appsv1.DaemonSet, path string) (*corev1.VolumeMount, *corev1.Volume) {
	t.Helper()
	c := onlyContainer(t, ds)
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if m.MountPath != path {
			continue
		}
		for j := range ds.Spec.Template.Spec.Volumes {
			if v := &ds.Spec.Template.Spec.Volumes[j]; v.Name == m.Name {
				return m, v
			}
		}
		t.Fatalf("DaemonSet %s: mount %s names volume %q, which does not exist", ds.Name, path, m.Name)
	}
	return nil, nil
}

// wantHostPathMount checks the main container's mount at path: host path,
// hostPath type, readOnly and propagation (nil: none given, or None), and
// that it is not recursively read-only (wantRecursiveReadOnly checks that).
func wantHostPathMount(t *testing.T, ds *appsv1.DaemonSet, path, hostPath string, typ corev1.HostPathType,
	readOnly bool, prop *corev1.MountPropagationMode) {
	t.Helper()
	m, v := mountAt(t, ds, path)
	if m == nil {
		t.Errorf("DaemonSet %s: no mount at %s", ds.Name, path)
		return
	}
	if m.RecursiveReadOnly != nil && *m.RecursiveReadOnly != corev1.RecursiveReadOnlyDisabled {
		t.Errorf("DaemonSet %s: mount %s: recursiveReadOnly %s, want none", ds.Name, path, *m.RecursiveReadOnly)
	}
	checkVolumeMount(t, ds.Name, m, v, hostPath, typ, readOnly, prop)
}

// wantRecursiveReadOnly checks that the main container's mount at path is
// read-only, recursiveReadOnly mode, with propagation None given explicitly.
func wantRecursiveReadOnly(t *testing.T, ds *appsv1.DaemonSet, path, hostPath string, typ corev1.HostPathType, mode corev1.RecursiveReadOnlyMode) {
	t.Helper()
	m, v := mountAt(t, ds, path)
	if m == nil {
		t.Errorf("DaemonSet %s: no mount at %s", ds.Name, path)
		return
	}
	if m.RecursiveReadOnly == nil || *m.RecursiveReadOnly != mode {
		t.Errorf("DaemonSet %s: mount %s: recursiveReadOnly %v, want %s", ds.Name, path, deref(m.RecursiveReadOnly), mode)
	}
	checkVolumeMount(t, ds.Name, m, v, hostPath, typ, true, propagation(corev1.MountPropagationNone))
}

func checkVolumeMount(t *testing.T, ds string, m *corev1.VolumeMount, v *corev1.Volume, hostPath string, typ corev1.HostPathType,
	readOnly bool, prop *corev1.MountPropagationMode) {
	t.Helper()
	path := m.MountPath
	ds = "DaemonSet " + ds
	if v.HostPath == nil || v.HostPath.Path != hostPath || v.HostPath.Type == nil || *v.HostPath.Type != typ {
		t.Errorf("%s: mount %s: volume %+v, want hostPath %s type %s", ds, path, v.VolumeSource, hostPath, typ)
	}
	if m.ReadOnly != readOnly {
		t.Errorf("%s: mount %s: readOnly %v, want %v", ds, path, m.ReadOnly, readOnly)
	}
	switch {
	case prop == nil && m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone:
		t.Errorf("%s: mount %s: propagation %s, want none", ds, path, *m.MountPropagation)
	case prop != nil && (m.MountPropagation == nil || *m.MountPropagation != *prop):
		t.Errorf("%s: mount %s: propagation %v, want %s", ds, path, deref(m.MountPropagation), *prop)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return "<unset>"
	}
	return *p
}

func propagation(m corev1.MountPropagationMode) *corev1.MountPropagationMode { return &m }

// checkPluginSecurity: the plugin runs unprivileged, without capabilities,
// in the host's namespaces not at all; so does its init container.
func checkPluginSecurity(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if spec.HostPID || spec.HostNetwork || spec.HostIPC {
		t.Errorf("plugin pod: hostPID %v hostNetwork %v hostIPC %v, want all false", spec.HostPID, spec.HostNetwork, spec.HostIPC)
	}
	checkUnprivileged(t, "plugin", onlyContainer(t, ds))
	if w := waitContainer(t, ds); w != nil {
		checkUnprivileged(t, "plugin init container "+w.Name, *w)
	}
	if psc := spec.SecurityContext; psc != nil && psc.SeccompProfile != nil && psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("plugin pod: seccompProfile %+v overrides RuntimeDefault", *psc.SeccompProfile)
	}
}

// checkUnprivileged: not privileged, no escalation, read-only root, uid 0
// without any capability, RuntimeDefault seccomp.
func checkUnprivileged(t *testing.T, what string, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no securityContext", what)
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("%s: privileged %v, want false", what, deref(sc.Privileged))
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation %v, want false", what, deref(sc.AllowPrivilegeEscalation))
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem %v, want true", what, deref(sc.ReadOnlyRootFilesystem))
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("%s: runAsUser %v, want 0", what, deref(sc.RunAsUser))
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL] and no add", what, deref(sc.Capabilities))
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", what, deref(sc.SeccompProfile))
	}
}

// checkWaitContainer: the plugin pod waits for the simulator exactly when its
// view of the simulator's directory receives no later mounts (recursively
// read-only, propagation None), with a view of its own that does.
func checkWaitContainer(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	pc := onlyContainer(t, ds)
	var view *corev1.VolumeMount
	for i := range pc.VolumeMounts {
		if pc.VolumeMounts[i].Name == "accel-run" {
			view = &pc.VolumeMounts[i]
		}
	}
	if view == nil {
		t.Fatalf("plugin: no accel-run mount")
	}
	receives := view.MountPropagation != nil && *view.MountPropagation == corev1.MountPropagationHostToContainer
	w := waitContainer(t, ds)
	switch {
	case !receives && w == nil:
		t.Fatalf("plugin: its view of %s receives no later mounts (propagation %v), but no init container waits for the simulator",
			view.MountPath, deref(view.MountPropagation))
	case receives && w != nil:
		t.Errorf("plugin: an init container waits for the simulator although the plugin's view is HostToContainer")
	case w == nil:
		return
	}
	devDir := argValue(pc.Args, "--dev-dir=")
	wantArgs(t, "wait-for-simulator", w.Args, []string{
		"wait", "--dir=" + devDir, "--timeout=5m", "--log-level=" + argValue(pc.Args, "--log-level="),
	})
	if w.Image != pc.Image || w.ImagePullPolicy != pc.ImagePullPolicy || len(w.Command) != 0 {
		t.Errorf("wait-for-simulator: image %q pull %q command %q, want the plugin's image and entrypoint", w.Image, w.ImagePullPolicy, w.Command)
	}
	if len(w.VolumeMounts) != 1 {
		t.Fatalf("wait-for-simulator: mounts %+v, want only the simulator's directory", w.VolumeMounts)
	}
	m := w.VolumeMounts[0]
	if m.Name != "accel-run" || m.MountPath != view.MountPath || !m.ReadOnly || m.RecursiveReadOnly != nil ||
		m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("wait-for-simulator: mount %+v, want accel-run at %s, read-only, HostToContainer (it must see the mount appear)", m, view.MountPath)
	}
	if len(w.Ports) != 0 || len(w.Env) != 0 || w.LivenessProbe != nil || w.ReadinessProbe != nil {
		t.Errorf("wait-for-simulator: ports %v env %v probes %v/%v, want none", w.Ports, w.Env, w.LivenessProbe, w.ReadinessProbe)
	}
	if !equalResources(w.Resources, pc.Resources) {
		t.Errorf("wait-for-simulator: resources %+v, want the plugin's %+v (the pod's requests stay the plugin's)", w.Resources, pc.Resources)
	}
}

func equalResources(a, b corev1.ResourceRequirements) bool {
	eq := func(x, y corev1.ResourceList) bool {
		if len(x) != len(y) {
			return false
		}
		for k, q := range x {
			if r, ok := y[k]; !ok || q.Cmp(r) != 0 {
				return false
			}
		}
		return true
	}
	return eq(a.Requests, b.Requests) && eq(a.Limits, b.Limits)
}

// argValue returns the value of the first argument with prefix, or "".
func argValue(args []string, prefix string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, prefix); ok {
			return v
		}
	}
	return ""
}

// checkSimSecurity: the simulator is privileged (FUSE, Bidirectional) and
// in the host's pid namespace; nothing more.
func checkSimSecurity(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Error("sim pod: hostPID false, want true (FUSE reports host pids)")
	}
	if spec.HostNetwork || spec.HostIPC {
		t.Errorf("sim pod: hostNetwork %v hostIPC %v, want false", spec.HostNetwork, spec.HostIPC)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.ServiceAccountName != "" {
		t.Errorf("sim pod: serviceAccountName %q automount %v, want none and false", spec.ServiceAccountName, deref(spec.AutomountServiceAccountToken))
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds != 30 {
		t.Errorf("sim pod: terminationGracePeriodSeconds %v, want 30", deref(spec.TerminationGracePeriodSeconds))
	}
	if len(spec.InitContainers) != 0 {
		t.Errorf("sim pod: init containers %v, want none", containerNames(spec.InitContainers))
	}
	c := onlyContainer(t, ds)
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("sim container: want privileged true")
	}
	if c.LivenessProbe != nil || c.ReadinessProbe != nil || c.StartupProbe != nil {
		t.Error("sim container: has probes; a liveness restart would take every device from its users")
	}
}

// checkSound checks what must hold for any values: strict decoding, the
// security fields, selectors, volumes, RBAC scope, name lengths.
func checkSound(t *testing.T, r *rendered) {
	t.Helper()
	for _, d := range r.docs {
		var err error
		switch d.Kind {
		case "DaemonSet":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(appsv1.DaemonSet))
		case "ServiceAccount":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(corev1.ServiceAccount))
		case "ClusterRole":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(rbacv1.ClusterRole))
		case "ClusterRoleBinding":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(rbacv1.ClusterRoleBinding))
		case "Role":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(rbacv1.Role))
		case "RoleBinding":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(rbacv1.RoleBinding))
		case "DeviceClass":
			err = yaml.UnmarshalStrict([]byte(d.Raw), new(resourcev1.DeviceClass))
		default:
			t.Errorf("%v: unexpected kind %s/%s", r.args, d.Kind, d.Name)
		}
		if err != nil {
			t.Errorf("%v: %s/%s does not decode strictly: %v", r.args, d.Kind, d.Name, err)
		}
		if len(d.Name) > 63 {
			t.Errorf("%v: %s name %q is longer than 63", r.args, d.Kind, d.Name)
		}
	}
	plugin, sim := daemonSets(t, r)
	checkPluginSecurity(t, plugin)
	checkWaitContainer(t, plugin)
	all := []*appsv1.DaemonSet{plugin}
	if sim != nil {
		checkSimSecurity(t, sim)
		all = append(all, sim)
		if matches(sim.Spec.Selector.MatchLabels, plugin.Spec.Template.Labels) ||
			matches(plugin.Spec.Selector.MatchLabels, sim.Spec.Template.Labels) {
			t.Errorf("%v: the sim and plugin selectors overlap: %v / %v", r.args, sim.Spec.Selector.MatchLabels, plugin.Spec.Selector.MatchLabels)
		}
	}
	for _, ds := range all {
		if ds.Namespace != namespace {
			t.Errorf("DaemonSet %s: namespace %q, want %q", ds.Name, ds.Namespace, namespace)
		}
		if !matches(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
			t.Errorf("DaemonSet %s: selector %v does not match its template labels %v", ds.Name, ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
		}
		if _, ok := ds.Spec.Template.Labels["helm.sh/chart"]; ok {
			t.Errorf("DaemonSet %s: chart version label in the pod template (changes it on every chart release)", ds.Name)
		}
		vols := map[string]bool{}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			vols[v.Name] = false
		}
		for _, c := range append(slices.Clone(ds.Spec.Template.Spec.InitContainers), onlyContainer(t, ds)) {
			for _, m := range c.VolumeMounts {
				if _, ok := vols[m.Name]; !ok {
					t.Errorf("DaemonSet %s: container %s: mount %s names missing volume %q", ds.Name, c.Name, m.MountPath, m.Name)
				}
				vols[m.Name] = true
				checkMountRules(t, ds.Name+" container "+c.Name, m)
			}
		}
		for name, used := range vols {
			if !used {
				t.Errorf("DaemonSet %s: volume %q is not mounted", ds.Name, name)
			}
		}
	}
	dra := hasArg(onlyContainer(t, plugin).Args, "--api=dra")
	for _, name := range r.ofKind("ClusterRole") {
		var cr rbacv1.ClusterRole
		r.decode(t, "ClusterRole", name, &cr)
		checkRules(t, cr.Rules, hasArg(onlyContainer(t, plugin).Args, "--label-node=true"), dra)
	}
	for _, name := range r.ofKind("Role") {
		// The one Role: get on the plugin's own DaemonSet (cdi.enabled).
		var role rbacv1.Role
		r.decode(t, "Role", name, &role)
		if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{"apps"}) ||
			!slices.Equal(role.Rules[0].Resources, []string{"daemonsets"}) || !slices.Equal(role.Rules[0].Verbs, []string{"get", "watch"}) ||
			!slices.Equal(role.Rules[0].ResourceNames, []string{plugin.Name}) || role.Namespace != plugin.Namespace {
			t.Errorf("%v: Role %s rules %+v, want get on DaemonSet %s/%s only", r.args, name, role.Rules, plugin.Namespace, plugin.Name)
		}
	}
}

// checkMountRules mirrors the API server's validation of recursiveReadOnly
// (helm template does not run it): only on a read-only mount, and with
// IfPossible or Enabled only with propagation None.
func checkMountRules(t *testing.T, what string, m corev1.VolumeMount) {
	t.Helper()
	if m.RecursiveReadOnly == nil {
		return
	}
	switch mode := *m.RecursiveReadOnly; {
	case !m.ReadOnly:
		t.Errorf("%s: mount %s: recursiveReadOnly %s on a read-write mount (the API server refuses it)", what, m.MountPath, mode)
	case mode != corev1.RecursiveReadOnlyDisabled && m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone:
		t.Errorf("%s: mount %s: recursiveReadOnly %s with propagation %s (the API server refuses it: None only)", what, m.MountPath, mode, *m.MountPropagation)
	}
}

// checkRules: get and patch on core nodes (get only without node labels);
// as a DRA driver also list, watch, create, update, delete ResourceSlices
// and get ResourceClaims. Nothing else.
func checkRules(t *testing.T, rules []rbacv1.PolicyRule, labelNode, dra bool) {
	t.Helper()
	type rule struct{ group, resource, verbs string }
	want := []rule{{"", "nodes", "get,patch"}}
	if !labelNode {
		want[0].verbs = "get"
	}
	if dra {
		want = append(want, rule{"resource.k8s.io", "resourceslices", "create,delete,list,update,watch"},
			rule{"resource.k8s.io", "resourceclaims", "get"})
	}
	var got []rule
	for _, r := range rules {
		if len(r.APIGroups) != 1 || len(r.Resources) != 1 || len(r.ResourceNames) != 0 || len(r.NonResourceURLs) != 0 {
			t.Errorf("ClusterRole rule %+v: want one group and one resource, no names or URLs", r)
			continue
		}
		got = append(got, rule{r.APIGroups[0], r.Resources[0], strings.Join(slices.Sorted(slices.Values(r.Verbs)), ",")})
	}
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole rules %v, want exactly %v", got, want)
	}
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

func wantArgs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s args:\n got  %q\n want %q", what, got, want)
	}
}

func hasArg(args []string, a string) bool { return slices.Contains(args, a) }

func envFieldRef(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

func TestLint(t *testing.T) {
	for _, f := range append([]string{""}, valuesFiles...) {
		args := []string{"lint", "--strict", chartDir}
		if f != "" {
			args = append(args, "-f", filepath.Join("testdata", f))
		}
		out, errOut, err := runHelm(args...)
		if err != nil {
			t.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
	}
}

func TestEveryValuesFileRendersSoundly(t *testing.T) {
	for _, f := range valuesFiles {
		t.Run(strings.TrimSuffix(f, ".yaml"), func(t *testing.T) { checkSound(t, render(t, f)) })
	}
}

func TestDefaults(t *testing.T) {
	r := render(t, "defaults.yaml")
	got := r.kinds()
	slices.Sort(got)
	want := []string{
		"ClusterRole/" + pluginDS, "ClusterRoleBinding/" + pluginDS,
		"DaemonSet/" + pluginDS, "DaemonSet/" + simDS, "ServiceAccount/" + pluginDS,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("objects %v, want %v", got, want)
	}
	plugin, sim := daemonSets(t, r)
	pc, sc := onlyContainer(t, plugin), onlyContainer(t, sim)

	wantArgs(t, "plugin", pc.Args, []string{
		"serve", "--dev-dir=/run/accel/dev", "--host-dev-dir=/run/accel/dev",
		"--kubelet-dir=/var/lib/kubelet/device-plugins", "--resource-prefix=accel.io",
		"--monitor-slots=8", "--resync=30s", "--daemon-timeout=3s", "--log-level=info", "--kernel-class-dir=",
		"--metrics-addr=$(POD_IP):9490", "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
		"--label-node=true", "--node-name=$(NODE_NAME)",
	})
	wantArgs(t, "sim", sc.Args, []string{
		"sim", "--dir=/run/accel/dev", "--devices=4", "--numa-nodes=1", "--seed=$(NODE_NAME)",
		"--memory-gib=16", "--memory-budget-mib=128", "--throughput=1073741824", "--reset-duration=100ms",
		"--compute-mode=0666", "--dir-mode=0700", "--gid=0",
		"--monitor-opens-per-process=64", "--monitor-opens-per-device=4096", "--log-level=info",
	})
	for _, c := range []corev1.Container{pc, sc} {
		if c.Image != "localhost/accel-device-plugin:0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent || len(c.Command) != 0 {
			t.Errorf("container %s: image %q pull %q command %q, want the image's entrypoint from localhost/accel-device-plugin:0.1.0, IfNotPresent",
				c.Name, c.Image, c.ImagePullPolicy, c.Command)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s: resources %+v, want cpu request and memory limit", c.Name, c.Resources)
		}
	}

	// Downward API.
	if envFieldRef(pc, "NODE_NAME") != "spec.nodeName" || envFieldRef(pc, "POD_IP") != "status.podIP" {
		t.Errorf("plugin env %+v, want NODE_NAME=spec.nodeName, POD_IP=status.podIP", pc.Env)
	}
	if envFieldRef(sc, "NODE_NAME") != "spec.nodeName" {
		t.Errorf("sim env %+v, want NODE_NAME=spec.nodeName (the default seed)", sc.Env)
	}

	// Update strategies.
	if s := sim.Spec.UpdateStrategy; s.Type != appsv1.OnDeleteDaemonSetStrategyType || s.RollingUpdate != nil {
		t.Errorf("sim updateStrategy %+v, want OnDelete", s)
	}
	if s := plugin.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("plugin updateStrategy %+v, want RollingUpdate maxUnavailable 1", s)
	}

	// Scheduling, shared.
	for _, ds := range []*appsv1.DaemonSet{plugin, sim} {
		spec := ds.Spec.Template.Spec
		if spec.PriorityClassName != "system-node-critical" {
			t.Errorf("%s: priorityClassName %q, want system-node-critical", ds.Name, spec.PriorityClassName)
		}
		if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists ||
			spec.Tolerations[0].Effect != corev1.TaintEffectNoSchedule || spec.Tolerations[0].Key != "" {
			t.Errorf("%s: tolerations %+v, want [{operator: Exists, effect: NoSchedule}]", ds.Name, spec.Tolerations)
		}
		if spec.NodeSelector["kubernetes.io/os"] != "linux" {
			t.Errorf("%s: nodeSelector %v, want kubernetes.io/os=linux", ds.Name, spec.NodeSelector)
		}
	}

	// Mounts and propagation.
	wantHostPathMount(t, sim, "/run/accel", "/run/accel", corev1.HostPathDirectoryOrCreate, false, propagation(corev1.MountPropagationBidirectional))
	wantHostPathMount(t, sim, "/dev/fuse", "/dev/fuse", corev1.HostPathCharDev, false, nil)
	// Recursively read-only where the runtime can; so propagation None, and
	// an init container waits for the simulator (checkWaitContainer).
	wantRecursiveReadOnly(t, plugin, "/run/accel", "/run/accel", corev1.HostPathDirectoryOrCreate, corev1.RecursiveReadOnlyIfPossible)
	if w := waitContainer(t, plugin); w == nil {
		t.Error("plugin pod: no init container waiting for the simulator")
	}
	checkWaitContainer(t, plugin)
	wantHostPathMount(t, plugin, "/var/lib/kubelet/device-plugins", "/var/lib/kubelet/device-plugins", corev1.HostPathDirectory, false, nil)
	if m, _ := mountAt(t, plugin, "/dev/accel"); m != nil {
		t.Error("plugin mounts /dev/accel with kernelDevices disabled")
	}
	if len(pc.VolumeMounts) != 3 || len(sc.VolumeMounts) != 2 {
		t.Errorf("mounts: plugin %d, sim %d; want 3 (kubelet's, the simulator's, pod-resources) and 2", len(pc.VolumeMounts), len(sc.VolumeMounts))
	}

	// Metrics and probes.
	if len(pc.Ports) != 1 || pc.Ports[0].ContainerPort != 9490 || pc.Ports[0].Name != "metrics" || pc.Ports[0].HostPort != 0 {
		t.Errorf("plugin ports %+v, want metrics 9490 (no hostPort)", pc.Ports)
	}
	checkProbe(t, "liveness", pc.LivenessProbe, "/healthz")
	checkProbe(t, "readiness", pc.ReadinessProbe, "/readyz")
	ann := plugin.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9490" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("plugin pod annotations %v, want prometheus.io scrape/port/path", ann)
	}
	if len(sim.Spec.Template.Annotations) != 0 {
		t.Errorf("sim pod annotations %v, want none", sim.Spec.Template.Annotations)
	}

	// Identity and RBAC.
	pspec := plugin.Spec.Template.Spec
	if pspec.ServiceAccountName != pluginDS || pspec.AutomountServiceAccountToken == nil || !*pspec.AutomountServiceAccountToken {
		t.Errorf("plugin serviceAccountName %q automount %v, want %s and true", pspec.ServiceAccountName, deref(pspec.AutomountServiceAccountToken), pluginDS)
	}
	var crb rbacv1.ClusterRoleBinding
	r.decode(t, "ClusterRoleBinding", pluginDS, &crb)
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != pluginDS || len(crb.Subjects) != 1 ||
		crb.Subjects[0].Kind != "ServiceAccount" || crb.Subjects[0].Name != pluginDS || crb.Subjects[0].Namespace != namespace {
		t.Errorf("ClusterRoleBinding %+v / %+v, want %s bound to ServiceAccount %s/%s", crb.RoleRef, crb.Subjects, pluginDS, namespace, pluginDS)
	}
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("plugin %s probe %+v, want httpGet %s", what, p, path)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("plugin %s probe: %s on port %s, want %s on the metrics port", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

func TestSimulatorDisabled(t *testing.T) {
	r := render(t, "sim-disabled.yaml")
	if r.find("DaemonSet", simDS) != nil {
		t.Fatal("simulator.enabled=false still renders the sim DaemonSet")
	}
	if got := r.ofKind("DaemonSet"); !slices.Equal(got, []string{pluginDS}) {
		t.Errorf("DaemonSets %v, want only %s", got, pluginDS)
	}
	plugin, _ := daemonSets(t, r)
	// The plugin still watches devDir (a simulator outside the chart).
	if args := onlyContainer(t, plugin).Args; !hasArg(args, "--dev-dir=/run/accel/dev") {
		t.Errorf("plugin args %q lack --dev-dir", args)
	}
	wantHostPathMount(t, plugin, "/run/accel", "/run/accel", corev1.HostPathDirectoryOrCreate, true, propagation(corev1.MountPropagationHostToContainer))
}

// A mixed node: the simulator starts devices of both drivers, with each
// driver's own model.
func TestSimulatorDrivers(t *testing.T) {
	for _, ok := range []string{"fakenpu:256", "fakedev:128\\,fakenpu:128", "fakenpu\\,fakedev:0"} {
		render(t, "--set", "simulator.drivers="+ok) // accepted: the binary takes each
	}
	r := render(t, "--set", "simulator.drivers=fakedev:2\\,fakenpu:2")
	_, sim := daemonSets(t, r)
	args := onlyContainer(t, sim).Args
	if !slices.Contains(args, "--driver=fakedev:2,fakenpu:2") || slices.ContainsFunc(args, func(a string) bool {
		return strings.HasPrefix(a, "--devices=") || strings.HasPrefix(a, "--model=")
	}) {
		t.Errorf("sim args %q, want --driver=fakedev:2,fakenpu:2 and neither --devices nor --model", args)
	}
}

func TestCustomValues(t *testing.T) {
	r := render(t, "custom.yaml")
	plugin, sim := daemonSets(t, r)
	pc, sc := onlyContainer(t, plugin), onlyContainer(t, sim)
	wantArgs(t, "plugin", pc.Args, []string{
		"serve", "--dev-dir=/var/run/xaccel/nodes", "--host-dev-dir=/var/run/xaccel/nodes",
		"--kubelet-dir=/var/lib/k0s/kubelet/device-plugins", "--resource-prefix=example.com",
		"--monitor-slots=16", "--resync=1m", "--daemon-timeout=1500ms", "--log-level=debug", "--kernel-class-dir=",
		"--metrics-addr=$(POD_IP):9500", "--pod-resources-socket=/var/lib/k0s/kubelet/pod-resources/kubelet.sock",
		"--label-node=true", "--node-name=$(NODE_NAME)",
	})
	wantArgs(t, "sim", sc.Args, []string{
		"sim", "--dir=/var/run/xaccel/nodes", "--devices=16", "--numa-nodes=2", "--seed=lab-seed",
		"--model=Test Model X", "--memory-gib=32", "--memory-budget-mib=128", "--throughput=1073741824", "--reset-duration=2s",
		"--compute-mode=0660", "--dir-mode=0750", "--gid=1234", // "750" in the values: four digits on the command line
		"--monitor-opens-per-process=8", "--monitor-opens-per-device=128",
		"--log-level=warn", // the shared logLevel; plugin.logLevel is the plugin's own
	})
	wantHostPathMount(t, sim, "/var/run/xaccel", "/var/run/xaccel", corev1.HostPathDirectoryOrCreate, false, propagation(corev1.MountPropagationBidirectional))
	wantRecursiveReadOnly(t, plugin, "/var/run/xaccel", "/var/run/xaccel", corev1.HostPathDirectoryOrCreate, corev1.RecursiveReadOnlyEnabled)
	if w := waitContainer(t, plugin); w == nil || !slices.Equal(w.Args, []string{"wait", "--dir=/var/run/xaccel/nodes", "--timeout=5m", "--log-level=debug"}) {
		t.Errorf("plugin init container %+v, want wait --dir=/var/run/xaccel/nodes at the plugin's log level", w)
	}
	wantHostPathMount(t, plugin, "/var/lib/k0s/kubelet/device-plugins", "/var/lib/k0s/kubelet/device-plugins", corev1.HostPathDirectory, false, nil)

	if len(pc.Ports) != 1 || pc.Ports[0].ContainerPort != 9500 {
		t.Errorf("plugin ports %+v, want 9500", pc.Ports)
	}
	if _, ok := plugin.Spec.Template.Annotations["prometheus.io/scrape"]; ok {
		t.Error("prometheusScrape=false still annotates the plugin pods")
	}
	if s := sim.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable.String() != "2" {
		t.Errorf("sim updateStrategy %+v, want RollingUpdate maxUnavailable 2", s)
	}
	if s := plugin.Spec.UpdateStrategy; s.Type != appsv1.OnDeleteDaemonSetStrategyType || s.RollingUpdate != nil {
		t.Errorf("plugin updateStrategy %+v, want OnDelete without rollingUpdate", s)
	}
	for _, ds := range []*appsv1.DaemonSet{plugin, sim} {
		spec := ds.Spec.Template.Spec
		if spec.PriorityClassName != "" {
			t.Errorf("%s: priorityClassName %q, want none", ds.Name, spec.PriorityClassName)
		}
		// Helm merges maps: the default kubernetes.io/os stays.
		if spec.NodeSelector["accel.example.com/pool"] != "true" || spec.NodeSelector["kubernetes.io/os"] != "linux" || len(spec.NodeSelector) != 2 {
			t.Errorf("%s: nodeSelector %v, want the default and accel.example.com/pool", ds.Name, spec.NodeSelector)
		}
		if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "accel.example.com/dedicated" {
			t.Errorf("%s: tolerations %+v", ds.Name, spec.Tolerations)
		}
		if ds.Spec.Template.Annotations["team"] != "accel" {
			t.Errorf("%s: pod annotations %v, want team=accel", ds.Name, ds.Spec.Template.Annotations)
		}
	}
}

func TestLabelNodeOff(t *testing.T) {
	r := render(t, "labelnode-off.yaml")
	if got := append(r.ofKind("ClusterRole"), r.ofKind("ClusterRoleBinding")...); len(got) != 0 {
		t.Errorf("labelNode=false still renders RBAC: %v", got)
	}
	if r.find("ServiceAccount", pluginDS) == nil {
		t.Error("no ServiceAccount")
	}
	plugin, _ := daemonSets(t, r)
	if args := onlyContainer(t, plugin).Args; !hasArg(args, "--label-node=false") || hasArg(args, "--label-node=true") {
		t.Errorf("plugin args %q, want --label-node=false", args)
	}
	if a := plugin.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("automountServiceAccountToken %v, want false (the plugin makes no API calls)", deref(a))
	}
}

func TestRBACOff(t *testing.T) {
	r := render(t, "rbac-off.yaml")
	if got := append(append(r.ofKind("ClusterRole"), r.ofKind("ClusterRoleBinding")...), r.ofKind("ServiceAccount")...); len(got) != 0 {
		t.Errorf("rbac.create=false, serviceAccount.create=false still render %v", got)
	}
	plugin, _ := daemonSets(t, r)
	spec := plugin.Spec.Template.Spec
	if spec.ServiceAccountName != "accel-external" || spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Errorf("serviceAccountName %q automount %v, want accel-external and true", spec.ServiceAccountName, deref(spec.AutomountServiceAccountToken))
	}
	if args := onlyContainer(t, plugin).Args; !hasArg(args, "--label-node=true") {
		t.Errorf("plugin args %q, want --label-node=true", args)
	}
}

func TestKernelDevices(t *testing.T) {
	plugin, _ := daemonSets(t, render(t, "kernel.yaml"))
	args := onlyContainer(t, plugin).Args
	if !hasArg(args, "--kernel-class-dir=/sys/class/accel") || !hasArg(args, "--kernel-dev-dir=/dev/accel") || hasArg(args, "--kernel-class-dir=") ||
		!hasArg(args, "--kernel-resync=10m") || !hasArg(args, "--status-poll=5s") {
		t.Errorf("plugin args %q, want --kernel-class-dir=/sys/class/accel --kernel-dev-dir=/dev/accel --kernel-resync=10m --status-poll=5s", args)
	}
	wantHostPathMount(t, plugin, "/dev/accel", "/dev/accel", corev1.HostPathDirectory, true, nil)

	plugin, _ = daemonSets(t, render(t, "defaults.yaml"))
	// kubelet's pod-resources socket, read-only, for accel_device_holder.
	if args := onlyContainer(t, plugin).Args; !hasArg(args, "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock") {
		t.Errorf("plugin args %q, want --pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock", args)
	}
	wantHostPathMount(t, plugin, "/var/lib/kubelet/pod-resources", "/var/lib/kubelet/pod-resources", corev1.HostPathDirectoryOrCreate, true, nil)
	args = onlyContainer(t, plugin).Args
	if !hasArg(args, "--kernel-class-dir=") || slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--kernel-dev-dir") }) {
		t.Errorf("plugin args %q, want --kernel-class-dir= (empty) and no --kernel-dev-dir", args)
	}
}

// CDI mode: the plugin gets --cdi=on and the spec directory (read-write,
// created if missing, at the host's path); off (the default), neither.
func TestCDI(t *testing.T) {
	plugin, _ := daemonSets(t, render(t, "cdi.yaml"))
	args := onlyContainer(t, plugin).Args
	if !hasArg(args, "--cdi=on") || !hasArg(args, "--cdi-spec-dir=/etc/cdi") {
		t.Errorf("plugin args %q, want --cdi=on --cdi-spec-dir=/etc/cdi", args)
	}
	wantHostPathMount(t, plugin, "/etc/cdi", "/etc/cdi", corev1.HostPathDirectoryOrCreate, false, nil)
	// It may tell an uninstall from a restart: get on its own DaemonSet.
	if !hasArg(args, "--uninstall-daemonset="+namespace+"/"+pluginDS) || plugin.Spec.Template.Spec.AutomountServiceAccountToken == nil ||
		!*plugin.Spec.Template.Spec.AutomountServiceAccountToken {
		t.Errorf("plugin args %q / automount %v: want --uninstall-daemonset=%s/%s with a token", args,
			plugin.Spec.Template.Spec.AutomountServiceAccountToken, namespace, pluginDS)
	}
	r := render(t, "cdi.yaml", "--set", "plugin.labelNode=false")
	if r.find("Role", pluginDS) == nil || r.find("RoleBinding", pluginDS) == nil {
		t.Errorf("cdi.enabled without labelNode: no Role/RoleBinding for the uninstall check")
	}
	plugin, _ = daemonSets(t, render(t, "cdi.yaml", "--set", "rbac.create=false"))
	if args := onlyContainer(t, plugin).Args; slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--uninstall-daemonset") }) {
		t.Errorf("rbac.create=false: %q still asks for the DaemonSet", args)
	}

	plugin, _ = daemonSets(t, render(t, "defaults.yaml"))
	args = onlyContainer(t, plugin).Args
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--cdi") }) {
		t.Errorf("plugin args %q: CDI flags without cdi.enabled", args)
	}
	if m, _ := mountAt(t, plugin, "/var/run/cdi"); m != nil {
		t.Errorf("CDI spec directory mounted without cdi.enabled: %+v", m)
	}
}

// TestSimUnchangedByPluginValues is the upgrade guarantee: changing plugin
// values leaves the rendered simulator DaemonSet byte-identical, so an
// upgrade never touches (let alone restarts) the simulator.
func TestSimUnchangedByPluginValues(t *testing.T) {
	base := render(t, "defaults.yaml")
	baseSim := base.find("DaemonSet", simDS)
	basePlugin := base.find("DaemonSet", pluginDS)
	if baseSim == nil || basePlugin == nil {
		t.Fatal("default render lacks a DaemonSet")
	}
	pluginOnly := [][]string{
		{"plugin-only.yaml"},
		{"kernel.yaml"},
		{"labelnode-off.yaml"},
		{"rbac-off.yaml"},
		{"--set", "plugin.monitorSlots=16"},
		{"--set", "plugin.resourcePrefix=example.com"},
		{"--set", "plugin.logLevel=debug"},
		{"--set", "plugin.metricsPort=9500"},
		{"--set", "plugin.updateStrategy.type=OnDelete"},
		{"--set", "plugin.daemonTimeout=10s"},
		{"--set", "plugin.recursiveReadOnly=Disabled"},
		{"--set", "plugin.recursiveReadOnly=Enabled"},
		{"--set", "kubeletDir=/var/lib/k0s/kubelet/device-plugins"},
		// The shared logLevel reaches the simulator unless it has its own.
		{"--set", "logLevel=debug", "--set", "simulator.logLevel=info"},
	}
	for _, values := range pluginOnly {
		r := render(t, values...)
		sim, plugin := r.find("DaemonSet", simDS), r.find("DaemonSet", pluginDS)
		if sim == nil || plugin == nil {
			t.Fatalf("%v: a DaemonSet is missing", values)
		}
		if sim.Raw != baseSim.Raw {
			t.Errorf("%v changes the simulator DaemonSet (an upgrade would touch it):\n%s", values, lineDiff(baseSim.Raw, sim.Raw))
		}
		if plugin.Raw == basePlugin.Raw {
			t.Errorf("%v does not change the plugin DaemonSet; the case tests nothing", values)
		}
	}

	// Controls: simulator values do change it (the comparison above is not vacuous).
	for _, values := range [][]string{
		{"--set", "simulator.devices=8"},
		{"--set-string", "simulator.computeMode=0660"},
		{"--set-string", "simulator.dirMode=0750"},
		{"--set", "simulator.gid=5"},
		{"--set", "simulator.monitorOpensPerProcess=1"},
		{"--set", "simulator.monitorOpensPerDevice=1"},
		{"--set", "simulator.logLevel=debug"},
		{"--set", "logLevel=debug"},
		{"--set", "image.tag=0.2.0"},
	} {
		if sim := render(t, values...).find("DaemonSet", simDS); sim == nil || sim.Raw == baseSim.Raw {
			t.Errorf("%v leaves the simulator DaemonSet unchanged; want it changed", values)
		}
	}
}

// lineDiff shows the lines of b that differ from a (enough to see why).
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
		}
	}
	return strings.Join(out, "\n")
}

func TestUpdateStrategies(t *testing.T) {
	plugin, sim := daemonSets(t, render(t, "--set", "simulator.updateStrategy.type=RollingUpdate", "--set", "plugin.updateStrategy.type=OnDelete"))
	if s := sim.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("sim updateStrategy %+v, want RollingUpdate", s)
	}
	// The default rollingUpdate block must not be sent with OnDelete.
	if s := plugin.Spec.UpdateStrategy; s.Type != appsv1.OnDeleteDaemonSetStrategyType || s.RollingUpdate != nil {
		t.Errorf("plugin updateStrategy %+v, want OnDelete without rollingUpdate", s)
	}
}

func TestNameLengths(t *testing.T) {
	name := strings.Repeat("a", 59)
	r := render(t, "--set", "fullnameOverride="+name)
	if r.find("DaemonSet", name) == nil || r.find("DaemonSet", name+"-sim") == nil {
		t.Errorf("fullnameOverride of 59 characters: DaemonSets %v, want %s and %s-sim", r.ofKind("DaemonSet"), name, name)
	}
	out := mustFail(t, "--set", "fullnameOverride="+name+"a")
	if !strings.Contains(out, "/fullnameOverride") {
		t.Errorf("a 60-character fullnameOverride: error does not name the field:\n%s", out)
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	cases := []struct {
		set  []string
		want []string // all must appear in helm's error output
	}{
		{[]string{"--set", "simulator.devices=999"}, []string{"'/simulator/devices'", "maximum", "256"}},
		{[]string{"--set", "cdi.specDir=var/run/cdi"}, []string{"'/cdi/specDir'"}},
		{[]string{"--set", "cdi.specDir=/etc"}, []string{"'/cdi/specDir'"}},
		{[]string{"--set", "cdi.enabled=true", "--set", "cdi.specDir=/run/accel"}, []string{"cdi.specDir /run/accel overlaps devDir's parent"}},
		{[]string{"--set", "cdi.enabled=true", "--set", "cdi.specDir=/var/lib/kubelet"}, []string{"cdi.specDir /var/lib/kubelet overlaps kubeletDir"}},
		{[]string{"--set", "cdi.enabled=yes"}, []string{"'/cdi/enabled'"}},
		{[]string{"--set", "simulator.devices=-1"}, []string{"'/simulator/devices'"}},
		{[]string{"--set", "simulator.numaNodes=0"}, []string{"'/simulator/numaNodes'"}},
		{[]string{"--set", "simulator.numaNodes=65"}, []string{"'/simulator/numaNodes'"}},
		{[]string{"--set", "simulator.memoryGiB=0"}, []string{"'/simulator/memoryGiB'"}},
		{[]string{"--set", "simulator.resetDuration=fast"}, []string{"'/simulator/resetDuration'", "fast"}},
		{[]string{"--set-string", "simulator.computeMode=0999"}, []string{"'/simulator/computeMode'"}},
		{[]string{"--set-string", "simulator.computeMode=0888"}, []string{"'/simulator/computeMode'", "0888"}},
		{[]string{"--set-string", "simulator.computeMode=1777"}, []string{"'/simulator/computeMode'", "1777"}}, // sticky: above 0777
		{[]string{"--set-string", "simulator.computeMode=4755"}, []string{"'/simulator/computeMode'"}},
		{[]string{"--set-string", "simulator.computeMode=00666"}, []string{"'/simulator/computeMode'"}},
		{[]string{"--set-string", "simulator.computeMode=66"}, []string{"'/simulator/computeMode'"}},
		{[]string{"--set-string", "simulator.computeMode=abc"}, []string{"'/simulator/computeMode'", "abc"}},
		{[]string{"--set-string", "simulator.computeMode="}, []string{"'/simulator/computeMode'"}},
		{[]string{"--set", "simulator.computeMode=666"}, []string{"'/simulator/computeMode'", "want string"}}, // a number: quote it
		{[]string{"bad-unquoted-mode.yaml"}, []string{"'/simulator/computeMode'", "want string"}},             // YAML 0660 is the number 432
		{[]string{"--set-string", "simulator.dirMode=0800"}, []string{"'/simulator/dirMode'"}},
		{[]string{"--set-string", "simulator.dirMode=1700"}, []string{"'/simulator/dirMode'"}},
		{[]string{"--set", "simulator.dirMode=700"}, []string{"'/simulator/dirMode'", "want string"}},
		{[]string{"--set-string", "simulator.dirMode=0000"}, []string{"simulator.dirMode", "r-x", "uid 0 without capabilities"}},
		{[]string{"--set-string", "simulator.dirMode=0600"}, []string{"simulator.dirMode", "r-x"}},
		{[]string{"--set-string", "simulator.dirMode=300"}, []string{"simulator.dirMode", "r-x"}},
		{[]string{"--set", "simulator.gid=-1"}, []string{"'/simulator/gid'", "minimum"}},
		{[]string{"--set", "simulator.gid=2147483648"}, []string{"'/simulator/gid'", "maximum"}},
		{[]string{"--set", "simulator.gid=wheel"}, []string{"'/simulator/gid'"}},
		{[]string{"--set", "simulator.monitorOpensPerProcess=0"}, []string{"'/simulator/monitorOpensPerProcess'", "minimum"}},
		{[]string{"--set", "simulator.monitorOpensPerProcess=65537"}, []string{"'/simulator/monitorOpensPerProcess'", "maximum"}},
		{[]string{"--set", "simulator.monitorOpensPerDevice=0"}, []string{"'/simulator/monitorOpensPerDevice'", "minimum"}},
		{[]string{"--set", "simulator.monitorOpensPerDevice=65537"}, []string{"'/simulator/monitorOpensPerDevice'", "maximum"}},
		{[]string{"--set", "simulator.updateStrategy.type=Recreate"}, []string{"'/simulator/updateStrategy/type'", "OnDelete"}},
		{[]string{"--set", "simulator.logLevel=trace"}, []string{"'/simulator/logLevel'"}},
		{[]string{"--set", "simulator.bogus=1"}, []string{"'/simulator'", "'bogus' not allowed"}},
		{[]string{"--set", "simulator.drivers=fakegpu:2"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakedev:01"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakedev:2;fakenpu"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakenpu:300"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakenpu:257"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakedev\\,fakedev"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakedev:+5"}, []string{"'/simulator/drivers'"}},
		{[]string{"--set", "simulator.drivers=fakedev:200\\,fakenpu:100"}, []string{"simulator.drivers", "300 devices", "256 at most"}},
		{[]string{"--set", "simulator.memoryBudgetMiB=-1"}, []string{"'/simulator/memoryBudgetMiB'", "minimum"}},
		{[]string{"--set", "simulator.throughput=0"}, []string{"'/simulator/throughput'", "minimum"}},
		{[]string{"--set", "plugin.monitorSlots=-1"}, []string{"'/plugin/monitorSlots'", "minimum"}},
		{[]string{"--set", "plugin.monitorSlots=1025"}, []string{"'/plugin/monitorSlots'", "maximum"}},
		{[]string{"--set", "plugin.resourcePrefix=Bad_Prefix"}, []string{"'/plugin/resourcePrefix'", "Bad_Prefix"}},
		{[]string{"--set", "plugin.resourcePrefix=example.com/"}, []string{"'/plugin/resourcePrefix'"}},
		{[]string{"--set", "plugin.resourcePrefix=gpu.kubernetes.io"}, []string{"plugin.resourcePrefix", "reserved"}},
		{[]string{"--set", "plugin.metricsPort=70000"}, []string{"'/plugin/metricsPort'"}},
		{[]string{"--set", "plugin.labelNode=maybe"}, []string{"'/plugin/labelNode'"}},
		{[]string{"--set", "plugin.resync=often"}, []string{"'/plugin/resync'"}},
		{[]string{"--set", "plugin.daemonTimeout=soon"}, []string{"'/plugin/daemonTimeout'"}},
		{[]string{"--set", "plugin.daemonTimeout=1.5s"}, []string{"'/plugin/daemonTimeout'"}},
		{[]string{"--set-string", "plugin.daemonTimeout="}, []string{"'/plugin/daemonTimeout'"}},
		{[]string{"--set", "plugin.daemonTimeout=0s"}, []string{"plugin.daemonTimeout", "out of range", "100ms to 1m"}},
		{[]string{"--set", "plugin.daemonTimeout=99ms"}, []string{"plugin.daemonTimeout", "out of range"}},
		{[]string{"--set", "plugin.daemonTimeout=61s"}, []string{"plugin.daemonTimeout", "out of range"}},
		{[]string{"--set", "plugin.daemonTimeout=2m"}, []string{"plugin.daemonTimeout", "out of range"}},
		{[]string{"--set", "plugin.recursiveReadOnly=Always"}, []string{"'/plugin/recursiveReadOnly'", "IfPossible"}},
		{[]string{"--set", "plugin.recursiveReadOnly=true"}, []string{"'/plugin/recursiveReadOnly'"}},
		{[]string{"--set", "plugin.recursiveReadOnly=enabled"}, []string{"'/plugin/recursiveReadOnly'"}},
		{[]string{"--set", "simulator.enabled=false", "--set", "plugin.recursiveReadOnly=Enabled"}, []string{"plugin.recursiveReadOnly=Enabled needs the chart's simulator"}},
		{[]string{"--set", "plugin.updateStrategy.type=Always"}, []string{"'/plugin/updateStrategy/type'"}},
		{[]string{"--set", "logLevel=loud"}, []string{"'/logLevel'", "debug", "error"}},
		{[]string{"--set", "bogus=1"}, []string{"'bogus' not allowed"}},
		{[]string{"--set", "devDir=/run"}, []string{"'/devDir'"}},
		{[]string{"--set", "devDir=run/accel/dev"}, []string{"'/devDir'"}},
		{[]string{"--set", "devDir=/run/.."}, []string{"'/devDir'"}},
		{[]string{"--set", "kubeletDir=relative"}, []string{"'/kubeletDir'"}},
		{[]string{"--set", "image.pullPolicy=Sometimes"}, []string{"'/image/pullPolicy'"}},
		{[]string{"--set", "kernelDevices.enabled=yes"}, []string{"'/kernelDevices/enabled'"}},
		{[]string{"--set", "tolerations[0].operator=Maybe"}, []string{"'/tolerations/0/operator'"}},
	}
	for _, c := range cases {
		out := mustFail(t, c.set...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: the error does not contain %q:\n%s", c.set, w, out)
			}
		}
	}
}

func TestSchemaAcceptsLimits(t *testing.T) {
	for _, set := range [][]string{
		{"--set", "simulator.devices=0", "--set", "plugin.monitorSlots=0"},
		{"--set", "simulator.devices=256", "--set", "plugin.monitorSlots=1024", "--set", "simulator.numaNodes=64"},
		{"--set", "plugin.resourcePrefix=a", "--set", "simulator.resetDuration=1m30s"},
		{"--set", "global.foo=bar"}, // what a parent chart passes
		{"--set-string", "simulator.computeMode=000", "--set-string", "simulator.dirMode=777"},
		{"--set-string", "simulator.computeMode=0777", "--set-string", "simulator.dirMode=500"},
		{"--set", "simulator.enabled=false", "--set-string", "simulator.dirMode=0000"}, // unused then
		{"--set", "simulator.gid=0", "--set", "simulator.monitorOpensPerProcess=1", "--set", "simulator.monitorOpensPerDevice=1"},
		{"--set", "plugin.daemonTimeout=100ms"},
		{"--set", "plugin.daemonTimeout=60s"},
		{"--set", "plugin.daemonTimeout=1m"},
		{"--set", "simulator.enabled=false", "--set", "plugin.recursiveReadOnly=Disabled"},
	} {
		render(t, set...)
	}
}

// TestNotes renders NOTES.txt (helm template skips it): a copy of the chart
// where the notes become a ConfigMap.
func TestNotes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "accel-device-plugin")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "templates", "NOTES.txt")); err != nil {
		t.Fatal(err)
	}
	tpl := "{{- define \"test.notes\" }}" + string(notes) + "{{- end }}"
	wrap := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | quote }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "_notes.tpl"), []byte(tpl), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "notes.yaml"), []byte(wrap), 0o644); err != nil {
		t.Fatal(err)
	}
	text := func(values ...string) string {
		var cm corev1.ConfigMap
		renderChart(t, dir, values...).decode(t, "ConfigMap", "notes", &cm)
		return cm.Data["notes"]
	}

	got := text()
	for _, w := range []string{
		`{.status.allocatable.accel\.io/ac}`, `{.status.allocatable.accel\.io/ac-monitor}`,
		`{.status.capacity.accel\.io/ac}`, `{.status.capacity.accel\.io/ac-monitor}`,
		"kubectl apply -f examples/compute-pod.yaml", "kubectl apply -f examples/monitor-pod.yaml",
		"kubectl logs accel-compute-example", simDS, "OnDelete", "sim ctl",
		"/run/accel recursively read-only (plugin.recursiveReadOnly=IfPossible", "wait-for-simulator",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("NOTES lack %q:\n%s", w, got)
		}
	}
	got = text("--set", "plugin.resourcePrefix=example.com", "--set", "simulator.enabled=false",
		"--set", "rbac.create=false", "--set", "plugin.monitorSlots=0")
	for _, w := range []string{
		`{.status.allocatable.example\.com/ac}`, "s#accel\\.io/#example.com/#", "simulator disabled",
		"example.com/ac-monitor is not advertised", "get and patch on nodes",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("NOTES (custom) lack %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, simDS) {
		t.Errorf("NOTES mention %s with the simulator disabled:\n%s", simDS, got)
	}
	if got := text("--set", "plugin.recursiveReadOnly=Disabled"); strings.Contains(got, "wait-for-simulator") {
		t.Errorf("NOTES mention the init container with plugin.recursiveReadOnly=Disabled:\n%s", got)
	}
	if got := text(); !strings.Contains(got, "the device plugin (updateStrategy RollingUpdate)") {
		t.Errorf("NOTES lack the plugin's default update strategy:\n%s", got)
	}
	got = text("dra.yaml")
	for _, w := range []string{
		"the DRA driver accel.io (updateStrategy RollingUpdate)", "\n\n2. Check the devices the driver publishes",
		"kubectl get resourceslices --field-selector spec.driver=accel.io", "kubectl get deviceclasses ac.accel.io ac-monitor.accel.io",
		"accel.io/unhealthy", "examples/dra/claim-template.yaml", "examples/dra/admin-exporter.yaml", "allocatedResourcesStatus",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("NOTES (dra) lack %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "status.allocatable") {
		t.Errorf("NOTES (dra) tell to look for extended resources in node status:\n%s", got)
	}
}

// TestExamples: the example pods decode, use the local busybox image and
// request one unit of the chart's default resources.
func TestExamples(t *testing.T) {
	for file, resource := range map[string]corev1.ResourceName{
		"compute-pod.yaml": "accel.io/ac",
		"monitor-pod.yaml": "accel.io/ac-monitor",
	} {
		data, err := os.ReadFile(filepath.Join(chartDir, "examples", file))
		if err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(data, &pod); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if pod.Kind != "Pod" || len(pod.Spec.Containers) != 1 {
			t.Fatalf("%s: kind %q with %d containers, want one Pod container", file, pod.Kind, len(pod.Spec.Containers))
		}
		c := pod.Spec.Containers[0]
		if c.Image != "localhost/busybox:1.36" || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("%s: image %q pull %q, want localhost/busybox:1.36 IfNotPresent", file, c.Image, c.ImagePullPolicy)
		}
		if q, ok := c.Resources.Limits[resource]; !ok || q.Value() != 1 || len(c.Resources.Limits) != 1 {
			t.Errorf("%s: limits %v, want %s: 1 only", file, c.Resources.Limits, resource)
		}
		script := strings.Join(c.Command, " ")
		for _, w := range []string{"ls -l /dev/accel", "_monitor", "env | grep ACCEL", "sleep 3600"} {
			if !strings.Contains(script, w) {
				t.Errorf("%s: command %q lacks %q", file, script, w)
			}
		}
	}
}
