package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
)

// Retryable decides, in one place, whether an HTTP attempt that ended with
// this status (0 when there was no response) or error is worth retrying.
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
		return false // redirects are not followed: a configuration error
	default:
		return false // any other 4xx: the receiver rejects this copy; a retry cannot help
	}
}

// RetryAfter reads the wait a 429 or 503 asks for in Retry-After (seconds
// or an HTTP date); ok is false when there is none to honour.
func RetryAfter(resp *http.Response) (d time.Duration, ok bool) {
	if resp == nil || (resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable) {
		return 0, false
	}
	s := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if s == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(s); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(s); err == nil {
		return time.Until(t), true
	}
	return 0, false
}

// Backoff is go-retryablehttp's Backoff for a delivery: the wait a
// Retry-After asks for, within [min, max]; else Delay. attempt counts
// retries from 0, as the library does.
func Backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if d, ok := RetryAfter(resp); ok {
		return clamp(d, min, max)
	}
	return Delay(connector.Retry{MinBackoff: min, MaxBackoff: max}, attempt+1)
}

// MaxAnswer is the most of an answer's body HTTP.Do reads.
const MaxAnswer = 64 << 10

// HTTPConfig configures an HTTP client.
type HTTPConfig struct {
	// Retry bounds the backoff and, if MaxAttempts is set, the attempts.
	Retry connector.Retry
	// Consent is asked before every retry. Required.
	Consent connector.Consent
	// Timeout bounds one attempt, from dialling to the end of the answer.
	// A stop does not cut an attempt short: this does. Required.
	Timeout time.Duration
	// Transport carries the requests (TLS settings, say); nil: a pooled
	// transport (go-cleanhttp).
	Transport http.RoundTripper
	// Log receives the method, the host and retry counts only.
	Log *zap.Logger
}

// HTTP delivers copies over HTTP with go-retryablehttp, following the
// connector contract (see the package comment). Redirects are not
// followed: a 3xx is the answer. One HTTP serves any number of deliveries
// at once.
type HTTP struct {
	c     *retryablehttp.Client
	retry connector.Retry
	cons  connector.Consent
}

// NewHTTP builds the client.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	r := cfg.Retry.WithDefaults()
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	if cfg.Consent == nil {
		return nil, errors.New("retry: the consent re-check (HTTPConfig.Consent) is required")
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("retry: HTTPConfig.Timeout must be positive")
	}
	transport := cfg.Transport
	if transport == nil {
		transport = cleanhttp.DefaultPooledTransport()
	}
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	h := &HTTP{retry: r, cons: cfg.Consent}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{
		Timeout:       cfg.Timeout,
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.Logger = logging.NewRetryable(log)
	c.RetryWaitMin, c.RetryWaitMax = r.MinBackoff, r.MaxBackoff
	c.RetryMax = math.MaxInt32
	if r.MaxAttempts > 0 {
		c.RetryMax = r.MaxAttempts - 1
	}
	c.Backoff = Backoff
	c.CheckRetry = checkRetry
	c.RequestLogHook = beforeAttempt
	c.PrepareRetry = h.prepareRetry
	// Return the last response or error as is: the library's own "giving
	// up" error embeds the URL.
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	h.c = c
	return h, nil
}

// WrapTransport wraps the client's transport: for tests that watch or
// break attempts. Call it before the first Do.
func (h *HTTP) WrapTransport(wrap func(http.RoundTripper) http.RoundTripper) {
	h.c.HTTPClient.Transport = wrap(h.c.HTTPClient.Transport)
}

// Request is one delivery as an HTTP request.
type Request struct {
	Method string // default POST
	URL    string
	Header http.Header
	Body   []byte
	// Sign, when set, is called before every attempt with the attempt's
	// headers and the body, to sign it afresh (a webhook's signature holds
	// the attempt's time, and receivers refuse stale ones).
	Sign func(h http.Header, body []byte)
}

// Answer is what the recipient last answered.
type Answer struct {
	Attempts int
	Status   int    // 0 when no attempt got an answer
	Body     []byte // at most MaxAnswer bytes of the last answer's body
}

