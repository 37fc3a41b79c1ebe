package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/webhook"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Canaries: synthetic NHS numbers from the 999 test range. urlCanary sits in
// the webhook URL's query (where a receiver may put a token); bodyCanary in
// the event. Neither may reach an error or a log line.
const (
	urlCanary  = "9991234567"
	bodyCanary = "9997654321"
	secret     = "whsec_Z3Atc2VjcmV0LWZvci10ZXN0cy0wMTIzNDU2Nzg5" // whsec_ and base64 of 30 bytes
	eventID    = "evt 0001/é"                                     // a space and a non-ASCII letter: ce-id is percent-encoded
	// webhookID is event.DeliveryID("urn:ods:RX1", eventID), computed with
	// Python's uuid.uuid5.
	webhookID  = "449a8c81-0326-52fe-ab20-c0743d6c8742"
	patientRef = "pseud-7f3a"
)

var delivery = connector.Delivery{
	EventID:     eventID,
	EventSource: "urn:ods:RX1",
	EventType:   "org.carehub.discharge.v1",
	Recipient:   "A81001",
	PatientRef:  patientRef,
	Body:        []byte(`{"specversion":"1.0","id":"evt-0001","data":{"patient":{"nhsNumber":"` + bodyCanary + `"}}}`),
}

// received is one request as the recipient saw it.
type received struct {
	header http.Header
	body   []byte
}

// recipient is a webhook receiver whose answers are scripted per attempt.
type recipient struct {
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []received
	arrive chan int // the 1-based number of each request, when it arrives (buffered)
}

// newRecipient answers the n-th request (1-based) with answer(n, w).
func newRecipient(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *recipient {
	t.Helper()
	rc := &recipient{arrive: make(chan int, 1000)}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{header: r.Header.Clone(), body: body})
		n := len(rc.reqs)
		rc.mu.Unlock()
		select {
		case rc.arrive <- n:
		default:
		}
		answer(n, w, r)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recipient) url() string { return rc.srv.URL + "/events?nhs=" + urlCanary }

func (rc *recipient) received() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

// statuses answers the n-th request with codes[n-1], and the last code after.
func statuses(codes ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) {
		if n > len(codes) {
			n = len(codes)
		}
		w.WriteHeader(codes[n-1])
	}
}

func newSink(t *testing.T, url string, edit func(*webhook.Config, *connector.Retry)) (*webhook.Sink, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := webhook.Config{URL: url, Secret: connector.SecretValue(secret), Timeout: 5 * time.Second}
	retry := connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
	if edit != nil {
		edit(&cfg, &retry)
	}
	s, err := webhook.New(cfg, connector.SinkEnv{Recipient: "A81001", Retry: retry, Log: zap.New(core), Consent: connector.AlwaysPermit})
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

// assertNoLeak fails if err or any log line holds a canary or the URL's path or query.
func assertNoLeak(t *testing.T, err error, logs *observer.ObservedLogs) {
	t.Helper()
	leaks := []string{urlCanary, bodyCanary, "/events", "nhs=", secret}
	if err != nil {
		for _, l := range leaks {
			if strings.Contains(err.Error(), l) {
				t.Errorf("the error %q holds %q", err, l)
			}
		}
	}
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, l := range leaks {
			if strings.Contains(line, l) {
				t.Errorf("a log line holds %q: %s", l, line)
			}
		}
	}
}

