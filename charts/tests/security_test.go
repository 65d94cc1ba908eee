package tests

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The plugin's view of the simulator's directory for each
// plugin.recursiveReadOnly: recursively read-only (propagation None, so an
// init container waits for the simulator first), or the plain read-only
// HostToContainer mount, which follows a replaced simulator by itself.
func TestRecursiveReadOnly(t *testing.T) {
	for _, tc := range []struct {
		values []string
		rro    corev1.RecursiveReadOnlyMode // "": the plain HostToContainer mount
	}{
		{nil, corev1.RecursiveReadOnlyIfPossible}, // the default
		{[]string{"--set", "plugin.recursiveReadOnly=IfPossible"}, corev1.RecursiveReadOnlyIfPossible},
		{[]string{"--set", "plugin.recursiveReadOnly=Enabled"}, corev1.RecursiveReadOnlyEnabled},
		{[]string{"--set", "plugin.recursiveReadOnly=Disabled"}, ""},
		// No simulator of the chart's to wait for: the view must receive a
		// simulator that mounts later (or none: kernel devices only).
		{[]string{"--set", "simulator.enabled=false"}, ""},
		{[]string{"--set", "simulator.enabled=false", "--set", "plugin.recursiveReadOnly=Disabled"}, ""},
	} {
		r := render(t, tc.values...)
		checkSound(t, r)
		plugin, _ := daemonSets(t, r)
		w := waitContainer(t, plugin)
		if tc.rro == "" {
			wantHostPathMount(t, plugin, "/run/accel", "/run/accel", corev1.HostPathDirectoryOrCreate, true, propagation(corev1.MountPropagationHostToContainer))
			if w != nil {
				t.Errorf("%v: init container %s, want none with a HostToContainer view", tc.values, w.Name)
			}
			continue
		}
		wantRecursiveReadOnly(t, plugin, "/run/accel", "/run/accel", corev1.HostPathDirectoryOrCreate, tc.rro)
		if w == nil {
			t.Errorf("%v: no init container waits for the simulator, yet the plugin's view receives no later mounts", tc.values)
		}
	}
}

// The simulator's new flags: modes honoured exactly (three digits become
// four, 0000 stays 0000), integers passed as integers even when large.
func TestSimulatorFlags(t *testing.T) {
	simArgs := func(values ...string) []string {
		t.Helper()
		_, sim := daemonSets(t, render(t, values...))
		return onlyContainer(t, sim).Args
	}
	for _, tc := range []struct {
		values []string
		want   []string
	}{
		{[]string{"--set-string", "simulator.computeMode=0000"}, []string{"--compute-mode=0000"}},
		{[]string{"--set-string", "simulator.computeMode=000"}, []string{"--compute-mode=0000"}},
		{[]string{"--set-string", "simulator.computeMode=660"}, []string{"--compute-mode=0660"}},
		{[]string{"--set-string", "simulator.computeMode=0606"}, []string{"--compute-mode=0606"}},
		{[]string{"--set-string", "simulator.dirMode=750"}, []string{"--dir-mode=0750"}},
		{[]string{"--set-string", "simulator.dirMode=0711"}, []string{"--dir-mode=0711"}},
		{[]string{"--set", "simulator.gid=2000"}, []string{"--gid=2000"}},
		{[]string{"--set", "simulator.monitorOpensPerProcess=2", "--set", "simulator.monitorOpensPerDevice=3"},
			[]string{"--monitor-opens-per-process=2", "--monitor-opens-per-device=3"}},
		{[]string{"limits.yaml"}, []string{
			"--devices=256", "--numa-nodes=64", "--memory-gib=1048576", "--compute-mode=0000", "--dir-mode=0500",
			"--gid=2147483647", "--monitor-opens-per-process=65536", "--monitor-opens-per-device=65536",
		}},
	} {
		args := simArgs(tc.values...)
		for _, w := range tc.want {
			if !hasArg(args, w) {
				t.Errorf("%v: sim args %q lack %s", tc.values, args, w)
			}
		}
		for _, a := range args {
			if strings.Contains(a, "e+") {
				t.Errorf("%v: sim arg %s is in float notation", tc.values, a)
			}
		}
	}
	plugin, _ := daemonSets(t, render(t, "limits.yaml"))
	if args := onlyContainer(t, plugin).Args; !hasArg(args, "--daemon-timeout=1m") || !hasArg(args, "--monitor-slots=1024") {
		t.Errorf("limits.yaml: plugin args %q, want --daemon-timeout=1m --monitor-slots=1024", args)
	}
}
