package fhirout_test

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/internal/testca"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/fhirout"
	"github.com/carehub/carehub/internal/logging"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// canary is the NHS number of the example discharge (999 test range): it
// is in the bundle sent, never in an error or a log line.
const canary = "9990500002"

func write(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// epr is a FHIR server that requires a client certificate signed by its
// clients' CA, and records the subject of each one it served.
type epr struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []string // client certificate CN, bundle type, per request served
}

func newEPR(t *testing.T, serverCA, clientCA *testca.CA) *epr {
	t.Helper()
	e := &epr{}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b struct{ ResourceType, Type string }
		_ = json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&b)
		e.mu.Lock()
		e.got = append(e.got, r.TLS.PeerCertificates[0].Subject.CommonName+" "+r.URL.Path+" "+b.ResourceType+"/"+b.Type)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = io.WriteString(w, `{"resourceType":"Bundle","type":"message","entry":[]}`)
	}))
	c, k := serverCA.Issue(t, pkix.Name{CommonName: "epr.ryj.test"}, true)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: clientCA.Pool, MinVersion: tls.VersionTLS12}
	// The handshake failures the tests provoke are the point: keep them
	// out of the test's output.
	e.srv.Config.ErrorLog = newDiscardLog()
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *epr) served() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// delivery is the example discharge (deploy/examples) as the hub hands it over.
func delivery(t *testing.T) connector.Delivery {
	t.Helper()
	b, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	var ev struct{ ID, Source, Type string }
	_ = json.Unmarshal(b, &ev)
	return connector.Delivery{EventID: ev.ID, EventSource: ev.Source, EventType: ev.Type, Recipient: "RYJ",
		PatientRef: "pseud-7f3a", Body: b, Form: "full"}
}