// checkSigned checks one received request: headers, body and signature.
func checkSigned(t *testing.T, i int, r received) {
	t.Helper()
	for _, h := range []struct{ name, want string }{
		{webhook.HeaderID, webhookID},
		{webhook.HeaderIdempotent, webhookID},
		{webhook.HeaderSpecVersion, "1.0"},
		{webhook.HeaderEventID, "evt%200001/%C3%A9"},
		{webhook.HeaderSource, "urn:ods:RX1"},
		{webhook.HeaderType, "org.carehub.discharge.v1"},
		{webhook.HeaderPatient, patientRef},
		{webhook.HeaderEventType, "org.carehub.discharge.v1"},
		{webhook.HeaderRecipient, "A81001"},
		{"Content-Type", "application/cloudevents+json"},
	} {
		if got := r.header.Get(h.name); got != h.want {
			t.Errorf("request %d header %s:\n\tgot  %q\n\twant %q", i, h.name, got, h.want)
		}
	}
	if string(r.body) != string(delivery.Body) {
		t.Errorf("request %d body:\n\tgot  %s\n\twant %s", i, r.body, delivery.Body)
	}
	if err := webhook.Verify(secretKey(t), r.header, r.body, time.Now(), time.Minute); err != nil {
		t.Errorf("request %d: Verify with the configured secret: %v", i, err)
	}
}

func TestDeliverFirstTime(t *testing.T) {
	rc := newRecipient(t, statuses(200))
	s, logs := newSink(t, rc.url(), nil)

	out, err := s.Deliver(context.Background(), delivery)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if want := (connector.Outcome{Attempts: 1, Status: 200}); out != want {
		t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
	}
	reqs := rc.received()
	if len(reqs) != 1 {
		t.Fatalf("requests received:\n\tgot  %d\n\twant 1", len(reqs))
	}
	checkSigned(t, 1, reqs[0])
	// A different secret must fail.
	if err := webhook.Verify([]byte("other-secret"), reqs[0].header, reqs[0].body, time.Now(), time.Minute); err == nil {
		t.Error("Verify with another secret succeeded")
	}
	assertNoLeak(t, err, logs)
}

// secretKey is the signing key of secret.
func secretKey(t *testing.T) []byte {
	t.Helper()
	k, err := webhook.DecodeSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDeliverWhsecSecret(t *testing.T) {
	rc := newRecipient(t, statuses(204))
	s, _ := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { c.Secret = connector.SecretValue(vecSecret) })
	if _, err := s.Deliver(context.Background(), delivery); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	r := rc.received()[0]
	if err := webhook.Verify(vecKey(t), r.header, r.body, time.Now(), time.Minute); err != nil {
		t.Errorf("Verify with the decoded whsec_ key: %v", err)
	}
}

// TestDeliverRetriesResign answers 503 twice, then 200. Each attempt must be
// signed afresh: the sink's clock moves 10 s per reading, so a re-sent stale
// signature would carry an old timestamp.
func TestDeliverRetriesResign(t *testing.T) {
	rc := newRecipient(t, statuses(503, 503, 200))
	s, logs := newSink(t, rc.url(), nil)
	var tick atomic.Int64
	start := time.Unix(1_700_000_000, 0)
	webhook.SetNow(s, func() time.Time { return start.Add(time.Duration(tick.Add(1)) * 10 * time.Second) })

	out, err := s.Deliver(context.Background(), delivery)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if want := (connector.Outcome{Attempts: 3, Status: 200}); out != want {
		t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
	}
	reqs := rc.received()
	if len(reqs) != 3 {
		t.Fatalf("requests received:\n\tgot  %d\n\twant 3", len(reqs))
	}
	seen := map[string]bool{}
	for i, r := range reqs {
		ts := r.header.Get(webhook.HeaderTimestamp)
		if seen[ts] {
			t.Errorf("request %d reuses timestamp %s: not signed afresh", i+1, ts)
		}
		seen[ts] = true
		var secs int64
		fmt.Sscan(ts, &secs)
		// Verified as a receiver would at the moment of signing.
		if err := webhook.Verify(secretKey(t), r.header, r.body, time.Unix(secs, 0), time.Second); err != nil {
			t.Errorf("request %d: Verify: %v", i+1, err)
		}
		if got := r.header.Get(webhook.HeaderID); got != webhookID {
			t.Errorf("request %d webhook-id:\n\tgot  %q\n\twant %q (the same on every attempt)", i+1, got, webhookID)
		}
		if string(r.body) != string(delivery.Body) {
			t.Errorf("request %d body:\n\tgot  %s\n\twant %s", i+1, r.body, delivery.Body)
		}
	}
	assertNoLeak(t, err, logs)
}

