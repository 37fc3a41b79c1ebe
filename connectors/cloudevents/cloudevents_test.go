package cloudevents_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/cloudevents"
	"github.com/carehub/carehub/connectors/connector"
	cevent "github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// canary is a synthetic NHS number from the 999 test range: it is in every
// event and must never reach a response's error text or a log line.
const canary = "9991234567"

const goodKey = "rx1-key-5e1f0a"

func event(id string) string {
	return `{"specversion":"1.0","id":"` + id + `","type":"org.carehub.admission.v1","source":"RX1",` +
		`"data":{"patient":{"nhsNumber":"` + canary + `"}}}`
}

// fakeAuth knows one key, for organisation RX1.
type fakeAuth struct{}

func (fakeAuth) Organisation(r *http.Request) (string, error) {
	switch r.Header.Get("Authorization") {
	case "":
		return "", problem.New(problem.Unauthenticated, "an API key is required")
	case "Bearer " + goodKey:
		return "RX1", nil
	case "Bearer admin-key":
		return "", problem.New(problem.Forbidden, "the admin key cannot publish events")
	default:
		return "", problem.New(problem.Unauthenticated, "the API key is not known")
	}
}

// fakeIngest records its calls and answers with the scripted functions.
type fakeIngest struct {
	mu      sync.Mutex
	calls   []call
	accept  func(raw []byte) (connector.Accepted, error)
	perItem func(i int, raw json.RawMessage) connector.Result
}

type call struct {
	method string
	org    string
	raws   []string
}

func (f *fakeIngest) Accept(_ context.Context, org string, raw []byte) (connector.Accepted, error) {
	f.mu.Lock()
	f.calls = append(f.calls, call{"Accept", org, []string{string(raw)}})
	f.mu.Unlock()
	if f.accept == nil {
		return connector.Accepted{ID: "evt-1", Type: "org.carehub.admission.v1"}, nil
	}
	return f.accept(raw)
}

func (f *fakeIngest) AcceptBatch(_ context.Context, org string, raws []json.RawMessage) []connector.Result {
	c := call{method: "AcceptBatch", org: org}
	for _, r := range raws {
		c.raws = append(c.raws, string(r))
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	out := make([]connector.Result, len(raws))
	for i, r := range raws {
		if f.perItem != nil {
			out[i] = f.perItem(i, r)
		} else {
			out[i] = connector.Result{Accepted: connector.Accepted{ID: fmt.Sprintf("evt-%d", i), Type: "t"}}
		}
	}
	return out
}

// Hold records the call: this source holds nothing, and a test that sees
// the call fails.
func (f *fakeIngest) Hold(_ context.Context, org string, h connector.Held) error {
	f.mu.Lock()
	f.calls = append(f.calls, call{"Hold", org, []string{h.ID}})
	f.mu.Unlock()
	return nil
}

func (f *fakeIngest) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

type harness struct {
	mux    *http.ServeMux
	ingest *fakeIngest
	logs   *observer.ObservedLogs
}

// newHarness registers the source; maxBody is the hub's body limit
// (default 1 MiB).
func newHarness(t *testing.T, cfg cloudevents.Config, maxBody ...int64) *harness {
	t.Helper()
	s, err := cloudevents.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{mux: http.NewServeMux(), ingest: &fakeIngest{}, logs: logs}
	limit := int64(1 << 20)
	if len(maxBody) > 0 {
		limit = maxBody[0]
	}
	if err := s.Register(connector.Env{Ingest: h.ingest, Auth: fakeAuth{}, Mux: h.mux, MaxBodyBytes: limit, Log: zap.New(core)}); err != nil {
		t.Fatal(err)
	}
	return h
}

type response struct {
	status int
	ctype  string
	body   []byte
}

func (h *harness) post(t *testing.T, auth, ctype string, body []byte) response {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	w := httptest.NewRecorder()
	h.mux.ServeHTTP(w, r)
	res := w.Result()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, ctype: res.Header.Get("Content-Type"), body: b}
}

// assertNoLeak fails if the response body or any log line holds the canary.
func (h *harness) assertNoLeak(t *testing.T, name string, res response) {
	t.Helper()
	if bytes.Contains(res.body, []byte(canary)) {
		t.Errorf("%s: the response holds the canary: %s", name, res.body)
	}
	for _, e := range h.logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, canary) {
			t.Errorf("%s: a log line holds the canary: %s", name, line)
		}
	}
}

