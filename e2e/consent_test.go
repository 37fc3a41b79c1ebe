package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// admin calls the admin API.
func (h *hub) admin(method, path, contentType string, body []byte, accept string) (int, []byte) {
	h.t.Helper()
	status, b, _ := h.adminAs("demo-admin-key", method, path, contentType, body, accept, nil)
	return status, b
}

// adminAs calls the admin API with a key and extra headers, and returns
// the answer's headers too.
func (h *hub) adminAs(key, method, path, contentType string, body []byte, accept string, headers map[string]string) (int, []byte, http.Header) {
	h.t.Helper()
	req, _ := http.NewRequest(method, "http://"+h.HTTP+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// etag reads the patient's directives and returns their ETag.
func (h *hub) etag(nhs string) string {
	h.t.Helper()
	status, body, hdr := h.adminAs("demo-admin-key", "GET", "/v1/patients/"+nhs+"/consent", "", nil, "", nil)
	if status != 200 || hdr.Get("ETag") == "" {
		h.t.Fatalf("GET consent: %d %s, ETag %q", status, body, hdr.Get("ETag"))
	}
	return hdr.Get("ETag")
}

// putConsent records simple-form directives for a patient, replacing the
// set it reads first (If-Match: the ETag read).
func (h *hub) putConsent(nhs string, directives ...map[string]any) {
	h.t.Helper()
	for _, d := range directives {
		if d["recorded"] == nil {
			d["recorded"] = time.Now().UTC().Format(time.RFC3339Nano)
		}
		if d["recordedBy"] == nil {
			d["recordedBy"] = "e2e-admin"
		}
	}
	b, _ := json.Marshal(map[string]any{"directives": directives})
	status, body, _ := h.adminAs("demo-admin-key", "PUT", "/v1/patients/"+nhs+"/consent", "application/json", b, "",
		map[string]string{"If-Match": h.etag(nhs)})
	if status != 200 {
		h.t.Fatalf("PUT consent: got %d %s, want 200", status, body)
	}
}

type auditRecord struct {
	Kind, EventID, Recipient, Effect, Rule, Outcome, Patient, Basis string
	Obligations                                                     []string
}

func (h *hub) auditFor(eventID string) []auditRecord {
	var out []auditRecord
	for _, m := range h.records("carehub.audit") {
		var r auditRecord
		_ = json.Unmarshal(m.Value, &r)
		if r.EventID == eventID {
			out = append(out, r)
		}
	}
	return out
}

func decisionsFor(recs []auditRecord) map[string]auditRecord {
	out := map[string]auditRecord{}
	for _, r := range recs {
		if r.Kind == "decision" {
			out[r.Recipient] = r
		}
	}
	return out
}

func TestNoSocialCareDirectiveWithholdsDischargeFromCareHome(t *testing.T) {
	h, gp, home := hubWithReceivers(t)
	nhs := nhsNumber(11001)
	h.putConsent(nhs, map[string]any{"id": "no-social-care", "kind": "deny-role", "role": "social-care"})
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	id := ev["id"].(string)
	waitFor(t, "GP gets the discharge", 30*time.Second, func() bool { return slices.Contains(gp.ids(), id) })
	waitFor(t, "all routed", 30*time.Second, h.routerCaughtUp)
	if slices.Contains(home.ids(), id) {
		t.Fatalf("the care home received a discharge the patient withheld from social care")
	}
	var dec map[string]auditRecord
	waitFor(t, "both decisions audited", 20*time.Second, func() bool { dec = decisionsFor(h.auditFor(id)); return len(dec) == 2 })
	if d := dec["A81001"]; d.Effect != "permit" || d.Rule == "" {
		t.Errorf("GP decision: got %+v, want a permit with its rule", d)
	}
	if d := dec["VM123"]; d.Effect != "deny" || !strings.Contains(d.Rule, "deny-role") {
		t.Errorf("care home decision: got %+v, want a deny by the deny-role directive", d)
	}
	// The disclosure report shows both.
	var rep struct {
		Disclosures []struct {
			EventID, Recipient, Decision, Rule, Outcome string
			Withheld                                    bool
		}
	}
	waitFor(t, "disclosures show the delivery outcome", 20*time.Second, func() bool {
		status, body := h.admin("GET", "/v1/patients/"+nhs+"/disclosures", "", nil, "")
		if status != 200 {
			t.Fatalf("disclosures: got %d %s", status, body)
		}
		rep.Disclosures = nil
		_ = json.Unmarshal(body, &rep)
		for _, d := range rep.Disclosures {
			if d.Recipient == "A81001" && d.Outcome == "delivered" {
				return true
			}
		}
		return false
	})
	got := map[string]string{}
	for _, d := range rep.Disclosures {
		if d.EventID == id {
			got[d.Recipient] = fmt.Sprintf("%s/%v", d.Decision, d.Withheld)
		}
	}
	if want := map[string]string{"A81001": "permit/false", "VM123": "deny/true"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("disclosures:\n\tgot  %v\n\twant %v", got, want)
	}
}

func TestSensitiveDischargeGoesOnlyToTheGP(t *testing.T) {
	h, gp, home := hubWithReceivers(t)
	nhs := nhsNumber(12001)
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	set(ev, "data/sensitivity", []any{"mental-health"})
	h.mustPublish("demo-rx1-key", ev)
	id := ev["id"].(string)
	waitFor(t, "GP gets the discharge", 30*time.Second, func() bool { return slices.Contains(gp.ids(), id) })
	waitFor(t, "all routed", 30*time.Second, h.routerCaughtUp)
	if slices.Contains(home.ids(), id) {
		t.Fatalf("the care home received a mental-health discharge without the patient's explicit permission")
	}
	dec := decisionsFor(h.auditFor(id))
	if d := dec["VM123"]; d.Effect != "deny" || !strings.Contains(d.Rule, "sensitive") {
		t.Errorf("care home decision: got %+v, want a deny by the sensitive-category rule", d)
	}
	// The patient explicitly permits the care home for that category: the next one goes.
	h.putConsent(nhs, map[string]any{"id": "permit-home-mh", "kind": "permit-organisation", "organisation": "VM123", "categories": []any{"mental-health"}})
	ev2 := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	set(ev2, "data/sensitivity", []any{"mental-health"})
	h.mustPublish("demo-rx1-key", ev2)
	waitFor(t, "care home gets the permitted discharge", 30*time.Second, func() bool { return slices.Contains(home.ids(), ev2["id"].(string)) })
}

func TestNotificationOnlyDirectiveStripsTheSummary(t *testing.T) {
	h, gp, home := hubWithReceivers(t)
	nhs := nhsNumber(13001)
	h.putConsent(nhs, map[string]any{"id": "home-notify-only", "kind": "notification-only", "organisation": "VM123"})
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	id := ev["id"].(string)
	waitFor(t, "both get the discharge", 30*time.Second, func() bool {
		return slices.Contains(gp.ids(), id) && slices.Contains(home.ids(), id)
	})
	body := func(r *receiver) map[string]any {
		for _, d := range r.deliveries() {
			if d.ID == id {
				var m map[string]any
				_ = json.Unmarshal(d.Body, &m)
				return m
			}
		}
		return nil
	}
	summary := func(m map[string]any) any {
		data, _ := m["data"].(map[string]any)
		dis, _ := data["discharge"].(map[string]any)
		return dis["summary"]
	}
	if summary(body(gp)) == nil {
		t.Errorf("the GP's copy lost the discharge summary")
	}
	hm := body(home)
	if summary(hm) != nil {
		t.Errorf("the care home's notification-only copy carries the discharge summary")
	}
	if hm["carehubform"] != "notification" || hm["dataschema"] != "https://carehub.dev/schemas/notification.v1.json" {
		t.Errorf("the notification-only copy does not name its form: %v %v", hm["carehubform"], hm["dataschema"])
	}
	dec := decisionsFor(h.auditFor(id))
	if d := dec["VM123"]; d.Effect != "permit" || !slices.Contains(d.Obligations, "notification-only") {
		t.Errorf("care home decision: got %+v, want a permit with the notification-only obligation", d)
	}
}

// TestConsentChangeAppliesToTheVeryNextEvent pins the freshness guarantee:
// once PUT consent has answered 200, no event accepted afterwards is routed
// under the old directives, even by another carehub process. Two hubs share
// one broker (the second in cluster mode), so the router that takes an event
// is often not the process that recorded the change.
func TestConsentChangeAppliesToTheVeryNextEvent(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	a := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	b := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, brokers: a.Kafka})
	a.waitGroupMembers("carehub-router", 2)
	n := 60
	if testing.Short() {
		n = 20
	}
	var ids []string
	for i := 0; i < n; i++ {
		nhs := nhsNumber(14000 + i)
		recorder, publisher := a, b
		if i%2 == 1 {
			recorder, publisher = b, a
		}
		recorder.putConsent(nhs, map[string]any{"id": "withdrawn", "kind": "deny-organisation", "organisation": "VM123"})
		ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
		publisher.mustPublish("demo-rx1-key", ev)
		ids = append(ids, ev["id"].(string))
	}
	waitFor(t, "GP gets every discharge", 60*time.Second, func() bool { return len(gp.deliveries()) >= n })
	waitFor(t, "all routed", 30*time.Second, a.routerCaughtUp)
	for _, id := range ids {
		if slices.Contains(home.ids(), id) {
			t.Errorf("event %s was routed under the directives from before the withdrawal", id)
		}
	}
	// Both processes routed: the work was shared.
	for name, h := range map[string]*hub{"first": a, "second": b} {
		if !strings.Contains(h.logs.String(), `"msg":"routed"`) {
			t.Errorf("the %s hub routed nothing: the consumer group did not share the work", name)
		}
	}
}