func TestDeliverRetriesRealClock(t *testing.T) {
	rc := newRecipient(t, statuses(503, 500, 408, 200))
	s, logs := newSink(t, rc.url(), nil)
	out, err := s.Deliver(context.Background(), delivery)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if want := (connector.Outcome{Attempts: 4, Status: 200}); out != want {
		t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
	}
	for i, r := range rc.received() {
		checkSigned(t, i+1, r)
	}
	assertNoLeak(t, err, logs)
}

func TestDeliverTooManyRequests(t *testing.T) {
	rc := newRecipient(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	s, logs := newSink(t, rc.url(), nil)
	out, err := s.Deliver(context.Background(), delivery)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if want := (connector.Outcome{Attempts: 2, Status: 200}); out != want {
		t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
	}
	assertNoLeak(t, err, logs)
}

// TestDeliverRetryAfterCapped checks that the sink uses Backoff: an hour's
// Retry-After is capped at MaxBackoff (go-retryablehttp's default backoff
// would wait the hour).
func TestDeliverRetryAfterCapped(t *testing.T) {
	rc := newRecipient(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	s, _ := newSink(t, rc.url(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := s.Deliver(ctx, delivery)
	if err != nil || out.Attempts != 2 {
		t.Errorf("Deliver:\n\tgot  %+v, %v\n\twant 2 attempts, nil (Retry-After capped at MaxBackoff)", out, err)
	}
}

func TestDeliverPermanent(t *testing.T) {
	tests := []struct {
		status int
		reason string
	}{
		{400, "recipient answered 400"},
		{401, "recipient answered 401"},
		{403, "recipient answered 403"},
		{404, "recipient answered 404"},
		{410, "recipient answered 410"},
		{413, "recipient answered 413"},
		{422, "recipient answered 422"},
		{301, "recipient answered 301"},
		{302, "recipient answered 302"},
		{304, "recipient answered 304"},
	}
	for _, tt := range tests {
		rc := newRecipient(t, statuses(tt.status))
		s, logs := newSink(t, rc.url(), nil)
		out, err := s.Deliver(context.Background(), delivery)
		reason, ok := connector.IsPermanent(err)
		if !ok || reason != tt.reason {
			t.Errorf("Deliver(%d):\n\tgot  %v (permanent %v, reason %q)\n\twant permanent, reason %q", tt.status, err, ok, reason, tt.reason)
		}
		if want := (connector.Outcome{Attempts: 1, Status: tt.status}); out != want {
			t.Errorf("Deliver(%d) outcome:\n\tgot  %+v\n\twant %+v", tt.status, out, want)
		}
		if n := len(rc.received()); n != 1 {
			t.Errorf("Deliver(%d): requests received:\n\tgot  %d\n\twant 1 (no retry)", tt.status, n)
		}
		assertNoLeak(t, err, logs)
	}
}

// TestDeliverDoesNotFollowRedirects pins a bug: the sink's http.Client
// followed redirects, so a 302 (or 307) with a Location was never reported
// as permanent, and the signed event with its patient pseudonym went on to
// whatever host the Location named.
func TestDeliverDoesNotFollowRedirects(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		elsewhere := newRecipient(t, statuses(200))
		rc := newRecipient(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.srv.URL+"/stolen", status)
		})
		s, logs := newSink(t, rc.url(), nil)
		out, err := s.Deliver(context.Background(), delivery)
		want := fmt.Sprintf("recipient answered %d", status)
		if reason, ok := connector.IsPermanent(err); !ok || reason != want {
			t.Errorf("Deliver(redirect %d):\n\tgot  %+v, %v\n\twant permanent, reason %q", status, out, err, want)
		}
		if n := len(elsewhere.received()); n != 0 {
			t.Errorf("Deliver(redirect %d): the redirect target received %d requests; want 0", status, n)
		}
		assertNoLeak(t, err, logs)
	}
}

// TestDeliverConnectionRefusedThenUp delivers to a port nobody listens on,
// then opens it once the first attempt has been refused.
func TestDeliverConnectionRefusedThenUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	s, logs := newSink(t, "http://"+addr+"/events?nhs="+urlCanary, nil)
	refused := make(chan struct{})
	var once sync.Once
	webhook.WrapTransport(s, func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err != nil {
				once.Do(func() { close(refused) })
			}
			return resp, err
		})
	})

	type result struct {
		out connector.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.Deliver(context.Background(), delivery)
		done <- result{out, err}
	}()
	select {
	case <-refused:
	case r := <-done:
		t.Fatalf("Deliver returned before any attempt failed: %+v, %v", r.out, r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("no attempt failed within 5s")
	}

	// Reopen the same port; another process may hold it for a moment.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("cannot reopen %s: %v", addr, err)
	}
	var got atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusAccepted)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("Deliver: %v", r.err)
		}
		if r.out.Attempts < 2 || r.out.Status != http.StatusAccepted {
			t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant at least 2 attempts, status 202", r.out)
		}
		if got.Load() != 1 {
			t.Errorf("requests received:\n\tgot  %d\n\twant 1", got.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver did not return within 10s of the recipient coming up")
	}
	if logs.FilterField(zap.String("error", "connection refused")).Len() == 0 {
		t.Errorf("no log line names the refusal by class; lines: %v", logs.All())
	}
	assertNoLeak(t, nil, logs)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestDeliverCancel cancels the context while the sink retries without end:
// Deliver must return promptly (not after the backoff or the attempt
// timeout) with an error that is not permanent, so the hub redelivers later.
func TestDeliverCancel(t *testing.T) {
	t.Run("during backoff", func(t *testing.T) {
		rc := newRecipient(t, statuses(503))
		// A long backoff: a Deliver that waited it out would take 20s or more.
		s, logs := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { r.MinBackoff, r.MaxBackoff = 20*time.Second, time.Minute })
		answered := make(chan struct{})
		var once sync.Once
		webhook.WrapTransport(s, func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				resp, err := rt.RoundTrip(r)
				once.Do(func() { close(answered) })
				return resp, err
			})
		})
		checkCancel(t, s, logs, answered)
	})
}

