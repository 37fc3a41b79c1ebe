package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
)

// Secrets of the recipients these tests create through the admin API.
const (
	secret456 = "whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWNhcmVob21lLVZNNDU2"
	secret789 = "whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWNhcmVob21lLVZNNzg5"
)

// api calls the admin API as key and decodes a JSON answer into out
// (when not nil).
func (h *hub) api(key, method, path, contentType string, body []byte, headers map[string]string, out any) (int, http.Header) {
	h.t.Helper()
	status, b, hdr := h.adminAs(key, method, path, contentType, body, "", headers)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			h.t.Fatalf("%s %s: %d, the answer is not JSON: %s", method, path, status, b)
		}
	}
	return status, hdr
}

type problemDoc struct {
	Type, Title, Detail string
	Status              int
	Violations          []struct{ Pointer, Rule, Detail string }
}

// violation reports whether p names the pointer with a detail containing
// text.
func (p problemDoc) violation(pointer, text string) bool {
	for _, v := range p.Violations {
		if v.Pointer == pointer && strings.Contains(v.Detail, text) {
			return true
		}
	}
	return false
}

// careHomeEntry is a care home's configuration entry as JSON.
func careHomeEntry(ods, url, secret string, subs ...map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"ods": ods, "name": "Care home " + ods, "role": "social-care",
		"webhook":       map[string]any{"url": url, "secret": map[string]any{"value": secret}, "timeout": "2s"},
		"subscriptions": subs})
	return b
}

func sub(id, basis string, types ...string) map[string]any {
	return map[string]any{"id": id, "basis": basis, "types": types}
}

// auditKinds returns the audit records of the given kind, as maps.
func (h *hub) auditOfKind(kind string) []map[string]any {
	var out []map[string]any
	for _, m := range h.records("carehub.audit") {
		var r map[string]any
		_ = json.Unmarshal(m.Value, &r)
		if r["kind"] == kind {
			out = append(out, r)
		}
	}
	return out
}

