package webhook_test

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
