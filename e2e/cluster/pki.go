package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Names of the key pairs in a PKI (files <name>.crt and <name>.key).
const (
	certCA               = "ca"
	certFrontProxyCA     = "front-proxy-ca"
	certAPIServer        = "apiserver"
	certFrontProxyClient = "front-proxy-client"
	certAdmin            = "admin"
	certControllerMgr    = "controller-manager"
	certScheduler        = "scheduler"
	certKubeletClient    = "apiserver-kubelet-client" // the API server's client cert for kubelets
	certKubelet          = "kubelet"                  // kubelet's client cert
	certKubeletServer    = "kubelet-server"
	keyServiceAccount    = "sa" // sa.key / sa.pub
)

// KeyPair is a PEM certificate and its PEM private key.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
	cert    *x509.Certificate
	key     crypto.Signer
}

// PKI is every certificate and key the cluster needs.
type PKI struct {
	Pairs map[string]*KeyPair
	// SAPublicPEM / SAKeyPEM: the service-account token signing key.
	SAKeyPEM    []byte
	SAPublicPEM []byte
}

// certSpec describes one leaf certificate.
type certSpec struct {
	cn     string
	orgs   []string
	dns    []string
	ips    []net.IP
	server bool
	client bool
}

// GeneratePKI makes a fresh PKI for a node called nodeName whose addresses
// are hostIPs (ECDSA P-256 keys, valid for a year).
func GeneratePKI(nodeName string, hostIPs []net.IP) (*PKI, error) {
	p := &PKI{Pairs: map[string]*KeyPair{}}
	ca, err := newCA("accel-e2e-ca")
	if err != nil {
		return nil, err
	}
	fpca, err := newCA("accel-e2e-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	p.Pairs[certCA], p.Pairs[certFrontProxyCA] = ca, fpca

	loopback := []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}
	apiIPs := append(append(append([]net.IP{}, loopback...), net.ParseIP(KubernetesSvcIP), net.ParseIP(BridgeGateway)), hostIPs...)
	apiDNS := []string{"localhost", nodeName, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local"}
	nodeIPs := append(append([]net.IP{}, loopback...), hostIPs...)

	specs := []struct {
		name string
		ca   *KeyPair
		spec certSpec
	}{
		{certAPIServer, ca, certSpec{cn: "kube-apiserver", dns: apiDNS, ips: apiIPs, server: true}},
		{certFrontProxyClient, fpca, certSpec{cn: "front-proxy-client", client: true}},
		{certAdmin, ca, certSpec{cn: "accel-e2e-admin", orgs: []string{"system:masters"}, client: true}},
		{certControllerMgr, ca, certSpec{cn: "system:kube-controller-manager", client: true}},
		{certScheduler, ca, certSpec{cn: "system:kube-scheduler", client: true}},
		{certKubeletClient, ca, certSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true}},
		{certKubelet, ca, certSpec{cn: "system:node:" + nodeName, orgs: []string{"system:nodes"}, client: true}},
		{certKubeletServer, ca, certSpec{cn: nodeName, dns: []string{nodeName, "localhost"}, ips: nodeIPs, server: true}},
	}
	for _, s := range specs {
		kp, err := issue(s.ca, s.spec)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.name, err)
		}
		p.Pairs[s.name] = kp
	}

	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if p.SAKeyPEM, err = keyPEM(sa); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	p.SAPublicPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	return p, nil
}

// Write stores the PKI as <name>.crt/<name>.key files (keys mode 0600) in dir.
func (p *PKI) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	names := make([]string, 0, len(p.Pairs))
	for n := range p.Pairs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n+".crt"), p.Pairs[n].CertPEM, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, n+".key"), p.Pairs[n].KeyPEM, 0o600); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, keyServiceAccount+".key"), p.SAKeyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, keyServiceAccount+".pub"), p.SAPublicPEM, 0o644)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

func newCA(cn string) (*KeyPair, error) {
	return sign(&x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, 10*365*24*time.Hour, nil)
}

func issue(ca *KeyPair, s certSpec) (*KeyPair, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: s.cn, Organization: s.orgs},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		DNSNames:              s.dns,
		IPAddresses:           s.ips,
	}
	if s.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if s.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	return sign(tmpl, 365*24*time.Hour, ca)
}

// sign makes a key pair whose certificate is tmpl with a fresh serial
// number, valid from an hour ago (clock skew) for validity, signed by ca,
// or by itself when ca is nil.
func sign(tmpl *x509.Certificate, validity time.Duration, ca *KeyPair) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(validity)
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	return pair(der, key)
}

func pair(der []byte, key *ecdsa.PrivateKey) (*KeyPair, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  kp,
		cert:    cert,
		key:     key,
	}, nil
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// writePKI generates a fresh PKI for the node and writes it to StateDir.
func (c *Cluster) writePKI(node string) (*PKI, error) {
	pki, err := GeneratePKI(node, hostIPs())
	if err != nil {
		return nil, fmt.Errorf("generate the PKI: %w", err)
	}
	if err := pki.Write(c.pki("")); err != nil {
		return nil, err
	}
	return pki, nil
}
