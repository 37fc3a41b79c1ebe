package consent_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var (
	patientA = nhs.MustParse("9990500002")
	patientB = nhs.MustParse("9999345204")
)

// canaries are values that must never reach an error text or an outcome.
var canaries = []string{"9434765919", "9000000033", "9990500002", "9999345204", "9990500003"}

func indent(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("indenting %s: %v", b, err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

func noCanary(t *testing.T, what string, s string) {
	t.Helper()
	for _, c := range canaries {
		if strings.Contains(s, c) {
			t.Errorf("%s carries the value %s from the input:\n%s", what, c, s)
		}
	}
}

// TestToFHIRGolden renders each directives file, compares it with its
// golden Consent, and reads the Consent back to the same directives.
func TestToFHIRGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/fhir/*.directives.json")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pc, err := consent.ParsePatientConsent(raw)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out, err := consent.ToFHIR(pc.Directives, patientA)
		if err != nil {
			t.Fatalf("%s: ToFHIR: %v", f, err)
		}
		gpath := strings.TrimSuffix(f, ".directives.json") + ".consent.golden.json"
		golden(t, gpath, indent(t, out))

		back, err := consent.ConsentFromFHIR(out, patientA)
		if err != nil {
			t.Fatalf("%s: reading back: %v\n%s", f, err, problem.OperationOutcome(err))
		}
		if diff := cmp.Diff(pc.Directives, back, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: round trip (-before +after):\n%s", f, diff)
		}
	}
}

// TestConsentFromFHIRGolden reads Consents in other systems' forms.
func TestConsentFromFHIRGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/fhir/in/*.json")
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		n++
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := consent.ConsentFromFHIR(raw, patientA)
		if err != nil {
			t.Fatalf("%s: %v\n%s", f, err, problem.OperationOutcome(err))
		}
		out, err := json.Marshal(ds)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, strings.TrimSuffix(f, ".json")+".directives.golden.json", indent(t, out))
	}
	if n == 0 {
		t.Fatal("no testdata")
	}
}

// TestConsentFromFHIRInvalid: every refused Consent gets an OperationOutcome
// that says where and why, with no value from the document in it.
func TestConsentFromFHIRInvalid(t *testing.T) {
	files, _ := filepath.Glob("testdata/fhir/invalid/*.json")
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		n++
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := consent.ConsentFromFHIR(raw, patientA)
		if err == nil {
			t.Errorf("%s: accepted, as %+v", f, ds)
			continue
		}
		if ds != nil {
			t.Errorf("%s: directives returned with an error", f)
		}
		oo := problem.OperationOutcome(err)
		noCanary(t, f+": the outcome", string(oo))
		noCanary(t, f+": the error", err.Error())
		golden(t, strings.TrimSuffix(f, ".json")+".outcome.golden.json", indent(t, oo))
	}
	if n == 0 {
		t.Fatal("no testdata")
	}
}

func TestConsentFromFHIRPatient(t *testing.T) {
	out, err := consent.ToFHIR([]consent.Directive{confidential("c1")}, patientA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := consent.ConsentFromFHIR(out, patientB); err == nil {
		t.Error("a Consent about patient A was accepted for patient B")
	}
	if _, err := consent.ConsentFromFHIR(out, nhs.Number{}); err == nil {
		t.Error("a Consent was accepted for no patient")
	}
	if _, err := consent.ToFHIR(nil, nhs.Number{}); err == nil {
		t.Error("ToFHIR rendered a Consent for no patient")
	}
}

func TestToFHIRInvalid(t *testing.T) {
	_, err := consent.ToFHIR([]consent.Directive{denyOrg("d1", "rrk"), denyOrg("d1", "RRK")}, patientA)
	got := violationsOf(t, err)
	want := []string{"/directives/0/organisation ods-code", "/directives/1/id directive-id-unique"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ToFHIR violations (-want +got):\n%s", diff)
	}
}

// TestFHIRRoundTripRandom: random valid directive lists, with times in
// several zones and to the nanosecond, survive ToFHIR and ConsentFromFHIR.
func TestFHIRRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	zones := []*time.Location{time.UTC, time.FixedZone("", 3600), time.FixedZone("", -5*3600-1800)}
	for i := 0; i < 2000; i++ {
		c := generate(r)
		if c.Broken != "" {
			continue
		}
		ds := c.Request.Directives
		for j := range ds {
			ds[j].Recorded = ds[j].Recorded.Add(time.Duration(r.IntN(1e9))).In(zones[r.IntN(3)])
			if ds[j].Period.Start != nil {
				s := ds[j].Period.Start.In(zones[r.IntN(3)])
				ds[j].Period.Start = &s
			}
		}
		out, err := consent.ToFHIR(ds, patientA)
		if err != nil {
			t.Fatalf("ToFHIR(%s): %v", jsonString(ds), err)
		}
		back, err := consent.ConsentFromFHIR(out, patientA)
		if err != nil {
			t.Fatalf("ConsentFromFHIR(ToFHIR(%s)): %v\n%s", jsonString(ds), err, problem.OperationOutcome(err))
		}
		if diff := cmp.Diff(ds, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip of %s (-before +after):\n%s", jsonString(ds), diff)
		}
	}
}

func TestOperationOutcome(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, `{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"no problem found"}]}`},
		{"a plain error hides its text", os.ErrNotExist, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"internal error"}]}`},
		{"a problem without violations", problem.New(problem.Unavailable, "the consent store is catching up"),
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"the consent store is catching up"}]}`},
		{"violations of the JSON form", confidential("").Validate(),
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"required"}]},"diagnostics":"a directive needs an id","expression":["id"]}]}`},
	}
	for _, tt := range tests {
		if got := string(problem.OperationOutcome(tt.err)); got != tt.want {
			t.Errorf("%s:\n\tgot  %s\n\twant %s", tt.name, got, tt.want)
		}
	}
}

// FuzzConsentFromFHIR: no input panics; an accepted Consent renders back to
// one that reads the same; no error carries a canary.
func FuzzConsentFromFHIR(f *testing.F) {
	for _, pat := range []string{"testdata/fhir/*.consent.golden.json", "testdata/fhir/in/*.json", "testdata/fhir/invalid/*.json"} {
		files, _ := filepath.Glob(pat)
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil && !strings.HasSuffix(file, "outcome.golden.json") {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ds, err := consent.ConsentFromFHIR(raw, patientA)
		if err != nil {
			oo := string(problem.OperationOutcome(err))
			if !json.Valid([]byte(oo)) {
				t.Fatalf("OperationOutcome is not JSON: %s", oo)
			}
			if strings.Contains(err.Error(), "9434765919") || strings.Contains(oo, "9434765919") {
				t.Fatalf("error carries the canary: %s", oo)
			}
			return
		}
		out, err := consent.ToFHIR(ds, patientA)
		if err != nil {
			t.Fatalf("accepted directives do not render: %v", err)
		}
		back, err := consent.ConsentFromFHIR(out, patientA)
		if err != nil {
			t.Fatalf("rendered Consent not accepted: %v", err)
		}
		if diff := cmp.Diff(ds, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-before +after):\n%s", diff)
		}
	})
}

// TestConsentFromFHIRBounds: more directives than a patient may hold are
// refused, and a document full of problems gets a bounded answer.
func TestConsentFromFHIRBounds(t *testing.T) {
	many := func(n int, provision string) []byte {
		var b strings.Builder
		b.WriteString(`{"resourceType":"Consent","status":"active",
		  "scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},
		  "category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],
		  "patient":{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990500002"}},
		  "dateTime":"2026-01-01T00:00:00Z",
		  "organization":[{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"X26"}}],
		  "provision":{"type":"permit","provision":[`)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strings.ReplaceAll(provision, "ID", "p"+strconv.Itoa(i)))
		}
		b.WriteString(`]}}`)
		return []byte(b.String())
	}
	if ds, err := consent.ConsentFromFHIR(many(consent.MaxDirectives, `{"id":"ID","type":"deny"}`), patientA); err != nil || len(ds) != consent.MaxDirectives {
		t.Errorf("%d directives: %d read, error %v", consent.MaxDirectives, len(ds), err)
	}
	_, err := consent.ConsentFromFHIR(many(consent.MaxDirectives+1, `{"id":"ID","type":"deny"}`), patientA)
	if got := violationsOf(t, err); len(got) != 1 || got[0] != "/provision/provision too-many-directives" {
		t.Errorf("%d directives: %v", consent.MaxDirectives+1, got)
	}
	_, err = consent.ConsentFromFHIR(many(90, `{"id":"ID","type":"maybe","action":[],"purpose":[]}`), patientA)
	got := violationsOf(t, err)
	if len(got) != 101 || got[100] != " too-many-problems" {
		t.Errorf("a document with 270 problems: %d violations reported, last %q", len(got), got[len(got)-1])
	}
}

// TestGeneratedIDsAreStable: a provision without an id gets the same
// directive id wherever it sits in the Consent and whenever the Consent was
// recorded, and another id when it says something else.
func TestGeneratedIDsAreStable(t *testing.T) {
	read := func(provisions string, dateTime string) []consent.Directive {
		t.Helper()
		raw := `{"resourceType":"Consent","status":"active",
		  "scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},
		  "category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],
		  "patient":{"reference":"Patient/p1"},"dateTime":"` + dateTime + `",
		  "organization":[{"reference":"Organization/RX1"}],
		  "policyRule":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"OPTIN"}]},
		  "provision":{"provision":[` + provisions + `]}}`
		ds, err := consent.ConsentFromFHIR([]byte(raw), patientA)
		if err != nil {
			t.Fatalf("%v\n%s", err, problem.OperationOutcome(err))
		}
		return ds
	}
	const (
		denyVM123 = `{"type":"deny","actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PRCP"}]},"reference":{"reference":"Organization/VM123"}}]}`
		denyRRK   = `{"type":"deny","actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},"reference":{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"RRK"}}}]}`
	)
	a := read(denyVM123+","+denyRRK, "2026-03-02")
	b := read(denyRRK+","+denyVM123, "2026-05-09T10:00:00Z")
	if len(a) != 2 || len(b) != 2 || a[0].ID != b[1].ID || a[1].ID != b[0].ID {
		t.Fatalf("ids of the same provisions in another order and at another time:\n\tgot  %s, %s and %s, %s", a[0].ID, a[1].ID, b[0].ID, b[1].ID)
	}
	if a[0].ID == a[1].ID || !strings.HasPrefix(a[0].ID, "fhir-") {
		t.Errorf("generated ids: got %s and %s, want two distinct fhir- ids", a[0].ID, a[1].ID)
	}
	// The same provision twice is one directive.
	if c := read(denyVM123+","+denyVM123, "2026-03-02"); len(c) != 1 {
		t.Errorf("the same provision twice: got %d directives, want 1", len(c))
	}
}
