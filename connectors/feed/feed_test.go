package feed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/connectortest"
	"github.com/carehub/carehub/connectors/feed"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

type keys map[string]string

func (k keys) Organisation(r *http.Request) (string, error) {
	if o, ok := k[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]; ok {
		return o, nil
	}
	return "", problem.New(problem.Unauthenticated, "an API key is required")
}

type harness struct {
	feed  *feed.MemoryFeed
	sink  *feed.Sink
	url   string
	mu    sync.Mutex
	reads []connector.FeedRead
	deny  map[string]bool // event ids the consent re-check withholds
}

func start(t *testing.T) *harness {
	t.Helper()
	h := &harness{feed: feed.NewMemoryFeed(), deny: map[string]bool{}}
	cfg := feed.DefaultConfig()
	cfg.APIKey = connector.SecretValue("b82005-key")
	env := connector.SinkEnv{Recipient: "B82005", Log: zap.NewNop(), Feed: h.feed,
		Readers: keys{"b82005-key": "B82005", "a81001-key": "A81001"},
		Consent: connector.ConsentFunc(func(_ context.Context, d connector.Delivery) (connector.Verdict, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.deny[d.EventID] {
				return connector.Verdict{Rule: "directive:deny-organisation"}, nil
			}
			return connector.Verdict{Permit: true, Rule: "relationship-confirmed", Body: d.Body}, nil
		}),
		Audit: connector.ReadAuditFunc(func(_ context.Context, r connector.FeedRead) error {
			h.mu.Lock()
			h.reads = append(h.reads, r)
			h.mu.Unlock()
			return nil
		}),
	}
	s, err := feed.New(*cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	h.sink = s
	mux := http.NewServeMux()
	if err := s.RegisterHTTP(mux); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { h.feed.Close(); srv.Close() })
	h.url = srv.URL
	return h
}