func problemOf(t *testing.T, name string, res response) problem.Details {
	t.Helper()
	if res.ctype != "application/problem+json" {
		t.Errorf("%s: Content-Type:\n\tgot  %q\n\twant %q", name, res.ctype, "application/problem+json")
	}
	var d problem.Details
	if err := json.Unmarshal(res.body, &d); err != nil {
		t.Fatalf("%s: the body is not a problem document: %v\n%s", name, err, res.body)
	}
	return d
}

// TestRejectedBeforeIngest covers the answers given before anything reaches
// the Ingest: the fake must record no call.
func TestRejectedBeforeIngest(t *testing.T) {
	big := `[` + strings.Repeat(event("e")+",", 40) + event("e") + `]`
	tests := []struct {
		name   string
		auth   string
		ctype  string
		body   string
		status int
		kind   string
	}{
		{"no key", "", media.CloudEvent, event("e1"), 401, "unauthenticated"},
		{"unknown key", "Bearer stolen-key", media.CloudEvent, event("e1"), 401, "unauthenticated"},
		{"admin key", "Bearer admin-key", media.CloudEvent, event("e1"), 403, "forbidden"},
		{"no key, wrong type too", "", "text/plain", "hello", 401, "unauthenticated"},
		{"text/plain", "Bearer " + goodKey, "text/plain", event("e1"), 415, "media-type"},
		// Regression: plain application/json was taken as structured mode.
		{"application/json without ce- headers", "Bearer " + goodKey, "application/json", event("e1"), 415, "media-type"},
		{"another event format", "Bearer " + goodKey, "application/cloudevents+xml", "<event/>", 415, "media-type"},
		{"no content type", "Bearer " + goodKey, "", event("e1"), 415, "media-type"},
		{"broken content type", "Bearer " + goodKey, "application/", event("e1"), 415, "media-type"},
		{"form", "Bearer " + goodKey, "application/x-www-form-urlencoded", "a=b", 415, "media-type"},
		{"single over the limit", "Bearer " + goodKey, media.CloudEvent, `{"pad":"` + strings.Repeat("x", 4096) + `"}`, 413, "too-large"},
		{"batch over the limit", "Bearer " + goodKey, media.CloudEventBatch, big, 413, "too-large"},
		{"batch over MaxBatchEvents", "Bearer " + goodKey, media.CloudEventBatch, `[{},{},{},{}]`, 413, "too-large"},
		{"batch not an array", "Bearer " + goodKey, media.CloudEventBatch, event("e1"), 422, "invalid"},
		{"batch not JSON", "Bearer " + goodKey, media.CloudEventBatch, `[{"id":`, 422, "invalid"},
		{"empty batch", "Bearer " + goodKey, media.CloudEventBatch, `[]`, 422, "invalid"},
		{"null batch", "Bearer " + goodKey, media.CloudEventBatch, `null`, 422, "invalid"},
	}
	for _, tt := range tests {
		h := newHarness(t, cloudevents.Config{MaxBatchEvents: 3}, 4096)
		res := h.post(t, tt.auth, tt.ctype, []byte(tt.body))
		if res.status != tt.status {
			t.Errorf("POST(%s) status:\n\tgot  %d\n\twant %d\n%s", tt.name, res.status, tt.status, res.body)
		}
		d := problemOf(t, tt.name, res)
		if got, want := d.Type, problem.TypeBase+tt.kind; got != want {
			t.Errorf("POST(%s) problem type:\n\tgot  %q\n\twant %q", tt.name, got, want)
		}
		if d.Status != tt.status {
			t.Errorf("POST(%s) problem status:\n\tgot  %d\n\twant %d", tt.name, d.Status, tt.status)
		}
		if calls := h.ingest.Calls(); len(calls) != 0 {
			t.Errorf("POST(%s): the Ingest was called: %+v", tt.name, calls)
		}
		h.assertNoLeak(t, tt.name, res)
	}
}

