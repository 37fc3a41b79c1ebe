package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const examplesDir = "../../deploy/examples"

// The canary: the synthetic NHS number (999 test range) every example
// carries, and the merged patient's.
const (
	canary       = "9990500002"
	canaryMerged = "9991112227"
)

var (
	validatorOnce sync.Once
	validator     *Validator
	validatorErr  error
)

func newValidator(t testing.TB) *Validator {
	t.Helper()
	validatorOnce.Do(func() { validator, validatorErr = NewValidator() })
	if validatorErr != nil {
		t.Fatal(validatorErr)
	}
	return validator
}

func readExample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// facts is what the router needs from an event, for comparing.
type factsView struct {
	Type, Publisher, NHS, GP, Merged, Encounter, Destination string
	Labels                                                   []string
	HasDocument                                              bool
}

func view(e *Event) factsView {
	return factsView{e.Type, e.Publisher, e.Patient.NHSNumber.Digits(), e.Patient.GPPractice,
		e.MergedNHSNumber.Digits(), e.EncounterID, e.DischargeDestination, e.Labels, e.HasDocument}
}

func TestExamples(t *testing.T) {
	v := newValidator(t)
	tests := []struct {
		file string
		want factsView
	}{
		{"admission.json", factsView{TypeAdmission, "RX1", canary, "A81001", "", "ENC-0001", "VM123", nil, false}},
		{"transfer.json", factsView{TypeTransfer, "RX1", canary, "A81001", "", "ENC-0001", "", nil, false}},
		{"discharge.json", factsView{TypeDischarge, "RX1", canary, "A81001", "", "ENC-0001", "VM123", nil, true}},
		{"careplan.json", factsView{TypeCarePlan, "VM123", canary, "A81001", "", "", "", nil, true}},
		{"admission-cancelled.json", factsView{TypeAdmissionCancelled, "RX1", canary, "A81001", "", "ENC-0001", "", nil, false}},
		{"discharge-cancelled.json", factsView{TypeDischargeCancelled, "RX1", canary, "A81001", "", "ENC-0001", "", nil, false}},
		{"patient-updated.json", factsView{TypePatientUpdated, "RX1", canary, "A81001", "", "", "", nil, false}},
		{"patient-merged.json", factsView{TypePatientMerged, "RX1", canary, "A81001", canaryMerged, "", "", nil, false}},
		{"discharge-pending.json", factsView{TypeDischargePending, "RX1", canary, "A81001", "", "ENC-0001", "VM123", nil, false}},
		{"discharge-pending-cancelled.json", factsView{TypeDischargePendingCancelled, "RX1", canary, "A81001", "", "ENC-0001", "VM123", nil, false}},
		{"transfer-cancelled.json", factsView{TypeTransferCancelled, "RX1", canary, "A81001", "", "ENC-0001", "", nil, false}},
		{"patient-class-changed.json", factsView{TypePatientClassChanged, "RX1", canary, "A81001", "", "ENC-0001", "", nil, false}},
	}
	// Every example is in the table and every type has an example.
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.json"))
	if len(files) != len(tests) || len(Types()) != len(tests) {
		t.Errorf("%d example files, %d types, %d table rows: want one of each per type", len(files), len(Types()), len(tests))
	}
	for _, tt := range tests {
		raw := readExample(t, tt.file)
		e, err := v.Parse(raw)
		if err != nil {
			t.Errorf("Parse(%s): %v %+v", tt.file, err, violationsOf(err))
			continue
		}
		if got := view(e); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Parse(%s) facts:\n\tgot  %+v\n\twant %+v", tt.file, got, tt.want)
		}
		// The router's view agrees with ingest's.
		out, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%s): %v", tt.file, err)
		}
		u, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("Unmarshal(Marshal(%s)): %v", tt.file, err)
		}
		if got := view(u); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Unmarshal(Marshal(%s)) facts:\n\tgot  %+v\n\twant %+v", tt.file, got, tt.want)
		}
		// Canonical: stable under a round trip, and still valid.
		again, err := u.Marshal()
		if err != nil || !bytes.Equal(again, out) {
			t.Errorf("Marshal not stable for %s:\n\tfirst  %s\n\tsecond %s", tt.file, out, again)
		}
		if _, err := v.Parse(out); err != nil {
			t.Errorf("Parse(Marshal(%s)): %v", tt.file, err)
		}
		if !json.Valid(out) || bytes.ContainsAny(out, "\n\t") {
			t.Errorf("Marshal(%s) is not compact JSON", tt.file)
		}
		// The data is the sender's data, compacted.
		var want, got any
		_ = json.Unmarshal(raw, &want)
		_ = json.Unmarshal(out, &got)
		if !reflect.DeepEqual(want.(map[string]any)["data"], got.(map[string]any)["data"]) {
			t.Errorf("Marshal(%s) changed the data", tt.file)
		}
	}
}

func TestTypes(t *testing.T) {
	got := Types()
	want := []string{
		"org.carehub.admission.v1", "org.carehub.transfer.v1", "org.carehub.discharge.v1",
		"org.carehub.careplan.v1", "org.carehub.admission-cancelled.v1", "org.carehub.discharge-cancelled.v1",
		"org.carehub.patient-updated.v1", "org.carehub.patient-merged.v1",
		"org.carehub.discharge-pending.v1", "org.carehub.discharge-pending-cancelled.v1",
		"org.carehub.transfer-cancelled.v1", "org.carehub.patient-class-changed.v1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Types():\n\tgot  %q\n\twant %q", got, want)
	}
	got[0] = "changed"
	if Types()[0] != want[0] {
		t.Error("Types returned a shared slice")
	}
	// Every schema file but the shared ones and those of the forms the
	// hub makes belongs to a type.
	n := 0
	for _, f := range schemas.Files() {
		switch f {
		case "common.v1.json", "patient.v1.json", NotificationSchema, WithheldNoticeSchema, RegistrationEndedSchema:
		default:
			n++
		}
	}
	if n != len(want) {
		t.Errorf("%d data schemas for %d types", n, len(want))
	}
}

