package fhir_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// canary is the NHS number of every fixture here (999 test range): it may
// appear in mapped resources, never in an error or an OperationOutcome.
const canary = "9990500002"

func read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func indent(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	got = indent(t, got)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want := read(t, path)
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-want +got; go test -update to accept):\n%s", path, d)
	}
}

// examples are the example events of the deployment, one of each type
// at least (checked here, so that a new type cannot go unmapped).
func examples(t *testing.T) map[string]*event.Event {
	t.Helper()
	out := parseEvents(t, "../../deploy/examples/*.json", "")
	seen := map[string]bool{}
	for _, ev := range out {
		seen[ev.Type] = true
	}
	for _, typ := range event.Types() {
		if !seen[typ] {
			t.Errorf("no example event of type %s in deploy/examples", typ)
		}
	}
	return out
}

// variants are events with the fields and shapes the examples leave out
// (testdata/events/SOURCES.md), named "variant-" and the file's name.
func variants(t *testing.T) map[string]*event.Event {
	t.Helper()
	out := parseEvents(t, "testdata/events/*.json", "variant-")
	if len(out) == 0 {
		t.Fatal("no variant events in testdata/events")
	}
	return out
}

// everyEvent is examples and variants.
func everyEvent(t *testing.T) map[string]*event.Event {
	t.Helper()
	out := examples(t)
	for k, v := range variants(t) {
		out[k] = v
	}
	return out
}

func parseEvents(t *testing.T, pattern, prefix string) map[string]*event.Event {
	t.Helper()
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*event.Event{}
	files, _ := filepath.Glob(pattern)
	for _, f := range files {
		ev, err := v.Parse(read(t, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[prefix+strings.TrimSuffix(filepath.Base(f), ".json")] = ev
	}
	return out
}

// TestOutGolden: each example and variant event as a message Bundle and a
// transaction.
func TestOutGolden(t *testing.T) {
	for name, ev := range everyEvent(t) {
		t.Run(name, func(t *testing.T) {
			msg, err := fhir.MessageBundle(ev, "RYJ", "http://127.0.0.1:9104/fhir")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "out", name+".message.golden.json"), msg)
			tx, err := fhir.TransactionBundle(ev)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "out", name+".transaction.golden.json"), tx)
		})
	}
}

// TestRoundTrip: an event rendered as a FHIR message and read back is the
// same event, for every field the mapping carries both ways, for every
// example and variant.
func TestRoundTrip(t *testing.T) {
	v, _ := event.NewValidator()
	for name, ev := range everyEvent(t) {
		t.Run(name, func(t *testing.T) {
			msg, err := fhir.MessageBundle(ev, "RYJ", "http://127.0.0.1:9104/fhir")
			if err != nil {
				t.Fatal(err)
			}
			in, err := fhir.FromMessage(msg, ev.Publisher)
			if err != nil {
				t.Fatalf("FromMessage: %v\n%s", err, problem.OperationOutcome(err))
			}
			back, err := v.Parse(in.Event)
			if err != nil {
				t.Fatalf("the event read back does not validate: %v", in.Locate(err))
			}
			var got, want map[string]any
			_ = json.Unmarshal(back.Data, &got)
			_ = json.Unmarshal(ev.Data, &want)
			// Carried one way only: cancellation details and the list of
			// changed fields (FHIR has no place for them in a message).
			delete(want, "cancellation")
			delete(want, "changed")
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("data after a round trip (-want +got):\n%s", d)
			}
			if back.ID != ev.ID || back.Type != ev.Type || !back.Time.Equal(ev.Time) || back.Publisher != ev.Publisher {
				t.Errorf("envelope: got %s %v %s, want %s %v %s", back.Type, back.Time, back.Publisher, ev.Type, ev.Time, ev.Publisher)
			}
		})
	}
}

