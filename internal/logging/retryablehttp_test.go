package logging_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/internal/logging"
	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap/zapcore"
)

var _ retryablehttp.LeveledLogger = (*logging.Retryable)(nil)

func TestRetryableFields(t *testing.T) {
	raw := "https://gp.example:8443/events?nhs=" + canary
	u, _ := url.Parse(raw)
	tests := []struct {
		name  string
		log   func(r *logging.Retryable)
		level zapcore.Level
		want  map[string]any
	}{
		{"url as string", func(r *logging.Retryable) { r.Debug("performing request", "method", "POST", "url", raw) },
			zapcore.DebugLevel, map[string]any{"method": "POST", "host": "gp.example:8443"}},
		{"url as *url.URL", func(r *logging.Retryable) { r.Debug("performing request", "method", "POST", "url", u) },
			zapcore.DebugLevel, map[string]any{"method": "POST", "host": "gp.example:8443"}},
		{"info is debug", func(r *logging.Retryable) { r.Info("performing request", "url", raw) },
			zapcore.DebugLevel, map[string]any{"host": "gp.example:8443"}},
		{"unknown keys dropped", func(r *logging.Retryable) {
			r.Debug("retrying request", "request", "POST "+raw+" (status: 503)", "timeout", time.Second, "remaining", 7, "body", canary)
		}, zapcore.DebugLevel, map[string]any{"remaining": int64(7)}},
		{"retries kept", func(r *logging.Retryable) { r.Warn("x", "retries", 2) },
			zapcore.WarnLevel, map[string]any{"retries": int64(2)}},
		{"error by class", func(r *logging.Retryable) {
			r.Error("request failed", "error", &url.Error{Op: "Post", URL: raw, Err: timeoutErr{}}, "method", "POST", "url", raw)
		}, zapcore.WarnLevel, map[string]any{"error": "timeout", "method": "POST", "host": "gp.example:8443"}},
		{"error that is not an error", func(r *logging.Retryable) { r.Error("x", "error", "text "+canary) },
			zapcore.WarnLevel, map[string]any{}},
		{"odd key-value list", func(r *logging.Retryable) { r.Debug("x", "method", "GET", "url") },
			zapcore.DebugLevel, map[string]any{"method": "GET"}},
		{"non-string key", func(r *logging.Retryable) { r.Debug("x", 42, canary) },
			zapcore.DebugLevel, map[string]any{}},
	}
	for _, tt := range tests {
		log, logs := observe()
		tt.log(logging.NewRetryable(log))
		entries := logs.All()
		if len(entries) != 1 {
			t.Errorf("%s: log lines:\n\tgot  %d\n\twant 1", tt.name, len(entries))
			continue
		}
		want := map[string]any{"component": "http-delivery"}
		for k, v := range tt.want {
			want[k] = v
		}
		if diff := cmp.Diff(want, entries[0].ContextMap()); diff != "" {
			t.Errorf("%s: fields (-want +got):\n%s", tt.name, diff)
		}
		if got := entries[0].Level; got != tt.level {
			t.Errorf("%s: level:\n\tgot  %v\n\twant %v", tt.name, got, tt.level)
		}
		assertNoCanary(t, logs, canary)
	}
}

// TestRetryableWithClient runs a real retryablehttp client through the
// adapter against a URL whose query holds a canary: a 500, then a connection
// refused on a second host, must leave only hosts in the log.
func TestRetryableWithClient(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	log, logs := observe()
	c := retryablehttp.NewClient()
	c.Logger = logging.NewRetryable(log)
	c.RetryWaitMin, c.RetryWaitMax, c.RetryMax = time.Millisecond, 2*time.Millisecond, 2

	resp, err := c.Get(srv.URL + "/events?nhs=" + canary)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	resp.Body.Close()
	if got, want := calls.Load(), int32(2); got != want {
		t.Errorf("server calls:\n\tgot  %d\n\twant %d", got, want)
	}

	refused := closedPort(t)
	c.RetryMax = 1
	if _, err := c.Get("http://" + refused + "/events?nhs=" + canary); err == nil {
		t.Fatal("Get to a closed port succeeded")
	}

	if logs.FilterMessage("retrying request").Len() == 0 || logs.FilterMessage("request failed").Len() == 0 {
		t.Fatalf("the client logged no retry or no failure; the test saw nothing:\n%v", logs.All())
	}
	hosts := map[string]bool{}
	for _, e := range logs.All() {
		if h, ok := e.ContextMap()["host"].(string); ok {
			hosts[h] = true
		}
	}
	wantHost := strings.TrimPrefix(srv.URL, "http://")
	if !hosts[wantHost] || !hosts[refused] {
		t.Errorf("hosts logged:\n\tgot  %v\n\twant %s and %s", hosts, wantHost, refused)
	}
	for _, e := range logs.FilterMessage("request failed").All() {
		if got, want := e.ContextMap()["error"], "connection refused"; got != want {
			t.Errorf("request failed error field:\n\tgot  %v\n\twant %v", got, want)
		}
	}
	assertNoCanary(t, logs, canary)
	assertNoCanary(t, logs, "/events")
}
