package consent_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
)

// actionConsent is a Consent with one nested provision of the given type
// (none when empty) and actions, for VN4K1.
func actionConsent(typ string, actions ...string) []byte {
	var acts []string
	for _, a := range actions {
		system := "http://terminology.hl7.org/CodeSystem/consentaction"
		if s, code, ok := strings.Cut(a, "#"); ok {
			system, a = s, code
		}
		acts = append(acts, `{"coding":[{"system":"`+system+`","code":"`+a+`"}]}`)
	}
	t := ""
	if typ != "" {
		t = `"type":"` + typ + `",`
	}
	return []byte(`{"resourceType":"Consent","status":"active",
	  "scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},
	  "category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],
	  "patient":{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990500002"}},
	  "dateTime":"2026-01-01T00:00:00Z",
	  "organization":[{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"X26"}}],
	  "policyRule":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"OPTIN"}]},
	  "provision":{"provision":[{"id":"p1",` + t + `
	    "actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PRCP"}]},
	              "reference":{"reference":"Organization/VN4K1"}}],
	    "action":[` + strings.Join(acts, ",") + `]}]}}`)
}

// TestConsentFromFHIRActions pins the meaning of consentaction codes
// beyond access and disclose (the audit of issue 10 found HL7's
// consent-example-notOrg refused only because it also denies "correct"):
// a deny that names sharing is a deny, whatever else it names; only access
// and disclose grant sharing; a provision about none of sharing is
// refused, and so is a code outside consentaction.
func TestConsentFromFHIRActions(t *testing.T) {
	tests := []struct {
		name    string
		typ     string
		actions []string
		want    consent.Kind // "" when refused
		refused []string
	}{
		{"deny access", "deny", []string{"access"}, consent.KindDenyOrganisation, nil},
		{"deny access and correct (notOrg)", "deny", []string{"access", "correct"}, consent.KindDenyOrganisation, nil},
		{"deny collect, use and disclose", "deny", []string{"collect", "use", "disclose"}, consent.KindDenyOrganisation, nil},
		{"an exception to an opt-in, access and correct", "", []string{"access", "correct"}, consent.KindDenyOrganisation, nil},
		{"deny correct only", "deny", []string{"correct"}, "", []string{"/provision/provision/0/action fhir-unsupported-element"}},
		{"deny collect and use", "deny", []string{"collect", "use"}, "", []string{"/provision/provision/0/action fhir-unsupported-element"}},
		{"permit access and correct", "permit", []string{"access", "correct"}, consent.KindPermitOrganisation, nil},
		{"permit disclose", "permit", []string{"disclose"}, consent.KindPermitOrganisation, nil},
		{"permit use only", "permit", []string{"use"}, "", []string{"/provision/provision/0/action fhir-unsupported-element"}},
		{"an unknown code", "deny", []string{"access", "delete"}, "", []string{"/provision/provision/0/action/1/coding/0 fhir-unsupported-element"}},
		{"another system", "deny", []string{"http://example.org/actions#access"}, "", []string{"/provision/provision/0/action/0/coding/0 fhir-unsupported-element"}},
	}
	for _, tt := range tests {
		ds, err := consent.ConsentFromFHIR(actionConsent(tt.typ, tt.actions...), patientA)
		if tt.want == "" {
			if diff := cmp.Diff(tt.refused, violationsOf(t, err)); diff != "" {
				t.Errorf("%s: violations (-want +got):\n%s", tt.name, diff)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: refused: %s", tt.name, problem.OperationOutcome(err))
			continue
		}
		if len(ds) != 1 || ds[0].Kind != tt.want || ds[0].Organisation != "VN4K1" {
			t.Errorf("%s: got %+v, want one %s for VN4K1", tt.name, ds, tt.want)
		}
	}
}

// TestHL7ExamplesDecideAsWritten: the HL7 R4 examples carehub accepts
// decide events as their structure says (see the package documentation on
// notTime, whose narrative says the opposite of its R4 structure).
func TestHL7ExamplesDecideAsWritten(t *testing.T) {
	type check struct {
		ods   string
		role  consent.Role
		basis consent.Basis
		event consent.Event
		want  consent.Decision
	}
	in2015 := ev()
	in2015.Time = time.Date(2015, 1, 15, 10, 0, 0, 0, time.UTC)
	psych := ev("mental-health")
	tests := []struct {
		file   string
		checks []check
	}{
		{"hl7-example-notOrg.json", []check{
			// Good Health Clinic (F001) receives nothing; others as the policy allows.
			{"F001", consent.RoleHospital, consent.BasisCareRelationship, ev(), deny("directive:deny-organisation", "fhir-282fff1c82903eef")},
			{gp1, consent.RoleGPPractice, consent.BasisRegisteredGP, ev(), permit("relationship-confirmed", "")},
		}},
		{"hl7-example-basic.json", []check{
			{hosp, consent.RoleHospital, consent.BasisCareRelationship, ev(), permit("relationship-confirmed", "")},
		}},
		{"hl7-example-notTime.json", []check{
			// An opt-in bounded in time: carehub's policy, in and out of the period.
			{hosp, consent.RoleHospital, consent.BasisCareRelationship, in2015, permit("relationship-confirmed", "")},
			{hosp, consent.RoleHospital, consent.BasisCareRelationship, ev(), permit("relationship-confirmed", "")},
		}},
		{"hl7-example-pkb.json", []check{
			// An opt-out with F001 let through, its sensitive categories included.
			{"F001", consent.RoleHospital, consent.BasisCareRelationship, ev(), permit("directive:permit-organisation", "fhir-7b8bf77cd6420926")},
			{"F001", consent.RoleHospital, consent.BasisCareRelationship, psych, permit("directive:permit-organisation", "fhir-01c77575b90f4824")},
			{hosp, consent.RoleHospital, consent.BasisCareRelationship, ev(), deny("directive:deny-role", "opt-out-hospital")},
			{gp1, consent.RoleGPPractice, consent.BasisRegisteredGP, ev(), deny("directive:deny-role", "opt-out-gp-practice")},
		}},
	}
	p := &consent.Policy{}
	for _, tt := range tests {
		raw, err := os.ReadFile("testdata/fhir/in/" + tt.file)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := consent.ConsentFromFHIR(raw, patientA)
		if err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		for _, c := range tt.checks {
			got, err := p.Decide(context.Background(), req(c.event, c.ods, c.role, c.basis, ds...))
			if err != nil {
				t.Errorf("%s, %s: %v", tt.file, c.ods, err)
				continue
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("%s, %s at %s: (-want +got)\n%s", tt.file, c.ods, c.event.Time.Format(time.DateOnly), diff)
			}
		}
	}
}

// TestNotTimeAsMeant: what HL7's notTime narrative asks (withhold the
// patient's events of January 2015), written in R4 as a nested deny
// provision with the period, as its STU3 version wrote it, is a
// confidential directive for that period.
func TestNotTimeAsMeant(t *testing.T) {
	raw, err := os.ReadFile("testdata/fhir/in/hl7-example-notTime.json")
	if err != nil {
		t.Fatal(err)
	}
	// The provision is notTime's last element: replace it.
	meant := string(raw)
	i := strings.Index(meant, `"provision": {`)
	if i < 0 {
		t.Fatal("no provision in notTime")
	}
	meant = meant[:i] + `"provision": {"provision": [{"type": "deny", "period": {"start": "2015-01-01", "end": "2015-02-01"}}]}` + "\n}\n"
	ds, err := consent.ConsentFromFHIR([]byte(meant), patientA)
	if err != nil {
		t.Fatalf("%v\n%s", err, problem.OperationOutcome(err))
	}
	if len(ds) != 1 || ds[0].Kind != consent.KindConfidential || ds[0].Period.Start == nil || ds[0].Period.End == nil {
		t.Fatalf("got %+v, want one confidential directive with the period", ds)
	}
	p := &consent.Policy{}
	in, out := ev(), ev()
	in.Time = time.Date(2015, 1, 15, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		e    consent.Event
		want consent.Effect
	}{{in, consent.Deny}, {out, consent.Permit}} {
		got, err := p.Decide(context.Background(), req(c.e, hosp, consent.RoleHospital, consent.BasisCareRelationship, ds...))
		if err != nil || got.Effect != c.want {
			t.Errorf("an event at %s: got %+v %v, want %s", c.e.Time.Format(time.DateOnly), got, err, c.want)
		}
	}
}