// ukMessage builds a FHIR message from HL7's own R4 example resources, with
// what an English trust adds to them: an NHS number and registered GP on
// the Patient, the sender's ODS code, and an Encounter's subject and
// period. focusFile is the Encounter or CarePlan the event is about (HL7's
// CarePlan-example already names Patient/example as its subject).
func ukMessage(t testing.TB, eventCode string, focusFile string, document string) []byte {
	t.Helper()
	var pat, enc map[string]any
	_ = json.Unmarshal(read(t, "testdata/hl7-r4-examples/Patient-example.json"), &pat)
	_ = json.Unmarshal(read(t, "testdata/hl7-r4-examples/"+focusFile), &enc)
	pat["identifier"] = append(pat["identifier"].([]any), map[string]any{"system": fhir.SystemNHSNumber, "value": canary})
	pat["generalPractitioner"] = []any{map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "A81001"}}}
	if enc["resourceType"] == "Encounter" {
		enc["subject"] = map[string]any{"reference": "Patient/example"}
		if enc["period"] == nil {
			enc["period"] = map[string]any{"start": "2013-05-14T10:00:00+01:00", "end": "2013-05-14T12:20:00+01:00"}
		}
	}
	rt := enc["resourceType"].(string)
	entries := []any{
		map[string]any{"fullUrl": "urn:uuid:0c3b0b9a-2f4c-4c2a-9b38-6d3c2c1f0a01", "resource": map[string]any{
			"resourceType": "MessageHeader", "id": "0c3b0b9a-2f4c-4c2a-9b38-6d3c2c1f0a01",
			"eventCoding": map[string]any{"system": fhir.SystemEvent, "code": eventCode},
			"sender":      map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "RX1"}},
			"source":      map[string]any{"endpoint": "https://pas.rx1.example/fhir"},
			"focus":       []any{map[string]any{"reference": rt + "/" + enc["id"].(string)}},
		}},
		map[string]any{"fullUrl": "https://pas.rx1.example/fhir/Patient/example", "resource": pat},
		map[string]any{"fullUrl": "https://pas.rx1.example/fhir/" + rt + "/" + enc["id"].(string), "resource": enc},
	}
	if document != "" {
		var doc any
		_ = json.Unmarshal(read(t, "testdata/hl7-r4-examples/"+document), &doc)
		entries = append(entries, map[string]any{"fullUrl": "urn:uuid:1d4c7a6e-5b1f-4e4d-8a0a-3f2e1d0c9b02", "resource": doc})
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "message", "timestamp": "2013-05-14T12:30:00+01:00", "entry": entries})
	return b
}

// ukEncounter is one of HL7's example Encounters, to be posted alone, with
// the subject named by NHS number (as carehub's contract needs: HL7's
// examples reference a Patient elsewhere) and edit applied.
func ukEncounter(t testing.TB, file string, edit func(m map[string]any)) []byte {
	t.Helper()
	var enc map[string]any
	if err := json.Unmarshal(read(t, "testdata/hl7-r4-examples/"+file), &enc); err != nil {
		t.Fatal(err)
	}
	enc["subject"] = map[string]any{"identifier": map[string]any{"system": fhir.SystemNHSNumber, "value": canary}}
	if edit != nil {
		edit(enc)
	}
	b, _ := json.Marshal(enc)
	return b
}