func TestExplainDecidesWithoutPublishing(t *testing.T) {
	h, _, _ := hubWithReceivers(t)
	nhs := nhsNumber(15001)
	h.putConsent(nhs, map[string]any{"id": "no-home", "kind": "deny-organisation", "organisation": "VM123"})
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	b, _ := json.Marshal(ev)
	status, body := h.admin("POST", "/v1/decisions/explain", "application/cloudevents+json", b, "")
	if status != 200 {
		t.Fatalf("explain: got %d %s", status, body)
	}
	var out struct {
		Candidates []struct {
			Recipient, Effect, Rule, Directive, Notice string
			WouldDeliver                               bool
		}
	}
	_ = json.Unmarshal(body, &out)
	got := map[string]string{}
	notices := map[string]string{}
	for _, c := range out.Candidates {
		if c.Notice != "" {
			notices[c.Recipient] = c.Notice
			continue
		}
		got[c.Recipient] = fmt.Sprintf("%s %v %s", c.Effect, c.WouldDeliver, c.Directive)
	}
	if want := map[string]string{"A81001": "permit true ", "VM123": "deny false no-home"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("explain:\n\tgot  %v\n\twant %v", got, want)
	}
	if notices["VM123"] != "withheld-notice" {
		t.Errorf("explain does not show the content-free notice to the care home: %v", notices)
	}
	if n := h.endOffsets("carehub.events"); n != 0 {
		t.Errorf("explain published %d events", n)
	}
	if bytes.Contains(body, []byte(nhs)) {
		t.Errorf("explain echoes the NHS number")
	}
}

