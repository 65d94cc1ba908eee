package kind

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSpecFile(t *testing.T) {
	for _, tc := range []struct {
		args []string
		file string
		proc bool
	}{
		{[]string{"--root", "/run/runc", "create", "--bundle", "/b", "id"}, "/b/config.json", false},
		{[]string{"create", "-b", "/b", "id"}, "/b/config.json", false},
		{[]string{"--log", "x", "run", "--bundle=/c", "id"}, "/c/config.json", false},
		{[]string{"create", "id"}, "config.json", false},
		{[]string{"exec", "--process", "/p.json", "id"}, "/p.json", true},
		{[]string{"exec", "-p=/q.json", "id"}, "/q.json", true},
		{[]string{"exec", "id", "sh"}, "", true},
		{[]string{"start", "id"}, "", false},
		{[]string{"create", "--pid-file", "/p", "--bundle", "/b", "id"}, "/b/config.json", false},
		{[]string{"create", "-bundle=/g", "id"}, "/g/config.json", false},
		{[]string{"create", "--no-pivot", "id", "--bundle", "/not-runcs"}, "config.json", false},
		{[]string{"exec", "--cwd", "/", "-p", "/p.json", "--detach", "id"}, "/p.json", true},
		{[]string{"exec", "id", "sh", "-p", "x"}, "", true},
		{[]string{"exec", "--env", "-p=no", "id"}, "", true},
		{[]string{"--version"}, "", false},
	} {
		file, proc := specFile(tc.args)
		if file != tc.file || (file != "" && proc != tc.proc) {
			t.Errorf("specFile(%q) = %q, %v; want %q, %v", tc.args, file, proc, tc.file, tc.proc)
		}
	}
}

func TestDropCapabilities(t *testing.T) {
	all := []string{"CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"}
	kept := []string{"CAP_CHOWN", "CAP_SYS_ADMIN"}
	caps := map[string][]string{"bounding": all, "effective": all, "permitted": all, "inheritable": {"CAP_SYS_RESOURCE"}}
	dir := t.TempDir()

	spec := filepath.Join(dir, "config.json")
	writeJSON(t, spec, map[string]any{"ociVersion": "1.2.0", "hostname": "n",
		"process": map[string]any{"args": []string{"sh"}, "capabilities": caps}})
	if err := dropCapabilities(spec, false, []string{"CAP_SYS_RESOURCE"}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OCIVersion string `json:"ociVersion"`
		Hostname   string
		Process    struct {
			Args         []string
			Capabilities map[string][]string
		}
	}
	readJSON(t, spec, &got)
	want := map[string][]string{"bounding": kept, "effective": kept, "permitted": kept, "inheritable": {}}
	if !reflect.DeepEqual(got.Process.Capabilities, want) || got.OCIVersion != "1.2.0" || got.Hostname != "n" ||
		!reflect.DeepEqual(got.Process.Args, []string{"sh"}) {
		t.Errorf("after the drop: %+v; want capabilities %v and every other field kept", got, want)
	}

	proc := filepath.Join(dir, "process.json")
	writeJSON(t, proc, map[string]any{"args": []string{"ls"}, "capabilities": caps})
	if err := dropCapabilities(proc, true, []string{"CAP_SYS_RESOURCE"}); err != nil {
		t.Fatal(err)
	}
	var p struct{ Capabilities map[string][]string }
	readJSON(t, proc, &p)
	if !reflect.DeepEqual(p.Capabilities, want) {
		t.Errorf("process file: %v, want %v", p.Capabilities, want)
	}

	none := filepath.Join(dir, "nocaps.json")
	writeJSON(t, none, map[string]any{"process": map[string]any{"args": []string{"ls"}}})
	if err := dropCapabilities(none, false, []string{"CAP_SYS_RESOURCE"}); err != nil {
		t.Errorf("a spec without capabilities: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := dropCapabilities(bad, false, []string{"CAP_SYS_RESOURCE"}); err == nil {
		t.Error("a malformed spec: no error")
	}
}

func TestMissingCapabilitiesAreOutsideTheBoundingSet(t *testing.T) {
	missing, err := MissingCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	// CAP_SYS_RESOURCE is bit 24.
	lacks := !capBit(t, string(b), 24)
	has := false
	for _, m := range missing {
		has = has || m == "CAP_SYS_RESOURCE"
	}
	if has != lacks {
		t.Errorf("MissingCapabilities() = %v; the bounding set lacks CAP_SYS_RESOURCE: %v", missing, lacks)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