// TestInGolden: FHIR documents in, canonical events or OperationOutcomes
// out. HL7's own examples are read as they are (the lone Encounters name
// no NHS number, so each is refused, precisely) and as an English trust
// sends them (ukMessage, ukEncounter); those that carry an event carehub
// handles must give that event (wantType).
func TestInGolden(t *testing.T) {
	v, _ := event.NewValidator()
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	type input struct {
		name, kind string // kind: message or encounter
		doc        []byte
	}
	var inputs []input
	for _, f := range []string{"Encounter-example.json", "Encounter-f001.json", "Encounter-emerg.json"} {
		inputs = append(inputs, input{"hl7-" + strings.TrimSuffix(f, ".json"), "encounter", read(t, "testdata/hl7-r4-examples/"+f)})
	}
	inputs = append(inputs,
		input{"hl7-Bundle-message-patient-link", "message", read(t, "testdata/hl7-r4-examples/Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json")},
		input{"uk-discharge-f001-with-father-summary", "message", ukMessage(t, "discharge", "Encounter-f001.json", "Bundle-father.json")},
		input{"uk-admission-emerg", "message", ukMessage(t, "admission", "Encounter-emerg.json", "")},
		input{"uk-careplan-example", "message", ukMessage(t, "careplan", "CarePlan-example.json", "")},
		input{"uk-lone-encounter-f001-discharge", "encounter", ukEncounter(t, "Encounter-f001.json", nil)},
		input{"uk-lone-encounter-example-entered-in-error", "encounter", ukEncounter(t, "Encounter-example.json", func(m map[string]any) { m["status"] = "entered-in-error" })},
	)
	// The event each of HL7's examples carries, as an English trust sends it.
	wantType := map[string]string{
		"uk-discharge-f001-with-father-summary":      event.TypeDischarge,
		"uk-admission-emerg":                         event.TypeAdmission,
		"uk-careplan-example":                        event.TypeCarePlan,
		"uk-lone-encounter-f001-discharge":           event.TypeDischarge,
		"uk-lone-encounter-example-entered-in-error": event.TypeAdmissionCancelled,
	}
	files, _ := filepath.Glob("testdata/in/*.json")
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		kind := "message"
		if strings.Contains(f, "encounter") {
			kind = "encounter"
		}
		inputs = append(inputs, input{strings.TrimSuffix(filepath.Base(f), ".json"), kind, read(t, f)})
	}
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			var got *fhir.Inbound
			var err error
			if in.kind == "encounter" {
				got, err = fhir.FromEncounter(in.doc, "RX1", now)
			} else {
				got, err = fhir.FromMessage(in.doc, "RX1")
			}
			if err == nil {
				ev, verr := v.Parse(got.Event)
				if verr != nil {
					err = got.Locate(verr)
				} else if m, merr := ev.Marshal(); merr != nil || !bytes.Equal(m, got.Event) {
					// One envelope encoder (event.Event.Marshal): the event read
					// from FHIR is byte for byte what it makes of the same event.
					t.Errorf("the envelope is not event.Marshal's (%v):\n\tgot  %s\n\twant %s", merr, got.Event, m)
				}
			}
			path := filepath.Join("testdata", "in", in.name)
			if want, ok := wantType[in.name]; ok && (err != nil || got.Type != want) {
				t.Errorf("HL7's example as an English trust sends it: got %v (%s), want a %s", got, err, want)
			}
			if err != nil {
				oo := problem.OperationOutcome(err)
				if bytes.Contains(oo, []byte(canary)) || strings.Contains(err.Error(), canary) {
					t.Errorf("the OperationOutcome or the error echoes the NHS number")
				}
				golden(t, path+".outcome.golden.json", oo)
				return
			}
			golden(t, path+".event.golden.json", got.Event)
		})
	}
}

