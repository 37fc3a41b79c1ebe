package webhook

import (
	"net/http"
	"time"
)

// SetNow replaces the sink's clock, so tests can tell attempts' signatures apart.
func SetNow(s *Sink, now func() time.Time) { s.now = now }

// WrapTransport wraps the sink's HTTP transport, so tests can watch attempts.
func WrapTransport(s *Sink, wrap func(http.RoundTripper) http.RoundTripper) {
	s.client.WrapTransport(wrap)
}