func TestConsentAPIValidatesAndRoundTripsFHIR(t *testing.T) {
	h, _, _ := hubWithReceivers(t)
	nhs := nhsNumber(16001)
	// Invalid simple form: unknown kind → problem document with a pointer.
	status, body := h.admin("PUT", "/v1/patients/"+nhs+"/consent", "application/json",
		[]byte(`{"directives":[{"id":"x","kind":"share-everything","recorded":"2026-01-01T00:00:00Z","recordedBy":"admin"}]}`), "")
	if status != 422 || !bytes.Contains(body, []byte("/directives/0/kind")) {
		t.Errorf("invalid directive: got %d %s, want 422 pointing at /directives/0/kind", status, body)
	}
	// Invalid FHIR → OperationOutcome.
	status, body = h.admin("PUT", "/v1/patients/"+nhs+"/consent", "application/fhir+json",
		[]byte(`{"resourceType":"Consent","status":"active"}`), "")
	if status != 422 || !bytes.Contains(body, []byte(`"resourceType":"OperationOutcome"`)) {
		t.Errorf("invalid FHIR Consent: got %d %s, want 422 OperationOutcome", status, body)
	}
	// Bad NHS number in the path.
	if status, body = h.admin("GET", "/v1/patients/9990000000/consent", "", nil, ""); status != 422 {
		t.Errorf("bad NHS number in path: got %d %s, want 422", status, body)
	}
	// Record, read back as FHIR, record that FHIR again, read back simple.
	h.putConsent(nhs, map[string]any{"id": "no-social-care", "kind": "deny-role", "role": "social-care"})
	status, fhir := h.admin("GET", "/v1/patients/"+nhs+"/consent", "", nil, "application/fhir+json")
	if status != 200 || !bytes.Contains(fhir, []byte(`"Consent"`)) {
		t.Fatalf("GET as FHIR: got %d %s", status, fhir)
	}
	var bundleOrConsent map[string]any
	_ = json.Unmarshal(fhir, &bundleOrConsent)
	if bundleOrConsent["resourceType"] == "Consent" {
		if status, body, _ = h.adminAs("demo-admin-key", "PUT", "/v1/patients/"+nhs+"/consent", "application/fhir+json", fhir, "",
			map[string]string{"If-Match": h.etag(nhs)}); status != 200 {
			t.Errorf("PUT back the FHIR we served: got %d %s", status, body)
		}
	}
	status, body = h.admin("GET", "/v1/patients/"+nhs+"/consent", "", nil, "")
	if status != 200 || !bytes.Contains(body, []byte(`"deny-role"`)) {
		t.Errorf("GET simple: got %d %s", status, body)
	}
	// Withdraw.
	if status, body, _ = h.adminAs("demo-admin-key", "DELETE", "/v1/patients/"+nhs+"/consent", "", nil, "",
		map[string]string{"If-Match": h.etag(nhs)}); status != 204 {
		t.Errorf("DELETE: got %d %s", status, body)
	}
	status, body = h.admin("GET", "/v1/patients/"+nhs+"/consent", "", nil, "")
	if status != 200 || bytes.Contains(body, []byte(`"deny-role"`)) {
		t.Errorf("GET after DELETE: got %d %s", status, body)
	}
	// Only the admin key may do any of this.
	req, _ := http.NewRequest("GET", "http://"+h.HTTP+"/v1/patients/"+nhs+"/consent", nil)
	req.Header.Set("Authorization", "Bearer demo-rx1-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("source key on the admin API: got %d, want 403", resp.StatusCode)
	}
}