// Do delivers d as r. It returns nil once an attempt is answered 2xx. A
// final answer Retryable refuses to retry is connector.Permanent("recipient
// answered N") with the answer; a stop, a consent change before a retry,
// and giving up at Retry.MaxAttempts are as the package comment says.
func (h *HTTP) Do(ctx context.Context, d connector.Delivery, r Request) (Answer, error) {
	if ctx.Err() != nil {
		return Answer{}, stopped(ctx, 0)
	}
	method := r.Method
	if method == "" {
		method = http.MethodPost
	}
	s := &state{stop: ctx, d: d, sign: r.Sign, body: r.Body}
	// The request's context does not end with ctx: an attempt under way
	// finishes. s.cancel ends it only while the client waits between
	// attempts, or when an attempt would start after the stop.
	rctx, cancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), stateKey{}, s))
	defer cancel()
	s.cancel = cancel
	unwatch := context.AfterFunc(ctx, s.onStop)
	defer unwatch()

	req, err := retryablehttp.NewRequestWithContext(rctx, method, r.URL, r.Body)
	if err != nil {
		return Answer{}, connector.Permanent("building the request", nil)
	}
	for k, vs := range r.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	if r.Sign != nil {
		r.Sign(req.Header, r.Body)
	}
	resp, err := h.c.Do(req)
	unwatch()
	var ans Answer
	ans.Attempts = s.attemptCount()
	if resp != nil {
		ans.Status = resp.StatusCode
		ans.Body, _ = io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxAnswer))
		resp.Body.Close()
	}
	if err == nil && resp != nil {
		// The last attempt's answer is final, stop or no stop.
		switch {
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			return ans, nil
		case Retryable(resp.StatusCode, nil):
			// Only reached when Retry.MaxAttempts bounds the attempts.
			return ans, fmt.Errorf("delivering: gave up after %d attempts, last status %d", ans.Attempts, resp.StatusCode)
		default:
			return ans, connector.Permanent(fmt.Sprintf("recipient answered %d", resp.StatusCode), nil)
		}
	}
	switch {
	case err == nil:
		return ans, errors.New("delivering: no answer") // the library returns a response or an error
	case final(err), errors.Is(err, errConsent):
		return ans, err
	case errors.Is(err, ErrStopped), s.wasStopped():
		return ans, stopped(ctx, ans.Attempts)
	default:
		return ans, fmt.Errorf("delivering: %s", logging.Class(err))
	}
}

// errConsent marks a re-check that could not answer.
var errConsent = errors.New("consent could not be re-checked")

// stateKey is the request context's key of its delivery's state.
type stateKey struct{}

// state is one Do's: its delivery, its stop, and where the client is
// between attempts. The library calls the hooks on Do's goroutine; onStop
// runs on another, hence mu.
type state struct {
	stop   context.Context // Do's ctx: its end is the stop
	cancel context.CancelFunc
	d      connector.Delivery
	sign   func(http.Header, []byte)
	body   []byte

	mu       sync.Mutex
	attempts int  // attempts started
	waiting  bool // between attempts (a backoff wait, the re-check before a retry)
	halted   bool // ctx ended
}

func stateOf(ctx context.Context) *state {
	s, _ := ctx.Value(stateKey{}).(*state)
	return s
}

// onStop runs when Do's ctx ends: a wait between attempts ends at once;
// an attempt under way is let finish.
func (s *state) onStop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halted = true
	if s.waiting {
		s.cancel()
	}
}

func (s *state) wasStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halted
}

func (s *state) attemptCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// beforeAttempt is called by the library just before each attempt: after
// a stop, it ends the request's context so that the attempt fails before
// a byte is sent.
func beforeAttempt(_ retryablehttp.Logger, req *http.Request, _ int) {
	s := stateOf(req.Context())
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halted {
		s.cancel()
		return
	}
	s.waiting = false
	s.attempts++
}

// checkRetry is called by the library after each attempt.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	retry := Retryable(status, err)
	s := stateOf(ctx)
	if s == nil || !retry {
		return retry, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halted {
		return false, ErrStopped
	}
	s.waiting = true
	return true, nil
}

// prepareRetry is called by the library after the backoff wait, before a
// retry: consent is asked again, and the request signed afresh.
func (h *HTTP) prepareRetry(req *http.Request) error {
	s := stateOf(req.Context())
	if s == nil {
		return nil
	}
	if s.wasStopped() {
		return ErrStopped
	}
	if err := Recheck(s.stop, h.cons, s.d); err != nil {
		if s.stop.Err() != nil {
			return ErrStopped
		}
		if final(err) {
			return err
		}
		return fmt.Errorf("%w: %w", errConsent, err)
	}
	if s.sign != nil {
		s.sign(req.Header, s.body)
	}
	return nil
}