// TestDeliverStopLetsTheAttemptFinish pins a duplicate POST: the hub's
// drain cancelled Deliver's context while a POST was in flight; the
// recipient had already read the event, the request was cancelled, the copy
// was not committed, and after the restart it was POSTed again (the same
// webhook-id twice, e2e TestRetriedPostPublishesOnce). A stop now lets the
// attempt on the wire finish and counts its answer; it starts no other.
func TestDeliverStopLetsTheAttemptFinish(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer int
	}{
		{"accepted after the stop: delivered", 204},
		{"failed after the stop: not retried", 503},
	} {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			rc := newRecipient(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.WriteHeader(503)
					return
				}
				select {
				case <-release:
				case <-r.Context().Done(): // the client gave up on the request
					return
				}
				w.WriteHeader(tt.answer)
			})
			s, logs := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { c.Timeout = time.Minute })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				out connector.Outcome
				err error
			}
			done := make(chan result, 1)
			go func() {
				out, err := s.Deliver(ctx, delivery)
				done <- result{out, err}
			}()
			waitArrivals(t, rc, 2) // the second attempt is on the wire, held
			cancel()
			// A sink that aborts its request returns now; give it a
			// bounded chance to show itself before the recipient answers.
			select {
			case r := <-done:
				close(release)
				t.Fatalf("Deliver returned (%+v, %v) while its attempt was on the wire: the stop aborted it", r.out, r.err)
			case <-time.After(300 * time.Millisecond):
			}
			close(release)
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Deliver did not return once the recipient answered")
			}
			if r.out.Attempts != 2 || r.out.Status != tt.answer {
				t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant 2 attempts, status %d", r.out, tt.answer)
			}
			if tt.answer == 204 {
				if r.err != nil {
					t.Errorf("Deliver: %v; want delivered: the recipient accepted the attempt", r.err)
				}
			} else {
				if !errors.Is(r.err, context.Canceled) {
					t.Errorf("Deliver:\n\tgot  %v\n\twant an error wrapping context.Canceled", r.err)
				}
				if _, perm := connector.IsPermanent(r.err); perm {
					t.Errorf("Deliver: the error %v is permanent", r.err)
				}
			}
			if n := len(rc.received()); n != 2 {
				t.Errorf("requests received:\n\tgot  %d\n\twant 2 (none after the stop)", n)
			}
			assertNoLeak(t, r.err, logs)
		})
	}
}