// logged reports whether a log line holds every part.
func (h *hub) logged(parts ...string) bool {
	for _, line := range strings.Split(h.logs.String(), "\n") {
		all := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// TestARecipientCreatedOnOneProcessReceivesAnEventRoutedByAnother: two hub
// processes share one broker. A care home created through one process's
// admin API is picked up by the other without a restart; once the first
// has stopped, the second routes a discharge to the new care home and
// delivers it. A recipient whose secret only one process can read makes
// the other say, in /readyz, that it does not deliver to it, until the
// secret is given in a form both can read.
func TestARecipientCreatedOnOneProcessReceivesAnEventRoutedByAnother(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	vm456 := newReceiver(t, secret456)
	vm789 := newReceiver(t, secret789)
	a := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	b := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, brokers: a.Kafka, env: []string{"CAREHUB_E2E_VM789_SECRET=" + secret789}})

	var created map[string]any
	status, hdr := b.api("demo-admin-key", "POST", "/v1/recipients", "application/json",
		careHomeEntry("VM456", vm456.URL, secret456, sub("vm456-destination", "discharge-destination", "discharge")), nil, &created)
	if status != http.StatusCreated || hdr.Get("ETag") != `"v1"` || hdr.Get("Location") != "/v1/recipients/VM456" {
		t.Fatalf("POST /v1/recipients on b: %d, ETag %q, Location %q: %v", status, hdr.Get("ETag"), hdr.Get("Location"), created)
	}
	waitFor(t, "process a starts delivering to VM456", 20*time.Second, func() bool {
		return a.logged(`"recipient delivering"`, `"recipient":"VM456"`)
	})
	var onA map[string]any
	if status, _ := a.api("demo-admin-key", "GET", "/v1/recipients/VM456", "", nil, nil, &onA); status != 200 {
		t.Fatalf("GET /v1/recipients/VM456 on a: %d", status)
	}
	if hook, _ := onA["webhook"].(map[string]any); hook["url"] != vm456.URL || fmt.Sprint(hook["secret"]) != "map[value:(hidden)]" {
		t.Errorf("a's view of VM456: %v", onA)
	}
	if strings.Contains(a.logs.String()+b.logs.String(), secret456) {
		t.Errorf("a secret given through the API appears in a log")
	}

	// A secret from a variable only process b has.
	entry := map[string]any{"ods": "VM789", "role": "social-care",
		"webhook":       map[string]any{"url": vm789.URL, "secret": map[string]any{"env": "CAREHUB_E2E_VM789_SECRET"}},
		"subscriptions": []any{sub("vm789-destination", "discharge-destination", "discharge")}}
	body, _ := json.Marshal(entry)
	if status, _ := b.api("demo-admin-key", "POST", "/v1/recipients", "application/json", body, nil, nil); status != http.StatusCreated {
		t.Fatalf("POST VM789 (secret from b's environment) on b: %d", status)
	}
	waitFor(t, "a says it does not deliver to VM789", 20*time.Second, func() bool {
		r := a.readyz()
		return strings.Contains(r, "deliverers: not delivering to VM789") && strings.Contains(r, "CAREHUB_E2E_VM789_SECRET is not set")
	})
	if r := b.readyz(); r != "" {
		t.Errorf("b, which has the variable, is not ready: %s", r)
	}
	entry["webhook"].(map[string]any)["secret"] = map[string]any{"value": secret789}
	body, _ = json.Marshal(entry)
	if status, _ := a.api("demo-admin-key", "PUT", "/v1/recipients/VM789", "application/json", body, map[string]string{"If-Match": `"v1"`}, nil); status != 200 {
		t.Fatalf("PUT VM789 with the secret inline on a: %d", status)
	}
	waitFor(t, "a ready again", 20*time.Second, func() bool { return a.readyz() == "" })

	// b stops: a alone routes and delivers.
	b.stop()
	ev := patientEvent(t, "discharge", nhsNumber(31001), "A81001", "VM456")
	a.mustPublish("demo-rx1-key", ev)
	id := ev["id"].(string)
	waitFor(t, "VM456 receives the discharge routed by a", 60*time.Second, func() bool { return slices.Contains(vm456.ids(), id) })
	if d := vm456.deliveries()[0]; !d.Verified || !d.wellIdentified() {
		t.Errorf("the delivery to VM456 is not signed with its secret or not identified: %+v", d)
	}
	// a logs the delivery once VM456 has answered, a moment after it
	// received it.
	waitFor(t, "a to log the delivery to VM456", 20*time.Second, func() bool {
		return a.logged(`"delivered"`, `"recipient":"VM456"`, id)
	})
	var creates []string
	for _, r := range a.auditOfKind("recipient-change") {
		creates = append(creates, fmt.Sprintf("%v %v by %v", r["action"], r["recipient"], r["actor"]))
	}
	for _, want := range []string{"recipient-create VM456 by admin", "recipient-create VM789 by admin", "recipient-update VM789 by admin"} {
		if !slices.Contains(creates, want) {
			t.Errorf("audit: no %q in %v", want, creates)
		}
	}
}

