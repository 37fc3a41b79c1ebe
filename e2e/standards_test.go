package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/schemas/event"
)

// The webhook secrets of the harness's GP and care home (hubOptions).
const (
	gpSecret       = "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE="
	careHomeSecret = "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw=="
)

// requireNodePeers skips (or, under CI, fails) unless node and the named npm
// packages are installed in e2e/peers.
func requireNodePeers(t *testing.T, pkgs ...string) {
	t.Helper()
	found := lookPath("node")
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join("peers", "node_modules", p, "package.json")); err != nil {
			found = false
		}
	}
	requirePeer(t, "node and the npm packages "+strings.Join(pkgs, ", ")+" in e2e/peers/node_modules",
		"cd e2e/peers && npm ci", found)
}

// officialDelivery is what e2e/peers/receive.js reports of one delivery.
type officialDelivery struct {
	Verified  bool              `json:"verified"`
	WebhookID string            `json:"webhookId"`
	CEHeaders map[string]string `json:"ceHeaders"`
	Event     *struct {
		ID, Source, Type, SpecVersion string
	} `json:"event"`
	Error string `json:"error"`
}

// officialReceiver is a recipient run by receive.js: the official Standard
// Webhooks verifier and the CloudEvents SDK read every delivery.
type officialReceiver struct {
	URL string
	mu  sync.Mutex
	got []officialDelivery
}

func startOfficialReceiver(t *testing.T, secret string) *officialReceiver {
	t.Helper()
	cmd := exec.Command("node", filepath.Join("peers", "receive.js"), secret)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	r := &officialReceiver{}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "listening ") {
		t.Fatalf("receive.js did not start: %q", sc.Text())
	}
	r.URL = "http://127.0.0.1:" + strings.TrimPrefix(sc.Text(), "listening ") + "/events"
	go func() {
		for sc.Scan() {
			var d officialDelivery
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				d.Error = "receive.js printed " + sc.Text()
			}
			r.mu.Lock()
			r.got = append(r.got, d)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *officialReceiver) deliveries() []officialDelivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]officialDelivery(nil), r.got...)
}

// waitEvents waits until the receiver has had a delivery of each id.
func (r *officialReceiver) waitEvents(t *testing.T, name string, ids ...string) {
	t.Helper()
	waitFor(t, name+" receives "+strings.Join(ids, ", "), 60*time.Second, func() bool {
		got := map[string]bool{}
		for _, d := range r.deliveries() {
			if d.Event != nil {
				got[d.Event.ID] = true
			}
		}
		for _, id := range ids {
			if !got[id] {
				return false
			}
		}
		return true
	})
}

// checkEveryDelivery fails for any delivery the official verifier refused,
// the CloudEvents SDK could not read, or whose headers are not those of its
// event.
func (r *officialReceiver) checkEveryDelivery(t *testing.T, name string) {
	t.Helper()
	for _, d := range r.deliveries() {
		switch {
		case !d.Verified || d.Event == nil || d.Error != "":
			t.Errorf("%s: a delivery the official libraries refused: %+v", name, d)
		case d.Event.SpecVersion != "1.0" || d.CEHeaders["ce-specversion"] != "1.0":
			t.Errorf("%s: delivery of %s: specversion %q, ce-specversion header %q, want 1.0 and 1.0",
				name, d.Event.ID, d.Event.SpecVersion, d.CEHeaders["ce-specversion"])
		case d.WebhookID != event.DeliveryID(d.Event.Source, d.Event.ID):
			t.Errorf("%s: delivery of %s from %s came with webhook-id %s, want %s", name, d.Event.ID, d.Event.Source,
				d.WebhookID, event.DeliveryID(d.Event.Source, d.Event.ID))
		case d.CEHeaders["ce-source"] != event.EncodeHeaderValue(d.Event.Source) || d.CEHeaders["ce-type"] != d.Event.Type ||
			d.CEHeaders["ce-id"] != event.EncodeHeaderValue(d.Event.ID):
			t.Errorf("%s: delivery of %s: ce- headers %v do not match the event", name, d.Event.ID, d.CEHeaders)
		}
	}
}