func TestBatchProblemNamesRule(t *testing.T) {
	tests := []struct {
		body string
		rule string
	}{
		{`{"id":"x"}`, "batch-array"},
		{`[]`, "batch-not-empty"},
	}
	for _, tt := range tests {
		h := newHarness(t, cloudevents.Config{})
		d := problemOf(t, tt.body, h.post(t, "Bearer "+goodKey, media.CloudEventBatch, []byte(tt.body)))
		if len(d.Violations) != 1 || d.Violations[0].Rule != tt.rule {
			t.Errorf("POST(batch %s) violations:\n\tgot  %+v\n\twant one with rule %q", tt.body, d.Violations, tt.rule)
		}
	}
}

func TestSingleAccepted(t *testing.T) {
	for _, ctype := range []string{media.CloudEvent, media.CloudEvent + "; charset=utf-8", "Application/CloudEvents+JSON"} {
		h := newHarness(t, cloudevents.Config{})
		body := event("evt-1")
		res := h.post(t, "Bearer "+goodKey, ctype, []byte(body))
		if res.status != http.StatusAccepted {
			t.Fatalf("POST(%s) status:\n\tgot  %d\n\twant 202\n%s", ctype, res.status, res.body)
		}
		if res.ctype != "application/json" {
			t.Errorf("POST(%s) Content-Type:\n\tgot  %q\n\twant application/json", ctype, res.ctype)
		}
		var got map[string]string
		if err := json.Unmarshal(res.body, &got); err != nil {
			t.Fatalf("POST(%s) body: %v\n%s", ctype, err, res.body)
		}
		want := map[string]string{"id": "evt-1", "type": "org.carehub.admission.v1", "status": "accepted"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("POST(%s) body (-want +got):\n%s", ctype, diff)
		}
		wantCalls := []call{{"Accept", "RX1", []string{body}}}
		if diff := cmp.Diff(wantCalls, h.ingest.Calls(), cmp.AllowUnexported(call{})); diff != "" {
			t.Errorf("POST(%s) Ingest calls (-want +got):\n%s", ctype, diff)
		}
	}
}

// TestSingleAtTheLimit accepts a body of exactly MaxBodyBytes.
func TestSingleAtTheLimit(t *testing.T) {
	h := newHarness(t, cloudevents.Config{}, 2048)
	body := `{"pad":"` + strings.Repeat("x", 2048-10) + `"}`
	if len(body) != 2048 {
		t.Fatalf("body is %d bytes", len(body))
	}
	if res := h.post(t, "Bearer "+goodKey, media.CloudEvent, []byte(body)); res.status != 202 {
		t.Errorf("POST(2048 bytes, limit 2048) status:\n\tgot  %d\n\twant 202", res.status)
	}
	if res := h.post(t, "Bearer "+goodKey, media.CloudEvent, []byte(body+" ")); res.status != 413 {
		t.Errorf("POST(2049 bytes, limit 2048) status:\n\tgot  %d\n\twant 413", res.status)
	}
}

// TestSingleRefused maps an Ingest error of every kind to its status and
// problem document, without the cause's text.
func TestSingleRefused(t *testing.T) {
	kinds := []problem.Kind{}
	for k := problem.Kind(0); k == 0 || k.String() != "other"; k++ {
		kinds = append(kinds, k)
	}
	for _, k := range kinds {
		h := newHarness(t, cloudevents.Config{})
		h.ingest.accept = func([]byte) (connector.Accepted, error) {
			return connector.Accepted{}, fmt.Errorf("accepting: %w",
				problem.Wrap(k, "public text for "+k.String(), fmt.Errorf("patient %s", canary)))
		}
		res := h.post(t, "Bearer "+goodKey, media.CloudEvent, []byte(event("e1")))
		if res.status != k.HTTPStatus() {
			t.Errorf("POST(Ingest error %s) status:\n\tgot  %d\n\twant %d", k, res.status, k.HTTPStatus())
		}
		d := problemOf(t, k.String(), res)
		typeName := k.String()
		if k == problem.Other {
			typeName = "internal"
		}
		want := problem.Details{Type: problem.TypeBase + typeName, Title: http.StatusText(k.HTTPStatus()),
			Status: k.HTTPStatus(), Detail: "public text for " + k.String()}
		if diff := cmp.Diff(want, d); diff != "" {
			t.Errorf("POST(Ingest error %s) problem (-want +got):\n%s", k, diff)
		}
		if n := h.logs.FilterMessage("event refused").Len(); n != 1 {
			t.Errorf("POST(Ingest error %s): %d \"event refused\" log lines; want 1", k, n)
		}
		h.assertNoLeak(t, k.String(), res)
	}
	if len(kinds) < 12 {
		t.Errorf("only %d kinds found", len(kinds))
	}
}

