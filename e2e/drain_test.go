package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
)

// TestStopMidDeliveryDeliversOnce pins a duplicate POST: the hub's drain
// cancelled a webhook POST the recipient had already read; the copy was not
// committed and was POSTed again after the restart (the same webhook-id
// twice; TestRetriedPostPublishesOnce failed about 1 run in 4). Here the
// recipient holds the POST until the drain has reached the deliverer, then
// accepts it: the hub waits for the answer, audits the delivery and
// commits it, and after a restart nothing is sent again.
func TestStopMidDeliveryDeliversOnce(t *testing.T) {
	gpKey, err := webhook.DecodeSecret(gpSecret)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		requests []string // webhook-id of each POST, as it arrives
	)
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(gpKey, r.Header, body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("a delivery failed verification: %v", err)
		}
		mu.Lock()
		requests = append(requests, r.Header.Get(webhook.HeaderID))
		first := len(requests) == 1
		mu.Unlock()
		arrived <- struct{}{}
		if first {
			select {
			case <-release:
			case <-r.Context().Done():
				return // the hub cut the request short
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	home := newReceiver(t, careHomeSecret)
	h := startHub(t, hubOptions{gp: "http://" + ln.Addr().String() + "/events", careHome: home.URL, webhookTimeout: "20s"})

	ev := patientEvent(t, "admission", nhsNumber(9401), "A81001", "")
	h.mustPublish("demo-rx1-key", ev)
	select {
	case <-arrived:
	case <-time.After(60 * time.Second):
		t.Fatal("the GP got no POST")
	}

	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	waitFor(t, "the drain to reach the delivery in flight", 30*time.Second, func() bool {
		return strings.Contains(h.logs.String(), "letting the delivery attempt under way finish")
	})
	close(release) // the recipient answers 204 to the POST it holds
	select {
	case <-stopped:
	case <-time.After(60 * time.Second):
		t.Fatal("the hub did not stop")
	}

	h.start()
	waitFor(t, "the router and deliverers to catch up", 60*time.Second, h.routerCaughtUp)
	mu.Lock()
	got := append([]string(nil), requests...)
	mu.Unlock()
	if len(got) != 1 {
		t.Errorf("the GP got %d POSTs (%v), want 1: a POST the recipient answered during the drain was sent again", len(got), got)
	}
	var outcomes []string
	for _, m := range h.records("carehub.audit") {
		var r struct{ Kind, EventID, Recipient, Outcome string }
		_ = json.Unmarshal(m.Value, &r)
		if r.Kind == "delivery" && r.EventID == ev["id"] && r.Recipient == "A81001" {
			outcomes = append(outcomes, r.Outcome)
		}
	}
	if strings.Join(outcomes, ",") != "sending,delivered" {
		t.Errorf("the GP's delivery records: got %v, want [sending delivered]", outcomes)
	}
}
