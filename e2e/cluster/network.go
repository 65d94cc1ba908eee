package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostIPs are the machine's global unicast addresses (not loopback, not the
// CNI bridge, not pod veths).
func hostIPs() []net.IP {
	var ips []net.IP
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Name == BridgeName || strings.HasPrefix(ifc.Name, "veth") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
				ips = append(ips, n.IP)
			}
		}
	}
	return ips
}

// primaryIPv4 is the first global IPv4 address, or 127.0.0.1.
func primaryIPv4(ips []net.IP) string {
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip.String()
		}
	}
	return "127.0.0.1"
}

// iptRule is one rule this package adds: table, chain and match/target.
type iptRule struct {
	table, chain string
	spec         []string
}

// ourRules: no kube-proxy runs, so the `kubernetes` Service (10.0.0.1:443)
// is DNATed to the API server: from pods (PREROUTING, to the bridge gateway)
// and from host-network pods (OUTPUT, to the host's address). Traffic from
// pods must not leave the node (FORWARD).
func ourRules(hostIP string) []iptRule {
	c := []string{"-m", "comment", "--comment", ruleComment}
	svc := []string{"-d", KubernetesSvcIP + "/32", "-p", "tcp", "--dport", "443"}
	return []iptRule{
		{"nat", "PREROUTING", concat(svc, c, []string{"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", BridgeGateway, APIServerPort)})},
		{"nat", "OUTPUT", concat(svc, c, []string{"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", hostIP, APIServerPort)})},
		{"filter", "FORWARD", concat([]string{"-i", BridgeName, "!", "-o", BridgeName}, c, []string{"-j", "DROP"})},
	}
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func iptables(ctx context.Context, bin string, args ...string) (string, error) {
	b, err := exec.CommandContext(ctx, bin, append([]string{"-w", "5"}, args...)...).CombinedOutput()
	return string(b), err
}

// addRules inserts our rules unless present.
func addRules(ctx context.Context, hostIP string) error {
	for _, r := range ourRules(hostIP) {
		if _, err := iptables(ctx, "iptables", concat([]string{"-t", r.table, "-C", r.chain}, r.spec)...); err == nil {
			continue
		}
		if out, err := iptables(ctx, "iptables", concat([]string{"-t", r.table, "-I", r.chain, "1"}, r.spec)...); err != nil {
			return fmt.Errorf("iptables -t %s -I %s: %w: %s", r.table, r.chain, err, strings.TrimSpace(out))
		}
	}
	return nil
}

// kubeletChains are the chains kubelet creates on start.
var kubeletChains = map[string]bool{
	"KUBE-FIREWALL": true, "KUBE-KUBELET-CANARY": true, "KUBE-IPTABLES-HINT": true,
	"KUBE-MARK-DROP": true, "KUBE-MARK-MASQ": true, "KUBE-POSTROUTING": true,
}

// removeRules deletes every rule carrying our comment or jumping to a
// kubelet chain, then the kubelet chains, in iptables and ip6tables.
func removeRules(ctx context.Context) []error {
	var errs []error
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, err := iptables(ctx, bin, "-t", table, "-S")
			if err != nil {
				continue
			}
			var chains []string
			for _, line := range strings.Split(out, "\n") {
				w := splitWords(line)
				if len(w) < 2 {
					continue
				}
				switch w[0] {
				case "-N":
					if kubeletChains[w[1]] {
						chains = append(chains, w[1])
					}
				case "-A":
					if ruleIsOurs(w) {
						if o, err := iptables(ctx, bin, append([]string{"-t", table, "-D"}, w[1:]...)...); err != nil {
							errs = append(errs, fmt.Errorf("%s -t %s -D %s: %w: %s", bin, table, strings.Join(w[1:], " "), err, strings.TrimSpace(o)))
						}
					}
				}
			}
			for _, c := range chains {
				_, _ = iptables(ctx, bin, "-t", table, "-F", c) // -X says if it did not work
				if o, err := iptables(ctx, bin, "-t", table, "-X", c); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s -X %s: %w: %s", bin, table, c, err, strings.TrimSpace(o)))
				}
			}
		}
	}
	return errs
}

// ruleIsOurs: an "-A CHAIN ..." rule with our comment, or in or jumping to a
// kubelet chain.
func ruleIsOurs(w []string) bool {
	if kubeletChains[w[1]] {
		return false // flushed with its chain
	}
	for i := 0; i+1 < len(w); i++ {
		if (w[i] == "-j" || w[i] == "-g") && kubeletChains[w[i+1]] {
			return true
		}
		if w[i] == "--comment" && w[i+1] == ruleComment {
			return true
		}
	}
	return false
}

// splitWords splits an iptables-save line, honouring double quotes.
func splitWords(s string) []string {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && inQ && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			inQ, have = !inQ, true
		case (c == ' ' || c == '\t') && !inQ:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// sysctls kubelet and the CNI bridge change; Up records them, Down restores.
var sysctls = []string{
	"kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory",
	"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
	"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// recordSysctls writes "key=value" lines to file unless it exists.
func recordSysctls(file string) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	var b strings.Builder
	for _, k := range sysctls {
		v, err := os.ReadFile(sysctlPath(k))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s=%s\n", k, strings.TrimSpace(string(v)))
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// restoreSysctls writes back what recordSysctls saw.
func restoreSysctls(file string) []error {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var errs []error
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		cur, err := os.ReadFile(sysctlPath(k))
		if err != nil || strings.TrimSpace(string(cur)) == v {
			continue
		}
		if err := os.WriteFile(sysctlPath(k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	return errs
}

// deleteBridge removes the CNI bridge if it exists.
func deleteBridge(ctx context.Context) error {
	if _, err := net.InterfaceByName(BridgeName); err != nil {
		return nil //nolint:nilerr // no bridge: nothing to delete
	}
	if out, err := exec.CommandContext(ctx, "ip", "link", "del", BridgeName).CombinedOutput(); err != nil {
		return fmt.Errorf("ip link del %s: %w: %s", BridgeName, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cniConfig is the CNI network: a bridge whose gateway is the node's
// address for pods, host-local addresses, loopback. No IP masquerade: pod
// traffic stays on the node (FORWARD drops what would leave the bridge).
func (c *Cluster) cniConfig() string {
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
					"dataDir": c.cniDataDir(),
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