// An Ingest error that is not a *problem.Error is a 500 with generic text.
func TestSinglePlainError(t *testing.T) {
	h := newHarness(t, cloudevents.Config{})
	h.ingest.accept = func([]byte) (connector.Accepted, error) {
		return connector.Accepted{}, fmt.Errorf("kafka write for %s: %w", canary, context.DeadlineExceeded)
	}
	res := h.post(t, "Bearer "+goodKey, media.CloudEvent, []byte(event("e1")))
	d := problemOf(t, "plain error", res)
	if res.status != 500 || d.Detail != "internal error" {
		t.Errorf("POST(plain Ingest error):\n\tgot  %d %+v\n\twant 500 with detail %q", res.status, d, "internal error")
	}
	h.assertNoLeak(t, "plain error", res)
}

func TestBatchAllAccepted(t *testing.T) {
	h := newHarness(t, cloudevents.Config{MaxBatchEvents: 3})
	raws := []string{event("a"), event("b"), event("c")}
	res := h.post(t, "Bearer "+goodKey, media.CloudEventBatch, []byte("["+strings.Join(raws, ",")+"]"))
	if res.status != http.StatusAccepted {
		t.Fatalf("POST(batch) status:\n\tgot  %d\n\twant 202\n%s", res.status, res.body)
	}
	if res.ctype != "application/json" {
		t.Errorf("POST(batch) Content-Type:\n\tgot  %q\n\twant application/json", res.ctype)
	}
	var got struct{ Results []cloudevents.BatchResult }
	if err := json.Unmarshal(res.body, &got); err != nil {
		t.Fatal(err)
	}
	want := []cloudevents.BatchResult{
		{Index: 0, ID: "evt-0", Status: 202},
		{Index: 1, ID: "evt-1", Status: 202},
		{Index: 2, ID: "evt-2", Status: 202},
	}
	if diff := cmp.Diff(want, got.Results); diff != "" {
		t.Errorf("POST(batch) results (-want +got):\n%s", diff)
	}
	wantCalls := []call{{"AcceptBatch", "RX1", raws}}
	if diff := cmp.Diff(wantCalls, h.ingest.Calls(), cmp.AllowUnexported(call{})); diff != "" {
		t.Errorf("POST(batch) Ingest calls (-want +got):\n%s", diff)
	}
}

func TestBatchMixed(t *testing.T) {
	h := newHarness(t, cloudevents.Config{})
	viol := problem.Violated("/data/patient/nhsNumber", "nhs-number-check-digit", "NHS number fails the modulus 11 check")
	viol.Err = errors.New("value " + canary)
	h.ingest.perItem = func(i int, _ json.RawMessage) connector.Result {
		switch i {
		case 1:
			return connector.Result{Err: viol}
		case 2:
			return connector.Result{Err: problem.New(problem.Unsupported, "the event type is not accepted")}
		case 3:
			return connector.Result{Err: fmt.Errorf("publishing %s: %w", canary, problem.Wrap(problem.Unavailable, "the broker is unavailable", errors.New(canary)))}
		case 4:
			return connector.Result{Err: fmt.Errorf("patient %s", canary)}
		}
		return connector.Result{Accepted: connector.Accepted{ID: fmt.Sprintf("evt-%d", i)}}
	}
	raws := []string{event("a"), event("b"), event("c"), event("d"), event("e"), event("f")}
	res := h.post(t, "Bearer "+goodKey, media.CloudEventBatch, []byte("["+strings.Join(raws, ",")+"]"))
	if res.status != http.StatusMultiStatus {
		t.Fatalf("POST(mixed batch) status:\n\tgot  %d\n\twant 207\n%s", res.status, res.body)
	}
	var got struct{ Results []cloudevents.BatchResult }
	if err := json.Unmarshal(res.body, &got); err != nil {
		t.Fatal(err)
	}
	pd := func(kind string, status int, detail string, v ...problem.Violation) *problem.Details {
		return &problem.Details{Type: problem.TypeBase + kind, Title: http.StatusText(status), Status: status, Detail: detail, Violations: v}
	}
	want := []cloudevents.BatchResult{
		{Index: 0, ID: "evt-0", Status: 202},
		{Index: 1, Status: 422, Problem: pd("invalid", 422, "NHS number fails the modulus 11 check", viol.Violations...)},
		{Index: 2, Status: 422, Problem: pd("unsupported", 422, "the event type is not accepted")},
		{Index: 3, Status: 503, Problem: pd("unavailable", 503, "the broker is unavailable")},
		{Index: 4, Status: 500, Problem: pd("internal", 500, "internal error")},
		{Index: 5, ID: "evt-5", Status: 202},
	}
	if diff := cmp.Diff(want, got.Results); diff != "" {
		t.Errorf("POST(mixed batch) results (-want +got):\n%s", diff)
	}
	if n := h.logs.FilterMessage("batch partly refused").Len(); n != 1 {
		t.Errorf("POST(mixed batch): %d \"batch partly refused\" log lines; want 1", n)
	}
	h.assertNoLeak(t, "mixed batch", res)
}