func TestConsentCLI(t *testing.T) {
	h, _, _ := hubWithReceivers(t)
	nhs := nhsNumber(17001)
	dir := t.TempDir()
	file := filepath.Join(dir, "consent.json")
	_ = os.WriteFile(file, []byte(`{"directives":[{"id":"no-social-care","kind":"deny-role","role":"social-care","recorded":"2026-11-01T10:00:00Z","recordedBy":"ig-officer"}]}`), 0o600)
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(binary, append([]string{"consent"}, args...)...)
		cmd.Env = append(os.Environ(), "CAREHUB_URL=http://"+h.HTTP, "CAREHUB_ADMIN_KEY=demo-admin-key")
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(nhs+"\n", "put", "--nhs", "-", "--file", file); err != nil || !strings.Contains(out, `"version": 1`) {
		t.Fatalf("consent put: %v\n%s", err, out)
	}
	if out, err := run("", "get", "--nhs", nhs); err != nil || !strings.Contains(out, "deny-role") {
		t.Errorf("consent get: %v\n%s", err, out)
	}
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	evFile := filepath.Join(dir, "event.json")
	b, _ := json.Marshal(ev)
	_ = os.WriteFile(evFile, b, 0o600)
	if out, err := run("", "explain", "--file", evFile); err != nil || !strings.Contains(out, `"deny"`) {
		t.Errorf("consent explain: %v\n%s", err, out)
	}
	if out, err := run("", "delete", "--nhs", nhs); err == nil || !strings.Contains(out, "428") {
		t.Errorf("consent delete without --if-match: %v\n%s", err, out)
	}
	if out, err := run("", "delete", "--nhs", nhs, "--if-match", "1"); err != nil || !strings.Contains(out, "done") {
		t.Errorf("consent delete: %v\n%s", err, out)
	}
	if out, err := run("", "get", "--nhs", "123"); err == nil {
		t.Errorf("consent get with a bad NHS number succeeded:\n%s", out)
	}
}
