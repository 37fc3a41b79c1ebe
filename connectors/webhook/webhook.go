// Package webhook is the sink connector that POSTs each event to a
// recipient's HTTPS endpoint, signed per the Standard Webhooks convention.
//
// Each request is the event in the CloudEvents structured mode (Content-Type
// application/cloudevents+json) and carries:
//
//	webhook-id:        the event's delivery id (connector.Delivery.DeliveryID, a UUID
//	                   of its source and id; also Idempotency-Key): every delivery of
//	                   one event carries the same, so a receiver can drop duplicates,
//	                   and two publishers' events that share an id carry two
//	webhook-timestamp: Unix seconds of this attempt
//	webhook-signature: "v1," + base64(HMAC-SHA256(secret, id + "." + timestamp + "." + body))
//	ce-specversion, ce-id, ce-source, ce-type: the event's attributes, as the HTTP
//	                   binding's binary mode names them (it allows them in structured
//	                   mode too, section 3.2.3), percent-encoded
//	carehub-patient:   the keyed pseudonym of the patient (never the NHS number)
//
// The secret is in the Standard Webhooks form: "whsec_" and the base64
// (standard alphabet, padded) of at least 24 random bytes, which is what the
// specification's libraries load (new Webhook(secret) in every language). A
// secret in any other form is refused by Validate, so that a hub never signs
// with a key its recipients' libraries cannot load. Make one with
//
//	echo "whsec_$(openssl rand -base64 32)"
//
// Retries and stopping follow the connector contract through the shared
// HTTP client (connectors/connector/retry): no answer, 408, 429 and 5xx are
// retried with capped, jittered exponential backoff (honouring Retry-After)
// without end; any other answer but 2xx is a permanent rejection
// (connector.Permanent), redirects included (they are not followed). Each
// attempt is signed afresh. When the hub stops, a POST already sent is let
// finish (within Config.Timeout) and its answer counts; no further attempt
// starts, and the event is delivered again after the restart, with the same
// webhook-id.
//
// Consent: before every retry the sink asks the hub (SinkEnv.Consent)
// whether the patient's directives still permit the copy. A copy now
// withheld is not sent again (connector.Withheld); a copy that must now go
// as a notification is not sent in full (connector.ErrConsentChanged: the
// hub prepares it again). A content-free notice (carehub-patient empty) is
// sent without the header.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
)

// Header names.
const (
	HeaderID         = "webhook-id"
	HeaderTimestamp  = "webhook-timestamp"
	HeaderSignature  = "webhook-signature"
	HeaderPatient    = "carehub-patient"
	HeaderEventType  = "carehub-event-type"
	HeaderRecipient  = "carehub-recipient"
	HeaderIdempotent = "Idempotency-Key"

	HeaderSpecVersion = "ce-specversion"
	HeaderEventID     = "ce-id"
	HeaderSource      = "ce-source"
	HeaderType        = "ce-type"
)

// Type is the connector's type: the key of a recipient's section.
const Type = "webhook"

// Factory is the webhook sink's registration (connectors/all lists it).
var Factory = connector.SinkFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New: func(cfg connector.Config, env connector.SinkEnv) (connector.Sink, error) {
		return New(*cfg.(*Config), env)
	},
	Probe: &connector.SinkProbe{Receiver: probeReceiver},
}

// DefaultTimeout bounds one attempt when the configuration does not.
const DefaultTimeout = 10 * time.Second

// Config is a recipient's webhook section:
//
//	webhook: {url: https://gp.example.nhs.uk/carehub, secret: {file: /run/secrets/gp}, timeout: 10s}
type Config struct {
	URL    string           `yaml:"url" json:"url"`
	Secret connector.Secret `yaml:"secret" json:"secret"`
	// Timeout bounds one attempt (default 10s).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
}

// DefaultConfig returns a configuration with every default applied.
func DefaultConfig() *Config { return &Config{Timeout: DefaultTimeout} }

// Validate reports every problem of the section. It never echoes the URL
// (it may carry a token) or the secret.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, errors.New("url: an absolute http or https URL is required"))
	}
	if v, err := c.Secret.Reveal(); err != nil {
		errs = append(errs, fmt.Errorf("secret: %w", err))
	} else if _, err := DecodeSecret(v); err != nil {
		errs = append(errs, fmt.Errorf("secret: %w", err))
	}
	if c.Timeout < 0 {
		errs = append(errs, errors.New("timeout: must be positive"))
	}
	return errors.Join(errs...)
}

// Sink delivers to one webhook endpoint.
type Sink struct {
	url    string
	secret []byte
	client *retry.HTTP
	now    func() time.Time
}

