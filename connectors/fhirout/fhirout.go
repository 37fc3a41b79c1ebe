// Package fhirout is the sink connector that delivers events to a
// recipient's FHIR R4 server (a hospital EPR, a shared care record), in one
// of two forms the recipient chooses:
//
//	mode: message      POST [base]/$process-message   a message Bundle (MessageHeader first)
//	mode: transaction  POST [base]                    a transaction Bundle of conditional updates
//
// The resources are schemas/fhir's mapping, the one every FHIR part of
// carehub uses. Credentials: a bearer token (a connector.Secret: from a
// file or the environment) and/or mutual TLS (a client certificate, and the
// CA that signed the server's).
//
// Retries and stopping follow the connector contract through the shared
// HTTP client (connectors/connector/retry), as the webhook's do: no answer,
// 408, 429 (Retry-After honoured) and 5xx are retried with capped, jittered
// backoff without end, consent is re-checked before every retry, and a stop
// lets a request already sent finish (within Config.Timeout) but starts no
// other. Any other non-2xx is a permanent rejection (connector.Permanent),
// whose reason names the status and the OperationOutcome's issue codes, and
// whose OperationOutcome itself travels in connector.Outcome.Answer to the
// dead letter. Logs carry the method, host and attempts only; never a body
// or a diagnostics text.
package fhirout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/media"
	"github.com/hashicorp/go-cleanhttp"
)

// Type is the connector's type: the key of a recipient's section.
const Type = "fhir"

// Factory is the FHIR sink's registration (connectors/all lists it).
var Factory = connector.SinkFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New: func(cfg connector.Config, env connector.SinkEnv) (connector.Sink, error) {
		return New(*cfg.(*Config), env)
	},
	Probe: &connector.SinkProbe{Receiver: probeReceiver},
}

// Modes.
const (
	ModeMessage     = "message"
	ModeTransaction = "transaction"
)

// DefaultTimeout bounds one attempt.
const DefaultTimeout = 10 * time.Second

// Config is a recipient's fhir section:
//
//	fhir:
//	  url: https://epr.ryj.example/fhir     # the server's base URL
//	  mode: message                         # or transaction
//	  token: {file: /run/secrets/ryj-token} # bearer token (optional)
//	  tls: {cert: client.pem, key: client.key, ca: server-ca.pem}   # mutual TLS (optional)
type Config struct {
	URL     string           `yaml:"url" json:"url"`
	Mode    string           `yaml:"mode" json:"mode"`
	Token   connector.Secret `yaml:"token" json:"token"`
	TLS     *TLS             `yaml:"tls" json:"tls,omitempty"`
	Timeout time.Duration    `yaml:"timeout" json:"timeout"`
}

// TLS is the client side of mutual TLS: a certificate and key (PEM) the
// hub presents, and the CA (PEM) that signed the server's certificate
// (default: the system's roots).
type TLS struct {
	Cert string `yaml:"cert" json:"cert"`
	Key  string `yaml:"key" json:"key"`
	CA   string `yaml:"ca" json:"ca"`
}

// DefaultConfig returns a configuration with every default applied.
func DefaultConfig() *Config { return &Config{Mode: ModeMessage, Timeout: DefaultTimeout} }

// Validate reports every problem of the section, never echoing the URL or
// a secret.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		errs = append(errs, errors.New("url: the server's absolute http or https base URL, without a query, is required"))
	}
	if c.Mode != ModeMessage && c.Mode != ModeTransaction {
		errs = append(errs, errors.New("mode: message or transaction"))
	}
	if c.Token.Set() {
		if _, err := c.Token.Reveal(); err != nil {
			errs = append(errs, fmt.Errorf("token: %w", err))
		}
	}
	if c.TLS != nil && (c.TLS.Cert == "") != (c.TLS.Key == "") {
		errs = append(errs, errors.New("tls: cert and key are both required for a client certificate"))
	}
	if c.Timeout < 0 {
		errs = append(errs, errors.New("timeout: must be positive"))
	}
	return errors.Join(errs...)
}

// Sink delivers to one FHIR server.
type Sink struct {
	cfg       Config
	endpoint  string // where bundles are POSTed
	token     string
	recipient string
	client    *retry.HTTP
}

