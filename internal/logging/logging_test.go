package logging_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// canary is a synthetic NHS number from the 999 test range. It stands for
// patient data and must never reach a log line.
const canary = "9991234567"

// observe returns a logger that records everything from debug up.
func observe() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// assertNoCanary fails if any recorded message or field holds s.
func assertNoCanary(t *testing.T, logs *observer.ObservedLogs, s string) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, s) {
			t.Errorf("a log line holds %q: %s", s, line)
		}
	}
}

// closedPort returns a 127.0.0.1 address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// timeoutErr is a net.Error that says it timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout reading patient " + canary }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// customErr is an error type whose text holds patient data.
type customErr struct{}

func (customErr) Error() string { return "patient " + canary }

func TestClass(t *testing.T) {
	refused := closedPort(t)
	_, dialErr := net.Dial("tcp", refused)
	if dialErr == nil {
		t.Fatalf("dialling the closed port %s succeeded", refused)
	}
	_, httpRefused := http.Get("http://" + refused + "/events?nhs=" + canary)
	if httpRefused == nil {
		t.Fatalf("GET to the closed port %s succeeded", refused)
	}

	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"canceled", context.Canceled, "canceled"},
		{"wrapped canceled", fmt.Errorf("delivering %s: %w", canary, context.Canceled), "canceled"},
		{"deadline", context.DeadlineExceeded, "timeout"},
		{"os deadline", fmt.Errorf("reading: %w", os.ErrDeadlineExceeded), "timeout"},
		{"net.Error timeout", timeoutErr{}, "timeout"},
		{"url.Error timeout", &url.Error{Op: "Post", URL: "https://gp.example/?nhs=" + canary, Err: timeoutErr{}}, "timeout"},
		{"dial refused", dialErr, "connection refused"},
		{"http refused", httpRefused, "connection refused"},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "connection reset"},
		{"url.Error other", &url.Error{Op: "Post", URL: "https://gp.example/?nhs=" + canary, Err: errors.New("EOF " + canary)}, "request error (Post)"},
		{"net.OpError other", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route " + canary)}, "network error (dial)"},
		{"wrapped custom", fmt.Errorf("looking up: %w", customErr{}), "error (logging_test.customErr)"},
		// Regression: Class named a plain error "error (<nil>)" (it printed
		// the type of errors.Unwrap(err), which is nil when nothing is wrapped).
		{"plain", errors.New("patient " + canary), "error (*errors.errorString)"},
		{"custom", customErr{}, "error (logging_test.customErr)"},
	}
	for _, tt := range tests {
		got := logging.Class(tt.err)
		if got != tt.want {
			t.Errorf("Class(%s):\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
		if strings.Contains(got, canary) || strings.Contains(got, "gp.example") {
			t.Errorf("Class(%s) = %q leaks the error's text", tt.name, got)
		}
	}
}

// TestClassRealTimeout times out a real HTTP request whose URL holds a canary.
func TestClassRealTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)

	c := &http.Client{Timeout: 50 * time.Millisecond}
	_, err := c.Get(srv.URL + "/events?nhs=" + canary)
	if err == nil {
		t.Fatal("the request did not time out")
	}
	if !strings.Contains(err.Error(), canary) {
		t.Fatalf("precondition: *url.Error should embed the URL, got %v", err)
	}
	if got, want := logging.Class(err), "timeout"; got != want {
		t.Errorf("Class(client timeout):\n\tgot  %q\n\twant %q", got, want)
	}
	if got := logging.SafeError(err); strings.Contains(got, canary) {
		t.Errorf("SafeError(client timeout) = %q holds the canary", got)
	}
}

func TestSafeError(t *testing.T) {
	pub := problem.Wrap(problem.Unavailable, "the broker is unavailable", errors.New("kafka key "+canary))
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"problem", pub, "the broker is unavailable"},
		{"wrapped problem", fmt.Errorf("publishing %s: %w", canary, pub), "the broker is unavailable"},
		{"plain", fmt.Errorf("patient %s: %w", canary, context.Canceled), "canceled"},
	}
	for _, tt := range tests {
		if got := logging.SafeError(tt.err); got != tt.want {
			t.Errorf("SafeError(%s):\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
		if f := logging.Err(tt.err); f.Key != "error" || f.String != tt.want {
			t.Errorf("Err(%s):\n\tgot  %s=%q\n\twant error=%q", tt.name, f.Key, f.String, tt.want)
		}
	}
}

func TestHost(t *testing.T) {
	tests := []struct {
		raw  string
		want string
	}{
		{"https://gp.example:8443/events?nhs=" + canary, "gp.example:8443"},
		{"http://user:pass@gp.example/x", "gp.example"},
		{"/relative?nhs=" + canary, ""},
		{"://bad", "invalid-url"},
		{"http://gp.example/%zz?nhs=" + canary, "invalid-url"},
	}
	for _, tt := range tests {
		if got := logging.Host(tt.raw); got != tt.want {
			t.Errorf("Host(%q):\n\tgot  %q\n\twant %q", tt.raw, got, tt.want)
		}
	}
}

func TestNew(t *testing.T) {
	for _, lvl := range []string{"debug", "info", "warn", "error"} {
		log, err := logging.New(lvl)
		if err != nil {
			t.Errorf("New(%q): %v", lvl, err)
			continue
		}
		want, _ := zapcore.ParseLevel(lvl)
		if got := log.Level(); got != want {
			t.Errorf("New(%q).Level():\n\tgot  %v\n\twant %v", lvl, got, want)
		}
	}
	if _, err := logging.New("loud"); err == nil {
		t.Errorf("New(%q): got no error", "loud")
	}
}

// TestSafeErrorsAreLoggedByTheirText pins issue 14's sixth defect: Kafka
// errors reached the log as "error (*errors.errorString)", which told an
// operator nothing. An error marked Safe is logged by its text, wrapped or
// not; any other keeps being reduced to its class.
func TestSafeErrorsAreLoggedByTheirText(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{logging.SafeText("kafka: Not Leader For Partition"), "kafka: Not Leader For Partition"},
		{fmt.Errorf("publishing: %w", logging.SafeText("kafka: Request Timed Out")), "kafka: Request Timed Out"},
		{errors.New("patient " + canary), "error (*errors.errorString)"},
	}
	for _, tt := range tests {
		if got := logging.SafeError(tt.err); got != tt.want {
			t.Errorf("SafeError(%v):\n\tgot  %q\n\twant %q", tt.err, got, tt.want)
		}
	}
}