// TestOperationOutcomeNamesElements pins the FHIRPath of a few refusals.
func TestOperationOutcomeNamesElements(t *testing.T) {
	good := ukMessage(t, "discharge", "Encounter-f001.json", "")
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		_ = json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	entry := func(m map[string]any, i int) map[string]any {
		return m["entry"].([]any)[i].(map[string]any)["resource"].(map[string]any)
	}
	tests := []struct {
		name string
		doc  []byte
		kind problem.Kind
		want string // FHIRPath of the first issue
	}{
		{"not a bundle", []byte(`{"resourceType":"Patient"}`), problem.Invalid, "Bundle.resourceType"},
		{"not JSON", []byte(`{"resourceType":`), problem.Malformed, ""},
		{"a document, not a message", mutate(func(m map[string]any) { m["type"] = "document" }), problem.Invalid, "Bundle.type"},
		{"unknown event", mutate(func(m map[string]any) {
			entry(m, 0)["eventCoding"] = map[string]any{"system": "http://example.org/fhir/message-events", "code": "patient-link"}
		}), problem.Invalid, "Bundle.entry[0].resource.eventCoding"},
		{"sender is another organisation", mutate(func(m map[string]any) {
			entry(m, 0)["sender"] = map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": "RYJ"}}
		}), problem.Forbidden, "Bundle.entry[0].resource.sender.identifier.value"},
		{"no sender", mutate(func(m map[string]any) { delete(entry(m, 0), "sender") }), problem.Invalid, "Bundle.entry[0].resource.sender"},
		{"bad NHS number", mutate(func(m map[string]any) {
			ids := entry(m, 1)["identifier"].([]any)
			ids[len(ids)-1].(map[string]any)["value"] = "9990500003"
		}), problem.Invalid, "Bundle.entry[1].resource.identifier[1].value"},
		{"no timestamp", mutate(func(m map[string]any) { delete(m, "timestamp") }), problem.Invalid, "Bundle.timestamp"},
		{"discharge without disposition", mutate(func(m map[string]any) {
			delete(entry(m, 2)["hospitalization"].(map[string]any), "dischargeDisposition")
		}), problem.Invalid, "Bundle.entry[2].resource.hospitalization"},
	}
	// The new event types, refused as carehub itself renders them but for
	// one element.
	rendered := func(name string, f func(m map[string]any)) []byte {
		ev := examples(t)[name]
		b, err := fhir.MessageBundle(ev, "", "https://epr.example/fhir")
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		f(m)
		b, _ = json.Marshal(m)
		return b
	}
	tests = append(tests, []struct {
		name string
		doc  []byte
		kind problem.Kind
		want string
	}{
		{"pending discharge: a planned end date without a time", rendered("discharge-pending", func(m map[string]any) {
			entry(m, 2)["extension"].([]any)[0].(map[string]any)["valueDateTime"] = "2025-03-18"
		}), problem.Invalid, "Bundle.entry[2].resource.extension[0]"},
		{"cancelled transfer: no location not moved to", rendered("transfer-cancelled", func(m map[string]any) {
			delete(entry(m, 2), "extension")
		}), problem.Invalid, "Bundle.entry[2].resource.extension"},
		{"cancelled transfer: the location not moved to does not resolve", rendered("transfer-cancelled", func(m map[string]any) {
			x := entry(m, 2)["extension"].([]any)[0].(map[string]any)["extension"].([]any)[0].(map[string]any)
			x["valueReference"] = map[string]any{"reference": "#nowhere"}
		}), problem.Invalid, "Bundle.entry[2].resource.extension[0]"},
		{"cancelled transfer: no active location", rendered("transfer-cancelled", func(m map[string]any) {
			delete(entry(m, 2), "location")
		}), problem.Invalid, "Bundle.entry[2].resource.location"},
		{"class change: no history", rendered("patient-class-changed", func(m map[string]any) {
			delete(entry(m, 2), "classHistory")
		}), problem.Invalid, "Bundle.entry[2].resource.classHistory"},
		{"class change: the class before in no known system", rendered("patient-class-changed", func(m map[string]any) {
			h := entry(m, 2)["classHistory"].([]any)[0].(map[string]any)
			h["class"] = map[string]any{"system": "http://example.org/classes", "code": "X"}
		}), problem.Invalid, "Bundle.entry[2].resource.classHistory[0].class"},
		{"corrected NHS number fails its check digit", rendered("patient-updated", func(m map[string]any) {
			p := entry(m, 1)
			p["identifier"] = append(p["identifier"].([]any), map[string]any{"use": "old", "system": fhir.SystemNHSNumber, "value": "9990500003"})
		}), problem.Invalid, "Bundle.entry[1].resource.identifier[1].value"},
	}...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fhir.FromMessage(tc.doc, "RX1")
			if err == nil {
				t.Fatal("accepted")
			}
			if k := problem.KindOf(err); k != tc.kind {
				t.Errorf("kind: got %s, want %s", k, tc.kind)
			}
			var oo struct {
				Issue []struct {
					Code       string
					Expression []string
				}
			}
			if err := json.Unmarshal(problem.OperationOutcome(err), &oo); err != nil || len(oo.Issue) == 0 {
				t.Fatalf("OperationOutcome: %v", err)
			}
			got := ""
			if len(oo.Issue[0].Expression) > 0 {
				got = oo.Issue[0].Expression[0]
			}
			if got != tc.want {
				t.Errorf("expression:\n\tgot  %q\n\twant %q", got, tc.want)
			}
		})
	}
}