// New validates cfg, reads its certificate files and builds the sink.
func New(cfg Config, env connector.SinkEnv) (*Sink, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeMessage
	}
	bounds := env.Retry.WithDefaults()
	if err := errors.Join(cfg.Validate(), bounds.Validate()); err != nil {
		return nil, fmt.Errorf("fhir: %w", err)
	}
	if env.Consent == nil {
		return nil, errors.New("fhir: the hub's consent re-check (SinkEnv.Consent) is required")
	}
	s := &Sink{cfg: cfg, recipient: env.Recipient, endpoint: strings.TrimRight(cfg.URL, "/")}
	if cfg.Mode == ModeMessage {
		s.endpoint += "/$process-message"
	}
	if cfg.Token.Set() {
		s.token, _ = cfg.Token.Reveal()
	}
	transport := cleanhttp.DefaultPooledTransport()
	// The client certificate is chosen when the server asks for one
	// (clientCertificate), so that a server refusing the hub for want of
	// one is known to have asked, however TLS 1.3 reports the refusal.
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	var cert *tls.Certificate
	tc.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return clientCertificate(cri, cert), nil
	}
	transport.TLSClientConfig = tc
	if cfg.TLS != nil {
		if cfg.TLS.Cert != "" {
			c, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
			if err != nil {
				return nil, fmt.Errorf("fhir: tls: reading the client certificate: %w", err)
			}
			cert = &c
		}
		if cfg.TLS.CA != "" {
			pem, err := os.ReadFile(cfg.TLS.CA)
			if err != nil {
				return nil, fmt.Errorf("fhir: tls: reading the CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, errors.New("fhir: tls: the CA file holds no PEM certificate")
			}
			tc.RootCAs = pool
		}
	}
	client, err := retry.NewHTTP(retry.HTTPConfig{Retry: bounds, Consent: env.Consent, Timeout: cfg.Timeout,
		Transport: explainTLS{transport}, Log: env.Log})
	if err != nil {
		return nil, fmt.Errorf("fhir: %w", err)
	}
	s.client = client
	return s, nil
}

// Deliver implements connector.Sink.
func (s *Sink) Deliver(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
	var out connector.Outcome
	ev, err := event.Unmarshal(d.Body)
	if err != nil {
		return out, connector.Permanent("the event cannot be decoded", err)
	}
	var body []byte
	if s.cfg.Mode == ModeMessage {
		body, err = fhir.MessageBundle(ev, s.recipient, s.cfg.URL)
	} else {
		body, err = fhir.TransactionBundle(ev)
	}
	if err != nil {
		return out, connector.Permanent("the event cannot be rendered as FHIR", err)
	}
	h := http.Header{}
	h.Set("Content-Type", media.FHIR)
	h.Set("Accept", media.FHIR)
	h.Set("User-Agent", "carehub-fhir/1")
	h.Set("X-Request-ID", d.DeliveryID()) // the event's identity (source and id), as webhooks send it
	if s.token != "" {
		h.Set("Authorization", "Bearer "+s.token)
	}
	cause := &tlsCause{}
	ans, err := s.client.Do(context.WithValue(ctx, tlsCauseKey{}, cause), d, retry.Request{URL: s.endpoint, Header: h, Body: body})
	out.Attempts, out.Status = ans.Attempts, ans.Status
	if text := cause.get(); err != nil && text != "" {
		err = &tlsError{err: err, text: text}
	}
	if _, permanent := connector.IsPermanent(err); permanent && ans.Status != 0 {
		reason := fmt.Sprintf("recipient answered %d", ans.Status)
		if codes, ok := outcomeCodes(ans.Body); ok {
			out.Answer = string(bytes.TrimSpace(ans.Body))
			reason += " with an OperationOutcome (" + codes + ")"
		}
		return out, connector.Permanent(reason, nil)
	}
	return out, err
}

