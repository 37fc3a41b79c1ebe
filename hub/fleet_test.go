package hub

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestTheFleetFollowsTheDirectory: in one process, a recipient created
// through the admin API receives an event at once; paused, it receives
// nothing and its status says so (and /readyz stays ready); resumed, it
// receives what waited; deleted, nothing more; all while /readyz is
// polled (run with -race: the fleet's state is read as reconcile changes
// it).
func TestTheFleetFollowsTheDirectory(t *testing.T) {
	var got sync.Map
	var deliveries atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(string(b), true)
		deliveries.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	cfg := testConfig(t, "", "")
	h := &hub{cfg: cfg, log: zap.NewNop()}
	addr := runReady(t, h)
	call := func(method, path, key, body string, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	stopPolling := make(chan struct{})
	var polls sync.WaitGroup
	polls.Add(1)
	go func() {
		defer polls.Done()
		for {
			select {
			case <-stopPolling:
				return
			default:
			}
			if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() { close(stopPolling); polls.Wait() }()

	raw, err := os.ReadFile("../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	publish := func() {
		t.Helper()
		n++
		ev := strings.Replace(string(raw), `"3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03"`, `"fleet-test-`+string(rune('a'+n))+`"`, 1)
		ev = strings.Replace(ev, `"ods": "VM123"`, `"ods": "VM456"`, 1)
		if status, b := call("POST", "/v1/events", "hub-test-rx1-key", ev, "Content-Type", "application/cloudevents+json"); status != 202 {
			t.Fatalf("publish: %d %s", status, b)
		}
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	const admin = "hub-test-admin-key"
	entry := `{"ods": "VM456", "role": "social-care", "webhook": {"url": "` + rcv.URL + `", "secret": {"value": "whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM="}},
	  "subscriptions": [{"basis": "discharge-destination", "types": ["discharge"]}]}`
	if status, b := call("POST", "/v1/recipients", admin, entry); status != 201 {
		t.Fatalf("create: %d %s", status, b)
	}
	if ok, why := h.fleet.Delivering("VM456"); !ok {
		t.Errorf("after the create answered, this process does not deliver to VM456: %s", why)
	}
	publish()
	wait("the first delivery", func() bool { return deliveries.Load() == 1 })

	if status, b := call("POST", "/v1/recipients/VM456/pause", admin, ""); status != 200 || !strings.Contains(b, `"notDelivering":"paused"`) {
		t.Fatalf("pause: %d %s", status, b)
	}
	if reasons := h.checks.Ready(); len(reasons) > 0 {
		t.Errorf("a paused recipient made the hub not ready: %v", reasons)
	}
	publish()
	wait("the copy waiting in the outbox", func() bool {
		_, b := call("GET", "/v1/recipients/VM456/status", admin, "")
		return strings.Contains(b, `"backlog":{"events":1`)
	})
	if d := deliveries.Load(); d != 1 {
		t.Errorf("a paused recipient received %d deliveries, want 1 (before the pause)", d)
	}
	if status, b := call("POST", "/v1/recipients/VM456/resume", admin, ""); status != 200 {
		t.Fatalf("resume: %d %s", status, b)
	}
	wait("the waiting copy delivered", func() bool { return deliveries.Load() == 2 })

	if status, b := call("DELETE", "/v1/recipients/VM456", admin, "", "If-Match", `"v1"`); status != 204 {
		t.Fatalf("delete: %d %s", status, b)
	}
	if ok, _ := h.fleet.Delivering("VM456"); ok {
		t.Errorf("after the delete answered, this process still delivers to VM456")
	}
	if reasons := h.checks.Ready(); len(reasons) > 0 {
		t.Errorf("not ready after the delete: %v", reasons)
	}
}
