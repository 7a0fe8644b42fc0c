package cluster

import (
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
	"time"
)

// pki holds the file names of the cluster's certificates and keys. Everything
// is signed by one throw-away CA that lives as long as the cluster.
type pki struct {
	dir                      string
	caCert, caKey            string
	apiserverCert, apiserver string // serving cert and key
	adminCert, adminKey      string // system:masters client
	nodeCert, nodeKey        string // system:node:<name> client
	kubeletCert, kubeletKey  string // kubelet serving cert
	saPub, saKey             string // service-account token signing
}

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(dir, nodeName string, nodeIP, serviceIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	f := func(n string) string { return filepath.Join(dir, n) }
	p.caCert, p.caKey = f("ca.crt"), f("ca.key")
	p.apiserverCert, p.apiserver = f("apiserver.crt"), f("apiserver.key")
	p.adminCert, p.adminKey = f("admin.crt"), f("admin.key")
	p.nodeCert, p.nodeKey = f("node.crt"), f("node.key")
	p.kubeletCert, p.kubeletKey = f("kubelet.crt"), f("kubelet.key")
	p.saPub, p.saKey = f("sa.pub"), f("sa.key")

	ca, err := issue(nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "tsn-dra-driver e2e CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return nil, err
	}
	if err := write(p.caCert, p.caKey, ca); err != nil {
		return nil, err
	}
	server := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	for _, c := range []struct {
		cert, key string
		tmpl      *x509.Certificate
	}{
		{p.apiserverCert, p.apiserver, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{server},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), nodeIP, serviceIP},
		}},
		{p.adminCert, p.adminKey, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "e2e-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{client},
		}},
		{p.nodeCert, p.nodeKey, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
			ExtKeyUsage: []x509.ExtKeyUsage{client},
		}},
		{p.kubeletCert, p.kubeletKey, &x509.Certificate{
			Subject:     pkix.Name{CommonName: nodeName},
			ExtKeyUsage: []x509.ExtKeyUsage{server},
			DNSNames:    []string{nodeName, "localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), nodeIP},
		}},
	} {
		kp, err := issue(ca, c.tmpl)
		if err != nil {
			return nil, err
		}
		if err := write(c.cert, c.key, kp); err != nil {
			return nil, err
		}
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeKey(p.saKey, sa); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// issue signs tmpl with ca, or self-signs it when ca is nil.
func issue(ca *keyPair, tmpl *x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(7 * 24 * time.Hour)
	if !tmpl.IsCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func write(certFile, keyFile string, kp *keyPair) error {
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw}), 0o644); err != nil {
		return err
	}
	return writeKey(keyFile, kp.key)
}

func writeKey(file string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}