// checkCancel starts a delivery, cancels its context once ready is closed,
// and checks that Deliver returns within 2s with a non-permanent error.
func checkCancel(t *testing.T, s *webhook.Sink, logs *observer.ObservedLogs, ready <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.Deliver(ctx, delivery)
		done <- err
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Deliver returned before the cancel: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the delivery did not reach the point to cancel at within 5s")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Deliver after cancel:\n\tgot  %v\n\twant an error wrapping context.Canceled", err)
		}
		if _, perm := connector.IsPermanent(err); perm {
			t.Errorf("Deliver after cancel: the error %v is permanent", err)
		}
		assertNoLeak(t, err, logs)
	case <-time.After(2 * time.Second):
		t.Fatal("Deliver did not return within 2s of cancel")
	}
}

func waitArrivals(t *testing.T, rc *recipient, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case got := <-rc.arrive:
			if got >= n {
				return
			}
		case <-deadline:
			t.Errorf("request %d did not arrive within 5s", n) // Errorf: may run off the test goroutine
			return
		}
	}
}

func TestDeliverDeadline(t *testing.T) {
	rc := newRecipient(t, statuses(503))
	s, logs := newSink(t, rc.url(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	out, err := s.Deliver(ctx, delivery)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Deliver past its deadline:\n\tgot  %v\n\twant an error wrapping context.DeadlineExceeded", err)
	}
	if _, perm := connector.IsPermanent(err); perm {
		t.Errorf("Deliver past its deadline: the error %v is permanent", err)
	}
	if out.Attempts < 2 {
		t.Errorf("Deliver past its deadline: %d attempts; want several (it retries 503 until ctx ends)", out.Attempts)
	}
	assertNoLeak(t, err, logs)
}

func TestDeliverMaxAttempts(t *testing.T) {
	t.Run("503", func(t *testing.T) {
		rc := newRecipient(t, statuses(503))
		s, logs := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { r.MaxAttempts = 3 })
		out, err := s.Deliver(context.Background(), delivery)
		if err == nil {
			t.Fatal("Deliver: got no error")
		}
		if _, perm := connector.IsPermanent(err); perm {
			t.Errorf("Deliver: the error %v is permanent; 503 is transient", err)
		}
		if want := "delivering: gave up after 3 attempts, last status 503"; err.Error() != want {
			t.Errorf("Deliver error:\n\tgot  %q\n\twant %q", err, want)
		}
		if want := (connector.Outcome{Attempts: 3, Status: 503}); out != want {
			t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
		}
		if n := len(rc.received()); n != 3 {
			t.Errorf("requests received:\n\tgot  %d\n\twant 3", n)
		}
		assertNoLeak(t, err, logs)
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		s, logs := newSink(t, "http://"+addr+"/events?nhs="+urlCanary, func(c *webhook.Config, r *connector.Retry) { r.MaxAttempts = 2 })
		out, err := s.Deliver(context.Background(), delivery)
		if err == nil || err.Error() != "delivering: connection refused" {
			t.Errorf("Deliver:\n\tgot  %v\n\twant %q", err, "delivering: connection refused")
		}
		if _, perm := connector.IsPermanent(err); perm {
			t.Errorf("Deliver: the error %v is permanent", err)
		}
		if want := (connector.Outcome{Attempts: 2}); out != want {
			t.Errorf("Deliver outcome:\n\tgot  %+v\n\twant %+v", out, want)
		}
		assertNoLeak(t, err, logs)
	})
	t.Run("one attempt", func(t *testing.T) {
		rc := newRecipient(t, statuses(500))
		s, _ := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { r.MaxAttempts = 1 })
		out, err := s.Deliver(context.Background(), delivery)
		if err == nil || out.Attempts != 1 || len(rc.received()) != 1 {
			t.Errorf("Deliver:\n\tgot  %+v, %v, %d received\n\twant 1 attempt, an error, 1 received", out, err, len(rc.received()))
		}
	})
}