// TestRecipientsAndSubscriptionsThroughTheAdminAPI: each admin action on
// recipients and subscriptions, through the running hub, and what it
// changes in delivery.
func TestRecipientsAndSubscriptionsThroughTheAdminAPI(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	first, second := newReceiver(t, secret456), newReceiver(t, secret456)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	const admin = "demo-admin-key"
	discharge := func(n int, typ string) string {
		ev := patientEvent(t, typ, nhsNumber(n), "A81001", "")
		set(ev, "data/discharge/destination", map[string]any{"type": "care-home", "ods": "VM456"})
		h.mustPublish("demo-rx1-key", ev)
		return ev["id"].(string)
	}
	routed := func(id string) map[string]auditRecord {
		var dec map[string]auditRecord
		waitFor(t, "the event routed", 30*time.Second, func() bool {
			dec = decisionsFor(h.auditFor(id))
			return len(dec) > 0
		})
		return dec
	}

	// Refused: each with a problem document that says where.
	entry := careHomeEntry("VM456", first.URL, secret456, sub("vm456-destination", "discharge-destination", "discharge"))
	var p problemDoc
	for _, tt := range []struct {
		name, key, contentType string
		body                   []byte
		status                 int
		pointer, detail        string
	}{
		{"no key", "", "application/json", entry, 401, "", ""},
		{"a source's key", "demo-rx1-key", "application/json", entry, 403, "", ""},
		{"YAML", admin, "application/yaml", entry, 415, "", ""},
		{"a raw secret", admin, "application/json", careHomeEntry("VM456", first.URL, "demo-secret", sub("s", "registered-gp", "discharge")), 422,
			"/webhook", "a webhook secret is whsec_"},
		{"an unknown type", admin, "application/json", careHomeEntry("VM456", first.URL, secret456, sub("s", "registered-gp", "birthday")), 422,
			"/subscriptions/0/types", `unknown event type "birthday"`},
		{"an unknown field", admin, "application/json", []byte(`{"ods": "VM456", "role": "social-care", "colour": "red"}`), 422,
			"", "field colour not found"},
		{"the file's subscription id", admin, "application/json", careHomeEntry("VM456", first.URL, secret456, sub("vm123-discharges-to-us", "registered-gp", "discharge")), 409,
			"/subscriptions/0/id", "used by recipient VM123"},
		{"an ODS code taken", admin, "application/json", careHomeEntry("VM123", first.URL, secret456, sub("s", "registered-gp", "discharge")), 409, "", ""},
	} {
		p = problemDoc{}
		status, _ := h.api(tt.key, "POST", "/v1/recipients", tt.contentType, tt.body, nil, &p)
		if status != tt.status || (tt.detail != "" && !p.violation(tt.pointer, tt.detail)) {
			t.Errorf("POST /v1/recipients (%s): got %d %+v, want %d with %q at %q", tt.name, status, p, tt.status, tt.detail, tt.pointer)
		}
	}

	// Create.
	if status, hdr := h.api(admin, "POST", "/v1/recipients", "application/json", entry, nil, nil); status != 201 || hdr.Get("ETag") != `"v1"` {
		t.Fatalf("POST /v1/recipients: %d %v", status, hdr)
	}
	id := discharge(32001, "discharge")
	waitFor(t, "VM456 receives its discharge", 30*time.Second, func() bool { return slices.Contains(first.ids(), id) })

	// Read: the entry with its defaults, the secret hidden; the list.
	var got map[string]any
	status, hdr := h.api(admin, "GET", "/v1/recipients/VM456", "", nil, nil, &got)
	if status != 200 || hdr.Get("ETag") != `"v1"` || fmt.Sprint(got["webhook"]) != fmt.Sprintf("map[secret:map[value:(hidden)] timeout:2s url:%s]", first.URL) {
		t.Errorf("GET /v1/recipients/VM456: %d %v %v", status, hdr.Get("ETag"), got)
	}
	var list struct {
		Recipients []struct {
			ODS, UpdatedBy string
			Version        int
		}
	}
	h.api(admin, "GET", "/v1/recipients", "", nil, nil, &list)
	var names []string
	for _, r := range list.Recipients {
		names = append(names, fmt.Sprintf("%s v%d by %s", r.ODS, r.Version, r.UpdatedBy))
	}
	if want := []string{"A81001 v1 by config", "VM123 v1 by config", "VM456 v1 by admin"}; !slices.Equal(names, want) {
		t.Errorf("GET /v1/recipients:\n\tgot  %v\n\twant %v", names, want)
	}

	// Replace: If-Match required; the secret sent back as (hidden) kept.
	got["webhook"].(map[string]any)["url"] = second.URL
	body, _ := json.Marshal(got)
	if status, _ := h.api(admin, "PUT", "/v1/recipients/VM456", "application/json", body, nil, nil); status != 428 {
		t.Errorf("PUT without If-Match: %d, want 428", status)
	}
	if status, _ := h.api(admin, "PUT", "/v1/recipients/VM456", "application/json", body, map[string]string{"If-Match": `"v9"`}, nil); status != 412 {
		t.Errorf("PUT with a stale If-Match: %d, want 412", status)
	}
	if status, hdr := h.api(admin, "PUT", "/v1/recipients/VM456", "application/json", body, map[string]string{"If-Match": `"v1"`}, nil); status != 200 || hdr.Get("ETag") != `"v2"` {
		t.Fatalf("PUT: %d %v", status, hdr.Get("ETag"))
	}
	id = discharge(32002, "discharge")
	waitFor(t, "the new URL receives the next discharge, signed with the kept secret", 30*time.Second, func() bool { return slices.Contains(second.ids(), id) })
	if slices.Contains(first.ids(), id) {
		t.Errorf("the old URL received a discharge after the change")
	}

	// Subscriptions: create, read, replace, delete.
	var s map[string]any
	status, hdr = h.api(admin, "POST", "/v1/subscriptions", "application/json",
		[]byte(`{"recipient": "VM456", "id": "vm456-admissions", "basis": "discharge-destination", "types": ["admission"]}`), nil, &s)
	if status != 201 || hdr.Get("ETag") != `"v3"` || hdr.Get("Location") != "/v1/subscriptions/vm456-admissions" {
		t.Fatalf("POST /v1/subscriptions: %d %v %v", status, hdr, s)
	}
	p = problemDoc{}
	if status, _ := h.api(admin, "POST", "/v1/subscriptions", "application/json",
		[]byte(`{"recipient": "VM456", "id": "x", "basis": "postcode", "types": ["admission"]}`), nil, &p); status != 422 || !p.violation("/basis", `unknown basis "postcode"`) {
		t.Errorf("POST /v1/subscriptions with an unknown basis: %d %+v", status, p)
	}
	id = discharge(32003, "admission")
	waitFor(t, "VM456 receives the admission it now subscribes to", 30*time.Second, func() bool { return slices.Contains(second.ids(), id) })
	if status, _ := h.api(admin, "PUT", "/v1/subscriptions/vm456-admissions", "application/json",
		[]byte(`{"basis": "discharge-destination", "types": ["admission", "discharge-pending"]}`), map[string]string{"If-Match": `"v3"`}, &s); status != 200 {
		t.Errorf("PUT /v1/subscriptions/vm456-admissions: %d %v", status, s)
	}
	var subs struct{ Subscriptions []map[string]any }
	h.api(admin, "GET", "/v1/subscriptions", "", nil, nil, &subs)
	var ids []string
	for _, s := range subs.Subscriptions {
		ids = append(ids, fmt.Sprintf("%v/%v %v", s["recipient"], s["id"], s["types"]))
	}
	if !slices.Contains(ids, "VM456/vm456-admissions [admission discharge-pending]") || len(ids) != 4 {
		t.Errorf("GET /v1/subscriptions: %v", ids)
	}
	if status, hdr := h.api(admin, "GET", "/v1/subscriptions/vm456-admissions", "", nil, nil, &s); status != 200 || hdr.Get("ETag") != `"v4"` {
		t.Errorf("GET /v1/subscriptions/vm456-admissions: %d %v", status, hdr.Get("ETag"))
	}
	if status, _ := h.api(admin, "DELETE", "/v1/subscriptions/vm456-admissions", "", nil, map[string]string{"If-Match": `"v4"`}, nil); status != 204 {
		t.Errorf("DELETE /v1/subscriptions/vm456-admissions: %d", status)
	}
	id = discharge(32004, "admission")
	if dec := routed(id); dec["VM456"].Recipient != "" {
		t.Errorf("an admission after the subscription was deleted was decided for VM456: %+v", dec["VM456"])
	}

	// Delete: nothing more is routed to it.
	if status, _ := h.api(admin, "DELETE", "/v1/recipients/VM456", "", nil, map[string]string{"If-Match": `"v5"`}, nil); status != 204 {
		t.Fatalf("DELETE /v1/recipients/VM456: %d", status)
	}
	if status, _ := h.api(admin, "GET", "/v1/recipients/VM456", "", nil, nil, nil); status != 404 {
		t.Errorf("GET after DELETE: %d, want 404", status)
	}
	id = discharge(32005, "discharge")
	if dec := routed(id); dec["VM456"].Recipient != "" {
		t.Errorf("a discharge after the recipient was deleted was decided for VM456")
	}
	// A pull recipient created at run time: its feed and its routes.
	feedEntry := []byte(`{"ods": "B82006", "role": "gp-practice", "feed": {"apiKey": {"value": "demo-b82006-key"}},
	  "subscriptions": [{"id": "b82006-registered-patients", "basis": "registered-gp", "types": ["discharge"]}]}`)
	if status, _ := h.api(admin, "POST", "/v1/recipients", "application/json", feedEntry, nil, nil); status != 201 {
		t.Fatalf("POST a feed recipient: %d", status)
	}
	ev := patientEvent(t, "discharge", nhsNumber(32006), "B82006", "")
	h.mustPublish("demo-rx1-key", ev)
	waitFor(t, "the new feed holds the discharge", 60*time.Second, func() bool {
		status, b := h.readFeed(t, "/v1/feeds/B82006?after=0", "demo-b82006-key", "")
		var page feedPage
		_ = json.Unmarshal(b, &page)
		return status == 200 && len(page.Events) == 1 && page.Events[0].id() == ev["id"]
	})
	if status, _ := h.readFeed(t, "/v1/feeds/B82006?after=0", "demo-b82005-key", ""); status != 401 {
		t.Errorf("another key reading the new feed: %d, want 401", status)
	}

	waitFor(t, "every change audited", 20*time.Second, func() bool { return len(h.auditOfKind("recipient-change")) >= 6 })
	var actions []string
	for _, r := range h.auditOfKind("recipient-change") {
		if r["recipient"] == "VM456" {
			actions = append(actions, fmt.Sprintf("%v by %v", r["action"], r["actor"]))
		}
	}
	want := []string{"recipient-create by admin", "recipient-update by admin", "subscription-create by admin",
		"subscription-update by admin", "subscription-delete by admin", "recipient-delete by admin"}
	if !slices.Equal(actions, want) {
		t.Errorf("audit of VM456:\n\tgot  %v\n\twant %v", actions, want)
	}
	for _, m := range h.records("carehub.audit") {
		if strings.Contains(string(m.Value), secret456) {
			t.Errorf("an audit record holds the webhook secret")
		}
	}
}