func (h *harness) deliver(t *testing.T, id string) {
	t.Helper()
	if _, err := h.sink.Deliver(context.Background(), connector.Delivery{EventID: id, EventType: "org.carehub.discharge.v1",
		Recipient: "B82005", PatientRef: "p1_x", Body: connectortest.Body(id)}); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, url, key, accept string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type page struct {
	Events []struct {
		Number   int64
		Withheld bool
		Event    struct{ ID string }
	}
	Latest, Oldest int64
}

func TestReadsByNumberOwnFeedOnly(t *testing.T) {
	h := start(t)
	for _, id := range []string{"e1", "e2", "e3"} {
		h.deliver(t, id)
	}
	h.deliver(t, "e2") // a redelivery: nothing new
	tests := []struct {
		name, url, key string
		status         int
		numbers        []int64
	}{
		{"everything", "/v1/feeds/B82005", "b82005-key", 200, []int64{1, 2, 3}},
		{"after 1, limit 1", "/v1/feeds/B82005?after=1&limit=1", "b82005-key", 200, []int64{2}},
		{"nothing new", "/v1/feeds/B82005?after=3", "b82005-key", 200, nil},
		{"another recipient's key", "/v1/feeds/B82005", "a81001-key", 403, nil},
		{"another recipient's feed", "/v1/feeds/A81001", "b82005-key", 403, nil},
		{"no key", "/v1/feeds/B82005", "", 401, nil},
		{"bad after", "/v1/feeds/B82005?after=x", "b82005-key", 422, nil},
		{"wait too long", "/v1/feeds/B82005?wait=2h", "b82005-key", 422, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := get(t, h.url+tc.url, tc.key, "")
			if resp.StatusCode != tc.status {
				t.Fatalf("status: got %d, want %d (%s)", resp.StatusCode, tc.status, b)
			}
			if tc.status != 200 {
				return
			}
			var p page
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, e := range p.Events {
				got = append(got, e.Number)
			}
			if !equal(got, tc.numbers) || p.Latest != 3 || p.Oldest != 1 {
				t.Errorf("numbers %v latest %d oldest %d; want %v, 3, 1", got, p.Latest, p.Oldest, tc.numbers)
			}
		})
	}
	resp, b := get(t, h.url+"/v1/feeds/B82005/status", "b82005-key", "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"latest":3`) || !strings.Contains(string(b), `"oldest":1`) {
		t.Errorf("status: %d %s", resp.StatusCode, b)
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLongPollAnswersWhenAnEventArrives: a reader waiting 30 s is
// answered by the append, not by the end of its wait.
func TestLongPollAnswersWhenAnEventArrives(t *testing.T) {
	h := start(t)
	done := make(chan page, 1)
	go func() {
		_, b := get(t, h.url+"/v1/feeds/B82005?after=0&wait=30s", "b82005-key", "")
		var p page
		_ = json.Unmarshal(b, &p)
		done <- p
	}()
	select {
	case p := <-done:
		t.Fatalf("answered before any event: %+v", p)
	case <-time.After(200 * time.Millisecond):
	}
	h.deliver(t, "late-1")
	select {
	case p := <-done:
		if len(p.Events) != 1 || p.Events[0].Number != 1 || p.Events[0].Event.ID != "late-1" {
			t.Errorf("got %+v, want event 1", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll was not answered when the event arrived")
	}
}

// TestWithheldKeepsTheNumber: an event consent now withholds is served as
// its number alone, and the read is audited with what was withheld.
func TestWithheldKeepsTheNumber(t *testing.T) {
	h := start(t)
	h.deliver(t, "keep")
	h.deliver(t, "withhold")
	h.deny["withhold"] = true
	_, b := get(t, h.url+"/v1/feeds/B82005", "b82005-key", "")
	if strings.Contains(string(b), connectortest.Canary) && strings.Count(string(b), connectortest.Canary) != 1 {
		t.Errorf("the withheld event's data was served")
	}
	var p page
	_ = json.Unmarshal(b, &p)
	if len(p.Events) != 2 || p.Events[1].Number != 2 || !p.Events[1].Withheld || p.Events[1].Event.ID != "" {
		t.Fatalf("got %s", b)
	}
	if len(h.reads) != 1 || len(h.reads[0].Entries) != 2 || h.reads[0].Recipient != "B82005" || !h.reads[0].Entries[1].Withheld {
		t.Errorf("audit: got %+v", h.reads)
	}
}

// TestFHIRNotificationBundle: Accept application/fhir+json gives the
// Subscriptions Backport IG's notification bundle.
func TestFHIRNotificationBundle(t *testing.T) {
	h := start(t)
	h.deliver(t, "f1")
	resp, b := get(t, h.url+"/v1/feeds/B82005", "b82005-key", "application/fhir+json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/fhir+json" {
		t.Fatalf("got %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var bundle struct {
		ResourceType, Type string
		Entry              []struct {
			Resource struct {
				ResourceType string
				Parameter    []struct {
					Name        string
					ValueString string
					Part        []struct{ Name, ValueString string }
				}
			}
		}
	}
	if err := json.Unmarshal(b, &bundle); err != nil {
		t.Fatal(err)
	}
	if bundle.ResourceType != "Bundle" || bundle.Type != "history" || len(bundle.Entry) < 2 || bundle.Entry[0].Resource.ResourceType != "Parameters" {
		t.Fatalf("not a notification bundle: %.300s", b)
	}
	var since, number string
	for _, p := range bundle.Entry[0].Resource.Parameter {
		if p.Name == "events-since-subscription-start" {
			since = p.ValueString
		}
		if p.Name == "notification-event" && len(p.Part) > 0 {
			number = p.Part[0].ValueString
		}
	}
	if since != "1" || number != "1" {
		t.Errorf("events-since-subscription-start %q, event-number %q; want 1, 1", since, number)
	}
	resp, b = get(t, h.url+"/v1/feeds/A81001", "b82005-key", "application/fhir+json")
	if resp.StatusCode != 403 || !strings.Contains(string(b), "OperationOutcome") {
		t.Errorf("another feed, asked in FHIR: %d %s", resp.StatusCode, b)
	}
}

// TestStreamResumesFromLastEventID: an SSE client that says it has seen 1
// gets 2 and 3, with the numbers as event ids.
func TestStreamResumesFromLastEventID(t *testing.T) {
	h := start(t)
	for _, id := range []string{"s1", "s2"} {
		h.deliver(t, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url+"/v1/feeds/B82005", nil)
	req.Header.Set("Authorization", "Bearer b82005-key")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var ids []string
	h.deliver(t, "s3") // during the stream: it is sent whether the stream has started waiting or not
	for sc.Scan() && len(ids) < 2 {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			ids = append(ids, id)
		}
	}
	if strings.Join(ids, ",") != "2,3" {
		t.Errorf("ids: got %v, want 2,3", ids)
	}
}

// TestReadsBeforeOldestAreGone: once retention has removed numbers, a read
// from before the oldest kept is answered 410 Gone with a problem document
// (an OperationOutcome to a FHIR reader; no stream to an SSE reader), never
// with the later entries as if nothing were missing; the status says where
// the feed now starts, and a read from there goes on.
func TestReadsBeforeOldestAreGone(t *testing.T) {
	h := start(t)
	for _, id := range []string{"g1", "g2", "g3", "g4"} {
		h.deliver(t, id)
	}
	h.feed.Trim(2)
	for _, tc := range []struct {
		name, url, accept string
		hdr               []string
		status            int
		contentType, body string
	}{
		{"json from the start", "/v1/feeds/B82005", "", nil, 410, "application/problem+json", `"status":410`},
		{"json after 1", "/v1/feeds/B82005?after=1", "", nil, 410, "application/problem+json", `oldest available is 3`},
		{"fhir", "/v1/feeds/B82005?after=0", "application/fhir+json", nil, 410, "application/fhir+json", `"resourceType":"OperationOutcome"`},
		{"sse", "/v1/feeds/B82005", "text/event-stream", []string{"Last-Event-ID", "1"}, 410, "application/problem+json", `"status":410`},
		{"json after 2", "/v1/feeds/B82005?after=2", "", nil, 200, "application/json", `"events":[{"number":3`},
		{"status", "/v1/feeds/B82005/status", "", nil, 200, "application/json", `"oldest":3`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := get(t, h.url+tc.url, "b82005-key", tc.accept, tc.hdr...)
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != tc.contentType || !strings.Contains(string(b), tc.body) {
				t.Errorf("got %d %s %s\n\twant %d %s containing %s", resp.StatusCode, resp.Header.Get("Content-Type"), b, tc.status, tc.contentType, tc.body)
			}
			if tc.status == 410 && (strings.Contains(string(b), `"number"`) || strings.Contains(string(b), "g3")) {
				t.Errorf("a Gone answer served entries: %s", b)
			}
		})
	}
}

// TestReadsAcknowledge: a read after N (or a stream resumed with
// Last-Event-ID N) acknowledges 1..N to the feed, which retention relies
// on; a read from the start acknowledges nothing, and a read from further
// back does not move it back.
func TestReadsAcknowledge(t *testing.T) {
	h := start(t)
	for _, id := range []string{"a1", "a2", "a3", "a4"} {
		h.deliver(t, id)
	}
	for _, tc := range []struct {
		url  string
		hdr  []string
		want int64
	}{
		{"/v1/feeds/B82005", nil, 0},
		{"/v1/feeds/B82005?after=2", nil, 2},
		{"/v1/feeds/B82005?after=1", nil, 2},
		{"/v1/feeds/B82005/status", nil, 2},
		{"/v1/feeds/B82005?after=x", nil, 2},
	} {
		get(t, h.url+tc.url, "b82005-key", "", tc.hdr...)
		if got := h.feed.Acknowledged(); got != tc.want {
			t.Errorf("after GET %s: acknowledged %d, want %d", tc.url, got, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url+"/v1/feeds/B82005", nil)
	req.Header.Set("Authorization", "Bearer b82005-key")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got := h.feed.Acknowledged(); got != 3 {
		t.Errorf("after a stream resumed from 3: acknowledged %d, want 3", got)
	}
}

// TestSameIDFromTwoSourcesIsTwoEntries: two publishers' events with one id
// are two entries, each read audited with its own publisher, so the
// disclosures keep them apart (regression: the feed-read audit record had
// no publisher).
func TestSameIDFromTwoSourcesIsTwoEntries(t *testing.T) {
	h := start(t)
	for _, src := range []string{"VM123", "RX1", "VM123"} {
		if _, err := h.sink.Deliver(context.Background(), connector.Delivery{EventID: "0001", EventSource: src, EventType: "org.carehub.careplan.v1",
			Recipient: "B82005", PatientRef: "p1_x", Body: connectortest.Body("0001")}); err != nil {
			t.Fatal(err)
		}
	}
	resp, b := get(t, h.url+"/v1/feeds/B82005", "b82005-key", "")
	var p page
	if err := json.Unmarshal(b, &p); err != nil || resp.StatusCode != 200 || len(p.Events) != 2 {
		t.Fatalf("got %d %s, want two entries", resp.StatusCode, b)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reads) != 1 {
		t.Fatalf("audited reads: %d, want 1", len(h.reads))
	}
	var got []string
	for _, e := range h.reads[0].Entries {
		got = append(got, fmt.Sprintf("%d %s %s", e.Number, e.Publisher, e.EventID))
	}
	if want := []string{"1 VM123 0001", "2 RX1 0001"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audited entries:\n\tgot  %q\n\twant %q", got, want)
	}
}
