package mllp

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/internal/testca"
)

// TestTLSClientCertificates: the listener is bound to RX1; a client
// certificate that names RX1 (CN, O or OU) is served, any other is refused
// at the handshake, and so is a client without a certificate.
func TestTLSClientCertificates(t *testing.T) {
	ca := testca.New(t, "carehub test CA")
	dir := t.TempDir()
	certPEM, keyPEM := ca.Issue(t, pkix.Name{CommonName: "carehub.test"}, true)
	files := map[string][]byte{"server.pem": certPEM, "server.key": keyPEM, "ca.pem": ca.PEM}
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
			c, err := dialTLS(t, r.addr, ca.ClientConfig(t, tc.subject))
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
		c, err := dialTLS(t, r.addr, &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12})
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
	ca := testca.New(t, "carehub test CA")
	c, k := ca.Issue(t, pkix.Name{CommonName: "x"}, true)
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