// TestAResidentAddedThroughTheAPIReceivesTheirNextDischarge: a care home
// subscribes with its residents list, managed through the API with its own
// key. The PAS names only the kind of destination (a non-NHS care home),
// so the care home hears of a discharge only once the patient is on its
// list; once removed, it hears nothing more. NHS numbers travel in bodies;
// the answers, the audit and the logs hold pseudonyms.
func TestAResidentAddedThroughTheAPIReceivesTheirNextDischarge(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, careHomeSubscriptions: "" +
		"      - {id: vm123-residents, basis: patient-list, types: [admission, discharge]}\n" +
		"      - {id: vm123-discharges-to-us, basis: discharge-destination, types: [discharge]}\n"})
	resident, other := nhsNumber(33001), nhsNumber(33002)
	discharge := func(n string) string {
		ev := patientEvent(t, "discharge", n, "A81001", "")
		set(ev, "data/discharge/destination", map[string]any{"type": "care-home", "code": "85"})
		h.mustPublish("demo-rx1-key", ev)
		id := ev["id"].(string)
		waitFor(t, "the GP receives the discharge", 30*time.Second, func() bool { return slices.Contains(gp.ids(), id) })
		waitFor(t, "all delivered", 30*time.Second, h.routerCaughtUp)
		return id
	}
	const vm123Key = "demo-vm123-key" // the care home's own key (it publishes care plans with it)

	if id := discharge(resident); slices.Contains(home.ids(), id) {
		t.Fatalf("the care home received a discharge of a patient not yet on its list")
	}

	// Only the care home itself or an operator changes its list.
	add := []byte(fmt.Sprintf(`{"add": [%q]}`, resident))
	if status, _ := h.api("demo-rx1-key", "POST", "/v1/recipients/VM123/patients", "application/json", add, nil, nil); status != 403 {
		t.Errorf("the hospital's key changing the care home's list: %d, want 403", status)
	}
	p := problemDoc{}
	bad := []byte(fmt.Sprintf(`{"add": [%q, "12345"]}`, resident[:9]+string('0'+(resident[9]-'0'+1)%10)))
	if status, _ := h.api(vm123Key, "POST", "/v1/recipients/VM123/patients", "application/json", bad, nil, &p); status != 422 ||
		!p.violation("/add/0", "check digit") || !p.violation("/add/1", "ten digits") {
		t.Errorf("adding invalid numbers: %d %+v", status, p)
	}
	var res struct {
		Added, Count int
		Items        []struct{ Op, Patient, Outcome string }
	}
	if status, _ := h.api(vm123Key, "POST", "/v1/recipients/VM123/patients", "application/json", add, nil, &res); status != 200 ||
		res.Added != 1 || res.Count != 1 || len(res.Items) != 1 || res.Items[0].Outcome != "added" {
		t.Fatalf("the care home adds its resident: %d %+v", status, res)
	}
	pseudonym := res.Items[0].Patient

	id := discharge(resident)
	waitFor(t, "the care home receives its resident's next discharge", 30*time.Second, func() bool { return slices.Contains(home.ids(), id) })
	for _, d := range home.deliveries() {
		if d.ID == id && d.Patient != pseudonym {
			t.Errorf("the delivery's carehub-patient %q is not the pseudonym the list answered %q", d.Patient, pseudonym)
		}
	}
	if id := discharge(other); slices.Contains(home.ids(), id) {
		t.Errorf("the care home received a discharge of a patient not on its list")
	}
	var listed struct {
		Count    int
		Patients []struct{ Patient, Actor string }
	}
	if status, _ := h.api(vm123Key, "GET", "/v1/recipients/VM123/patients", "", nil, nil, &listed); status != 200 || listed.Count != 1 ||
		listed.Patients[0].Patient != pseudonym || listed.Patients[0].Actor != "VM123" {
		t.Errorf("GET the list: %d %+v", status, listed)
	}

	// Replaced with the list file's format, by an operator: the resident left, another came.
	p = problemDoc{}
	if status, _ := h.api("demo-admin-key", "PUT", "/v1/recipients/VM123/patients", "text/plain",
		[]byte("# residents\n"+other+"\n12345\n"), nil, &p); status != 422 || !p.violation("/line/3", "") {
		t.Errorf("PUT a list with a bad line: %d %+v", status, p)
	}
	if status, _ := h.api("demo-admin-key", "PUT", "/v1/recipients/VM123/patients", "text/plain",
		[]byte("# residents\r\n"+other[:3]+" "+other[3:6]+" "+other[6:]+"\r\n"), nil, &res); status != 200 || res.Added != 1 || res.Count != 1 {
		t.Errorf("PUT the list: %d %+v", status, res)
	}
	if id := discharge(resident); slices.Contains(home.ids(), id) {
		t.Errorf("the care home received a discharge of a resident removed from its list")
	}
	id = discharge(other)
	waitFor(t, "the new resident's discharge reaches the care home", 30*time.Second, func() bool { return slices.Contains(home.ids(), id) })

	// Removed by the care home.
	remove := []byte(fmt.Sprintf(`{"remove": [%q]}`, other))
	if status, _ := h.api(vm123Key, "POST", "/v1/recipients/VM123/patients", "application/json", remove, nil, &res); status != 200 || res.Count != 0 {
		t.Errorf("the care home removes its resident: %d %+v", status, res)
	}
	if id := discharge(other); slices.Contains(home.ids(), id) {
		t.Errorf("the care home received a discharge after removing the resident")
	}

	// Who added and removed whom, by pseudonym.
	var changes []string
	for _, r := range h.auditOfKind("list-change") {
		who := map[any]string{pseudonym: "resident"}[r["patient"]]
		if who == "" {
			who = "other"
		}
		changes = append(changes, fmt.Sprintf("%v %s by %v", r["action"], who, r["actor"]))
	}
	want := []string{"patient-list-add resident by VM123", "patient-list-remove resident by admin", "patient-list-add other by admin",
		"patient-list-remove other by VM123"}
	slices.Sort(changes)
	slices.Sort(want)
	if !slices.Equal(changes, want) {
		t.Errorf("list-change audit:\n\tgot  %v\n\twant %v", changes, want)
	}
	var report struct {
		ListChanges []struct{ Recipient, Actor, Action, Outcome string }
	}
	if status, _ := h.api("demo-admin-key", "GET", "/v1/patients/"+resident+"/disclosures", "", nil, nil, &report); status != 200 {
		t.Fatalf("disclosures: %d", status)
	}
	var seen []string
	for _, c := range report.ListChanges {
		seen = append(seen, strings.TrimSpace(c.Action+" "+c.Recipient+" by "+c.Actor+" "+c.Outcome))
	}
	// Both took effect: neither is marked not-applied.
	if want := []string{"patient-list-add VM123 by VM123", "patient-list-remove VM123 by admin"}; !slices.Equal(seen, want) {
		t.Errorf("the resident's disclosures report, list changes:\n\tgot  %v\n\twant %v", seen, want)
	}
	for _, m := range h.records("carehub.subscriptions") {
		if strings.Contains(string(m.Key)+string(m.Value), resident) || strings.Contains(string(m.Key)+string(m.Value), other) {
			t.Errorf("the directory topic holds an NHS number")
		}
	}
}