func TestBatchAtMaxBatchEvents(t *testing.T) {
	h := newHarness(t, cloudevents.Config{MaxBatchEvents: 2})
	if res := h.post(t, "Bearer "+goodKey, media.CloudEventBatch, []byte(`[{},{}]`)); res.status != 202 {
		t.Errorf("POST(2 events, limit 2) status:\n\tgot  %d\n\twant 202", res.status)
	}
	if res := h.post(t, "Bearer "+goodKey, media.CloudEventBatch, []byte(`[{},{},{}]`)); res.status != 413 {
		t.Errorf("POST(3 events, limit 2) status:\n\tgot  %d\n\twant 413", res.status)
	}
	if n := len(h.ingest.Calls()); n != 1 {
		t.Errorf("Ingest calls:\n\tgot  %d\n\twant 1", n)
	}
}

// Only POST is routed.
func TestMethod(t *testing.T) {
	h := newHarness(t, cloudevents.Config{})
	r := httptest.NewRequest(http.MethodGet, "/v1/events", nil)
	r.Header.Set("Authorization", "Bearer "+goodKey)
	w := httptest.NewRecorder()
	h.mux.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/events status:\n\tgot  %d\n\twant 405", w.Code)
	}
	if n := len(h.ingest.Calls()); n != 0 {
		t.Errorf("GET /v1/events: the Ingest was called %d times", n)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		cfg     cloudevents.Config
		wantErr bool
	}{
		{cloudevents.Config{}, false},
		{cloudevents.Config{MaxBatchEvents: 1}, false},
		{cloudevents.Config{MaxBatchEvents: -1}, true},
	}
	for _, tt := range tests {
		_, err := cloudevents.New(tt.cfg)
		if (err != nil) != tt.wantErr {
			t.Errorf("New(%+v):\n\tgot  %v\n\twant error: %v", tt.cfg, err, tt.wantErr)
		}
	}
}

func TestRegister(t *testing.T) {
	s, err := cloudevents.New(cloudevents.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     connector.Env
		wantErr bool
	}{
		{"no Ingest", connector.Env{Auth: fakeAuth{}, Mux: http.NewServeMux(), MaxBodyBytes: 1024}, true},
		{"no Auth", connector.Env{Ingest: &fakeIngest{}, Mux: http.NewServeMux(), MaxBodyBytes: 1024}, true},
		{"no Mux", connector.Env{Ingest: &fakeIngest{}, Auth: fakeAuth{}, MaxBodyBytes: 1024}, true},
		{"no body limit", connector.Env{Ingest: &fakeIngest{}, Auth: fakeAuth{}, Mux: http.NewServeMux()}, true},
		{"no Log is fine", connector.Env{Ingest: &fakeIngest{}, Auth: fakeAuth{}, Mux: http.NewServeMux(), MaxBodyBytes: 1024}, false},
	}
	for _, tt := range tests {
		if err := s.Register(tt.env); (err != nil) != tt.wantErr {
			t.Errorf("Register(%s):\n\tgot  %v\n\twant error: %v", tt.name, err, tt.wantErr)
		}
	}
}

