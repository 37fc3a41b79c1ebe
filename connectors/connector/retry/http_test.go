package retry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
)

// server answers the n-th request (1-based) with answer(n, w, r) and keeps
// each request's headers.
type server struct {
	*httptest.Server
	mu      sync.Mutex
	headers []http.Header
	arrived chan int
}

func newServer(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *server {
	t.Helper()
	s := &server{arrived: make(chan int, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		s.mu.Lock()
		s.headers = append(s.headers, r.Header.Clone())
		n := len(s.headers)
		s.mu.Unlock()
		s.arrived <- n
		answer(n, w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) requests() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.headers) }

func codes(cs ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(cs[min(n, len(cs))-1]) }
}

func newHTTP(t *testing.T, c connector.Consent, r connector.Retry) *retry.HTTP {
	t.Helper()
	if c == nil {
		c = &consent{}
	}
	h, err := retry.NewHTTP(retry.HTTPConfig{Retry: r, Consent: c, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewHTTPRefuses(t *testing.T) {
	for name, cfg := range map[string]retry.HTTPConfig{
		"no consent":      {Timeout: time.Second},
		"no timeout":      {Consent: &consent{}},
		"inverted bounds": {Consent: &consent{}, Timeout: time.Second, Retry: connector.Retry{MinBackoff: time.Second, MaxBackoff: time.Millisecond}},
	} {
		if _, err := retry.NewHTTP(cfg); err == nil {
			t.Errorf("NewHTTP(%s): no error", name)
		}
	}
}

func TestHTTPAnswers(t *testing.T) {
	tests := []struct {
		name         string
		codes        []int
		maxAttempts  int
		wantAttempts int
		wantStatus   int
		want         func(error) bool
		wantText     string
	}{
		{name: "2xx", codes: []int{204}, wantAttempts: 1, wantStatus: 204, want: isNil},
		{name: "after 503, 500, 408, 429", codes: []int{503, 500, 408, 429, 200}, wantAttempts: 5, wantStatus: 200, want: isNil},
		{name: "a rejection", codes: []int{422}, wantAttempts: 1, wantStatus: 422, want: isPermanent, wantText: "permanently rejected: recipient answered 422"},
		{name: "a redirect is not followed", codes: []int{307}, wantAttempts: 1, wantStatus: 307, want: isPermanent, wantText: "permanently rejected: recipient answered 307"},
		{name: "gives up at MaxAttempts", codes: []int{503}, maxAttempts: 2, wantAttempts: 2, wantStatus: 503,
			want: func(err error) bool { return err != nil && !isPermanent(err) }, wantText: "delivering: gave up after 2 attempts, last status 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 && tt.codes[0] == 307 {
					w.Header().Set("Location", "/elsewhere")
				}
				codes(tt.codes...)(n, w, r)
			})
			r := fast
			r.MaxAttempts = tt.maxAttempts
			ans, err := newHTTP(t, nil, r).Do(context.Background(), delivery, retry.Request{URL: srv.URL + "/in?nhs=" + canary, Body: delivery.Body})
			if ans.Attempts != tt.wantAttempts || ans.Status != tt.wantStatus || srv.requests() != tt.wantAttempts {
				t.Errorf("Do:\n\tgot  %d attempts (%d received), status %d\n\twant %d, status %d", ans.Attempts, srv.requests(), ans.Status, tt.wantAttempts, tt.wantStatus)
			}
			if !tt.want(err) || (tt.wantText != "" && (err == nil || err.Error() != tt.wantText)) {
				t.Errorf("Do: got error %v, want %q", err, tt.wantText)
			}
			if err != nil && (strings.Contains(err.Error(), canary) || strings.Contains(err.Error(), "/in")) {
				t.Errorf("the error holds the URL or the payload: %v", err)
			}
		})
	}
}

func TestHTTPRetryAfterCapped(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ans, err := newHTTP(t, nil, fast).Do(ctx, delivery, retry.Request{URL: srv.URL, Body: delivery.Body})
	if err != nil || ans.Attempts != 2 {
		t.Errorf("Do:\n\tgot  %+v, %v\n\twant 2 attempts, delivered (an hour's Retry-After capped at MaxBackoff)", ans, err)
	}
}

// TestHTTPSignsEachAttempt: Sign is called before every attempt, on that
// attempt's headers.
func TestHTTPSignsEachAttempt(t *testing.T) {
	srv := newServer(t, codes(503, 503, 200))
	n := 0
	sign := func(h http.Header, body []byte) {
		n++
		h.Set("X-Signed", strconv.Itoa(n)+":"+strconv.Itoa(len(body)))
	}
	if _, err := newHTTP(t, nil, fast).Do(context.Background(), delivery, retry.Request{URL: srv.URL, Body: delivery.Body,
		Header: http.Header{"X-Fixed": {"same"}}, Sign: sign}); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for i, h := range srv.headers {
		if want := strconv.Itoa(i+1) + ":" + strconv.Itoa(len(delivery.Body)); h.Get("X-Signed") != want || h.Get("X-Fixed") != "same" {
			t.Errorf("request %d: X-Signed %q X-Fixed %q, want %q and same", i+1, h.Get("X-Signed"), h.Get("X-Fixed"), want)
		}
	}
}

