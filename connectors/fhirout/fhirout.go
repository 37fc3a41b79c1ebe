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
// Retries follow the webhook sink's rules, decided in one function
// (Retryable): no answer, 408, 429 (Retry-After honoured), 5xx are retried
// with capped, jittered backoff without end; any other non-2xx is a
// permanent rejection (connector.Permanent), whose reason names the status
// and the OperationOutcome's issue codes, and whose OperationOutcome itself
// travels in connector.Outcome.Answer to the dead letter. Logs carry the
// method, host and attempts only; never a body or a diagnostics text.
package fhirout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/media"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
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
	client    *retryablehttp.Client
}

// New validates cfg, reads its certificate files and builds the sink.
func New(cfg Config, env connector.SinkEnv) (*Sink, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeMessage
	}
	retry := env.Retry.WithDefaults()
	if err := errors.Join(cfg.Validate(), retry.Validate()); err != nil {
		return nil, fmt.Errorf("fhir: %w", err)
	}
	s := &Sink{cfg: cfg, recipient: env.Recipient, endpoint: strings.TrimRight(cfg.URL, "/")}
	if cfg.Mode == ModeMessage {
		s.endpoint += "/$process-message"
	}
	if cfg.Token.Set() {
		s.token, _ = cfg.Token.Reveal()
	}
	transport := cleanhttp.DefaultPooledTransport()
	if cfg.TLS != nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLS.Cert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
			if err != nil {
				return nil, fmt.Errorf("fhir: tls: reading the client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
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
		transport.TLSClientConfig = tc
	}
	log := env.Log
	if log == nil {
		log = zap.NewNop()
	}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Timeout: cfg.Timeout, Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	c.Logger = logging.NewRetryable(log)
	c.RetryWaitMin, c.RetryWaitMax = retry.MinBackoff, retry.MaxBackoff
	c.RetryMax = math.MaxInt32
	if retry.MaxAttempts > 0 {
		c.RetryMax = retry.MaxAttempts - 1
	}
	c.CheckRetry = func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return Retryable(status, err), nil
	}
	c.Backoff = backoff
	c.RequestLogHook = func(_ retryablehttp.Logger, r *http.Request, _ int) {
		if n, ok := r.Context().Value(attemptsKey{}).(*int); ok {
			*n++
		}
	}
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler // its own error embeds the URL
	s.client = c
	return s, nil
}

// Retryable decides, in one place, whether an attempt that ended with this
// status (0: no response) or error is worth retrying.
func Retryable(status int, err error) bool {
	switch {
	case err != nil:
		return true // no answer: the server may be down
	case status >= 200 && status < 300:
		return false // delivered
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return true // asked to slow down, or timed out reading
	case status >= 500:
		return true // the server's fault, usually passing
	default:
		return false // 3xx (not followed) or 4xx: the server rejects this bundle; a retry cannot help
	}
}

func backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if secs, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && secs >= 0 {
			return max64(min, minDur(time.Duration(secs)*time.Second, max))
		}
	}
	bound := float64(min) * math.Pow(2, float64(attempt))
	if bound > float64(max) || math.IsInf(bound, 0) {
		bound = float64(max)
	}
	span := int64(bound) - int64(min)
	if span <= 0 {
		return min
	}
	return min + time.Duration(rand.Int64N(span+1))
}

func max64(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

func minDur(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

type attemptsKey struct{}

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
	attempts := 0
	req, err := retryablehttp.NewRequestWithContext(context.WithValue(ctx, attemptsKey{}, &attempts), http.MethodPost, s.endpoint, body)
	if err != nil {
		return out, connector.Permanent("building the request", err)
	}
	req.Header.Set("Content-Type", media.FHIR)
	req.Header.Set("Accept", media.FHIR)
	req.Header.Set("User-Agent", "carehub-fhir/1")
	req.Header.Set("X-Request-ID", d.EventID)
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	out.Attempts = attempts
	if err != nil {
		if ctx.Err() != nil {
			return out, fmt.Errorf("delivering: %w", ctx.Err())
		}
		return out, fmt.Errorf("delivering: %s", logging.Class(err))
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	out.Status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return out, nil
	}
	if Retryable(resp.StatusCode, nil) {
		return out, fmt.Errorf("delivering: gave up after %d attempts, last status %d", attempts, resp.StatusCode)
	}
	reason := fmt.Sprintf("recipient answered %d", resp.StatusCode)
	if codes, ok := outcomeCodes(answer); ok {
		out.Answer = string(bytes.TrimSpace(answer))
		reason += " with an OperationOutcome (" + codes + ")"
	}
	return out, connector.Permanent(reason, nil)
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

var _ connector.Sink = (*Sink)(nil)