// attempt is one request a flaky receiver got.
type attempt struct {
	at time.Time
	id string
	ok bool
}

// flakyReceiver answers 503 until up, and records every attempt.
type flakyReceiver struct {
	t   *testing.T
	key []byte
	URL string
	mu  sync.Mutex
	up  bool
	log []attempt
}

func newFlakyReceiver(t *testing.T, secret string) *flakyReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := webhook.DecodeSecret(secret)
	r := &flakyReceiver{t: t, key: key, URL: "http://" + ln.Addr().String() + "/events"}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ce struct{ ID string }
		_ = json.Unmarshal(body, &ce)
		if err := webhook.Verify(r.key, req.Header, body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("flaky receiver: a delivery failed verification: %v", err)
		}
		r.mu.Lock()
		up := r.up
		r.log = append(r.log, attempt{at: time.Now(), id: ce.ID, ok: up})
		r.mu.Unlock()
		if !up {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *flakyReceiver) setUp(up bool) { r.mu.Lock(); r.up = up; r.mu.Unlock() }

func (r *flakyReceiver) attempts() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

// delivered returns the ids accepted, in the order they were accepted.
func (r *flakyReceiver) delivered() []string {
	var out []string
	for _, a := range r.attempts() {
		if a.ok {
			out = append(out, a.id)
		}
	}
	return out
}