func violationsOf(err error) []problem.Violation {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe.Violations
	}
	return nil
}

// at is a wanted violation: pointer and rule.
type at struct{ Pointer, Rule string }

func pointsOf(err error) []at {
	var out []at
	for _, v := range violationsOf(err) {
		out = append(out, at{v.Pointer, v.Rule})
	}
	return out
}

// edit returns the example file with f applied to its decoded form.
func edit(t testing.TB, file string, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(readExample(t, file), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func obj(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		m = m[p].(map[string]any)
	}
	return m
}

type invalidCase struct {
	name string
	raw  []byte
	kind problem.Kind
	want []at
}

func invalidCases(t testing.TB) []invalidCase {
	dis := func(f func(m map[string]any)) []byte { return edit(t, "discharge.json", f) }
	mer := func(f func(m map[string]any)) []byte { return edit(t, "patient-merged.json", f) }
	const S = "schema:"
	return []invalidCase{
		{"nhs number check digit", dis(func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = "9990500003" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", nhs.RuleCheckDigit}}},
		{"nhs number check digit ten", dis(func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = "9991234560" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", nhs.RuleCheckDigit}}},
		{"nhs number nine digits", dis(func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = "999050000" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", S + "/properties/patient/properties/nhsNumber/pattern"}}},
		{"nhs number spaced", dis(func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = "999 050 0002" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", S + "/properties/patient/properties/nhsNumber/pattern"}}},
		{"nhs number as a JSON number", dis(func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = 9990500002 }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", S + "/properties/patient/properties/nhsNumber/type"}}},
		{"merged nhs number check digit", mer(func(m map[string]any) { obj(m, "data", "mergedPatient")["nhsNumber"] = "9991112228" }),
			problem.Invalid, []at{{"/data/mergedPatient/nhsNumber", nhs.RuleCheckDigit}}},
		{"merge of one patient", mer(func(m map[string]any) { obj(m, "data", "mergedPatient")["nhsNumber"] = canary }),
			problem.Invalid, []at{{"/data/mergedPatient/nhsNumber", RuleMergeSame}}},
		{"merge without merged patient", mer(func(m map[string]any) { delete(obj(m, "data"), "mergedPatient") }),
			problem.Invalid, []at{{"/data/mergedPatient", S + "/required"}}},
		{"unknown type", dis(func(m map[string]any) { m["type"] = "org.carehub.referral.v1" }),
			problem.Unsupported, []at{{"/type", RuleTypeUnsupported}}},
		{"type of another scheme", dis(func(m map[string]any) { m["type"] = "uk.carehub.discharge.v1" }),
			problem.Unsupported, []at{{"/type", RuleTypeUnsupported}}},
		{"missing type", dis(func(m map[string]any) { delete(m, "type") }),
			problem.Invalid, []at{{"/type", RuleRequired}}},
		{"type not a string", dis(func(m map[string]any) { m["type"] = 7 }),
			problem.Invalid, []at{{"/type", RuleType}}},
		{"missing data", dis(func(m map[string]any) { delete(m, "data") }),
			problem.Invalid, []at{{"/data", RuleRequired}}},
		{"null data", dis(func(m map[string]any) { m["data"] = nil }),
			problem.Invalid, []at{{"/data", RuleRequired}}},
		{"data not an object", dis(func(m map[string]any) { m["data"] = "9990500002" }),
			problem.Invalid, []at{{"/data", RuleData}}},
		{"data_base64", dis(func(m map[string]any) { delete(m, "data"); m["data_base64"] = "eyJ9" }),
			problem.Invalid, []at{{"/data_base64", RuleDataBase64}, {"/data", RuleRequired}}},
		{"source without urn", dis(func(m map[string]any) { m["source"] = "RX1" }),
			problem.Invalid, []at{{"/source", RuleSource}}},
		{"source lower case", dis(func(m map[string]any) { m["source"] = "urn:ods:rx1" }),
			problem.Invalid, []at{{"/source", RuleSource}}},
		{"source a URL", dis(func(m map[string]any) { m["source"] = "https://rx1.nhs.uk/adt" }),
			problem.Invalid, []at{{"/source", RuleSource}}},
		{"missing source", dis(func(m map[string]any) { delete(m, "source") }),
			problem.Invalid, []at{{"/source", RuleRequired}}},
		{"specversion", dis(func(m map[string]any) { m["specversion"] = "0.3" }),
			problem.Invalid, []at{{"/specversion", RuleSpecVersion}}},
		{"specversion a number", dis(func(m map[string]any) { m["specversion"] = 1.0 }),
			problem.Invalid, []at{{"/specversion", RuleSpecVersion}}},
		{"empty id", dis(func(m map[string]any) { m["id"] = "" }),
			problem.Invalid, []at{{"/id", RuleRequired}}},
		{"id too long", dis(func(m map[string]any) { m["id"] = strings.Repeat("x", 257) }),
			problem.Invalid, []at{{"/id", RuleID}}},
		{"nhs number in id", dis(func(m map[string]any) { m["id"] = "adt-" + canary + "-1" }),
			problem.Invalid, []at{{"/id", RuleNHSInEnvelope}}},
		{"nhs number in subject", dis(func(m map[string]any) { m["subject"] = canary }),
			problem.Invalid, []at{{"/subject", RuleNHSInEnvelope}}},
		{"nhs number in extension", dis(func(m map[string]any) { m["patientref"] = "NHS" + canary }),
			problem.Invalid, []at{{"/patientref", RuleNHSInEnvelope}}},
		{"missing time", dis(func(m map[string]any) { delete(m, "time") }),
			problem.Invalid, []at{{"/time", RuleRequired}}},
		{"time not RFC 3339", dis(func(m map[string]any) { m["time"] = "18/03/2025 14:05" }),
			problem.Invalid, []at{{"/time", RuleTime}}},
		{"time without offset", dis(func(m map[string]any) { m["time"] = "2025-03-18T14:05:00" }),
			problem.Invalid, []at{{"/time", RuleTime}}},
		{"datacontenttype", dis(func(m map[string]any) { m["datacontenttype"] = "application/xml" }),
			problem.Invalid, []at{{"/datacontenttype", RuleDataContentType}}},
		{"dataschema of another type", dis(func(m map[string]any) { m["dataschema"] = schemas.URL("admission.v1.json") }),
			problem.Invalid, []at{{"/dataschema", RuleDataSchema}}},
		{"extension name", dis(func(m map[string]any) { m["Trace_Parent"] = "x" }),
			problem.Invalid, []at{{"/Trace_Parent", RuleExtensionName}}},
		{"extension name too long", dis(func(m map[string]any) { m["abcdefghijklmnopqrstu"] = "x" }),
			problem.Invalid, []at{{"/abcdefghijklmnopqrstu", RuleExtensionName}}},
		{"extension name that is a value", dis(func(m map[string]any) { m[canary] = "x" }),
			problem.Invalid, []at{{"", RuleNHSInEnvelope}}},
		{"extension value", dis(func(m map[string]any) { m["traceparent"] = map[string]any{"a": 1} }),
			problem.Invalid, []at{{"/traceparent", RuleExtensionValue}}},
		{"missing required property", dis(func(m map[string]any) { delete(obj(m, "data", "patient"), "nhsNumber") }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", S + "/properties/patient/required"}}},
		{"missing patient and encounter", dis(func(m map[string]any) { delete(obj(m, "data"), "patient"); delete(obj(m, "data"), "encounter") }),
			problem.Invalid, []at{{"/data/encounter", S + "/required"}, {"/data/patient", S + "/required"}}},
		{"missing encounter id", dis(func(m map[string]any) { delete(obj(m, "data", "encounter"), "id") }),
			problem.Invalid, []at{{"/data/encounter/id", S + "/properties/encounter/required"}}},
		{"wrong type", dis(func(m map[string]any) { obj(m, "data", "encounter")["id"] = 1 }),
			problem.Invalid, []at{{"/data/encounter/id", S + "/properties/encounter/properties/id/type"}}},
		{"wrong enum", dis(func(m map[string]any) {
			obj(m, "data", "discharge", "destination")["type"] = "residential"
			delete(obj(m, "data", "discharge", "destination"), "code")
		}),
			problem.Invalid, []at{{"/data/discharge/destination/type", S + "/properties/discharge/properties/destination/properties/type/enum"}}},
		{"bad ODS code", dis(func(m map[string]any) { obj(m, "data", "patient")["gpPractice"] = "a81001" }),
			problem.Invalid, []at{{"/data/patient/gpPractice", S + "/properties/patient/properties/gpPractice/pattern"}}},
		{"bad date", dis(func(m map[string]any) { obj(m, "data", "patient")["birthDate"] = "01/06/1938" }),
			problem.Invalid, []at{{"/data/patient/birthDate", S + "/properties/patient/properties/birthDate/format"}}},
		{"additional property (typo)", dis(func(m map[string]any) {
			p := obj(m, "data", "patient")
			p["nhsnumber"] = p["nhsNumber"]
			delete(p, "nhsNumber")
		}),
			problem.Invalid, []at{
				{"/data/patient/nhsNumber", S + "/properties/patient/required"},
				{"/data/patient/nhsnumber", S + "/properties/patient/additionalProperties"},
			}},
		{"additional property at top of data", dis(func(m map[string]any) { obj(m, "data")["dischargeSummary"] = "x" }),
			problem.Invalid, []at{{"/data/dischargeSummary", S + "/additionalProperties"}}},
		{"additional property named like a value", dis(func(m map[string]any) { obj(m, "data", "patient")[canaryMerged] = true }),
			problem.Invalid, []at{{"/data/patient", S + "/properties/patient/additionalProperties"}}},
		{"a care home code on a hospital", dis(func(m map[string]any) { obj(m, "data", "discharge", "destination")["type"] = "hospital" }),
			problem.Invalid, []at{{"/data/discharge/destination/type", S + "/properties/discharge/properties/destination/allOf/1/then/properties/type/const"}}},
		{"not a discharge destination code", dis(func(m map[string]any) { obj(m, "data", "discharge", "destination")["code"] = "01" }),
			problem.Invalid, []at{{"/data/discharge/destination/code", S + "/properties/discharge/properties/destination/properties/code/enum"}}},
		{"discharge home without ODS is fine, without destination is not", dis(func(m map[string]any) { delete(obj(m, "data", "discharge"), "destination") }),
			problem.Invalid, []at{{"/data/discharge/destination", S + "/properties/discharge/required"}}},
		{"summary inline and by reference", dis(func(m map[string]any) {
			obj(m, "data", "discharge")["summaryReference"] = map[string]any{"url": "https://docs.example.nhs.uk/d/1", "contentType": "application/pdf"}
		}),
			problem.Invalid, []at{{"/data/discharge", S + "/properties/discharge/not"}}},
		{"summary without content", dis(func(m map[string]any) { delete(obj(m, "data", "discharge", "summary"), "text") }),
			problem.Invalid, []at{{"/data/discharge/summary", S + "/properties/discharge/properties/summary/anyOf"}}},
		{"summary reference over http", dis(func(m map[string]any) {
			d := obj(m, "data", "discharge")
			delete(d, "summary")
			d["summaryReference"] = map[string]any{"url": "http://docs.example.nhs.uk/d/1", "contentType": "application/pdf"}
		}),
			problem.Invalid, []at{{"/data/discharge/summaryReference/url", S + "/properties/discharge/properties/summaryReference/properties/url/pattern"}}},
		{"sensitivity code", dis(func(m map[string]any) { obj(m, "data")["sensitivity"] = []any{"Mental Health"} }),
			problem.Invalid, []at{{"/data/sensitivity/0", S + "/properties/sensitivity/items/pattern"}}},
		{"duplicate key", []byte(strings.Replace(string(readExample(t, "discharge.json")),
			`"nhsNumber": "9990500002",`, `"nhsNumber": "9990500002", "nhsNumber": "9991112227",`, 1)),
			problem.Invalid, []at{{"/data/patient/nhsNumber", RuleDuplicateKey}}},
		{"duplicate key escaped", []byte(strings.Replace(string(readExample(t, "discharge.json")),
			`"gpPractice": "A81001",`, `"gpPractice": "A81001", "gp\u0050ractice": "B82001",`, 1)),
			problem.Invalid, []at{{"/data/patient/gpPractice", RuleDuplicateKey}}},
		{"duplicate envelope attribute", []byte(strings.Replace(string(readExample(t, "discharge.json")),
			`"source": "urn:ods:RX1",`, `"source": "urn:ods:RX1", "source": "urn:ods:RX1",`, 1)),
			problem.Invalid, []at{{"/source", RuleDuplicateKey}}},
		{"not JSON", []byte(`{"specversion": "1.0", "id": "9990500002`), problem.Malformed, nil},
		{"JSON array", []byte(`[{"specversion": "1.0"}]`), problem.Malformed, nil},
		{"JSON null", []byte(`null`), problem.Malformed, nil},
		{"JSON string", []byte(`"9990500002"`), problem.Malformed, nil},
		{"empty", []byte(``), problem.Malformed, nil},
	}
}

func TestParseInvalid(t *testing.T) {
	v := newValidator(t)
	for _, tt := range invalidCases(t) {
		e, err := v.Parse(tt.raw)
		if err == nil {
			t.Errorf("%s: Parse succeeded (%v)", tt.name, e)
			continue
		}
		if e != nil {
			t.Errorf("%s: Parse returned an event with an error", tt.name)
		}
		if got := problem.KindOf(err); got != tt.kind {
			t.Errorf("%s: kind:\n\tgot  %v\n\twant %v", tt.name, got, tt.kind)
		}
		if got := pointsOf(err); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: violations:\n\tgot  %v\n\twant %v", tt.name, got, tt.want)
		}
		for _, x := range violationsOf(err) {
			if x.Detail == "" {
				t.Errorf("%s: violation %s %s has no detail", tt.name, x.Pointer, x.Rule)
			}
		}
	}
}

// TestDischargeDestinations: a destination is a kind of place (type), the
// NHS Data Dictionary code it came from if any (code, which type agrees
// with), and the organisation if named (ods, the routing fact).
func TestDischargeDestinations(t *testing.T) {
	v := newValidator(t)
	for _, tt := range []struct {
		dest  map[string]any
		ok    bool
		facts string
	}{
		{map[string]any{"type": "home"}, true, ""},
		{map[string]any{"type": "other"}, true, ""},
		{map[string]any{"type": "hospital", "ods": "RX101"}, true, "RX101"},
		{map[string]any{"type": "nursing-home", "ods": "VLAXL"}, true, "VLAXL"},
		// Regression (issue 10 audit): a care home, nursing home, hospital
		// or hospice the sender did not name was refused, so the kind of
		// place survived only in words; it is valid without ods, and
		// routes to no one by destination.
		{map[string]any{"type": "hospice"}, true, ""},
		{map[string]any{"type": "nursing-home"}, true, ""},
		{map[string]any{"type": "care-home", "code": "85"}, true, ""},
		{map[string]any{"type": "care-home", "code": "85", "ods": "VM123"}, true, "VM123"},
		{map[string]any{"type": "hospital", "code": "51"}, true, ""},
		{map[string]any{"type": "hospice", "code": "88", "ods": "VM999"}, true, "VM999"},
		{map[string]any{"type": "nursing-home", "code": "86"}, true, ""},
		{map[string]any{"type": "home", "code": "19"}, true, ""},
		{map[string]any{"type": "other", "code": "19", "ods": "VM123", "name": "usual place of residence"}, true, "VM123"},
		{map[string]any{"type": "other", "code": "37", "name": "court"}, true, ""},
		// The kind never contradicts the code.
		{map[string]any{"type": "other", "code": "85"}, false, ""},
		{map[string]any{"type": "care-home", "code": "88"}, false, ""},
		{map[string]any{"type": "home", "code": "54", "ods": "VM123"}, false, ""},
		{map[string]any{"type": "hospital", "code": "99"}, false, ""},
		{map[string]any{"type": "care-home", "code": "01"}, false, ""},
		{map[string]any{"type": "care-home", "code": 85}, false, ""},
		{map[string]any{"code": "85"}, false, ""},
	} {
		raw := edit(t, "discharge.json", func(m map[string]any) { obj(m, "data", "discharge")["destination"] = tt.dest })
		e, err := v.Parse(raw)
		if (err == nil) != tt.ok {
			t.Errorf("destination %v: err = %v, want ok=%v", tt.dest, err, tt.ok)
			continue
		}
		if err == nil && e.DischargeDestination != tt.facts {
			t.Errorf("destination %v: DischargeDestination = %q, want %q", tt.dest, e.DischargeDestination, tt.facts)
		}
	}
}

func TestParseFacts(t *testing.T) {
	v := newValidator(t)
	raw := edit(t, "discharge.json", func(m map[string]any) {
		obj(m, "data")["sensitivity"] = []any{"mental-health", "safeguarding"}
		d := obj(m, "data", "discharge")
		delete(d, "summary")
		d["summaryReference"] = map[string]any{"url": "https://docs.example.nhs.uk/d/1", "contentType": "application/pdf"}
		m["subject"] = "ENC-0001"
		m["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		m["carehubpriority"] = 3
		m["datacontenttype"] = nil // null: absent
	})
	e, err := v.Parse(raw)
	if err != nil {
		t.Fatal(err, violationsOf(err))
	}
	want := factsView{TypeDischarge, "RX1", canary, "A81001", "", "ENC-0001", "VM123", []string{"mental-health", "safeguarding"}, true}
	if got := view(e); !reflect.DeepEqual(got, want) {
		t.Errorf("facts:\n\tgot  %+v\n\twant %+v", got, want)
	}
	if e.Subject != "ENC-0001" || e.DataContentType != "" || len(e.Extensions) != 2 ||
		string(e.Extensions["carehubpriority"]) != "3" || !e.Time.Equal(time.Date(2025, 3, 18, 14, 5, 0, 0, time.UTC)) {
		t.Errorf("envelope: %+v", []any{e.Subject, e.DataContentType, e.Extensions, e.Time})
	}
	out, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	wantPrefix := `{"specversion":"1.0","id":"3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03","source":"urn:ods:RX1",` +
		`"type":"org.carehub.discharge.v1","subject":"ENC-0001","time":"2025-03-18T14:05:00Z",` +
		`"datacontenttype":"application/json","carehubpriority":3,` +
		`"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","data":{`
	if !strings.HasPrefix(string(out), wantPrefix) {
		t.Errorf("Marshal:\n\tgot  %s\n\twant prefix %s", out, wantPrefix)
	}
}

// TestNoValuesInErrors: no error from an invalid event, nor a log line
// about it, holds the NHS number or any other value from the payload.
func TestNoValuesInErrors(t *testing.T) {
	v := newValidator(t)
	schemaText := ""
	for _, f := range schemas.Files() {
		b, _ := schemas.FS.ReadFile(f)
		schemaText += string(b)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	var slogBuf bytes.Buffer
	slogger := slog.New(slog.NewJSONHandler(&slogBuf, nil))

	for _, tt := range invalidCases(t) {
		_, err := v.Parse(tt.raw)
		if err == nil {
			t.Fatalf("%s: no error", tt.name)
		}
		var pe *problem.Error
		if !errors.As(err, &pe) {
			t.Fatalf("%s: error is %T", tt.name, err)
		}
		texts := []string{err.Error(), fmt.Sprintf("%+v", err), pe.Message, problem.Public(err)}
		if pe.Err != nil {
			texts = append(texts, pe.Err.Error())
		}
		for _, x := range pe.Violations {
			texts = append(texts, x.Pointer+" "+x.Rule+" "+x.Detail)
		}
		details, _ := json.Marshal(problem.DetailsOf(err))
		texts = append(texts, string(details))
		log.Warn("rejected event", zap.Error(err))
		slogger.Warn("rejected event", "err", err)

		for _, s := range texts {
			for _, value := range []string{canary, canaryMerged, "9990500003", "999050000", "9991234560", "9991112228"} {
				if strings.Contains(s, value) {
					t.Errorf("%s: error text shows an NHS number: %q", tt.name, s)
				}
			}
			for _, value := range payloadValues(tt.raw) {
				if !strings.Contains(schemaText, value) && strings.Contains(s, value) {
					t.Errorf("%s: error text shows payload value %q: %q", tt.name, value, s)
				}
			}
		}
	}
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		if bytes.Contains(b, []byte(canary)) {
			t.Errorf("zap log shows the NHS number: %s", b)
		}
	}
	if bytes.Contains(slogBuf.Bytes(), []byte(canary)) {
		t.Errorf("slog log shows the NHS number: %s", slogBuf.Bytes())
	}
}

// payloadValues returns the string and number values (4+ characters) of a
// JSON document, at any depth, skipping the envelope attributes that are
// metadata rather than data.
func payloadValues(raw []byte) []string {
	var doc any
	if json.Unmarshal(raw, &doc) != nil {
		return nil
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case string:
			if len(v) >= 4 {
				out = append(out, v)
			}
		case float64:
			if s := fmt.Sprint(v); len(s) >= 4 {
				out = append(out, s)
			}
		}
	}
	if m, ok := doc.(map[string]any); ok {
		walk(m["data"])
		walk(m["subject"])
		walk(m["id"])
	}
	return out
}

func TestEventRedactsItself(t *testing.T) {
	v := newValidator(t)
	e, err := v.Parse(readExample(t, "discharge.json"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{canary, "TESTPATIENT", "SYNTHETIC", "A81001", "VM123"}
	var outs []string
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
		outs = append(outs, fmt.Sprintf(f, e), fmt.Sprintf(f, *e))
	}
	core, logs := observer.New(zapcore.DebugLevel)
	zap.New(core).Info("routed", zap.Any("event", e), zap.Object("obj", *e), zap.Stringer("str", e))
	for _, l := range logs.All() {
		b, _ := json.Marshal(l.ContextMap())
		outs = append(outs, string(b))
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("routed", "event", e, "value", *e)
	outs = append(outs, buf.String())
	for _, s := range outs {
		for _, secret := range secrets {
			if strings.Contains(s, secret) {
				t.Errorf("output %q shows %q", s, secret)
			}
		}
		if !strings.Contains(s, "3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03") {
			t.Errorf("output %q does not identify the event", s)
		}
	}
}

func TestUnmarshal(t *testing.T) {
	good := readExample(t, "discharge.json")
	e, err := Unmarshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := view(e), (factsView{TypeDischarge, "RX1", canary, "A81001", "", "ENC-0001", "VM123", nil, true}); !reflect.DeepEqual(got, want) {
		t.Errorf("facts:\n\tgot  %+v\n\twant %+v", got, want)
	}
	tests := []struct {
		name string
		raw  []byte
		kind problem.Kind
		want []at
	}{
		{"not JSON", []byte(`{`), problem.Malformed, nil},
		{"bad check digit", edit(t, "discharge.json", func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = "9990500003" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", nhs.RuleCheckDigit}}},
		{"no NHS number", edit(t, "discharge.json", func(m map[string]any) { delete(obj(m, "data", "patient"), "nhsNumber") }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", RuleRequired}}},
		{"no data", edit(t, "discharge.json", func(m map[string]any) { delete(m, "data") }),
			problem.Invalid, []at{{"/data", RuleData}}},
		{"no time", edit(t, "discharge.json", func(m map[string]any) { delete(m, "time") }),
			problem.Invalid, []at{{"/time", RuleRequired}}},
		{"wrong shape", edit(t, "discharge.json", func(m map[string]any) { obj(m, "data")["patient"] = "x" }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", RuleRequired}}},
		{"NHS number not a string", edit(t, "discharge.json", func(m map[string]any) { obj(m, "data", "patient")["nhsNumber"] = 9990500002 }),
			problem.Invalid, []at{{"/data/patient/nhsNumber", nhs.RuleFormat}}},
		{"trailing garbage", append(readExample(t, "discharge.json"), "{}"...), problem.Malformed, nil},
		// Regression (found by FuzzParse): a NUL byte after the object read
		// as the end of the input, and the duplicate-key scan ran off the
		// end of what followed (a panic).
		{"NUL then garbage", append(readExample(t, "discharge.json"), "\x00d/json\",\"id\":\"x"...), problem.Malformed, nil},
	}
	for _, tt := range tests {
		_, err := Unmarshal(tt.raw)
		if got := problem.KindOf(err); got != tt.kind {
			t.Errorf("%s: kind:\n\tgot  %v\n\twant %v", tt.name, got, tt.kind)
		}
		if got := pointsOf(err); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: violations:\n\tgot  %v\n\twant %v", tt.name, got, tt.want)
		}
	}
}

func TestMarshalRejectsIncompleteEvents(t *testing.T) {
	base := Event{ID: "x", Source: "urn:ods:RX1", Type: TypeAdmission, Time: time.Unix(0, 0), Data: json.RawMessage(`{}`)}
	if _, err := base.Marshal(); err != nil {
		t.Fatalf("Marshal of a complete event: %v", err)
	}
	for name, f := range map[string]func(e *Event){
		"no id":          func(e *Event) { e.ID = "" },
		"no time":        func(e *Event) { e.Time = time.Time{} },
		"data not obj":   func(e *Event) { e.Data = json.RawMessage(`[1]`) },
		"data not JSON":  func(e *Event) { e.Data = json.RawMessage(`{"a":`) },
		"bad ext name":   func(e *Event) { e.Extensions = map[string]json.RawMessage{"Bad_Name": []byte(`1`)} },
		"object ext":     func(e *Event) { e.Extensions = map[string]json.RawMessage{"ext": []byte(`{}`)} },
		"ext not JSON":   func(e *Event) { e.Extensions = map[string]json.RawMessage{"ext": []byte(`"x`)} },
		"empty ext":      func(e *Event) { e.Extensions = map[string]json.RawMessage{"ext": nil} },
		"no source":      func(e *Event) { e.Source = "" },
		"no type at all": func(e *Event) { e.Type = "" },
	} {
		e := base
		f(&e)
		if _, err := e.Marshal(); err == nil {
			t.Errorf("%s: Marshal succeeded", name)
		}
	}
	e := base
	e.ID = "quote\" and \u00e9"
	out, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	u, err := Unmarshal(append(out[:len(out)-len(`"data":{}}`)], []byte(`"data":{"patient":{"nhsNumber":"9990500002"}}}`)...))
	if err != nil || u.ID != e.ID {
		t.Errorf("escaped id round trip: %q, %v", u.ID, err)
	}
}

func TestParseBatch(t *testing.T) {
	ev := string(readExample(t, "admission.json"))
	tests := []struct {
		in   string
		n    int
		kind problem.Kind
	}{
		{"[" + ev + "," + ev + "]", 2, 0},
		{" \n[" + ev + "]", 1, 0},
		{`[1, "x"]`, 2, 0}, // elements are checked by Parse, not here
		{"[]", 0, problem.Invalid},
		{ev, 0, problem.Invalid},
		{"null", 0, problem.Invalid},
		{"", 0, problem.Invalid},
		{"[" + ev, 0, problem.Invalid},
	}
	for _, tt := range tests {
		got, err := ParseBatch([]byte(tt.in))
		if len(got) != tt.n || problem.KindOf(err) != tt.kind && !(tt.kind == 0 && err == nil) {
			t.Errorf("ParseBatch(%.20q...):\n\tgot  %d events, %v\n\twant %d events, kind %v", tt.in, len(got), err, tt.n, tt.kind)
		}
	}
	if _, err := ParseBatch([]byte("[]")); !reflect.DeepEqual(pointsOf(err), []at{{"", RuleBatchNotEmpty}}) {
		t.Errorf("ParseBatch([]) violations = %v", pointsOf(err))
	}
	if _, err := ParseBatch([]byte(ev)); !reflect.DeepEqual(pointsOf(err), []at{{"", RuleBatchArray}}) {
		t.Errorf("ParseBatch(one event) violations = %v", pointsOf(err))
	}
}

func TestTooManyViolations(t *testing.T) {
	v := newValidator(t)
	raw := edit(t, "discharge.json", func(m map[string]any) {
		d := obj(m, "data")
		for i := 0; i < 30; i++ {
			d[fmt.Sprintf("extra%c", 'a'+i)] = i
		}
	})
	_, err := v.Parse(raw)
	if got := len(violationsOf(err)); got != MaxViolations {
		t.Errorf("got %d violations, want %d", got, MaxViolations)
	}
	if !strings.Contains(err.Error(), "first 20") {
		t.Errorf("error %q does not say the list is cut", err)
	}
}

func TestDuplicateKey(t *testing.T) {
	tests := []struct {
		in   string
		want string // pointer; "-" = none
	}{
		{`{"a":1,"b":2}`, "-"},
		{`{"a":{"a":1},"b":{"a":2}}`, "-"},
		{`[{"a":1},{"a":1}]`, "-"},
		{`{"a":1,"a":2}`, "/a"},
		{`{"a":[{"x":1},{"x":1,"x":2}]}`, "/a/1/x"},
		{`{"ab":1,"a\u0062":2}`, "/ab"},
		{`{"a\"b":1,"a\"b":2}`, ""},   // not a field name: withheld, the pointer names the parent
		{`{"x/y":{"k":1,"k":1}}`, ""}, // likewise: the pointer stops at the root
		{`{"a":"{\"a\":1,\"a\":2}"}`, "-"},
		{`{"s":"\\","s":1}`, "/s"},
		{`{"` + canary + `":{"a":1,"a":2}}`, ""},
		{`{"e":{"` + canary + `":1,"` + canary + `":2}}`, "/e"},
	}
	many := `{`
	for i := 0; i < 100; i++ {
		many += fmt.Sprintf(`"k%d":1,`, i)
	}
	tests = append(tests, struct{ in, want string }{many + `"k5":2}`, "/k5"}, struct{ in, want string }{many + `"z":2}`, "-"})
	for _, tt := range tests {
		if !json.Valid([]byte(tt.in)) {
			t.Fatalf("test input %s is not JSON", tt.in)
		}
		r := scan([]byte(tt.in))
		got := r.dup
		if !r.hasDup {
			got = "-"
		}
		if got != tt.want {
			t.Errorf("scan(%.40s).dup:\n\tgot  %q\n\twant %q", tt.in, got, tt.want)
		}
	}
}

func TestConcurrentParse(t *testing.T) {
	v := newValidator(t)
	good := readExample(t, "discharge.json")
	bad := invalidCases(t)[0].raw
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := v.Parse(good); err != nil {
					t.Error(err)
					return
				}
				if _, err := v.Parse(bad); err == nil {
					t.Error("bad event accepted")
					return
				}
			}
		}()
	}
	wg.Wait()
}

var longDigitRun = regexp.MustCompile(`[0-9]{5,}`)

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.json"))
	sort.Strings(files)
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	for _, c := range invalidCases(f) {
		f.Add(c.raw)
	}
	v := newValidator(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := v.Parse(raw)
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *problem.Error", err)
			}
			switch pe.Kind {
			case problem.Malformed, problem.Invalid, problem.Unsupported:
			default:
				t.Fatalf("kind %v: %v", pe.Kind, err)
			}
			if pe.Kind != problem.Malformed && len(pe.Violations) == 0 {
				t.Fatalf("%v error without violations", pe.Kind)
			}
			if len(pe.Violations) > MaxViolations {
				t.Fatalf("%d violations", len(pe.Violations))
			}
			texts := pe.Error() + pe.Message
			for _, x := range pe.Violations {
				texts += x.Pointer + x.Rule + x.Detail
			}
			if longDigitRun.MatchString(texts) {
				t.Fatalf("error text holds a run of digits: %q", texts)
			}
			return
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of an accepted event: %v", err)
		}
		e2, err := v.Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(e)): %v %v", err, violationsOf(err))
		}
		u, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("Unmarshal(Marshal(e)): %v", err)
		}
		if !reflect.DeepEqual(view(e), view(e2)) || !reflect.DeepEqual(view(e), view(u)) {
			t.Fatalf("facts differ: %+v %+v %+v", view(e), view(e2), view(u))
		}
		for _, f := range []Form{FormFull, FormNotification} {
			if _, err := e.Shape(f, ""); err != nil {
				t.Fatalf("Shape(%s) of an accepted event: %v", f, err)
			}
		}
	})
}

func BenchmarkParseDischarge(b *testing.B) {
	v := newValidator(b)
	raw := readExample(b, "discharge.json")
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Parse(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDischargeParallel(b *testing.B) {
	v := newValidator(b)
	raw := readExample(b, "discharge.json")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Parse(raw); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkParseInvalid(b *testing.B) {
	v := newValidator(b)
	raw := invalidCases(b)[0].raw
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Parse(raw); err == nil {
			b.Fatal("accepted")
		}
	}
}

func BenchmarkUnmarshalDischarge(b *testing.B) {
	raw := readExample(b, "discharge.json")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Unmarshal(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalDischarge(b *testing.B) {
	e, err := Unmarshal(readExample(b, "discharge.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNotificationDischarge(b *testing.B) {
	e, err := Unmarshal(readExample(b, "discharge.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Notification(""); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConfidentialAndPreviousNHSNumber: data.confidential and
// data.previousNhsNumber become facts, on both the ingest and the router
// paths; a previous number is checked like any NHS number.
func TestConfidentialAndPreviousNHSNumber(t *testing.T) {
	v := newValidator(t)
	var doc map[string]any
	_ = json.Unmarshal(readExample(t, "patient-updated.json"), &doc)
	data := doc["data"].(map[string]any)
	data["confidential"] = true
	data["previousNhsNumber"] = canaryMerged
	data["changed"] = []string{"nhsNumber"}
	raw, _ := json.Marshal(doc)
	e, err := v.Parse(raw)
	if err != nil {
		t.Fatalf("Parse: %v %+v", err, violationsOf(err))
	}
	out, _ := e.Marshal()
	u, err := Unmarshal(out)
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]*Event{"Parse": e, "Unmarshal": u} {
		if !got.Confidential || got.PreviousNHSNumber.Digits() != canaryMerged {
			t.Errorf("%s: Confidential %v, PreviousNHSNumber set %v; want true, true", name, got.Confidential, !got.PreviousNHSNumber.IsZero())
		}
	}

	tests := []struct {
		name     string
		previous string
		rule     string
	}{
		{"check digit", canaryMerged[:9] + string('0'+(canaryMerged[9]-'0'+1)%10), "nhs-number-check-digit"},
		{"the patient's own number", canary, RulePreviousSame},
	}
	for _, tt := range tests {
		data["previousNhsNumber"] = tt.previous
		raw, _ := json.Marshal(doc)
		_, err := v.Parse(raw)
		var found bool
		for _, x := range violationsOf(err) {
			found = found || x.Pointer == "/data/previousNhsNumber" && x.Rule == tt.rule
		}
		if !found {
			t.Errorf("%s: got %v %+v, want %s at /data/previousNhsNumber", tt.name, err, violationsOf(err), tt.rule)
		}
	}
}

// TestInvalidUTF8IsRefused pins part of issue 14's fifth defect: a family
// name with bytes \xff\xfe got 202 and was delivered as invalid JSON, and
// invalid bytes in id were replaced silently, so that the 202 and the
// webhook-id differed from what was sent. Invalid UTF-8 is now refused
// (malformed, 400) with the byte offset, never the bytes.
func TestInvalidUTF8IsRefused(t *testing.T) {
	v := newValidator(t)
	raw := string(readExample(t, "discharge.json"))
	tests := []struct{ name, in string }{
		{"in a name", strings.Replace(raw, `"TESTPATIENT"`, "\"TEST\xff\xfePATIENT\"", 1)},
		{"in the id", strings.Replace(raw, `"3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03"`, "\"3f6b1c2e\xc3\"", 1)},
	}
	for _, tt := range tests {
		_, err := v.Parse([]byte(tt.in))
		if problem.KindOf(err) != problem.Malformed || !strings.Contains(err.Error(), "not valid UTF-8 (at byte") {
			t.Errorf("%s: got %v, want malformed, not valid UTF-8 at a byte offset", tt.name, err)
		}
	}
}

// TestDestinationCodesAreTheSchemas: the table of discharge destination
// codes (LookupDestinationCode) and common.v1.json's dischargeDestination
// agree: every code is valid with the type it names (and, for home, with
// other, which the type is beside a named organisation) and with no other
// type, and nothing outside the table is a code.
func TestDestinationCodesAreTheSchemas(t *testing.T) {
	v := newValidator(t)
	types := []string{DestinationHome, DestinationCareHome, DestinationNursingHome,
		DestinationHospital, DestinationHospice, DestinationOther}
	codes := DestinationCodes()
	if len(codes) != 22 {
		t.Errorf("%d destination codes, want 22", len(codes))
	}
	for _, dc := range codes {
		if got, ok := LookupDestinationCode(dc.Code); !ok || got != dc {
			t.Errorf("LookupDestinationCode(%q) = %+v, %v", dc.Code, got, ok)
		}
		if !slices.Contains(types, dc.Kind) || dc.Description == "" {
			t.Errorf("code %s: kind %q, description %q", dc.Code, dc.Kind, dc.Description)
		}
		for _, typ := range types {
			want := typ == dc.Kind || (dc.Kind == DestinationHome && typ == DestinationOther)
			raw := edit(t, "discharge.json", func(m map[string]any) {
				obj(m, "data", "discharge")["destination"] = map[string]any{"type": typ, "code": dc.Code}
			})
			if _, err := v.Parse(raw); (err == nil) != want {
				t.Errorf("type %s, code %s: err = %v, want valid=%v", typ, dc.Code, err, want)
			}
		}
	}
	for _, c := range []string{"00", "01", "1", "019", "20", "86 ", "A1"} {
		if _, ok := LookupDestinationCode(c); ok {
			t.Errorf("LookupDestinationCode(%q) found a code", c)
		}
		raw := edit(t, "discharge.json", func(m map[string]any) {
			obj(m, "data", "discharge")["destination"] = map[string]any{"type": "other", "code": c}
		})
		if _, err := v.Parse(raw); err == nil {
			t.Errorf("code %q is valid", c)
		}
	}
}
