package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// feedRecipient is the example deployment's pull recipient: GP practice
// B82005 reading its feed with its own key.
const feedRecipient = `  - ods: B82005
    role: gp-practice
    feed: {apiKey: {value: demo-b82005-key}, maxWait: 60s, heartbeat: 1s}
    subscriptions:
      - {id: b82005-registered-patients, basis: registered-gp, types: [admission, discharge]}
`

type feedEntry struct {
	Number   int64           `json:"number"`
	Withheld bool            `json:"withheld"`
	Event    json.RawMessage `json:"event"`
}

type feedPage struct {
	Events []feedEntry `json:"events"`
	Latest int64       `json:"latest"`
	Oldest int64       `json:"oldest"`
}

func (e feedEntry) id() string {
	var ce struct{ ID string }
	_ = json.Unmarshal(e.Event, &ce)
	return ce.ID
}

// readFeed GETs a feed page and returns the status and body.
func (h *hub) readFeed(t *testing.T, path, key, accept string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+h.HTTP+path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// feedClient reads a feed the way a GP system would: from the number it
// has seen, long-polling, keeping what it got.
type feedClient struct {
	t     *testing.T
	after int64
	got   []feedEntry
}

func (c *feedClient) poll(h *hub, wait string) int {
	c.t.Helper()
	status, b := h.readFeed(c.t, fmt.Sprintf("/v1/feeds/B82005?after=%d&wait=%s", c.after, wait), "demo-b82005-key", "")
	if status != http.StatusOK {
		c.t.Fatalf("feed read: %d %s", status, b)
	}
	var p feedPage
	if err := json.Unmarshal(b, &p); err != nil {
		c.t.Fatal(err)
	}
	for _, e := range p.Events {
		if e.Number != c.after+1 {
			c.t.Fatalf("after %d the feed gave number %d: a gap or a repeat", c.after, e.Number)
		}
		c.after = e.Number
		c.got = append(c.got, e)
	}
	return len(p.Events)
}

func (c *feedClient) ids() map[string]int {
	m := map[string]int{}
	for _, e := range c.got {
		m[e.id()]++
	}
	return m
}

// TestFeedSurvivesAKilledHub: a client reads, stops, the hub is SIGKILLed
// mid-delivery and restarted, and the client resumes from its number,
// missing nothing and receiving nothing twice.
func TestFeedSurvivesAKilledHub(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: feedRecipient})
	c := &feedClient{t: t}
	var published []string
	publish := func(n int) {
		for i := 0; i < n; i++ {
			ev := patientEvent(t, "admission", nhsNumber(12000+len(published)), "B82005", "")
			h.mustPublish("demo-rx1-key", ev)
			published = append(published, ev["id"].(string))
		}
	}
	publish(3)
	waitFor(t, "the first three events in the feed", 30*time.Second, func() bool { c.poll(h, "2s"); return len(c.got) >= 3 })

	// The client stops at 3. More arrive; the hub is killed while they
	// are being routed and appended.
	publish(4)
	h.kill()
	h.start()
	publish(2)
	waitFor(t, "every event in the feed after the restart", 60*time.Second, func() bool {
		c.poll(h, "2s")
		return len(c.ids()) >= len(published)
	})
	ids := c.ids()
	for _, id := range published {
		if ids[id] != 1 {
			t.Errorf("event %s was received %d times, want once", id, ids[id])
		}
	}
	if len(c.got) != len(published) {
		t.Errorf("the client received %d entries for %d events", len(c.got), len(published))
	}
	status, b := h.readFeed(t, "/v1/feeds/B82005/status", "demo-b82005-key", "")
	if status != 200 || !strings.Contains(string(b), fmt.Sprintf(`"latest":%d`, len(published))) || !strings.Contains(string(b), `"oldest":1`) {
		t.Errorf("status: %d %s", status, b)
	}
	// Reads are audited: who read which numbers.
	waitFor(t, "feed-read audit records", 20*time.Second, func() bool {
		n := 0
		for _, m := range h.records("carehub.audit") {
			if bytes.Contains(m.Value, []byte(`"kind":"feed-read"`)) && bytes.Contains(m.Value, []byte(`"recipient":"B82005"`)) {
				n++
			}
		}
		return n >= len(published)
	})
}