// TestPauseQueuesWithoutRetriesAndResumeDeliversInOrder: a care home in
// a maintenance window is paused while a delivery to it is being retried.
// Its retries stop at once; copies routed to it meanwhile wait in its
// outbox, and its status shows the backlog; nothing is sent to it until it
// is resumed, and then everything arrives, in order.
func TestPauseQueuesWithoutRetriesAndResumeDeliversInOrder(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newFlakyReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	patient := nhsNumber(34001)
	var ids []string
	publish := func() {
		ev := patientEvent(t, "discharge", patient, "A81001", "VM123")
		h.mustPublish("demo-rx1-key", ev)
		ids = append(ids, ev["id"].(string))
	}

	publish()
	waitFor(t, "the care home's delivery is being retried", 30*time.Second, func() bool { return len(home.attempts()) >= 2 })

	var st struct {
		Paused     *struct{ Actor, Reason string }
		Delivering bool
		Backlog    *struct {
			Events int
			Oldest time.Time
		}
	}
	if status, _ := h.api("demo-admin-key", "POST", "/v1/recipients/VM123/pause", "application/json", []byte(`{"reason": "DSCR upgrade"}`), nil, &st); status != 200 ||
		st.Paused == nil || st.Paused.Actor != "admin" || st.Paused.Reason != "DSCR upgrade" || st.Delivering {
		t.Fatalf("POST pause: %d %+v", status, st)
	}
	paused := time.Now()
	for range 3 {
		publish()
	}
	waitFor(t, "the GP receives all four", 30*time.Second, func() bool { return len(gp.deliveries()) == 4 })
	waitFor(t, "the backlog shows four waiting", 30*time.Second, func() bool {
		h.api("demo-admin-key", "GET", "/v1/recipients/VM123/status", "", nil, nil, &st)
		return st.Backlog != nil && st.Backlog.Events == 4
	})
	if st.Backlog.Oldest.IsZero() || st.Backlog.Oldest.After(paused) {
		t.Errorf("the oldest waiting copy's time %v is not before the pause %v", st.Backlog.Oldest, paused)
	}
	if r := h.readyz(); r != "" {
		t.Errorf("a paused recipient made the hub not ready: %s", r)
	}
	home.setUp(true)
	resumed := time.Now()
	for _, a := range home.attempts() {
		if a.at.After(paused) && a.at.Before(resumed) {
			t.Errorf("the paused care home got a request at %v (paused at %v)", a.at, paused)
		}
	}

	if status, _ := h.api("demo-admin-key", "POST", "/v1/recipients/VM123/resume", "", nil, nil, &st); status != 200 || st.Paused != nil {
		t.Fatalf("POST resume: %d %+v", status, st)
	}
	waitFor(t, "the care home receives all four", 30*time.Second, func() bool { return len(home.delivered()) >= 4 })
	if got := home.delivered(); !slices.Equal(got, ids) {
		t.Errorf("after the resume the care home received:\n\tgot  %v\n\twant %v (in order)", got, ids)
	}
	waitFor(t, "the backlog empties", 30*time.Second, func() bool {
		h.api("demo-admin-key", "GET", "/v1/recipients/VM123/status", "", nil, nil, &st)
		return st.Backlog != nil && st.Backlog.Events == 0 && st.Delivering
	})
	var actions []string
	for _, r := range h.auditOfKind("recipient-change") {
		actions = append(actions, fmt.Sprintf("%v %v", r["action"], r["recipient"]))
	}
	if !slices.Contains(actions, "recipient-pause VM123") || !slices.Contains(actions, "recipient-resume VM123") {
		t.Errorf("the pause and the resume are not audited: %v", actions)
	}
}