// TestMutualTLS: with the client certificate, key and CA configured, the
// sink delivers to a server that requires a client certificate, and the
// server sees the hub's certificate. Without a client certificate, with
// one the server's CA did not sign, or without the CA that signed the
// server's certificate, the delivery fails with an error that says which
// side of mutual TLS to look at, and neither the error nor a log line
// holds patient data or the URL's path.
func TestMutualTLS(t *testing.T) {
	serverCA, clientCA, otherCA := testca.New(t, "RYJ server CA"), testca.New(t, "RYJ client CA"), testca.New(t, "another CA")
	srv := newEPR(t, serverCA, clientCA)
	dir := t.TempDir()
	hubCert, hubKey := clientCA.Issue(t, pkix.Name{CommonName: "carehub.rx1.test"}, false)
	strangerCert, strangerKey := otherCA.Issue(t, pkix.Name{CommonName: "carehub.rx1.test"}, false)
	files := map[string]string{
		"cert": write(t, dir, "hub.pem", hubCert), "key": write(t, dir, "hub.key", hubKey),
		"stranger-cert": write(t, dir, "stranger.pem", strangerCert), "stranger-key": write(t, dir, "stranger.key", strangerKey),
		"ca": write(t, dir, "server-ca.pem", serverCA.PEM), "other-ca": write(t, dir, "other-ca.pem", otherCA.PEM),
	}
	tests := []struct {
		name      string
		tls       *fhirout.TLS
		wantErr   string // "" for a delivery
		wantCount int    // requests the server served, after
	}{
		{"certificate, key and CA", &fhirout.TLS{Cert: files["cert"], Key: files["key"], CA: files["ca"]}, "", 1},
		{"no client certificate", &fhirout.TLS{CA: files["ca"]}, "the server asks for a client certificate and none is configured", 1},
		{"a client certificate the server's CA did not sign", &fhirout.TLS{Cert: files["stranger-cert"], Key: files["stranger-key"], CA: files["ca"]}, "does not accept the one configured", 1},
		{"not the CA of the server's certificate", &fhirout.TLS{Cert: files["cert"], Key: files["key"], CA: files["other-ca"]}, "not signed by a trusted CA", 1},
		{"no tls section", nil, "not signed by a trusted CA", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			cfg := fhirout.Config{URL: srv.srv.URL + "/fhir", Mode: fhirout.ModeMessage, TLS: tc.tls, Timeout: 5 * time.Second}
			sink, err := fhirout.New(cfg, connector.SinkEnv{Recipient: "RYJ", Log: zap.New(core), Consent: connector.AlwaysPermit,
				Retry: connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxAttempts: 2}})
			if err != nil {
				t.Fatal(err)
			}
			out, err := sink.Deliver(context.Background(), delivery(t))
			served := srv.served()
			if tc.wantErr == "" {
				if err != nil || out.Status != http.StatusOK {
					t.Fatalf("Deliver: status %d, %v; want 200", out.Status, err)
				}
				if want := "carehub.rx1.test /fhir/$process-message Bundle/message"; len(served) != 1 || served[0] != want {
					t.Fatalf("the server served %q, want [%q]", served, want)
				}
			} else {
				if err == nil {
					t.Fatalf("delivered (status %d), want a TLS failure", out.Status)
				}
				t.Logf("error: %v", err)
				if _, permanent := connector.IsPermanent(err); permanent {
					t.Errorf("a TLS failure is permanent (%v): it is retried, as any attempt without an answer", err)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error:\n\tgot  %q\n\twant it to say %q", err, tc.wantErr)
				}
				if logging.SafeError(err) != err.Error() {
					t.Errorf("the hub would log %q, not the error %q", logging.SafeError(err), err)
				}
				if out.Attempts != 2 {
					t.Errorf("attempts: got %d, want 2 (retried)", out.Attempts)
				}
			}
			if len(served) != tc.wantCount {
				t.Errorf("the server served %d requests, want %d in all", len(served), tc.wantCount)
			}
			leaks := []string{canary, "/fhir", srv.srv.URL}
			var text []string
			if err != nil {
				text = append(text, err.Error())
			}
			for _, l := range logs.All() {
				b, _ := json.Marshal(l.ContextMap())
				text = append(text, l.Message+" "+string(b))
			}
			for _, s := range text {
				for _, leak := range leaks {
					if strings.Contains(s, leak) {
						t.Errorf("%q leaks %q", s, leak)
					}
				}
			}
		})
	}
}

// TestTLSConfigRefused: certificate files that cannot be used stop the
// sink at start, naming the setting.
func TestTLSConfigRefused(t *testing.T) {
	dir := t.TempDir()
	c, k := testca.New(t, "CA").Issue(t, pkix.Name{CommonName: "carehub.rx1.test"}, false)
	cert, key, junk := write(t, dir, "hub.pem", c), write(t, dir, "hub.key", k), write(t, dir, "junk.pem", []byte("not PEM"))
	for _, tc := range []struct {
		name string
		tls  fhirout.TLS
		want string
	}{
		{"cert without key", fhirout.TLS{Cert: cert}, "tls: cert and key are both required"},
		{"key not PEM", fhirout.TLS{Cert: cert, Key: junk}, "tls: reading the client certificate"},
		{"CA missing", fhirout.TLS{Cert: cert, Key: key, CA: filepath.Join(dir, "absent.pem")}, "tls: reading the CA"},
		{"CA not PEM", fhirout.TLS{Cert: cert, Key: key, CA: junk}, "tls: the CA file holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := tc.tls
			_, err := fhirout.New(fhirout.Config{URL: "https://epr.ryj.example/fhir", Mode: fhirout.ModeMessage, TLS: &tl},
				connector.SinkEnv{Recipient: "RYJ", Consent: connector.AlwaysPermit})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New:\n\tgot  %v\n\twant an error saying %q", err, tc.want)
			}
		})
	}
}

func newDiscardLog() *log.Logger { return log.New(io.Discard, "", 0) }
