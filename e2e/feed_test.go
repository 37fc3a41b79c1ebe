package e2e

import (
	"bytes"
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
// as soon as an event is routed to the feed, not when its wait ends; another
// recipient's feed is refused.
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
		page    feedPage
		elapsed time.Duration
	}
	done := make(chan answer, 1)
	start := time.Now()
	go func() {
		_, b := h.readFeed(t, "/v1/feeds/B82005?after=0&wait=60s", "demo-b82005-key", "")
		var p feedPage
		_ = json.Unmarshal(b, &p)
		done <- answer{p, time.Since(start)}
	}()
	ev := patientEvent(t, "discharge", nhsNumber(13001), "B82005", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	select {
	case a := <-done:
		if len(a.page.Events) != 1 || a.page.Events[0].id() != ev["id"] || a.page.Events[0].Number != 1 {
			t.Errorf("the long-poll answered %+v, want the discharge as number 1", a.page)
		}
		t.Logf("long-poll answered %v after it started (publish, route, append, wake)", a.elapsed)
	case <-time.After(45 * time.Second):
		t.Fatal("the long-poll was not answered when the event was routed")
	}

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