// TestLocateNewElements: a schema violation in what a message of a new
// event type gave is reported against the FHIR element it came from.
func TestLocateNewElements(t *testing.T) {
	v, _ := event.NewValidator()
	tests := []struct {
		name  string
		event string
		edit  func(m map[string]any)
		want  string // FHIRPath of the first issue
	}{
		{"class before not a carehub class", "patient-class-changed", func(m map[string]any) {
			h := resource(m, 2)["classHistory"].([]any)[0].(map[string]any)
			h["class"] = map[string]any{"system": fhir.SystemClass, "code": "ward-round"}
		}, "Bundle.entry[2].resource.classHistory[0].class"},
		{"location not moved to named too long", "transfer-cancelled", func(m map[string]any) {
			loc := resource(m, 2)["contained"].([]any)[1].(map[string]any)
			loc["name"] = strings.Repeat("x", 201)
		}, "Bundle.entry[2].resource.extension[0].extension[0]"},
		{"the destination's kind contradicts its NHS code", "discharge-pending", func(m map[string]any) {
			dd := resource(m, 2)["hospitalization"].(map[string]any)["dischargeDisposition"].(map[string]any)
			dd["coding"].([]any)[2].(map[string]any)["code"] = "88" // hospice, on a care-home
		}, "Bundle.entry[2].resource.hospitalization.dischargeDisposition"},
		{"not an NHS discharge destination code", "discharge-pending", func(m map[string]any) {
			dd := resource(m, 2)["hospitalization"].(map[string]any)["dischargeDisposition"].(map[string]any)
			dd["coding"].([]any)[2].(map[string]any)["code"] = "01"
		}, "Bundle.entry[2].resource.hospitalization.dischargeDisposition.coding[2].code"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := fhir.MessageBundle(examples(t)[tc.event], "", "https://epr.example/fhir")
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			_ = json.Unmarshal(b, &m)
			tc.edit(m)
			b, _ = json.Marshal(m)
			in, err := fhir.FromMessage(b, "RX1")
			if err != nil {
				t.Fatalf("FromMessage: %s", problem.OperationOutcome(err))
			}
			_, verr := v.Parse(in.Event)
			if verr == nil {
				t.Fatal("the event validates")
			}
			var oo struct {
				Issue []struct{ Expression []string }
			}
			_ = json.Unmarshal(problem.OperationOutcome(in.Locate(verr)), &oo)
			if len(oo.Issue) == 0 || len(oo.Issue[0].Expression) == 0 || oo.Issue[0].Expression[0] != tc.want {
				t.Errorf("expression:\n\tgot  %v\n\twant %q", oo.Issue, tc.want)
			}
		})
	}
}

func resource(m map[string]any, i int) map[string]any {
	return m["entry"].([]any)[i].(map[string]any)["resource"].(map[string]any)
}

// TestNotificationBundle pins the feed's FHIR rendering.
func TestNotificationBundle(t *testing.T) {
	ev := examples(t)["discharge"]
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	b, err := fhir.NotificationBundle(fhir.Subscription{Reference: "http://127.0.0.1:8080/v1/feeds/B82005", Topic: "https://carehub.dev/fhir/SubscriptionTopic/feed", Latest: 7},
		[]fhir.Notification{{Number: 6, Time: now, Withheld: true}, {Number: 7, Time: now, Event: ev}}, now)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/notification.golden.json", b)
}

// FuzzFromMessage: any input is refused with a *problem.Error or read as an
// event; nothing panics; no error echoes the input.
func FuzzFromMessage(f *testing.F) {
	f.Add(ukMessage(f, "discharge", "Encounter-f001.json", "Bundle-father.json"))
	f.Add(ukMessage(f, "admission", "Encounter-emerg.json", ""))
	f.Add(read(f, "testdata/hl7-r4-examples/Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json"))
	f.Add(read(f, "testdata/hl7-r4-examples/Encounter-f001.json"))
	f.Add([]byte(`{"resourceType":"Bundle","type":"message","entry":[{"resource":{"resourceType":"MessageHeader"}}]}`))
	// Every message carehub renders (one per example and variant) and
	// every FHIR input of the golden tests.
	seeds, _ := filepath.Glob("testdata/out/*.message.golden.json")
	inputs, _ := filepath.Glob("testdata/in/*.json")
	for _, p := range append(seeds, inputs...) {
		if strings.HasSuffix(p, ".message.golden.json") || !strings.HasSuffix(p, ".golden.json") {
			f.Add(read(f, p))
		}
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, fn := range []func() (*fhir.Inbound, error){
			func() (*fhir.Inbound, error) { return fhir.FromMessage(doc, "RX1") },
			func() (*fhir.Inbound, error) { return fhir.FromEncounter(doc, "RX1", time.Unix(0, 0)) },
		} {
			in, err := fn()
			if err != nil {
				var pe *problem.Error
				if !errorsAs(err, &pe) {
					t.Fatalf("not a *problem.Error: %T", err)
				}
				_ = problem.OperationOutcome(err)
				continue
			}
			if !json.Valid(in.Event) {
				t.Fatalf("the event is not JSON")
			}
		}
	})
}

func errorsAs(err error, target **problem.Error) bool { return errors.As(err, target) }