// TestNoLogStillServes registers without a logger: a refusal must not panic.
func TestNoLogStillServes(t *testing.T) {
	s, _ := cloudevents.New(cloudevents.Config{})
	ing := &fakeIngest{accept: func([]byte) (connector.Accepted, error) {
		return connector.Accepted{}, problem.New(problem.Invalid, "bad")
	}}
	mux := http.NewServeMux()
	if err := s.Register(connector.Env{Ingest: ing, Auth: fakeAuth{}, Mux: mux, MaxBodyBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(`{}`))
	r.Header.Set("Authorization", "Bearer "+goodKey)
	r.Header.Set("Content-Type", media.CloudEvent)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	if w.Code != 422 {
		t.Errorf("POST without a logger status:\n\tgot  %d\n\twant 422", w.Code)
	}
}

func TestRunReturnsWhenContextEnds(t *testing.T) {
	s, _ := cloudevents.New(cloudevents.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, connector.Env{}) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel:\n\tgot  %v\n\twant nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancel")
	}
}

// postHeaders posts body with every header in h and the good key.
func (h *harness) postHeaders(t *testing.T, hdr http.Header, body []byte) response {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
	for k, vs := range hdr {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	r.Header.Set("Authorization", "Bearer "+goodKey)
	w := httptest.NewRecorder()
	h.mux.ServeHTTP(w, r)
	res := w.Result()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, ctype: res.Header.Get("Content-Type"), body: b}
}

// binaryOf returns the headers and body of ev in binary mode, as the
// CloudEvents SDKs send it: every attribute but data as a ce- header (string
// values percent-encoded where needed), and the data as the body.
func binaryOf(t *testing.T, ev string) (http.Header, []byte) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(ev), &m); err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json; charset=utf-8")
	for k, v := range m {
		switch k {
		case "data":
			continue
		case "datacontenttype":
			var s string
			_ = json.Unmarshal(v, &s)
			h.Set("Content-Type", s)
			continue
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			s = string(v) // a number or boolean: its canonical string
		}
		h.Set("ce-"+k, percentEncode(s))
	}
	return h, m["data"]
}