// TestDeliverTimeout bounds one attempt by Config.Timeout; the error names
// the class, never the URL.
func TestDeliverTimeout(t *testing.T) {
	rc := newRecipient(t, func(_ int, w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	s, logs := newSink(t, rc.url(), func(c *webhook.Config, r *connector.Retry) { c.Timeout = 50 * time.Millisecond; r.MaxAttempts = 2 })
	out, err := s.Deliver(context.Background(), delivery)
	if err == nil || err.Error() != "delivering: timeout" {
		t.Errorf("Deliver:\n\tgot  %v\n\twant %q", err, "delivering: timeout")
	}
	if out.Attempts != 2 {
		t.Errorf("Deliver attempts:\n\tgot  %d\n\twant 2", out.Attempts)
	}
	assertNoLeak(t, err, logs)
}

// TestDeliverConcurrent runs deliveries side by side on one sink: each
// counts its own attempts.
func TestDeliverConcurrent(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	rc := newRecipient(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(webhook.HeaderID)
		mu.Lock()
		seen[id]++
		n := seen[id]
		mu.Unlock()
		if n < 3 {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(200)
	})
	s, logs := newSink(t, rc.url(), nil)
	const n = 8
	var wg sync.WaitGroup
	outs := make([]connector.Outcome, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := delivery
			d.EventID = fmt.Sprintf("evt-%d", i)
			outs[i], errs[i] = s.Deliver(context.Background(), d)
		}()
	}
	wg.Wait()
	for i := range n {
		if want := (connector.Outcome{Attempts: 3, Status: 200}); errs[i] != nil || outs[i] != want {
			t.Errorf("Deliver(evt-%d):\n\tgot  %+v, %v\n\twant %+v, nil", i, outs[i], errs[i], want)
		}
	}
	assertNoLeak(t, nil, logs)
}

// TestDeliverWebhookIDIsSourceAndID: the same event id published by two
// organisations is two events. Regression: webhook-id was the event id alone,
// so a receiver that drops duplicates by it dropped the second publisher's
// event.
func TestDeliverWebhookIDIsSourceAndID(t *testing.T) {
	rc := newRecipient(t, statuses(204, 204, 204))
	s, _ := newSink(t, rc.url(), nil)
	for _, src := range []string{"urn:ods:RX1", "urn:ods:VM123", "urn:ods:RX1"} {
		d := delivery
		d.EventSource = src
		if _, err := s.Deliver(context.Background(), d); err != nil {
			t.Fatalf("Deliver(%s): %v", src, err)
		}
	}
	reqs := rc.received()
	id := func(i int) string { return reqs[i].header.Get(webhook.HeaderID) }
	if id(0) == id(1) {
		t.Errorf("webhook-id of %s and urn:ods:VM123 with the same event id: both %s", "urn:ods:RX1", id(0))
	}
	if id(0) != id(2) {
		t.Errorf("webhook-id of one event delivered twice:\n\tgot  %s and %s\n\twant the same", id(0), id(2))
	}
	if got := reqs[1].header.Get(webhook.HeaderSource); got != "urn:ods:VM123" {
		t.Errorf("ce-source:\n\tgot  %q\n\twant urn:ods:VM123", got)
	}
}