// TestFeedLongPollAnsweredWhenRouted: a long-poll waiting 60 s is answered
// as soon as an event is routed to the feed, not when its wait ends (the
// time from the routing to the answer is logged); another recipient's feed
// is refused.
func TestFeedLongPollAnsweredWhenRouted(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: feedRecipient})

	for _, tc := range []struct {
		path, key string
		status    int
	}{
		{"/v1/feeds/A81001", "demo-b82005-key", 403},
		{"/v1/feeds/B82005", "demo-rx1-key", 401}, // a publishing key reads no feed
		{"/v1/feeds/B82005", "", 401},
		{"/v1/feeds/B82005/status", "demo-admin-key", 401},
	} {
		if status, b := h.readFeed(t, tc.path, tc.key, ""); status != tc.status {
			t.Errorf("GET %s with %q: got %d %s, want %d", tc.path, tc.key, status, b, tc.status)
		}
	}

	type answer struct {
		page feedPage
		at   time.Time // when the answer was read
	}
	done := make(chan answer, 1)
	go func() {
		_, b := h.readFeed(t, "/v1/feeds/B82005?after=0&wait=60s", "demo-b82005-key", "")
		at := time.Now()
		var p feedPage
		_ = json.Unmarshal(b, &p)
		done <- answer{p, at}
	}()
	ev := patientEvent(t, "discharge", nhsNumber(13001), "B82005", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	var a answer
	select {
	case a = <-done:
		if len(a.page.Events) != 1 || a.page.Events[0].id() != ev["id"] || a.page.Events[0].Number != 1 {
			t.Errorf("the long-poll answered %+v, want the discharge as number 1", a.page)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("the long-poll was not answered when the event was routed")
	}
	// How long after the event's routing the long-poll was answered (issue
	// 12: "within 100 ms of an event's routing"), from the router's decision
	// record for B82005 (the routing) and from the feed record's timestamp
	// (the append). The hub runs on this machine, so the clocks are one.
	// Logged, not asserted: speed is measured by benchmarks (carehub bench,
	// BenchmarkFeedRead's wake-up times), never by timed assertions.
	var routed time.Time
	waitFor(t, "the decision record of the discharge for B82005", 30*time.Second, func() bool {
		for _, m := range h.records("carehub.audit") {
			var r struct {
				Time                     time.Time
				Kind, EventID, Recipient string
			}
			if json.Unmarshal(m.Value, &r) == nil && r.Kind == "decision" && r.EventID == ev["id"] && r.Recipient == "B82005" {
				routed = r.Time
				return true
			}
		}
		return false
	})
	feed := h.records("carehub.feed.b82005")
	if len(feed) == 0 {
		t.Fatal("the feed's topic holds no record")
	}
	t.Logf("long-poll answered %v after the event's routing (decision record: outbox, delivery, append, wake, answer), %v after its append to the feed",
		a.at.Sub(routed), a.at.Sub(feed[0].Time))

	// The same read as a FHIR notification bundle passes a real validator.
	status, b := h.readFeed(t, "/v1/feeds/B82005?after=0", "demo-b82005-key", "application/fhir+json")
	if status != 200 || !bytes.Contains(b, []byte(`"type":"history"`)) {
		t.Fatalf("FHIR read: %d %.300s", status, b)
	}
	validateFHIR(t, map[string][]byte{"feed-notification.json": b})
}

// validateFHIR checks resources with @medplum/core's validateResource.
func validateFHIR(t *testing.T, docs map[string][]byte) {
	t.Helper()
	requireFHIRPeers(t)
	dir := t.TempDir()
	args := []string{filepath.Join("peers", "fhir.js"), "validate"}
	for name, b := range docs {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	out, err := execCommand("node", args...)
	if err != nil {
		t.Errorf("validateResource refused what carehub emits:\n%s", out)
	}
}

// feedReadRecord is a feed-read audit record.
type feedReadRecord struct {
	Kind, EventID, Publisher, Recipient, Outcome, Rule, Via string
	Number                                                  int64
}

// feedReads returns the feed-read audit records of recipient.
func (h *hub) feedReads(recipient string) []feedReadRecord {
	var out []feedReadRecord
	for _, m := range h.records("carehub.audit") {
		var r feedReadRecord
		if json.Unmarshal(m.Value, &r) == nil && r.Kind == "feed-read" && r.Recipient == recipient {
			out = append(out, r)
		}
	}
	return out
}

// feedLatest returns the feed's latest number from its status.
func (h *hub) feedLatest(t *testing.T) int64 {
	t.Helper()
	status, b := h.readFeed(t, "/v1/feeds/B82005/status", "demo-b82005-key", "")
	var s struct{ Latest int64 }
	if status != 200 || json.Unmarshal(b, &s) != nil {
		return -1
	}
	return s.Latest
}

// TestFeedStreamThroughTheHub: an SSE client of the running binary that
// says it has seen 1 (Last-Event-ID) gets 2, 3, ... as they are routed,
// with the numbers as ids, and keep-alive comments while nothing arrives.
func TestFeedStreamThroughTheHub(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL,
		recipientsYAML: strings.Replace(feedRecipient, "heartbeat: 1s", "heartbeat: 200ms", 1)})
	var ids []string
	publish := func() {
		ev := patientEvent(t, "admission", nhsNumber(14000+len(ids)), "B82005", "")
		h.mustPublish("demo-rx1-key", ev)
		ids = append(ids, ev["id"].(string))
	}
	publish()
	waitFor(t, "the first event in the feed", 30*time.Second, func() bool { return h.feedLatest(t) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+h.HTTP+"/v1/feeds/B82005", nil)
	req.Header.Set("Authorization", "Bearer demo-b82005-key")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	publish()
	publish()
	type sse struct{ id, data string }
	var got []sse
	heartbeats := 0
	sc := bufio.NewScanner(resp.Body)
	var cur sse
	for (len(got) < 2 || heartbeats == 0) && sc.Scan() {
		line := sc.Text()
		switch {
		case line == ": heartbeat":
			heartbeats++
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		case line == "" && cur.id != "":
			got = append(got, cur)
			cur = sse{}
		}
	}
	if err := sc.Err(); err != nil && len(got) < 2 {
		t.Fatalf("reading the stream: %v (got %+v)", err, got)
	}
	if len(got) != 2 || got[0].id != "2" || got[1].id != "3" {
		t.Fatalf("stream ids: got %+v, want 2 then 3", got)
	}
	for i, e := range got {
		var entry feedEntry
		if err := json.Unmarshal([]byte(e.data), &entry); err != nil || entry.id() != ids[i+1] {
			t.Errorf("stream event %s: got %s, want the event %s", e.id, e.data, ids[i+1])
		}
	}
	if heartbeats == 0 {
		t.Error("no heartbeat comment on an idle stream")
	}
	waitFor(t, "the streamed reads audited", 20*time.Second, func() bool {
		n := 0
		for _, r := range h.feedReads("B82005") {
			if r.Via == "sse" && (r.Number == 2 || r.Number == 3) {
				n++
			}
		}
		return n == 2
	})
}

// TestFeedRechecksConsentAtRead: an event already in B82005's feed, whose
// patient then records a deny-organisation B82005 directive, is served as
// withheld (its number, no data), and the read is audited as withheld.
func TestFeedRechecksConsentAtRead(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: feedRecipient})
	patient := nhsNumber(15001)
	ev := patientEvent(t, "admission", patient, "B82005", "")
	h.mustPublish("demo-rx1-key", ev)
	waitFor(t, "the event in the feed", 30*time.Second, func() bool { return h.feedLatest(t) == 1 })

	h.putConsent(patient, map[string]any{"id": "no-b82005", "kind": "deny-organisation", "organisation": "B82005"})
	status, b := h.readFeed(t, "/v1/feeds/B82005?after=0", "demo-b82005-key", "")
	var p feedPage
	if err := json.Unmarshal(b, &p); err != nil || status != 200 {
		t.Fatalf("feed read: %d %s", status, b)
	}
	if len(p.Events) != 1 || p.Events[0].Number != 1 || !p.Events[0].Withheld || len(p.Events[0].Event) != 0 {
		t.Fatalf("feed read after the directive: got %s, want number 1 withheld with no event", b)
	}
	if bytes.Contains(b, []byte(patient)) || bytes.Contains(b, []byte(ev["id"].(string))) {
		t.Errorf("the withheld entry carries the event: %s", b)
	}
	var rec feedReadRecord
	waitFor(t, "the withheld read audited", 20*time.Second, func() bool {
		for _, r := range h.feedReads("B82005") {
			if r.Number == 1 {
				rec = r
				return true
			}
		}
		return false
	})
	if rec.Outcome != "withheld" || rec.EventID != ev["id"] || rec.Publisher != "RX1" || !strings.Contains(rec.Rule, "deny-organisation") {
		t.Errorf("feed-read audit record: got %+v, want outcome withheld, event %s from RX1, a deny-organisation rule", rec, ev["id"])
	}
}