// TestHTTPRechecksBeforeEveryRetry: consent is asked before each retry, not
// before the first attempt; a copy withheld or narrowed is not sent again.
func TestHTTPRechecksBeforeEveryRetry(t *testing.T) {
	tests := []struct {
		name         string
		verdict      func(n int) (connector.Verdict, error)
		wantRequests int
		want         func(error) bool
	}{
		{"permitted throughout", func(int) (connector.Verdict, error) {
			return connector.Verdict{Permit: true, Body: delivery.Body}, nil
		}, 3, isNil},
		{"withheld before the second retry", func(n int) (connector.Verdict, error) {
			if n == 2 {
				return connector.Verdict{Rule: "deny"}, nil
			}
			return connector.Verdict{Permit: true, Body: delivery.Body}, nil
		}, 2, func(err error) bool { r, ok := connector.IsWithheld(err); return ok && r == "deny" }},
		{"narrower before the first retry", func(int) (connector.Verdict, error) {
			return connector.Verdict{Permit: true, Body: []byte(`{}`)}, nil
		}, 1, func(err error) bool { return errors.Is(err, connector.ErrConsentChanged) }},
		{"no answer", func(int) (connector.Verdict, error) {
			return connector.Verdict{}, errors.New("consent store away")
		}, 1, func(err error) bool { return err != nil && !isPermanent(err) && !errors.Is(err, retry.ErrStopped) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, codes(503, 503, 200))
			c := &consent{}
			c.verdict = func(connector.Delivery) (connector.Verdict, error) { return tt.verdict(c.calls) }
			_, err := newHTTP(t, c, fast).Do(context.Background(), delivery, retry.Request{URL: srv.URL, Body: delivery.Body})
			if !tt.want(err) {
				t.Errorf("Do: unexpected error %v", err)
			}
			if got := srv.requests(); got != tt.wantRequests {
				t.Errorf("requests:\n\tgot  %d\n\twant %d", got, tt.wantRequests)
			}
			if got, want := c.count(), min(tt.wantRequests, 2); got != want {
				t.Errorf("re-checks:\n\tgot  %d\n\twant %d", got, want)
			}
		})
	}
}

// TestHTTPStop: a stop lets the request on the wire finish and counts its
// answer, sends no other, and ends a wait between attempts at once.
func TestHTTPStop(t *testing.T) {
	for _, then := range []int{200, 503} {
		t.Run("during a request answered "+strconv.Itoa(then), func(t *testing.T) {
			release := make(chan struct{})
			srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.WriteHeader(503)
					return
				}
				select {
				case <-release:
					w.WriteHeader(then)
				case <-r.Context().Done(): // the client cut the request short
				}
			})
			ctx, stop := context.WithCancel(context.Background())
			type result struct {
				ans retry.Answer
				err error
			}
			done := make(chan result, 1)
			go func() {
				ans, err := newHTTP(t, nil, fast).Do(ctx, delivery, retry.Request{URL: srv.URL, Body: delivery.Body})
				done <- result{ans, err}
			}()
			for n := range srv.arrived {
				if n == 2 {
					break
				}
			}
			stop()
			close(release)
			res := <-done
			if res.ans.Attempts != 2 || res.ans.Status != then || srv.requests() != 2 {
				t.Errorf("Do:\n\tgot  %d attempts (%d received), status %d\n\twant 2, status %d", res.ans.Attempts, srv.requests(), res.ans.Status, then)
			}
			if then == 200 && res.err != nil {
				t.Errorf("Do: %v; want delivered: the answer to the request under way counts", res.err)
			}
			if then == 503 && !isStopped(res.err) {
				t.Errorf("Do: %v; want a non-permanent error wrapping ErrStopped and context.Canceled", res.err)
			}
		})
	}
	t.Run("during a wait", func(t *testing.T) {
		srv := newServer(t, codes(503))
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := newHTTP(t, nil, connector.Retry{MinBackoff: time.Hour, MaxBackoff: time.Hour}).Do(ctx, delivery, retry.Request{URL: srv.URL, Body: delivery.Body})
			done <- err
		}()
		<-srv.arrived
		stop()
		select {
		case err := <-done:
			if !isStopped(err) {
				t.Errorf("Do: %v; want a non-permanent error wrapping ErrStopped and context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Do did not return after the stop: the hour's wait went on")
		}
		if n := srv.requests(); n != 1 {
			t.Errorf("requests: got %d, want 1", n)
		}
	})
	t.Run("before the first attempt", func(t *testing.T) {
		srv := newServer(t, codes(200))
		ctx, stop := context.WithCancel(context.Background())
		stop()
		ans, err := newHTTP(t, nil, fast).Do(ctx, delivery, retry.Request{URL: srv.URL, Body: delivery.Body})
		if ans.Attempts != 0 || srv.requests() != 0 || !isStopped(err) {
			t.Errorf("Do: got %+v, %v, %d received; want nothing sent, stopped", ans, err, srv.requests())
		}
	})
}
