package cluster

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKI(t *testing.T) {
	hostIP := net.ParseIP("192.0.2.2")
	pki, err := GeneratePKI("vm", []net.IP{hostIP})
	if err != nil {
		t.Fatal(err)
	}
	pool := func(name string) *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(parseCert(t, pki.Pairs[name].CertPEM))
		return p
	}
	ca, fpca := pool(certCA), pool(certFrontProxyCA)

	cases := []struct {
		name   string
		roots  *x509.CertPool
		usage  x509.ExtKeyUsage
		cn     string
		orgs   []string
		dns    []string
		ips    []string
		server bool
	}{
		{name: certAPIServer, roots: ca, usage: x509.ExtKeyUsageServerAuth, cn: "kube-apiserver",
			dns: []string{"localhost", "vm", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []string{"127.0.0.1", KubernetesSvcIP, BridgeGateway, "192.0.2.2"}, server: true},
		{name: certKubeletServer, roots: ca, usage: x509.ExtKeyUsageServerAuth, cn: "vm",
			dns: []string{"vm", "localhost"}, ips: []string{"127.0.0.1", "192.0.2.2"}, server: true},
		{name: certAdmin, roots: ca, usage: x509.ExtKeyUsageClientAuth, orgs: []string{"system:masters"}},
		{name: certKubeletClient, roots: ca, usage: x509.ExtKeyUsageClientAuth, orgs: []string{"system:masters"}},
		{name: certControllerMgr, roots: ca, usage: x509.ExtKeyUsageClientAuth, cn: "system:kube-controller-manager"},
		{name: certScheduler, roots: ca, usage: x509.ExtKeyUsageClientAuth, cn: "system:kube-scheduler"},
		{name: certKubelet, roots: ca, usage: x509.ExtKeyUsageClientAuth, cn: "system:node:vm", orgs: []string{"system:nodes"}},
		{name: certFrontProxyClient, roots: fpca, usage: x509.ExtKeyUsageClientAuth, cn: "front-proxy-client"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cert := parseCert(t, pki.Pairs[c.name].CertPEM)
			if _, err := cert.Verify(x509.VerifyOptions{Roots: c.roots, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if c.cn != "" && cert.Subject.CommonName != c.cn {
				t.Errorf("CN %q, want %q", cert.Subject.CommonName, c.cn)
			}
			if c.orgs != nil && !slices.Equal(cert.Subject.Organization, c.orgs) {
				t.Errorf("O %v, want %v", cert.Subject.Organization, c.orgs)
			}
			for _, d := range c.dns {
				if err := cert.VerifyHostname(d); err != nil {
					t.Errorf("DNS SAN %s: %v", d, err)
				}
			}
			for _, ip := range c.ips {
				if err := cert.VerifyHostname(ip); err != nil {
					t.Errorf("IP SAN %s: %v", ip, err)
				}
			}
			if !c.server && len(cert.DNSNames)+len(cert.IPAddresses) > 0 {
				t.Errorf("client cert has SANs")
			}
			if cert.IsCA {
				t.Errorf("leaf is a CA")
			}
			// the other CA must not verify it
			other := fpca
			if c.roots == fpca {
				other = ca
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: other, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err == nil {
				t.Errorf("verifies against the wrong CA")
			}
		})
	}

	dir := t.TempDir()
	if err := pki.Write(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key", "apiserver.crt", "kubelet.key", "sa.key", "sa.pub", "front-proxy-ca.crt"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Ext(f) == ".key" && st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, st.Mode().Perm())
		}
	}
	blk, _ := pem.Decode(pki.SAPublicPEM)
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		t.Errorf("sa.pub: %v", err)
	}
	blk, _ = pem.Decode(pki.SAKeyPEM)
	if _, err := x509.ParseECPrivateKey(blk.Bytes); err != nil {
		t.Errorf("sa.key: %v", err)
	}
}
