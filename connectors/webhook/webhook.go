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
// Retries: whether an answer is worth retrying is decided in one function,
// Retryable. Transient failures are retried with capped, jittered
// exponential backoff (honouring Retry-After) without end, until the context
// ends; a permanent rejection is returned as connector.Permanent.
//
// Consent: before every retry the sink asks the hub (SinkEnv.Consent)
// whether the patient's directives still permit the copy. A copy now
// withheld is not sent again (connector.Withheld); a copy that must now go
// as a notification is not sent in full (connector.ErrConsentChanged: the
// hub prepares it again). A content-free notice (carehub-patient empty) is
// sent without the header.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
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
	url     string
	secret  []byte
	client  *retryablehttp.Client
	consent connector.Consent
	now     func() time.Time
}

// New validates cfg and the hub's retry bounds and builds the sink.
// env.Log receives only method, host and retry counts.
func New(cfg Config, env connector.SinkEnv) (*Sink, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	retry := env.Retry.WithDefaults()
	if err := errors.Join(cfg.Validate(), retry.Validate()); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	if env.Consent == nil {
		return nil, errors.New("webhook: the hub's consent re-check (SinkEnv.Consent) is required")
	}
	raw, _ := cfg.Secret.Reveal()
	secret, _ := DecodeSecret(raw)
	log := env.Log
	if log == nil {
		log = zap.NewNop()
	}
	s := &Sink{url: cfg.URL, secret: secret, consent: env.Consent, now: time.Now}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{
		Timeout:   cfg.Timeout,
		Transport: cleanhttp.DefaultPooledTransport(),
		// Redirects are not followed (see Retryable): the 3xx is the answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.Logger = logging.NewRetryable(log)
	c.RetryWaitMin = retry.MinBackoff
	c.RetryWaitMax = retry.MaxBackoff
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
	c.Backoff = Backoff
	c.RequestLogHook = func(_ retryablehttp.Logger, r *http.Request, _ int) {
		if n, ok := r.Context().Value(attemptsKey{}).(*int); ok {
			*n++ // called on Deliver's goroutine, once before each attempt
		}
	}
	// Return the last response or error as is: retryablehttp's own
	// "giving up" error embeds the URL.
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	c.PrepareRetry = func(req *http.Request) error {
		// Consent holds until the moment of delivery: ask again before
		// every retry.
		if d, ok := req.Context().Value(deliveryKey{}).(connector.Delivery); ok {
			v, err := s.consent.Recheck(req.Context(), d)
			switch {
			case err != nil:
				return fmt.Errorf("re-checking consent: %w", err)
			case !v.Permit:
				return connector.Withheld(v.Rule)
			case !bytes.Equal(v.Body, d.Body):
				return connector.ErrConsentChanged
			}
		}
		// Re-sign each attempt: receivers reject stale timestamps.
		body, err := req.GetBody()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		s.sign(req.Header, req.Header.Get(HeaderID), b)
		return nil
	}
	s.client = c
	return s, nil
}

// Retryable decides, in one place, whether a delivery attempt that ended
// with this status (0 when there was no response) or error is worth retrying.
func Retryable(status int, err error) bool {
	switch {
	case err != nil:
		// No answer: connection refused or reset, DNS, timeout. The
		// recipient may be down; its outbox keeps the backlog.
		return true
	case status >= 200 && status < 300:
		return false // delivered
	case status == http.StatusTooManyRequests:
		return true // asked to slow down (Retry-After honoured by Backoff)
	case status == http.StatusRequestTimeout:
		return true // the receiver timed out reading: the request may succeed
	case status >= 500:
		return true // the receiver's fault, usually passing
	case status >= 300 && status < 400:
		return false // redirects are not followed for signed deliveries: a configuration error
	default:
		return false // any other 4xx: the receiver rejects this event; a retry cannot help
	}
}

// Backoff is capped exponential backoff with full jitter between min and
// the exponential bound; Retry-After on a 429 or 503 is honoured, capped at max.
func Backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && secs >= 0 {
				return clamp(time.Duration(secs)*time.Second, min, max)
			}
			if t, err := http.ParseTime(s); err == nil {
				return clamp(time.Until(t), min, max)
			}
		}
	}
	bound := float64(min) * math.Pow(2, float64(attempt))
	if bound > float64(max) || math.IsInf(bound, 0) || math.IsNaN(bound) {
		bound = float64(max)
	}
	span := int64(bound) - int64(min)
	if span <= 0 {
		return min
	}
	return min + time.Duration(rand.Int64N(span+1))
}

func clamp(d, min, max time.Duration) time.Duration {
	if d < min {
		return min
	}
	if d > max {
		return max
	}
	return d
}

// Deliver implements connector.Sink.
func (s *Sink) Deliver(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
	var out connector.Outcome
	attempts := 0
	rctx := context.WithValue(context.WithValue(ctx, attemptsKey{}, &attempts), deliveryKey{}, d)
	req, err := retryablehttp.NewRequestWithContext(rctx, http.MethodPost, s.url, d.Body)
	if err != nil {
		return out, connector.Permanent("building request", err)
	}
	id := d.DeliveryID()
	req.Header.Set("Content-Type", media.CloudEvent)
	req.Header.Set(HeaderIdempotent, id)
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderSpecVersion, event.SpecVersion)
	req.Header.Set(HeaderEventID, event.EncodeHeaderValue(d.EventID))
	req.Header.Set(HeaderSource, event.EncodeHeaderValue(d.EventSource))
	req.Header.Set(HeaderType, event.EncodeHeaderValue(d.EventType))
	if d.PatientRef != "" {
		req.Header.Set(HeaderPatient, d.PatientRef)
	}
	req.Header.Set(HeaderEventType, d.EventType)
	req.Header.Set(HeaderRecipient, d.Recipient)
	req.Header.Set("User-Agent", "carehub-webhook/1")
	s.sign(req.Header, id, d.Body)
	resp, err := s.client.Do(req)
	out.Attempts = attempts
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		if _, ok := connector.IsWithheld(err); ok {
			return out, err
		}
		if errors.Is(err, connector.ErrConsentChanged) {
			return out, err
		}
		if ctx.Err() != nil {
			return out, fmt.Errorf("delivering: %w", ctx.Err())
		}
		return out, fmt.Errorf("delivering: %s", logging.Class(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	out.Status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return out, nil
	}
	if Retryable(resp.StatusCode, nil) {
		// Only reached when MaxAttempts bounds the retries.
		return out, fmt.Errorf("delivering: gave up after %d attempts, last status %d", attempts, resp.StatusCode)
	}
	return out, connector.Permanent(fmt.Sprintf("recipient answered %d", resp.StatusCode), nil)
}

// attemptsKey is the context key of Deliver's attempt counter.
type attemptsKey struct{}

// deliveryKey is the context key of the Delivery being sent.
type deliveryKey struct{}

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
