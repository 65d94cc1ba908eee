package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSplitWords(t *testing.T) {
	got := splitWords(`-A INPUT -m comment --comment "kubelet firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP`)
	want := []string{"-A", "INPUT", "-m", "comment", "--comment", "kubelet firewall for dropping marked packets", "-m", "mark", "--mark", "0x8000/0x8000", "-j", "DROP"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
}

func TestRuleIsOurs(t *testing.T) {
	for line, want := range map[string]bool{
		`-A INPUT -j KUBE-FIREWALL`:                                true,
		`-A OUTPUT -j KUBE-FIREWALL`:                               true,
		`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP`: false, // flushed with the chain
		`-A PREROUTING -d 10.0.0.1/32 -p tcp -m tcp --dport 443 -m comment --comment accel-e2e -j DNAT --to-destination 10.85.0.1:6443`: true,
		`-A FORWARD -i accel-cni0 ! -o accel-cni0 -m comment --comment accel-e2e -j DROP`:                                               true,
		`-A FORWARD -i docker0 -j ACCEPT`:                           false,
		`-A INPUT -m comment --comment "accel-e2e other" -j ACCEPT`: false,
	} {
		if got := ruleIsOurs(splitWords(line)); got != want {
			t.Errorf("%s: %v, want %v", line, got, want)
		}
	}
}

func TestOurRules(t *testing.T) {
	rules := ourRules("192.0.2.2")
	var pre, out, fwd string
	for _, r := range rules {
		s := r.table + " " + r.chain + " " + strings.Join(r.spec, " ")
		switch r.chain {
		case "PREROUTING":
			pre = s
		case "OUTPUT":
			out = s
		case "FORWARD":
			fwd = s
		}
		if !ruleIsOurs(append([]string{"-A", r.chain}, r.spec...)) {
			t.Errorf("Down would not remove %s", s)
		}
	}
	if !strings.Contains(pre, "nat PREROUTING -d 10.0.0.1/32 -p tcp --dport 443") || !strings.Contains(pre, "--to-destination 10.85.0.1:6443") {
		t.Errorf("PREROUTING rule %s", pre)
	}
	if !strings.Contains(out, "--to-destination 192.0.2.2:6443") {
		t.Errorf("OUTPUT rule %s", out)
	}
	if fwd != "filter FORWARD -i accel-cni0 ! -o accel-cni0 -m comment --comment accel-e2e -j DROP" {
		t.Errorf("FORWARD rule %s", fwd)
	}
}

func TestSysctlRecordFormat(t *testing.T) {
	f := filepath.Join(t.TempDir(), "sysctl.orig")
	if err := recordSysctls(f); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, _, ok := strings.Cut(line, "="); !ok || !slices.Contains(sysctls, k) {
			t.Errorf("line %q", line)
		}
	}
	// a second record keeps the first (the originals)
	os.WriteFile(f, []byte("kernel.panic=7\n"), 0o644)
	recordSysctls(f)
	if b, _ := os.ReadFile(f); string(b) != "kernel.panic=7\n" {
		t.Errorf("record overwrote the originals: %q", b)
	}
}

func TestFindModuleDir(t *testing.T) {
	d, err := findModuleDir(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d, "cluster", "options.go")); err != nil {
		t.Errorf("module dir %s: %v", d, err)
	}
	if _, err := findModuleDir("/"); err == nil {
		t.Errorf("found a module above /")
	}
}