// outcomeCodes reads an OperationOutcome's issue severities and codes (value
// set codes: safe to show) for the dead letter's reason.
func outcomeCodes(b []byte) (string, bool) {
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	if json.Unmarshal(b, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		return "", false
	}
	var parts []string
	for i, is := range oo.Issue {
		if i == 5 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, safeCode(is.Severity)+" "+safeCode(is.Code))
	}
	return strings.Join(parts, "; "), true
}

// safeCode keeps a code only if it has the shape of one.
func safeCode(s string) string {
	if len(s) == 0 || len(s) > 32 {
		return "?"
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c == '-') {
			return "?"
		}
	}
	return s
}

// A TLS handshake that fails is, to the shared HTTP client, an attempt with
// no answer (retried, as the server may be fixed); its error names only
// the class ("request error"). explainTLS records why, in fixed words, so
// that the error Deliver returns (and the hub logs) says which side of
// mutual TLS to look at.

// tlsCause holds why an attempt's handshake failed ("" if none did): what
// the client certificate callback saw (cert), else the error (text).
type tlsCause struct {
	mu   sync.Mutex
	cert string
	text string
}

type tlsCauseKey struct{}

func (c *tlsCause) set(s string) { c.mu.Lock(); c.text = s; c.mu.Unlock() }

func (c *tlsCause) setCert(s string) { c.mu.Lock(); c.cert = s; c.mu.Unlock() }

func (c *tlsCause) get() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != "" {
		return c.cert
	}
	return c.text
}

// clientCertificate answers a server's request for a client certificate:
// cert if it is one the server accepts (as crypto/tls chooses from
// Config.Certificates), else none; and, when it sends none, records why
// in the attempt's tlsCause: a refusal that follows (an alert, or a reset
// connection under TLS 1.3) is then explained.
func clientCertificate(cri *tls.CertificateRequestInfo, cert *tls.Certificate) *tls.Certificate {
	if cert != nil && cri.SupportsCertificate(cert) == nil {
		return cert
	}
	if c, ok := cri.Context().Value(tlsCauseKey{}).(*tlsCause); ok {
		if cert == nil {
			c.setCert("TLS: the server asks for a client certificate and none is configured (tls.cert, tls.key)")
		} else {
			c.setCert("TLS: the server asks for a client certificate and does not accept the one configured (tls.cert: signed by a CA it trusts?)")
		}
	}
	return &tls.Certificate{}
}

// explainTLS is the sink's transport: it records a TLS failure's cause in
// the request's tlsCause.
type explainTLS struct{ next http.RoundTripper }

func (t explainTLS) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		if c, ok := req.Context().Value(tlsCauseKey{}).(*tlsCause); ok {
			if text := tlsFailure(err); text != "" {
				c.set(text)
			}
		}
	}
	return resp, err
}

// tlsFailure describes a TLS handshake failure in words safe to log (no
// certificate names, no URL), or returns "" for any other error.
func tlsFailure(err error) string {
	var host x509.HostnameError
	var authority x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.As(err, &host):
		return "TLS: the server's certificate is not for its host name (url)"
	case errors.As(err, &authority):
		return "TLS: the server's certificate is not signed by a trusted CA (tls.ca)"
	case errors.As(err, &invalid):
		return "TLS: the server's certificate is not valid (expired, or not a server certificate)"
	case errors.As(err, &verify):
		return "TLS: the server's certificate could not be verified (tls.ca)"
	case errors.As(err, &op) && op.Op == "remote error":
		// The server's alert: a fixed text from crypto/tls ("tls: certificate
		// required", "tls: bad certificate", "tls: unknown certificate authority").
		alert := op.Err.Error()
		if len(alert) > 60 || !strings.HasPrefix(alert, "tls: ") {
			alert = "tls: alert"
		}
		return "TLS: the server refused the handshake (" + alert + "): check the client certificate (tls.cert, tls.key)"
	}
	return ""
}

// tlsError is a delivery error (err, from the shared client: it names the
// class only) told by its TLS cause: safe to log whole.
type tlsError struct {
	err  error
	text string
}

func (e *tlsError) Error() string { return "delivering: " + e.text }
func (e *tlsError) Unwrap() error { return e.err }
func (e *tlsError) SafeToLog()    {}

var _ connector.Sink = (*Sink)(nil)
