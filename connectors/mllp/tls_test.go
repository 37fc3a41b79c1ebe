package mllp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "carehub test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and its key, PEM-encoded, for subject.
func (ca *testCA) issue(t *testing.T, subject pkix.Name, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func (ca *testCA) clientConfig(t *testing.T, subject pkix.Name) *tls.Config {
	t.Helper()
	c, k := ca.issue(t, subject, false)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// TestTLSClientCertificates: the listener is bound to RX1; a client
// certificate that names RX1 (CN, O or OU) is served, any other is refused
// at the handshake, and so is a client without a certificate.
func TestTLSClientCertificates(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.issue(t, pkix.Name{CommonName: "carehub.test"}, true)
	files := map[string][]byte{"server.pem": certPEM, "server.key": keyPEM, "ca.pem": ca.pem}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srvTLS := &TLS{Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server.key"), ClientCA: filepath.Join(dir, "ca.pem")}
	in := &fakeIngest{}
	r := start(t, Config{TLS: srvTLS}, in)

	tests := []struct {
		name    string
		subject pkix.Name
		ok      bool
	}{
		{"CN is the ODS code", pkix.Name{CommonName: "RX1"}, true},
		{"O is the ODS code", pkix.Name{CommonName: "pas.rx1.nhs.uk", Organization: []string{"RX1"}}, true},
		{"OU is the ODS code", pkix.Name{CommonName: "pas.rx1.nhs.uk", OrganizationalUnit: []string{"RX1"}}, true},
		{"another organisation", pkix.Name{CommonName: "RX9"}, false},
		{"a look-alike", pkix.Name{CommonName: "RX1 ", Organization: []string{"rx1"}}, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialTLS(t, r.addr, ca.clientConfig(t, tc.subject))
			if err == nil {
				// TLS 1.3 reports a refused client certificate on the first read.
				c.send(adtMessage("A08", "TLS-"+string(rune('A'+i)), "9991000003"))
				var a ack
				a, err = c.read(5 * time.Second)
				if err == nil && a.Code != "AA" {
					t.Fatalf("got %s", a.Code)
				}
			}
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	t.Run("no client certificate", func(t *testing.T) {
		c, err := dialTLS(t, r.addr, &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12})
		if err == nil {
			c.send(adtMessage("A08", "TLS-NONE", "9991000003"))
			_, err = c.read(5 * time.Second)
		}
		if err == nil {
			t.Fatal("a client without a certificate was served")
		}
	})
	if n := len(in.published()); n != 3 {
		t.Errorf("published %d events, want 3", n)
	}
}

// TestTLSFilesErrors: New reads the TLS files and names what is wrong
// with them (the configuration's Validate reads none).
func TestTLSFilesErrors(t *testing.T) {
	dir := t.TempDir()
	build := func(tls *TLS) (*Source, error) { return New(Config{Source: "RX1", TLS: tls}) }
	if _, err := build(&TLS{Cert: filepath.Join(dir, "none.pem"), Key: filepath.Join(dir, "none.key")}); err == nil ||
		!strings.Contains(err.Error(), "tls: loading cert and key") {
		t.Errorf("missing files: got %v, want an error about loading them", err)
	}
	ca := newTestCA(t)
	c, k := ca.issue(t, pkix.Name{CommonName: "x"}, true)
	_ = os.WriteFile(filepath.Join(dir, "c.pem"), c, 0o600)
	_ = os.WriteFile(filepath.Join(dir, "k.pem"), k, 0o600)
	_ = os.WriteFile(filepath.Join(dir, "empty.pem"), []byte("not pem"), 0o600)
	if _, err := build(&TLS{Cert: filepath.Join(dir, "c.pem"), Key: filepath.Join(dir, "k.pem"), ClientCA: filepath.Join(dir, "empty.pem")}); err == nil ||
		!strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a client CA file without certificates: got %v", err)
	}
	if s, err := build(&TLS{Cert: filepath.Join(dir, "c.pem"), Key: filepath.Join(dir, "k.pem")}); err != nil || s.tls == nil || s.tls.ClientCAs != nil {
		t.Errorf("server-only TLS: %v", err)
	}
	if _, err := build(&TLS{Cert: filepath.Join(dir, "c.pem")}); err == nil || !strings.Contains(err.Error(), "tls: cert and key are both required") {
		t.Errorf("cert without key: got %v", err)
	}
}