// TestDischargeSummaryWithoutDestination pins a crash FuzzFromMessage
// found: a discharge message whose Encounter names no discharge
// destination, with a DocumentReference (the summary) beside it, made
// FromMessage dereference a nil discharge. It is now answered as any
// incomplete discharge: a problem, at the Encounter.
func TestDischargeSummaryWithoutDestination(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(read(t, "testdata/out/discharge.message.golden.json"), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m["entry"].([]any) {
		r := e.(map[string]any)["resource"].(map[string]any)
		if r["resourceType"] == "Encounter" {
			delete(r, "hospitalization")
		}
	}
	b, _ := json.Marshal(m)
	_, err := fhir.FromMessage(b, "RX1")
	if err == nil {
		t.Fatal("a discharge without its destination was accepted")
	}
	if k := problem.KindOf(err); k != problem.Invalid {
		t.Errorf("kind %v (%v), want Invalid", k, err)
	}
}

// TestIDsFollowEventIdentity pins a bug the audit of issue 10 found: the
// ids of the Bundle, the MessageHeader and every resource were derived from
// the event's id alone, so RX1's event 0001 and VM123's event 0001 gave one
// MessageHeader.id, and a receiver dropped the second as a duplicate. They
// are derived from (source, id), the event's identity; the same event
// always gives the same ids; the conditional matches of a transaction,
// which name the patient and the encounter, do not change.
func TestIDsFollowEventIdentity(t *testing.T) {
	rx1 := *examples(t)["careplan"]
	rx1.ID, rx1.Source, rx1.Publisher = "0001", "urn:ods:RX1", "RX1"
	vm := rx1
	vm.Source, vm.Publisher = "urn:ods:VM123", "VM123"
	type ids struct {
		Bundle, Header string
		Resources      []string
		Identifier     fhirIdentifier
		Matches        []string
	}
	read := func(ev *event.Event) ids {
		t.Helper()
		msg, err := fhir.MessageBundle(ev, "RYJ", "https://epr.example/fhir")
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			ID         string
			Identifier fhirIdentifier
			Entry      []struct {
				FullURL  string
				Resource struct{ ID, ResourceType string }
			}
		}
		_ = json.Unmarshal(msg, &m)
		out := ids{Bundle: m.ID, Identifier: m.Identifier}
		for _, e := range m.Entry {
			if e.Resource.ResourceType == "MessageHeader" {
				out.Header = e.Resource.ID
				continue
			}
			out.Resources = append(out.Resources, e.Resource.ID)
		}
		tx, err := fhir.TransactionBundle(ev)
		if err != nil {
			t.Fatal(err)
		}
		var tb struct {
			Identifier fhirIdentifier
			Entry      []struct{ Request struct{ URL string } }
		}
		_ = json.Unmarshal(tx, &tb)
		if !cmp.Equal(tb.Identifier, m.Identifier) {
			t.Errorf("the transaction's identifier %v differs from the message's %v", tb.Identifier, m.Identifier)
		}
		for _, e := range tb.Entry {
			out.Matches = append(out.Matches, e.Request.URL)
		}
		return out
	}
	a, again, b := read(&rx1), read(&rx1), read(&vm)
	if d := cmp.Diff(a, again); d != "" {
		t.Errorf("the same event gave other ids (-first +second):\n%s", d)
	}
	if a.Header == b.Header || a.Bundle == b.Bundle {
		t.Errorf("RX1's and VM123's events 0001 share a MessageHeader.id (%s, %s) or Bundle.id (%s, %s)", a.Header, b.Header, a.Bundle, b.Bundle)
	}
	for i := range a.Resources {
		if a.Resources[i] == b.Resources[i] {
			t.Errorf("RX1's and VM123's events 0001 share resource id %s", a.Resources[i])
		}
	}
	for ev, got := range map[*event.Event]fhirIdentifier{&rx1: a.Identifier, &vm: b.Identifier} {
		want := fhirIdentifier{System: fhir.SystemEventID, Value: "0001"}
		want.Assigner.Identifier.System, want.Assigner.Identifier.Value = fhir.SystemODS, ev.Publisher
		if !cmp.Equal(got, want) {
			t.Errorf("Bundle.identifier of %s's event:\n\tgot  %+v\n\twant %+v", ev.Publisher, got, want)
		}
	}
	if d := cmp.Diff(a.Matches, b.Matches); d != "" || len(a.Matches) == 0 {
		t.Errorf("the conditional matches depend on the event's source (-RX1 +VM123):\n%s", d)
	}
}

