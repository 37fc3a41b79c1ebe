package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/webhook"
	"go.uber.org/zap"
)

// The Standard Webhooks specification's published test vector.
const (
	vecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vecID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vecTS     = "1614265330"
	vecBody   = `{"test": 2432232314}`
	vecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func vecKey(t *testing.T) []byte {
	t.Helper()
	k, err := webhook.DecodeSecret(vecSecret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignatureStandardWebhooksVector(t *testing.T) {
	got := "v1," + webhook.Signature(vecKey(t), vecID, vecTS, []byte(vecBody))
	if got != vecSig {
		t.Errorf("Signature(%q, %q, %q, %q):\n\tgot  %v\n\twant %v", vecSecret, vecID, vecTS, vecBody, got, vecSig)
	}
}

func vecHeader(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set(webhook.HeaderID, id)
	}
	if ts != "" {
		h.Set(webhook.HeaderTimestamp, ts)
	}
	if sig != "" {
		h.Set(webhook.HeaderSignature, sig)
	}
	return h
}

func TestVerify(t *testing.T) {
	key := vecKey(t)
	secs, _ := strconv.ParseInt(vecTS, 10, 64)
	signedAt := time.Unix(secs, 0)
	const tol = 5 * time.Minute
	otherSig := "v1," + webhook.Signature([]byte("another-secret"), vecID, vecTS, []byte(vecBody))

	tests := []struct {
		name string
		key  []byte
		h    http.Header
		body string
		now  time.Time
		want error
	}{
		{"good", key, vecHeader(vecID, vecTS, vecSig), vecBody, signedAt, nil},
		{"good, at the tolerance's edge (past)", key, vecHeader(vecID, vecTS, vecSig), vecBody, signedAt.Add(tol), nil},
		{"good, at the tolerance's edge (future)", key, vecHeader(vecID, vecTS, vecSig), vecBody, signedAt.Add(-tol), nil},
		{"tampered body", key, vecHeader(vecID, vecTS, vecSig), `{"test": 2432232315}`, signedAt, webhook.ErrSignature},
		{"body with extra space", key, vecHeader(vecID, vecTS, vecSig), vecBody + " ", signedAt, webhook.ErrSignature},
		{"other id", key, vecHeader("msg_other", vecTS, vecSig), vecBody, signedAt, webhook.ErrSignature},
		{"wrong secret", []byte("not-the-secret"), vecHeader(vecID, vecTS, vecSig), vecBody, signedAt, webhook.ErrSignature},
		{"stale", key, vecHeader(vecID, vecTS, vecSig), vecBody, signedAt.Add(tol + time.Second), webhook.ErrTimestamp},
		{"future", key, vecHeader(vecID, vecTS, vecSig), vecBody, signedAt.Add(-tol - time.Second), webhook.ErrTimestamp},
		{"timestamp not a number", key, vecHeader(vecID, "soon", vecSig), vecBody, signedAt, webhook.ErrTimestamp},
		{"missing id", key, vecHeader("", vecTS, vecSig), vecBody, signedAt, webhook.ErrMissingHeaders},
		{"missing timestamp", key, vecHeader(vecID, "", vecSig), vecBody, signedAt, webhook.ErrMissingHeaders},
		{"missing signature", key, vecHeader(vecID, vecTS, ""), vecBody, signedAt, webhook.ErrMissingHeaders},
		{"no headers", key, http.Header{}, vecBody, signedAt, webhook.ErrMissingHeaders},
		{"several, one valid (last)", key, vecHeader(vecID, vecTS, otherSig+" v1,bm90IGEgc2lnbmF0dXJl "+vecSig), vecBody, signedAt, nil},
		{"several, one valid (first)", key, vecHeader(vecID, vecTS, vecSig+" "+otherSig), vecBody, signedAt, nil},
		{"several, none valid", key, vecHeader(vecID, vecTS, otherSig+" v1,bm90IGEgc2lnbmF0dXJl"), vecBody, signedAt, webhook.ErrSignature},
		{"right value, other version", key, vecHeader(vecID, vecTS, strings.Replace(vecSig, "v1,", "v1a,", 1)), vecBody, signedAt, webhook.ErrSignature},
		{"no version", key, vecHeader(vecID, vecTS, strings.TrimPrefix(vecSig, "v1,")), vecBody, signedAt, webhook.ErrSignature},
	}
	for _, tt := range tests {
		got := webhook.Verify(tt.key, tt.h, []byte(tt.body), tt.now, tol)
		if !errors.Is(got, tt.want) || (tt.want == nil) != (got == nil) {
			t.Errorf("Verify(%s):\n\tgot  %v\n\twant %v", tt.name, got, tt.want)
		}
	}
}

func TestDecodeSecret(t *testing.T) {
	tests := []struct {
		secret  string
		want    string
		wantErr string // "" means valid
	}{
		{"whsec_Y29uZm9ybWFuY2Utc3VpdGUtc2VjcmV0", "conformance-suite-secret", ""},
		{"whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "0123456789abcdef0123456789abcdef", ""},
		// Regression: raw secrets such as the old demo-gp-secret were used as
		// their bytes, and the official libraries throw on them in new Webhook().
		{"demo-gp-secret", "", "whsec_ followed by base64"},
		{"WHSEC_Y29uZm9ybWFuY2Utc3VpdGUtc2VjcmV0", "", "whsec_ followed by base64"}, // the prefix is case-sensitive
		{"Y29uZm9ybWFuY2Utc3VpdGUtc2VjcmV0", "", "whsec_ followed by base64"},       // base64 without the prefix
		{"whsec_!!not base64!!", "", "standard alphabet"},
		{"whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "", "standard alphabet"}, // padding missing
		{"whsec_-_-_Y29uZm9ybWFuY2Utc3VpdGUtc2Vj", "", "standard alphabet"},            // URL alphabet
		{"whsec_c2VjcmV0LWtleQ==", "", "at least 24 bytes"},                            // 10 bytes
		{"whsec_", "", "at least 24 bytes"},
	}
	for _, tt := range tests {
		got, err := webhook.DecodeSecret(tt.secret)
		switch {
		case tt.wantErr == "" && (err != nil || string(got) != tt.want):
			t.Errorf("DecodeSecret(%q):\n\tgot  %q, %v\n\twant %q", tt.secret, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("DecodeSecret(%q):\n\tgot  %q, %v\n\twant an error containing %q", tt.secret, got, err, tt.wantErr)
		}
		if err == nil {
			continue
		}
		if !strings.Contains(err.Error(), "openssl rand -base64 32") {
			t.Errorf("DecodeSecret(%q): the error does not say how to make a secret: %v", tt.secret, err)
		}
		if rest := strings.TrimPrefix(tt.secret, "whsec_"); rest != "" && strings.Contains(err.Error(), rest) {
			t.Errorf("DecodeSecret(%q): the error echoes the secret: %v", tt.secret, err)
		}
	}
}

func TestRetryable(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "http://x", Err: syscall.ECONNREFUSED}
	tests := []struct {
		status int
		err    error
		want   bool
	}{
		// An error means no answer: retry.
		{0, refused, true},
		{0, context.DeadlineExceeded, true},
		{0, errors.New("EOF"), true},
		{200, errors.New("EOF"), true}, // the error wins over the status
		// 1xx: not a final answer; never reaches here in practice.
		{100, nil, false},
		// 2xx: delivered.
		{200, nil, false},
		{201, nil, false},
		{202, nil, false},
		{204, nil, false},
		{299, nil, false},
		// 3xx: redirects are a configuration error, not followed.
		{301, nil, false},
		{302, nil, false},
		{303, nil, false},
		{304, nil, false},
		{307, nil, false},
		{308, nil, false},
		// 4xx: rejected, except the two that ask to come back.
		{400, nil, false},
		{401, nil, false},
		{403, nil, false},
		{404, nil, false},
		{408, nil, true},
		{409, nil, false},
		{410, nil, false},
		{413, nil, false},
		{415, nil, false},
		{422, nil, false},
		{429, nil, true},
		{499, nil, false},
		// 5xx: the receiver's fault, usually passing.
		{500, nil, true},
		{501, nil, true},
		{502, nil, true},
		{503, nil, true},
		{504, nil, true},
		{599, nil, true},
	}
	for _, tt := range tests {
		if got := webhook.Retryable(tt.status, tt.err); got != tt.want {
			t.Errorf("Retryable(%d, %v):\n\tgot  %v\n\twant %v", tt.status, tt.err, got, tt.want)
		}
	}
}

func TestBackoffBoundsAndGrowth(t *testing.T) {
	const (
		lo      = 10 * time.Millisecond
		hi      = 1 * time.Second
		samples = 300
	)
	if got := webhook.Backoff(lo, hi, 0, nil); got != lo {
		t.Errorf("Backoff(%v, %v, 0, nil):\n\tgot  %v\n\twant %v", lo, hi, got, lo)
	}
	prevHigh := time.Duration(0)
	for _, attempt := range []int{0, 1, 2, 3, 4, 5, 6, 7, 10, 30, 62, 63, 64, 1000, math.MaxInt32} {
		bound := hi
		if attempt < 20 {
			bound = time.Duration(math.Min(float64(lo)*math.Pow(2, float64(attempt)), float64(hi)))
		}
		high := time.Duration(0)
		for range samples {
			got := webhook.Backoff(lo, hi, attempt, nil)
			if got < lo || got > bound {
				t.Fatalf("Backoff(%v, %v, %d, nil):\n\tgot  %v\n\twant within [%v, %v]", lo, hi, attempt, got, lo, bound)
			}
			high = max(high, got)
		}
		// Grows: the largest of many draws rises with the attempt until the cap.
		// Each bound is at least twice the last, so a draw above the last
		// bound is all but certain (the odds against are below 2^-300).
		if attempt >= 1 && attempt <= 6 && high <= prevHigh {
			t.Errorf("Backoff(%v, %v, %d, nil): the largest of %d draws, %v, is not above attempt %d's, %v",
				lo, hi, attempt, samples, high, attempt-1, prevHigh)
		}
		prevHigh = high
	}
}

func TestBackoffMinEqualsMax(t *testing.T) {
	for _, attempt := range []int{0, 1, 5, 100} {
		if got := webhook.Backoff(time.Second, time.Second, attempt, nil); got != time.Second {
			t.Errorf("Backoff(1s, 1s, %d, nil):\n\tgot  %v\n\twant 1s", attempt, got)
		}
	}
}

func resp(status int, retryAfter string) *http.Response {
	r := &http.Response{StatusCode: status, Header: http.Header{}}
	if retryAfter != "" {
		r.Header.Set("Retry-After", retryAfter)
	}
	return r
}

func TestBackoffRetryAfter(t *testing.T) {
	const (
		min = 10 * time.Millisecond
		max = 10 * time.Second
	)
	date := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(http.TimeFormat) }
	tests := []struct {
		name     string
		resp     *http.Response
		lo, hi   time.Duration // the answer must be within [lo, hi]
		attempts int
	}{
		{"429 seconds", resp(429, "3"), 3 * time.Second, 3 * time.Second, 0},
		{"503 seconds", resp(503, "2"), 2 * time.Second, 2 * time.Second, 0},
		{"seconds with spaces", resp(429, " 4 "), 4 * time.Second, 4 * time.Second, 0},
		{"zero is min", resp(429, "0"), min, min, 0},
		{"seconds capped at max", resp(429, "3600"), max, max, 0},
		{"seconds capped at max (late attempt)", resp(503, "86400"), max, max, 9},
		{"HTTP-date in 5s", resp(503, date(5*time.Second)), 4 * time.Second, 5 * time.Second, 0},
		{"HTTP-date capped at max", resp(429, date(time.Hour)), max, max, 0},
		{"HTTP-date past is min", resp(429, date(-time.Hour)), min, min, 0},
		// Not honoured: other statuses, negative or unreadable values.
		{"500 ignores Retry-After", resp(500, "5"), min, min, 0},
		{"negative ignored", resp(429, "-5"), min, min, 0},
		{"garbage ignored", resp(429, "tomorrow"), min, min, 0},
		{"no header", resp(429, ""), min, min, 0},
		{"garbage ignored, exponential", resp(503, "soon"), min, 8 * min, 3},
	}
	for _, tt := range tests {
		got := webhook.Backoff(min, max, tt.attempts, tt.resp)
		if got < tt.lo || got > tt.hi {
			t.Errorf("Backoff(%s):\n\tgot  %v\n\twant within [%v, %v]", tt.name, got, tt.lo, tt.hi)
		}
	}
}

func TestNew(t *testing.T) {
	const canary = "9991234567"
	good := webhook.Config{URL: "https://gp.example/events", Secret: connector.SecretValue("whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1uZXctdGVzdA==")}
	tests := []struct {
		name    string
		edit    func(c *webhook.Config, r *connector.Retry)
		wantErr string // "" means valid
	}{
		{"good", func(*webhook.Config, *connector.Retry) {}, ""},
		{"http", func(c *webhook.Config, r *connector.Retry) { c.URL = "http://127.0.0.1:9101/events" }, ""},
		{"whsec secret", func(c *webhook.Config, r *connector.Retry) { c.Secret = connector.SecretValue(vecSecret) }, ""},
		{"relative URL", func(c *webhook.Config, r *connector.Retry) { c.URL = "/events?nhs=" + canary }, "absolute http or https URL"},
		{"ftp URL", func(c *webhook.Config, r *connector.Retry) { c.URL = "ftp://gp.example/?nhs=" + canary }, "absolute http or https URL"},
		{"no host", func(c *webhook.Config, r *connector.Retry) { c.URL = "https:///events?nhs=" + canary }, "absolute http or https URL"},
		{"unparsable URL", func(c *webhook.Config, r *connector.Retry) { c.URL = "https://gp.example/%zz?nhs=" + canary }, "absolute http or https URL"},
		{"short secret", func(c *webhook.Config, r *connector.Retry) { c.Secret = connector.SecretValue("whsec_MTIzNDU2Nw==") }, "at least 24 bytes"},
		{"raw secret", func(c *webhook.Config, r *connector.Retry) { c.Secret = connector.SecretValue("gp-secret-1") }, "whsec_ followed by base64"},
		{"bad whsec", func(c *webhook.Config, r *connector.Retry) { c.Secret = connector.SecretValue("whsec_not*base64") }, "base64"},
		{"min above max", func(c *webhook.Config, r *connector.Retry) {
			r.MinBackoff, r.MaxBackoff = time.Second, time.Millisecond
		}, "minBackoff must not exceed maxBackoff"},
		{"min above default max", func(c *webhook.Config, r *connector.Retry) { r.MinBackoff = time.Minute }, "minBackoff must not exceed maxBackoff"},
	}
	for _, tt := range tests {
		cfg, retry := good, connector.Retry{}
		tt.edit(&cfg, &retry)
		s, err := webhook.New(cfg, connector.SinkEnv{Retry: retry, Log: zap.NewNop(), Consent: connector.AlwaysPermit})
		switch {
		case tt.wantErr == "" && (err != nil || s == nil):
			t.Errorf("New(%s):\n\tgot  %v\n\twant a sink", tt.name, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("New(%s):\n\tgot  %v\n\twant an error containing %q", tt.name, err, tt.wantErr)
		}
		if err != nil && (strings.Contains(err.Error(), canary) || strings.Contains(err.Error(), cfg.Secret.Value)) {
			t.Errorf("New(%s): the error echoes the URL or the secret: %v", tt.name, err)
		}
	}
}

func ExampleSignature() {
	key, _ := webhook.DecodeSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	sig := webhook.Signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
	fmt.Println("v1," + sig)
	// Output: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
}

// A receiver checks a delivery with Verify.
func ExampleVerify() {
	key, _ := webhook.DecodeSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	h := http.Header{}
	h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set("webhook-timestamp", "1614265330")
	h.Set("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	signedAt := time.Unix(1614265330, 0)

	fmt.Println(webhook.Verify(key, h, []byte(`{"test": 2432232314}`), signedAt.Add(time.Minute), 5*time.Minute))
	fmt.Println(webhook.Verify(key, h, []byte(`{"test": 1}`), signedAt, 5*time.Minute))
	fmt.Println(webhook.Verify(key, h, []byte(`{"test": 2432232314}`), signedAt.Add(time.Hour), 5*time.Minute))
	// Output:
	// <nil>
	// webhook: no signature matches
	// webhook: timestamp outside the tolerance
}

func TestBody(t *testing.T) {
	tests := []struct {
		body  string
		limit int64
		want  string
	}{
		{"0123456789", 4, "0123"},
		{"0123456789", 10, "0123456789"},
		{"0123456789", 100, "0123456789"},
		{"", 4, ""},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest("POST", "http://x/", strings.NewReader(tt.body))
		got, err := webhook.Body(r, tt.limit)
		if err != nil || string(got) != tt.want {
			t.Errorf("Body(%q, %d):\n\tgot  %q, %v\n\twant %q, nil", tt.body, tt.limit, got, err, tt.want)
		}
	}
}