// TestTheConfigurationFileSeedsAndTheAPIsChangesStand: after the first
// start, a change made through the API stands across restarts while the
// file's entry is unchanged; an edit of the entry in the file replaces it
// at the next start.
func TestTheConfigurationFileSeedsAndTheAPIsChangesStand(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home, moved, edited := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw=="),
		newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw=="),
		newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL})
	url := func() (string, string) {
		var e map[string]any
		_, hdr := h.api("demo-admin-key", "GET", "/v1/recipients/VM123", "", nil, nil, &e)
		return fmt.Sprint(e["webhook"].(map[string]any)["url"]), hdr.Get("ETag")
	}
	var e map[string]any
	h.api("demo-admin-key", "GET", "/v1/recipients/VM123", "", nil, nil, &e)
	e["webhook"].(map[string]any)["url"] = moved.URL
	body, _ := json.Marshal(e)
	if status, _ := h.api("demo-admin-key", "PUT", "/v1/recipients/VM123", "application/json", body, map[string]string{"If-Match": `"v1"`}, nil); status != 200 {
		t.Fatalf("PUT VM123: %d", status)
	}
	h.stop()
	h.start()
	if got, tag := url(); got != moved.URL || tag != `"v2"` {
		t.Errorf("restarted with the same file: %s %s, want the API's change (v2)", got, tag)
	}
	cfg, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.cfgPath, []byte(strings.Replace(string(cfg), home.URL, edited.URL, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	h.stop()
	h.start()
	if got, tag := url(); got != edited.URL || tag != `"v3"` {
		t.Errorf("restarted with the entry edited: %s %s, want the file's (v3)", got, tag)
	}
	if !h.logged("a recipient's entry in the configuration file changed: it replaces the changes made through the admin API", `"recipient":"VM123"`) {
		t.Errorf("the hub did not say the file's entry replaced the API's change")
	}
	ev := patientEvent(t, "discharge", nhsNumber(35001), "A81001", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	waitFor(t, "the edited URL receives", 30*time.Second, func() bool { return slices.Contains(edited.ids(), ev["id"].(string)) })
}

// TestARecipientsOwnKeyKeepsItsOwnListOnly pins a gap the audit of issue
// 13 found untested: a recipient's own apiKey (demo-cn001-key, as in the
// Quickstart: a key that publishes nothing) changes its own patient list,
// whole (PUT, the Quickstart's caseload file) and by change (POST), and
// the audit names it as the actor; the same key gets 403 on another
// recipient's list.
func TestARecipientsOwnKeyKeepsItsOwnListOnly(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	community := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jb21tdW5pdHktQ04wMDE=")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: CN001
    role: community
    apiKey: {value: demo-cn001-key}
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jb21tdW5pdHktQ04wMDE=}, timeout: 2s}
    subscriptions:
      - {id: cn001-caseload, basis: patient-list, types: [admission, discharge]}
`, community.URL)})
	const key = "demo-cn001-key"
	canaries.Store("9990500002", true) // the caseload's numbers: never in a log
	canaries.Store("9991112227", true)
	caseload, err := os.ReadFile("../deploy/examples/cn001-caseload.txt")
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Recipient             string
		Added, Removed, Count int
	}
	if status, _ := h.api(key, "PUT", "/v1/recipients/CN001/patients", "text/plain", caseload, nil, &res); status != 200 ||
		res.Recipient != "CN001" || res.Added != 2 || res.Count != 2 {
		t.Fatalf("CN001 PUTs its caseload with its own key: got %d %+v, want 200, 2 added, 2 on the list", status, res)
	}
	remove := []byte(`{"remove": ["999 050 0002"]}`)
	if status, _ := h.api(key, "POST", "/v1/recipients/CN001/patients", "application/json", remove, nil, &res); status != 200 ||
		res.Removed != 1 || res.Count != 1 {
		t.Fatalf("CN001 POSTs a change with its own key: got %d %+v, want 200, 1 removed, 1 on the list", status, res)
	}

	for _, tc := range []struct{ method, contentType, body string }{
		{"PUT", "text/plain", "9990500002\n"},
		{"POST", "application/json", `{"add": ["9990500002"]}`},
	} {
		if status, _ := h.api(key, tc.method, "/v1/recipients/VM123/patients", tc.contentType, []byte(tc.body), nil, nil); status != http.StatusForbidden {
			t.Errorf("%s VM123's list with CN001's key: got %d, want 403", tc.method, status)
		}
	}

	// The changes are audited with CN001 as the actor, and nothing was
	// changed on VM123's list.
	var got []string
	waitFor(t, "the list changes audited", 30*time.Second, func() bool {
		got = got[:0]
		for _, r := range h.auditOfKind("list-change") {
			got = append(got, fmt.Sprintf("%v %v by %v", r["action"], r["recipient"], r["actor"]))
		}
		return len(got) >= 3
	})
	want := []string{"patient-list-add CN001 by CN001", "patient-list-add CN001 by CN001", "patient-list-remove CN001 by CN001"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("list-change audit:\n\tgot  %q\n\twant %q", got, want)
	}
}