// percentEncode encodes as the HTTP binding's section 3.1.3.2 says.
func percentEncode(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c <= ' ' || c == '"' || c == '%' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// TestBinaryModeSameEvent posts each event in structured and in binary mode:
// both must reach the Ingest as documents that the validator reads as the
// same canonical event.
func TestBinaryModeSameEvent(t *testing.T) {
	v, err := cevent.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	data := `{"patient":{"nhsNumber":"9990500002","gpPractice":"A81001"},"encounter":{"id":"E1"},` +
		`"discharge":{"destination":{"type":"care-home","ods":"VM123"}}}`
	events := []string{
		`{"specversion":"1.0","id":"b-1","source":"urn:ods:RX1","type":"org.carehub.discharge.v1",` +
			`"time":"2026-11-24T10:00:00Z","data":` + data + `}`,
		// Every optional attribute, non-ASCII and reserved characters
		// (percent-encoded in headers), an extension, a time with an offset.
		`{"specversion":"1.0","id":"b 2 \"quoted\" 100% €😀","source":"urn:ods:RX1","type":"org.carehub.discharge.v1",` +
			`"subject":"encounter E1","time":"2026-11-24T10:00:00.123+01:00","datacontenttype":"application/json",` +
			`"dataschema":"https://carehub.dev/schemas/discharge.v1.json","traceparent":"00-abc-def-01","data":` + data + `}`,
	}
	for _, ev := range events {
		h := newHarness(t, cloudevents.Config{})
		if res := h.post(t, "Bearer "+goodKey, media.CloudEvent, []byte(ev)); res.status != http.StatusAccepted {
			t.Fatalf("structured POST(%s): %d %s", ev, res.status, res.body)
		}
		hdr, body := binaryOf(t, ev)
		if res := h.postHeaders(t, hdr, body); res.status != http.StatusAccepted {
			t.Fatalf("binary POST(%s): %d %s", ev, res.status, res.body)
		}
		calls := h.ingest.Calls()
		if len(calls) != 2 {
			t.Fatalf("Ingest calls: got %d, want 2", len(calls))
		}
		var canon [2]string
		for i, c := range calls {
			e, err := v.Parse([]byte(c.raws[0]))
			if err != nil {
				t.Fatalf("call %d (%s): the document does not validate: %v\n%s", i, c.method, err, c.raws[0])
			}
			b, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			canon[i] = string(b)
		}
		if canon[0] != canon[1] {
			t.Errorf("canonical event of %s:\n\tstructured %s\n\tbinary     %s", ev, canon[0], canon[1])
		}
	}
}

func TestBinaryModeHeaderValues(t *testing.T) {
	tests := []struct {
		header string
		want   string // the subject read; "" means refused
	}{
		{"plain", "plain"},
		{"Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀"}, // the binding's own example
		{"lower%2fcase%2Fhex", "lower/case/hex"},
		{`"quoted \"value\""`, `quoted "value"`}, // older senders quote
		{"100%", "100%"},                         // a bare %, as the JavaScript SDK sends it
		{"%C0%A0", ""},                           // overlong UTF-8: must be rejected
		{"%FF", ""},
		{"tab%09", ""}, // a control character
	}
	for _, tt := range tests {
		h := newHarness(t, cloudevents.Config{})
		hdr, body := binaryOf(t, `{"specversion":"1.0","id":"h-1","source":"urn:ods:RX1","type":"org.carehub.admission.v1",`+
			`"time":"2026-11-24T10:00:00Z","data":{"patient":{"nhsNumber":"`+canary+`"}}}`)
		hdr.Set("ce-subject", tt.header)
		res := h.postHeaders(t, hdr, body)
		calls := h.ingest.Calls()
		if tt.want == "" {
			if res.status != http.StatusUnprocessableEntity || len(calls) != 0 {
				t.Errorf("ce-subject %q: got %d and %d Ingest calls, want 422 and none", tt.header, res.status, len(calls))
			}
			d := problemOf(t, tt.header, res)
			if len(d.Violations) != 1 || d.Violations[0].Pointer != "/subject" || d.Violations[0].Rule != cloudevents.RuleBinaryHeaderEncoding {
				t.Errorf("ce-subject %q violations:\n\tgot  %+v\n\twant one at /subject, rule %s", tt.header, d.Violations, cloudevents.RuleBinaryHeaderEncoding)
			}
			continue
		}
		if res.status != http.StatusAccepted || len(calls) != 1 {
			t.Fatalf("ce-subject %q: got %d %s", tt.header, res.status, res.body)
		}
		var got struct{ Subject string }
		if err := json.Unmarshal([]byte(calls[0].raws[0]), &got); err != nil || got.Subject != tt.want {
			t.Errorf("ce-subject %q:\n\tgot  %q (%v)\n\twant %q", tt.header, got.Subject, err, tt.want)
		}
	}
}

// TestBinaryModeRefused covers binary-mode requests refused before the
// Ingest. Regression: binary mode used to be answered 422 "id, source, type
// missing", since the headers were not read at all.
func TestBinaryModeRefused(t *testing.T) {
	good := `{"specversion":"1.0","id":"r-1","source":"urn:ods:RX1","type":"org.carehub.admission.v1",` +
		`"time":"2026-11-24T10:00:00Z","data":{"patient":{"nhsNumber":"` + canary + `"}}}`
	tests := []struct {
		name   string
		edit   func(h http.Header, body *[]byte)
		status int
		kind   string
		ptr    string
		rule   string
	}{
		{"ce-datacontenttype", func(h http.Header, _ *[]byte) { h.Set("ce-datacontenttype", "application/json") },
			422, "invalid", "/datacontenttype", cloudevents.RuleBinaryDataContentType},
		{"ce-data", func(h http.Header, _ *[]byte) { h.Set("ce-data", "{}") },
			422, "invalid", "/data", cloudevents.RuleBinaryDataHeader},
		{"ce-id twice", func(h http.Header, _ *[]byte) { h.Add("ce-id", "r-2") },
			422, "invalid", "/id", cloudevents.RuleBinaryHeaderTwice},
		{"XML data", func(h http.Header, _ *[]byte) { h.Set("Content-Type", "application/xml") },
			415, "media-type", "/datacontenttype", cloudevents.RuleBinaryMediaType},
		{"body not JSON", func(_ http.Header, b *[]byte) { *b = []byte(`{"patient":`) },
			400, "malformed", "/data", "cloudevents-data"},
	}
	for _, tt := range tests {
		h := newHarness(t, cloudevents.Config{})
		hdr, body := binaryOf(t, good)
		tt.edit(hdr, &body)
		res := h.postHeaders(t, hdr, body)
		if res.status != tt.status {
			t.Errorf("POST(%s) status:\n\tgot  %d\n\twant %d\n%s", tt.name, res.status, tt.status, res.body)
		}
		d := problemOf(t, tt.name, res)
		if got, want := d.Type, problem.TypeBase+tt.kind; got != want {
			t.Errorf("POST(%s) problem type:\n\tgot  %q\n\twant %q", tt.name, got, want)
		}
		if len(d.Violations) != 1 || d.Violations[0].Pointer != tt.ptr || d.Violations[0].Rule != tt.rule {
			t.Errorf("POST(%s) violations:\n\tgot  %+v\n\twant one at %s, rule %s", tt.name, d.Violations, tt.ptr, tt.rule)
		}
		if calls := h.ingest.Calls(); len(calls) != 0 {
			t.Errorf("POST(%s): the Ingest was called", tt.name)
		}
		h.assertNoLeak(t, tt.name, res)
	}
	// Missing attributes reach the validator, which names each: the
	// document the binary mode builds has no id.
	h := newHarness(t, cloudevents.Config{})
	hdr, body := binaryOf(t, good)
	hdr.Del("ce-id")
	if res := h.postHeaders(t, hdr, body); res.status != http.StatusAccepted {
		t.Fatalf("POST(no ce-id): %d", res.status)
	}
	if raw := h.ingest.Calls()[0].raws[0]; strings.Contains(raw, `"id"`) {
		t.Errorf("POST(no ce-id): the document holds an id: %s", raw)
	}
}

// TestNeitherModeNamesTheModes: a request that is no CloudEvent gets a
// problem that says how to send one.
func TestNeitherModeNamesTheModes(t *testing.T) {
	h := newHarness(t, cloudevents.Config{})
	d := problemOf(t, "application/json", h.post(t, "Bearer "+goodKey, "application/json", []byte(event("e1"))))
	for _, want := range []string{"structured mode", media.CloudEvent, "batched mode", media.CloudEventBatch, "binary mode", "ce-specversion"} {
		if !strings.Contains(d.Detail, want) {
			t.Errorf("problem detail %q does not mention %q", d.Detail, want)
		}
	}
}

// FuzzBinaryMode: no header value or body makes the binary mode panic, and
// whatever it passes to the Ingest is one JSON object whose data is the body.
func FuzzBinaryMode(f *testing.F) {
	f.Add("b-1", "trace%20%E2%82%AC", "application/json", []byte(`{"patient":{"nhsNumber":"`+canary+`"}}`))
	f.Add(`"quoted"`, "100%", "application/json; charset=utf-8", []byte(`[]`))
	f.Add("%C0%A0", "", "text/plain", []byte(`not json`))
	f.Fuzz(func(t *testing.T, id, ext, ctype string, body []byte) {
		h := newHarness(t, cloudevents.Config{})
		hdr := http.Header{}
		hdr.Set("ce-specversion", "1.0")
		hdr.Set("ce-id", id)
		hdr.Set("ce-source", "urn:ods:RX1")
		hdr.Set("ce-type", "org.carehub.admission.v1")
		hdr.Set("ce-carehubtrace", ext)
		if ctype != "" {
			hdr.Set("Content-Type", ctype)
		}
		res := h.postHeaders(t, hdr, body)
		for _, c := range h.ingest.Calls() {
			var doc map[string]json.RawMessage
			if err := json.Unmarshal([]byte(c.raws[0]), &doc); err != nil {
				t.Fatalf("the Ingest got a document that is not a JSON object: %q", c.raws[0])
			}
			if !bytes.Equal(bytes.TrimSpace(doc["data"]), bytes.TrimSpace(body)) && json.Valid(body) {
				var a, b any
				_ = json.Unmarshal(doc["data"], &a)
				_ = json.Unmarshal(body, &b)
				if fmt.Sprint(a) != fmt.Sprint(b) {
					t.Fatalf("data %s, want the body %s", doc["data"], body)
				}
			}
		}
		if res.status == http.StatusAccepted && len(h.ingest.Calls()) != 1 {
			t.Fatalf("202 without one Ingest call")
		}
	})
}