type sdkAnswer struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// sendWithSDK publishes events with e2e/peers/cloudevents.js (the CNCF
// CloudEvents SDK) in mode binary, structured or batch.
func sendWithSDK(t *testing.T, h *hub, mode, key string, events ...map[string]any) []sdkAnswer {
	t.Helper()
	dir := t.TempDir()
	args := []string{filepath.Join("peers", "cloudevents.js"), mode, "http://" + h.HTTP + "/v1/events", key}
	for i, ev := range events {
		f := filepath.Join(dir, fmt.Sprintf("event%d.json", i))
		b, _ := json.Marshal(ev)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, f)
	}
	out, err := exec.Command("node", args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node cloudevents.js %s: %v\n%s%s", mode, err, out, stderr)
	}
	var answers []sdkAnswer
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var a sdkAnswer
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatalf("cloudevents.js printed %q", line)
		}
		answers = append(answers, a)
	}
	return answers
}

// TestCloudEventsSDKAndStandardWebhooks publishes with the CNCF CloudEvents
// SDK in the structured, binary and batched modes, and receives with the
// official Standard Webhooks verifier and the CloudEvents SDK. Regression:
// binary mode was answered 422 "id, source, type missing".
func TestCloudEventsSDKAndStandardWebhooks(t *testing.T) {
	requireNodePeers(t, "cloudevents", "standardwebhooks")
	gp, home := startOfficialReceiver(t, gpSecret), startOfficialReceiver(t, careHomeSecret)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})

	structured := patientEvent(t, "discharge", nhsNumber(9101), "A81001", "VM123")
	binary := patientEvent(t, "admission", nhsNumber(9102), "A81001", "")
	// An extension with a space and a bare '%': the SDK sends header values
	// as they are, where the binding says to percent-encode.
	binary["carehubtrace"] = "trace 100% synthetic"
	batch := []map[string]any{
		patientEvent(t, "discharge", nhsNumber(9103), "A81001", "VM123"),
		patientEvent(t, "discharge", nhsNumber(9104), "A81001", ""),
	}
	for mode, sent := range map[string][]map[string]any{"structured": {structured}, "binary": {binary}, "batch": batch} {
		answers := sendWithSDK(t, h, mode, "demo-rx1-key", sent...)
		if len(answers) != 1 || answers[0].Status != http.StatusAccepted {
			t.Fatalf("the SDK in %s mode: got %+v, want one 202", mode, answers)
		}
	}
	// The structured event again, in binary mode: the same canonical event,
	// so a duplicate, not published again.
	again := sendWithSDK(t, h, "binary", "demo-rx1-key", structured)
	var dup struct{ Duplicate bool }
	if len(again) != 1 || again[0].Status != http.StatusAccepted || json.Unmarshal(again[0].Body, &dup) != nil || !dup.Duplicate {
		t.Fatalf("the structured event sent again in binary mode: got %+v, want 202 with duplicate: true", again)
	}

	ids := []string{structured["id"].(string), binary["id"].(string), batch[0]["id"].(string), batch[1]["id"].(string)}
	gp.waitEvents(t, "the GP", ids...)
	home.waitEvents(t, "the care home", ids[0], ids[2])
	waitFor(t, "the router and deliverers to catch up", 60*time.Second, h.routerCaughtUp)
	gp.checkEveryDelivery(t, "the GP")
	home.checkEveryDelivery(t, "the care home")
	if n := len(gp.deliveries()); n != 4 {
		t.Errorf("the GP got %d deliveries, want 4 (the event sent twice is published once)", n)
	}
	if n := h.endOffsets("carehub.events"); n != 4 {
		t.Errorf("carehub.events holds %d records, want 4", n)
	}
	// The binary-mode event's extension arrived whole.
	for _, m := range h.records("carehub.events") {
		var ev map[string]any
		_ = json.Unmarshal(m.Value, &ev)
		if ev["id"] == binary["id"] && ev["carehubtrace"] != "trace 100% synthetic" {
			t.Errorf("the binary-mode event's extension: got %v, want %q", ev["carehubtrace"], "trace 100% synthetic")
		}
	}
	// Kafka records carry ce_specversion like the other ce_ attributes, as
	// a librdkafka client reads them.
	requirePeer(t, "kcat", "apt-get install -y kcat", lookPath("kcat"))
	for _, topic := range []string{"carehub.events", "carehub.outbox.a81001"} {
		out, err := exec.Command("kcat", "-b", h.Kafka, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%h\n").Output()
		if err != nil {
			t.Fatalf("kcat -C -t %s: %v\n%s", topic, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		for _, l := range lines {
			if !strings.Contains(l, "ce_specversion=1.0") || !strings.Contains(l, "ce_id=") || !strings.Contains(l, "ce_source=urn:ods:RX1") {
				t.Errorf("a record of %s has headers %q, want ce_specversion=1.0 with ce_id and ce_source", topic, l)
			}
		}
	}
}

// TestRetriedPostPublishesOnce: a publisher that retries after a timeout
// gets its 202 again and nothing is published twice, before and after the
// hub restarts; the same id with other content is 409.
func TestRetriedPostPublishesOnce(t *testing.T) {
	gp, home := newReceiver(t, gpSecret), newReceiver(t, careHomeSecret)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	ev := patientEvent(t, "discharge", nhsNumber(9201), "A81001", "VM123")
	body, _ := json.Marshal(ev)
	pretty, _ := json.MarshalIndent(ev, "", "  ") // the same event, written differently

	post := func(b []byte) (int, map[string]any) {
		status, out := h.publish("demo-rx1-key", "application/cloudevents+json", b)
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		return status, m
	}
	if status, m := post(body); status != http.StatusAccepted || m["duplicate"] == true {
		t.Fatalf("first POST: got %d %v, want 202", status, m)
	}
	if status, m := post(pretty); status != http.StatusAccepted || m["duplicate"] != true || m["id"] != ev["id"] {
		t.Fatalf("the retry: got %d %v, want 202 with duplicate: true", status, m)
	}
	changed := patientEvent(t, "discharge", nhsNumber(9201), "A81001", "VM123")
	changed["id"] = ev["id"]
	changed["time"] = "2025-03-18T15:05:00Z"
	cb, _ := json.Marshal(changed)
	status, m := post(cb)
	if status != http.StatusConflict || m["type"] != "https://carehub.dev/problems/conflict" {
		t.Fatalf("the same id with other content: got %d %v, want a 409 problem", status, m)
	}
	if v, _ := m["violations"].([]any); len(v) != 1 || !strings.Contains(fmt.Sprint(v[0]), "event-id-reused") {
		t.Errorf("the conflict's violations: got %v, want one with rule event-id-reused", m["violations"])
	}

	// The memory is in Kafka: a restarted hub remembers.
	h.stop()
	h.start()
	if status, m := post(body); status != http.StatusAccepted || m["duplicate"] != true {
		t.Fatalf("the retry after a restart: got %d %v, want 202 with duplicate: true", status, m)
	}
	if status, _ := post(cb); status != http.StatusConflict {
		t.Errorf("the other content after a restart: got %d, want 409", status)
	}
	waitFor(t, "the GP's delivery", 60*time.Second, func() bool { return len(gp.deliveries()) > 0 })
	waitFor(t, "the router and deliverers to catch up", 60*time.Second, h.routerCaughtUp)
	if n := h.endOffsets("carehub.events"); n != 1 {
		t.Errorf("carehub.events holds %d records, want 1", n)
	}
	if n := len(gp.deliveries()); n != 1 {
		t.Errorf("the GP got %d deliveries, want 1", n)
	}
}

// TestSameIDFromTwoSourcesIsTwoEvents: a VM123 care plan and an RX1
// admission with the same id are two events: two deliveries with different
// webhook-ids, and two rows in the patient's disclosures, each with its own
// outcome; and two entries of a pull recipient's feed, each read audited
// with its publisher. Regressions: webhook-id was the id alone, and the
// disclosure report put one event's delivery on the other's row; the feed
// de-duplicated on the id alone, so the pull recipient got one of the two.
func TestSameIDFromTwoSourcesIsTwoEvents(t *testing.T) {
	requireNodePeers(t, "standardwebhooks", "cloudevents")
	gp, home := startOfficialReceiver(t, gpSecret), startOfficialReceiver(t, careHomeSecret)
	patient := nhsNumber(9301)
	list := filepath.Join(t.TempDir(), "b82005-list.txt")
	if err := os.WriteFile(list, []byte(patient+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: B82005
    role: gp-practice
    feed: {apiKey: {value: demo-b82005-key}}
    subscriptions:
      - {id: b82005-list, basis: patient-list, patientList: %q, types: [admission, careplan]}
`, list)})
	id := newID("shared")
	adm := patientEvent(t, "admission", patient, "A81001", "")
	adm["id"] = id
	cp := patientEvent(t, "careplan", patient, "A81001", "")
	cp["id"] = id
	h.mustPublish("demo-rx1-key", adm)
	h.mustPublish("demo-vm123-key", cp)

	waitFor(t, "two deliveries to the GP", 60*time.Second, func() bool { return len(gp.deliveries()) >= 2 })
	gp.checkEveryDelivery(t, "the GP")
	got := gp.deliveries()
	if len(got) != 2 || got[0].WebhookID == got[1].WebhookID {
		t.Fatalf("the GP's deliveries: got %+v, want two with different webhook-ids", got)
	}

	type row struct{ Publisher, EventID, EventType, Recipient, Decision, Outcome string }
	var rows []row
	reported := func() bool {
		req, _ := http.NewRequest("GET", "http://"+h.HTTP+"/v1/patients/"+patient+"/disclosures", nil)
		req.Header.Set("Authorization", "Bearer demo-admin-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var rep struct{ Disclosures []row }
		if json.Unmarshal(b, &rep) != nil {
			return false
		}
		rows = rep.Disclosures
		delivered := 0
		for _, r := range rows {
			if r.Outcome == "delivered" && r.Recipient == "A81001" {
				delivered++
			}
		}
		return delivered == 2
	}
	for deadline := time.Now().Add(60 * time.Second); !reported(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for both deliveries in the disclosure report; it holds %+v", rows)
		}
	}
	want := map[row]bool{
		{"RX1", id, event.TypeAdmission, "A81001", "permit", "delivered"}:  true,
		{"VM123", id, event.TypeCarePlan, "A81001", "permit", "delivered"}: true,
	}
	for _, r := range rows {
		if r.Recipient == "A81001" && !want[r] {
			t.Errorf("disclosure row %+v, want one of %v", r, want)
		}
		delete(want, r)
	}
	if len(want) > 0 {
		t.Errorf("disclosure rows missing: %v (got %+v)", want, rows)
	}

	// The pull recipient reads both, each with its own source.
	c := &feedClient{t: t}
	waitFor(t, "both events in B82005's feed", 60*time.Second, func() bool { c.poll(h, "1s"); return len(c.got) >= 2 })
	if len(c.got) != 2 {
		t.Fatalf("B82005's feed: got %d entries, want 2", len(c.got))
	}
	sources := map[string]bool{}
	for _, e := range c.got {
		var ce struct{ ID, Source string }
		if err := json.Unmarshal(e.Event, &ce); err != nil || ce.ID != id {
			t.Errorf("feed entry %d: %s, want the event %s", e.Number, e.Event, id)
		}
		sources[ce.Source] = true
	}
	if !sources["urn:ods:RX1"] || !sources["urn:ods:VM123"] {
		t.Errorf("feed entries' sources: got %v, want urn:ods:RX1 and urn:ods:VM123", sources)
	}
	var reads map[string]int64
	waitFor(t, "both reads audited", 20*time.Second, func() bool {
		reads = map[string]int64{}
		for _, r := range h.feedReads("B82005") {
			if r.EventID == id {
				reads[r.Publisher] = r.Number
			}
		}
		return len(reads) == 2
	})
	if reads["RX1"] == 0 || reads["VM123"] == 0 || reads["RX1"] == reads["VM123"] {
		t.Errorf("feed-read audit records by publisher: got %v, want RX1 and VM123 at two numbers", reads)
	}
}

// TestSecretTheLibrariesCannotLoadIsRefusedAtStart: every webhook secret
// carehub accepts, the official Standard Webhooks library loads; one it
// cannot load stops carehub serve before the broker starts, with a message
// that says how to make one.
func TestSecretTheLibrariesCannotLoadIsRefusedAtStart(t *testing.T) {
	requireNodePeers(t, "standardwebhooks")
	secrets := []string{
		gpSecret, careHomeSecret,
		"demo-gp-secret", // the old demo form
		"whsec_!!!not-base64!!!",
		"whsec_-_-_Y29uZm9ybWFuY2Utc3VpdGUtc2Vj", // URL-safe alphabet
		"whsec_c2VjcmV0LWtleQ==",                 // 10 bytes: loads, but below the specification's 24
		"Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=",
	}
	out, err := exec.Command("node", append([]string{filepath.Join("peers", "receive.js"), "--secret-check"}, secrets...)...).Output()
	if err != nil {
		t.Fatalf("receive.js --secret-check: %v", err)
	}
	loads := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r struct {
			Secret string
			Loads  bool
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		loads[r.Secret] = r.Loads
	}
	for _, s := range secrets {
		_, err := webhook.DecodeSecret(s)
		accepted := err == nil
		if accepted && !loads[s] {
			t.Errorf("carehub accepts the secret %q, which the official library cannot load", s)
		}
		if accepted {
			continue
		}
		dir := t.TempDir()
		cfg := fmt.Sprintf(`
http: {addr: %q}
dataDir: %q
kafka: {embeddedAddr: %q}
pseudonymKey: {value: e2e-pseudonym-key-0123456789}
sources: [{ods: RX1, apiKey: {value: demo-rx1-key}}]
inputs: [{cloudevents: {}}]
recipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: %q}}
    subscriptions: [{basis: registered-gp, types: [discharge]}]
`, freePort(t), filepath.Join(dir, "data"), freePort(t), s)
		path := filepath.Join(dir, "carehub.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := exec.Command(binary, "serve", "--config", path).CombinedOutput()
		if err == nil {
			t.Errorf("carehub serve with the secret %q started", s)
			continue
		}
		for _, want := range []string{"recipients[0].webhook: secret:", "whsec_", "openssl rand -base64 32"} {
			if !strings.Contains(string(res), want) {
				t.Errorf("carehub serve with the secret %q: the error does not say %q:\n%s", s, want, res)
			}
		}
		if rest := strings.TrimPrefix(s, "whsec_"); strings.Contains(string(res), rest) {
			t.Errorf("carehub serve echoes the refused secret %q:\n%s", s, res)
		}
		if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
			t.Errorf("carehub serve with the secret %q created its data directory: the broker started before the check", s)
		}
	}
}

// TestRetryToAnotherProcessPublishesOnce: two hub processes share one Kafka
// cluster; a retry that a load balancer sends to the other process, after
// the first answered, is recognised there too (the memory is in Kafka, and
// each process catches up with it before answering).
func TestRetryToAnotherProcessPublishesOnce(t *testing.T) {
	gp, home := newReceiver(t, gpSecret), newReceiver(t, careHomeSecret)
	a := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	b := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, brokers: a.Kafka})
	var ids []string
	for i := 0; i < 20; i++ {
		ev := patientEvent(t, "discharge", nhsNumber(9500+i), "A81001", "VM123")
		body, _ := json.Marshal(ev)
		first, retry := a, b
		if i%2 == 1 {
			first, retry = b, a
		}
		if status, out := first.publish("demo-rx1-key", "application/cloudevents+json", body); status != http.StatusAccepted {
			t.Fatalf("first attempt: %d %s", status, out)
		}
		status, out := retry.publish("demo-rx1-key", "application/cloudevents+json", body)
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		if status != http.StatusAccepted || m["duplicate"] != true {
			t.Fatalf("the retry at the other process: got %d %s, want 202 with duplicate: true", status, out)
		}
		ids = append(ids, ev["id"].(string))
	}
	waitFor(t, "the GP gets every discharge", 60*time.Second, func() bool { return len(gp.deliveries()) >= len(ids) })
	waitFor(t, "all routed", 60*time.Second, a.routerCaughtUp)
	if n := a.endOffsets("carehub.events"); n != int64(len(ids)) {
		t.Errorf("carehub.events holds %d records for %d events each sent twice, want %d", n, len(ids), len(ids))
	}
	if n := len(gp.deliveries()); n != len(ids) {
		t.Errorf("the GP got %d deliveries, want %d", n, len(ids))
	}
}