// New validates cfg and the hub's retry bounds and builds the sink.
// env.Log receives only method, host and retry counts.
func New(cfg Config, env connector.SinkEnv) (*Sink, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	bounds := env.Retry.WithDefaults()
	if err := errors.Join(cfg.Validate(), bounds.Validate()); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	if env.Consent == nil {
		return nil, errors.New("webhook: the hub's consent re-check (SinkEnv.Consent) is required")
	}
	raw, _ := cfg.Secret.Reveal()
	secret, _ := DecodeSecret(raw)
	client, err := retry.NewHTTP(retry.HTTPConfig{Retry: bounds, Consent: env.Consent, Timeout: cfg.Timeout, Log: env.Log})
	if err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	return &Sink{url: cfg.URL, secret: secret, client: client, now: time.Now}, nil
}

// Deliver implements connector.Sink.
func (s *Sink) Deliver(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
	id := d.DeliveryID()
	h := http.Header{}
	h.Set("Content-Type", media.CloudEvent)
	h.Set(HeaderIdempotent, id)
	h.Set(HeaderID, id)
	h.Set(HeaderSpecVersion, event.SpecVersion)
	h.Set(HeaderEventID, event.EncodeHeaderValue(d.EventID))
	h.Set(HeaderSource, event.EncodeHeaderValue(d.EventSource))
	h.Set(HeaderType, event.EncodeHeaderValue(d.EventType))
	if d.PatientRef != "" {
		h.Set(HeaderPatient, d.PatientRef)
	}
	h.Set(HeaderEventType, d.EventType)
	h.Set(HeaderRecipient, d.Recipient)
	h.Set("User-Agent", "carehub-webhook/1")
	ans, err := s.client.Do(ctx, d, retry.Request{URL: s.url, Header: h, Body: d.Body,
		// Each attempt is signed afresh: receivers reject stale timestamps.
		Sign: func(h http.Header, body []byte) { s.sign(h, id, body) }})
	return connector.Outcome{Attempts: ans.Attempts, Status: ans.Status}, err
}

// SecretPrefix starts every secret in the Standard Webhooks form.
const SecretPrefix = "whsec_"

// MinSecretBytes is the shortest signing key accepted: the lower bound the
// Standard Webhooks specification gives (24 to 64 bytes).
const MinSecretBytes = 24

// HowToMakeSecret says how to make a secret of the accepted form.
const HowToMakeSecret = `make one with: echo "whsec_$(openssl rand -base64 32)"`

// DecodeSecret returns the signing key of a secret in the Standard Webhooks
// form: SecretPrefix and the base64 (standard alphabet, with padding) of at
// least MinSecretBytes bytes. Anything else is an error that says how to make
// a secret, and never holds the secret itself: the official libraries
// (new Webhook(secret)) would not load it, so the recipient could not verify
// a single delivery.
func DecodeSecret(secret string) ([]byte, error) {
	rest, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, errors.New("a webhook secret is whsec_ followed by base64, the Standard Webhooks form its libraries load; " + HowToMakeSecret)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, errors.New("a webhook secret is whsec_ followed by base64 (standard alphabet, with = padding); " + HowToMakeSecret)
	}
	if len(b) < MinSecretBytes {
		return nil, fmt.Errorf("a webhook secret holds at least %d bytes after base64 decoding (the Standard Webhooks minimum); %s", MinSecretBytes, HowToMakeSecret)
	}
	return b, nil
}

func (s *Sink) sign(h http.Header, id string, body []byte) {
	ts := strconv.FormatInt(s.now().Unix(), 10)
	h.Set(HeaderTimestamp, ts)
	h.Set(HeaderSignature, "v1,"+Signature(s.secret, id, ts, body))
}

// Signature computes the base64 HMAC-SHA256 of id.timestamp.body.
func Signature(key []byte, id, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Verification errors.
var (
	ErrMissingHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrTimestamp      = errors.New("webhook: timestamp outside the tolerance")
	ErrSignature      = errors.New("webhook: no signature matches")
)

// Verify checks a received request's signature headers against body, as a
// receiver does. tolerance bounds the timestamp's distance from now.
func Verify(key []byte, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, ts, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || ts == "" || sigs == "" {
		return ErrMissingHeaders
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrTimestamp
	}
	if d := now.Sub(time.Unix(secs, 0)); d > tolerance || d < -tolerance {
		return ErrTimestamp
	}
	want := []byte(Signature(key, id, ts, body))
	for _, sig := range strings.Fields(sigs) {
		v, got, ok := strings.Cut(sig, ",")
		if ok && v == "v1" && hmac.Equal([]byte(got), want) {
			return nil
		}
	}
	return ErrSignature
}

// Body is a helper for receivers: it reads at most limit bytes of r's body.
func Body(r *http.Request, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r.Body, limit))
}

var _ connector.Sink = (*Sink)(nil)