// TestFeedRetentionThroughTheHub: the running hub's sweep removes the
// entries a client acknowledged (read after 2) once the window has passed,
// keeps the one it did not, and a read from before the new start is 410
// Gone with a problem document.
func TestFeedRetentionThroughTheHub(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: feedRecipient,
		extraYAML: "retention: {outboxWindow: 1ms, sweepInterval: 100ms}\n"})
	for i := range 3 {
		h.mustPublish("demo-rx1-key", patientEvent(t, "admission", nhsNumber(16000+i), "B82005", ""))
	}
	waitFor(t, "three events in the feed", 30*time.Second, func() bool { return h.feedLatest(t) == 3 })
	if status, b := h.readFeed(t, "/v1/feeds/B82005?after=2", "demo-b82005-key", ""); status != 200 {
		t.Fatalf("read after 2: %d %s", status, b)
	}
	oldest := func() int64 {
		_, b := h.readFeed(t, "/v1/feeds/B82005/status", "demo-b82005-key", "")
		var s struct{ Latest, Oldest int64 }
		_ = json.Unmarshal(b, &s)
		return s.Oldest
	}
	waitFor(t, "the acknowledged entries removed", 30*time.Second, func() bool { return oldest() == 3 })
	status, b := h.readFeed(t, "/v1/feeds/B82005?after=0", "demo-b82005-key", "")
	if status != http.StatusGone || !bytes.Contains(b, []byte(`"status":410`)) || bytes.Contains(b, []byte(`"number"`)) {
		t.Errorf("read from before the oldest: %d %s, want 410 with a problem document", status, b)
	}
	status, b = h.readFeed(t, "/v1/feeds/B82005?after=2", "demo-b82005-key", "")
	var p feedPage
	if err := json.Unmarshal(b, &p); err != nil || status != 200 || len(p.Events) != 1 || p.Events[0].Number != 3 || p.Oldest != 3 {
		t.Errorf("read after 2: %d %s, want the unacknowledged number 3, oldest 3", status, b)
	}
}
