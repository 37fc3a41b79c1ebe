package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestAnEventAnswered503IsNeverDelivered pins issue 14's in-doubt bug with
// the real binary: the broker stalled while the hub produced an event, the
// sender got 503 at kafka.publishTimeout, the broker then wrote the event
// after all, and the router delivered it to the GP, though its sender had
// been told it was not accepted and would resend it. Now that copy is
// never routed (the audit says so: received, flag not-acknowledged, with
// its position), and the sender's resend with the same id is accepted and
// delivered exactly once.
//
// The hub runs on a broker of the test's own (kfake, over TCP) that stalls
// produce requests to carehub.events on demand, then lets them through.
func TestAnEventAnswered503IsNeverDelivered(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var hang atomic.Bool
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if req, ok := r.(*kmsg.ProduceRequest); ok && hang.Load() {
			for _, tp := range req.Topics {
				if tp.Topic == "carehub.events" {
					c.SleepControl(func() { <-release })
					break
				}
			}
		}
		return nil, nil, false // then processed as normal: a broker that resumes
	})
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, brokers: c.ListenAddrs()[0], kafkaYAML: ", publishTimeout: 1s"})

	ev := patientEvent(t, "admission", nhsNumber(9501), "A81001", "")
	id := ev["id"].(string)
	body, _ := json.Marshal(ev)
	hang.Store(true)
	if status, retryAfter := postEvent(t, h, body); status != http.StatusServiceUnavailable || retryAfter == "" {
		t.Fatalf("publishing with the broker stalled: got %d (Retry-After %q), want 503", status, retryAfter)
	}
	hang.Store(false)
	close(release)
	waitFor(t, "the event answered 503 lands in carehub.events", 30*time.Second, func() bool { return h.endOffsets("carehub.events") == 1 })
	// The router waits for its record until publishTimeout + 30 s after
	// it was accepted, then moves on.
	waitFor(t, "the router past the event answered 503", 120*time.Second, func() bool { return h.groupAtEnd("carehub-router", "carehub.events") })
	var dropped []map[string]any
	for _, m := range h.records("carehub.audit") {
		var rec map[string]any
		if json.Unmarshal(m.Value, &rec) != nil || rec["eventId"] != id {
			continue
		}
		if flags, _ := rec["flags"].([]any); rec["kind"] == "received" && slices.Contains(flags, any("not-acknowledged")) {
			dropped = append(dropped, rec)
		}
		if rec["kind"] == "decision" {
			t.Errorf("the event answered 503 was routed: %s", m.Value)
		}
	}
	if len(dropped) != 1 || dropped[0]["position"] == nil || dropped[0]["position"] == "" {
		t.Errorf("audit records of the event not acknowledged: got %v, want one with its position", dropped)
	}
	if got := h.scrape().get("carehub_events_not_acknowledged_total"); got != 1 {
		t.Errorf("carehub_events_not_acknowledged_total = %v, want 1", got)
	}

	if status, _ := postEvent(t, h, body); status != http.StatusAccepted {
		t.Fatalf("the resend with the same id: got %d, want 202", status)
	}
	waitFor(t, "the resend delivered to the GP", 30*time.Second, func() bool { return slices.Contains(gp.ids(), id) })
	waitFor(t, "everything routed and delivered", 30*time.Second, h.routerCaughtUp)
	n := 0
	for _, got := range gp.ids() {
		if got == id {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the GP got the event %d times, want once (the resend)", n)
	}
}
