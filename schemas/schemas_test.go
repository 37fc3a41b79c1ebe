package schemas

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/carehub/carehub/schemas/ods"
	"github.com/santhosh-tekuri/jsonschema/v5"
)

func TestEveryFileCompiles(t *testing.T) {
	c, err := NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"admission-cancelled.v1.json", "admission.v1.json", "careplan.v1.json", "common.v1.json",
		"discharge-cancelled.v1.json", "discharge-pending-cancelled.v1.json", "discharge-pending.v1.json",
		"discharge.v1.json", "notification.v1.json", "patient-class-changed.v1.json", "patient-merged.v1.json",
		"patient-updated.v1.json", "patient.v1.json", "registration-ended.v1.json", "transfer-cancelled.v1.json",
		"transfer.v1.json", "withheld-notice.v1.json",
	}
	if got := Files(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Files():\n\tgot  %q\n\twant %q", got, want)
	}
	for _, name := range Files() {
		if _, err := c.Compile(URL(name)); err != nil {
			t.Errorf("Compile(%s): %v", name, err)
		}
	}
}

// TestNoOutsideRefs: a $ref to anything not embedded must fail to compile
// rather than be fetched.
func TestNoOutsideRefs(t *testing.T) {
	c, err := NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("https://carehub.dev/schemas/x.json", strings.NewReader(
		`{"$schema":"https://json-schema.org/draft/2020-12/schema","$ref":"https://example.org/remote.json"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compile("https://carehub.dev/schemas/x.json"); err == nil {
		t.Fatal("compiling a schema with a remote $ref succeeded")
	}
}

func compileDef(t *testing.T, ptr string) *jsonschema.Schema {
	t.Helper()
	c, err := NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(URL(ptr))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid(t *testing.T, s *jsonschema.Schema, doc string) bool {
	t.Helper()
	var v any
	d := json.NewDecoder(strings.NewReader(doc))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		t.Fatalf("test document %s: %v", doc, err)
	}
	err := s.Validate(v)
	var ve *jsonschema.ValidationError
	if err != nil && !errors.As(err, &ve) {
		t.Fatalf("Validate(%s): %v", doc, err)
	}
	return err == nil
}

func TestDefinitions(t *testing.T) {
	tests := []struct {
		def  string
		doc  string
		want bool
	}{
		// ODS codes: GP practice, trust, trust site, care home, branch surgery, ICB, NHSE-style.
		{"common.v1.json#/$defs/odsCode", `"A81001"`, true},
		{"common.v1.json#/$defs/odsCode", `"RX1"`, true},
		{"common.v1.json#/$defs/odsCode", `"RX1AB"`, true},
		{"common.v1.json#/$defs/odsCode", `"VM123"`, true},
		{"common.v1.json#/$defs/odsCode", `"VLAXL"`, true},
		{"common.v1.json#/$defs/odsCode", `"K81003001"`, true},
		{"common.v1.json#/$defs/odsCode", `"15N"`, true},
		{"common.v1.json#/$defs/odsCode", `"G3472185"`, true},
		{"common.v1.json#/$defs/odsCode", `"a81001"`, false},
		{"common.v1.json#/$defs/odsCode", `"RX"`, false},
		{"common.v1.json#/$defs/odsCode", `"A81001 "`, false},
		{"common.v1.json#/$defs/odsCode", `"K810030011"`, false},
		{"common.v1.json#/$defs/odsCode", `81001`, false},

		{"common.v1.json#/$defs/nhsNumber", `"9990500002"`, true},
		{"common.v1.json#/$defs/nhsNumber", `"999050000"`, false},
		{"common.v1.json#/$defs/nhsNumber", `"999 050 0002"`, false},
		{"common.v1.json#/$defs/nhsNumber", `9990500002`, false},

		{"common.v1.json#/$defs/sensitivity", `["sexual-health","mental-health","safeguarding","gender-identity","local-code-2"]`, true},
		{"common.v1.json#/$defs/sensitivity", `[]`, true},
		{"common.v1.json#/$defs/sensitivity", `["Mental Health"]`, false},
		{"common.v1.json#/$defs/sensitivity", `["safeguarding","safeguarding"]`, false},
		{"common.v1.json#/$defs/sensitivity", `["-x"]`, false},

		{"common.v1.json#/$defs/attachment", `{"contentType":"text/plain","text":"x"}`, true},
		{"common.v1.json#/$defs/attachment", `{"contentType":"text/plain; charset=utf-8","text":"x"}`, true},
		{"common.v1.json#/$defs/attachment", `{"contentType":"application/pdf","data":"JVBERi0xLjQK"}`, true},
		{"common.v1.json#/$defs/attachment", `{"contentType":"application/pdf","data":"not base64!"}`, false},
		{"common.v1.json#/$defs/attachment", `{"contentType":"text/plain"}`, false},
		{"common.v1.json#/$defs/attachment", `{"contentType":"text/plain","text":"x","data":"eA=="}`, false},
		{"common.v1.json#/$defs/attachment", `{"contentType":"plain","text":"x"}`, false},

		{"common.v1.json#/$defs/documentReference", `{"url":"https://docs.rx1.nhs.uk/d/1","contentType":"application/pdf"}`, true},
		{"common.v1.json#/$defs/documentReference", `{"url":"http://docs.rx1.nhs.uk/d/1","contentType":"application/pdf"}`, false},
		{"common.v1.json#/$defs/documentReference", `{"url":"https://docs.rx1.nhs.uk/d/1"}`, false},

		{"common.v1.json#/$defs/period", `{"start":"2025-03-14T09:30:00Z"}`, true},
		{"common.v1.json#/$defs/period", `{"start":"2025-03-14T09:30:00+01:00","end":"2025-03-15T10:00:00.5Z"}`, true},
		{"common.v1.json#/$defs/period", `{"start":"2025-03-14 09:30"}`, false},
		{"common.v1.json#/$defs/period", `{}`, false},

		{"patient.v1.json", `{"nhsNumber":"9990500002"}`, true},
		{"patient.v1.json", `{"nhsNumber":"9990500002","gpPractice":"A81001","name":{"family":"TESTPATIENT","given":["Alex"]},"birthDate":"1940-02-29","gender":"female","address":{"line":["1 Test Street"],"postalCode":"LS1 4AP"}}`, true},
		{"patient.v1.json", `{"nhsNumber":"9990500002","address":{"postalCode":"ZZ99 3VZ"}}`, true},
		{"patient.v1.json", `{"nhsNumber":"9990500002","address":{"postalCode":"ls14ap"}}`, true},
		{"patient.v1.json", `{"nhsNumber":"9990500002","address":{"postalCode":"12345"}}`, false},
		{"patient.v1.json", `{"nhsNumber":"9990500002","birthDate":"1941-02-29"}`, false},
		{"patient.v1.json", `{"nhsNumber":"9990500002","nhsnumber":"9990500002"}`, false},
		{"patient.v1.json", `{"gpPractice":"A81001"}`, false},

		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"home"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"other"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"care-home","ods":"VM123"}`, true},
		// A place of a kind the sender did not name (issue 10 audit: this
		// was refused, so a code-only care home became type other).
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"care-home"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"hospice"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"care-home","code":"85"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"care-home","code":"85","ods":"VM123"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"other","code":"19","ods":"VM123"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"home","code":"19"}`, true},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"other","code":"85"}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"hospital","code":"88"}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"home","code":"99"}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"other","code":"01"}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"other","code":""}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"type":"garden"}`, false},
		{"discharge.v1.json#/properties/discharge/properties/destination", `{"ods":"VM123"}`, false},
	}
	schemas := map[string]*jsonschema.Schema{}
	for _, tt := range tests {
		s := schemas[tt.def]
		if s == nil {
			s = compileDef(t, tt.def)
			schemas[tt.def] = s
		}
		if got := valid(t, s, tt.doc); got != tt.want {
			t.Errorf("%s valid(%s):\n\tgot  %v\n\twant %v", tt.def, tt.doc, got, tt.want)
		}
	}
}

// TestODSPatternIsTheOneRule: the schema's odsCode pattern is package ods's,
// so an ODS code the configuration, the HL7 mapping or consent accepts is
// one the schema accepts (regression, issue 9: they disagreed on 10
// characters).
func TestODSPatternIsTheOneRule(t *testing.T) {
	b, err := FS.ReadFile("common.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var common struct {
		Defs map[string]struct {
			Pattern string `json:"pattern"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &common); err != nil {
		t.Fatal(err)
	}
	if got, want := common.Defs["odsCode"].Pattern, ods.Pattern; got != want {
		t.Errorf("common.v1.json#/$defs/odsCode pattern:\n\tgot  %s\n\twant %s (schemas/ods)", got, want)
	}
}