// fhirIdentifier is a Bundle.identifier as read back.
type fhirIdentifier struct {
	System, Value string
	Assigner      struct {
		Identifier struct{ System, Value string }
	}
}

// TestDestinationFromFHIR: where the patient went, as a sender's
// Encounter.hospitalization says it. The kind comes from carehub's own
// type, else from the NHS Data Dictionary code (HL7 UK's
// UKCore-DischargeDestinationEngland), else from HL7's discharge
// disposition; the code is kept; the kind never contradicts a named
// organisation.
func TestDestinationFromFHIR(t *testing.T) {
	v, _ := event.NewValidator()
	c := func(system, code string) any { return map[string]any{"system": system, "code": code} }
	uk := fhir.SystemDischargeDestinationEngland
	org := func(ods string) any {
		return map[string]any{"identifier": map[string]any{"system": fhir.SystemODS, "value": ods}}
	}
	tests := []struct {
		name   string
		coding []any
		dest   any // hospitalization.destination, if any
		want   fhir.Destination
		ok     bool
	}{
		{"a code-only care home", []any{c(uk, "85")}, nil, fhir.Destination{Type: "care-home", Code: "85"}, true},
		{"a code-only NHS hospital", []any{c(uk, "51")}, nil, fhir.Destination{Type: "hospital", Code: "51"}, true},
		{"a hospice by code and organisation", []any{c(uk, "88")}, org("VM999"), fhir.Destination{Type: "hospice", Code: "88", ODS: "VM999"}, true},
		{"a nursing home by the retired code", []any{c(uk, "86")}, org("VLAXL"), fhir.Destination{Type: "nursing-home", Code: "86", ODS: "VLAXL"}, true},
		{"home", []any{c(uk, "19")}, nil, fhir.Destination{Type: "home", Code: "19"}, true},
		{"a home code beside an organisation is not home", []any{c(uk, "19")}, org("VM123"), fhir.Destination{Type: "other", Code: "19", ODS: "VM123"}, true},
		{"the code says more than the disposition", []any{c(fhir.SystemDisposition, "other-hcf"), c(uk, "85")}, nil, fhir.Destination{Type: "care-home", Code: "85"}, true},
		// Regression: HL7's discharge-disposition hosp (hospice) was read
		// as a hospital, and a hospice was sent as oth.
		{"HL7 hosp is a hospice", []any{c(fhir.SystemDisposition, "hosp")}, org("VM999"), fhir.Destination{Type: "hospice", ODS: "VM999"}, true},
		{"carehub's type and the code", []any{c(fhir.SystemDestination, "hospital"), c(uk, "87")}, nil, fhir.Destination{Type: "hospital", Code: "87"}, true},
		{"carehub's type contradicting the code", []any{c(fhir.SystemDestination, "care-home"), c(uk, "88")}, nil, fhir.Destination{}, false},
		{"not a discharge destination code", []any{c(uk, "01")}, nil, fhir.Destination{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(read(t, "testdata/out/variant-discharge-code-only-care-home.message.golden.json"), &m); err != nil {
				t.Fatal(err)
			}
			hosp := map[string]any{"dischargeDisposition": map[string]any{"coding": tc.coding}}
			if tc.dest != nil {
				hosp["destination"] = tc.dest
			}
			resource(m, 2)["hospitalization"] = hosp
			b, _ := json.Marshal(m)
			in, err := fhir.FromMessage(b, "RX1")
			if err != nil {
				t.Fatalf("FromMessage: %s", problem.OperationOutcome(err))
			}
			ev, err := v.Parse(in.Event)
			if (err == nil) != tc.ok {
				t.Fatalf("valid: got %v (%v), want %v", err == nil, in.Locate(err), tc.ok)
			}
			if err != nil {
				return
			}
			var d fhir.Data
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatal(err)
			}
			var got fhir.Destination
			if d.Discharge != nil && d.Discharge.Destination != nil {
				got = *d.Discharge.Destination
			}
			if got != tc.want {
				t.Errorf("destination:\n\tgot  %+v\n\twant %+v", got, tc.want)
			}
			if ev.DischargeDestination != tc.want.ODS {
				t.Errorf("DischargeDestination %q, want %q", ev.DischargeDestination, tc.want.ODS)
			}
		})
	}
}
