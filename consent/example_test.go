package consent_test

import (
	"context"
	"fmt"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// A discharge carrying mental health information, and the candidates the
// router found for it. The patient has said: no social care, except the care
// home they are going to, which may also see mental health information.
func ExamplePolicy_Decide() {
	policy := consent.DefaultPolicy()
	recorded := time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)
	directives := []consent.Directive{
		{ID: "no-social-care", Kind: consent.KindDenyRole, Role: consent.RoleSocialCare, Recorded: recorded, RecordedBy: "X26"},
		{ID: "home-mh", Kind: consent.KindPermitOrganisation, Organisation: "VN4K1",
			Categories: []string{consent.CategoryMentalHealth}, Recorded: recorded, RecordedBy: "X26"},
		{ID: "thin-community", Kind: consent.KindNotificationOnly, Role: consent.RoleCommunity, Recorded: recorded, RecordedBy: "X26"},
	}
	event := consent.Event{
		ID: "ev-1", Type: "uk.carehub.discharge.v1", Publisher: "RRK",
		Time:   time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC),
		Labels: []string{consent.CategoryMentalHealth}, HasDocument: true,
		GPPractice: "A81001", DischargeDestination: "VN4K1",
	}
	candidates := []struct {
		consent.Recipient
		consent.Basis
	}{
		{consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, consent.BasisRegisteredGP},
		{consent.Recipient{ODS: "VN4K1", Role: consent.RoleSocialCare}, consent.BasisDischargeDestination},
		{consent.Recipient{ODS: "VN4K2", Role: consent.RoleSocialCare}, consent.BasisCareRelationship},
		{consent.Recipient{ODS: "RY4", Role: consent.RoleCommunity}, consent.BasisCareRelationship},
		{consent.Recipient{ODS: "A81002", Role: consent.RoleGPPractice}, consent.BasisRegisteredGP},
	}
	for _, c := range candidates {
		d, err := policy.Decide(context.Background(), consent.Request{
			Event: event, Recipient: c.Recipient, Basis: c.Basis, Directives: directives})
		if err != nil {
			fmt.Println(c.ODS, "error:", err)
			continue
		}
		fmt.Println(c.ODS, d.Effect, d.Rule, d.DirectiveID, d.Obligations)
	}
	// Output:
	// A81001 permit relationship-confirmed  []
	// VN4K1 permit directive:permit-organisation home-mh []
	// VN4K2 deny policy:sensitive-category-gp-only  []
	// RY4 deny policy:sensitive-category-gp-only  []
	// A81002 deny relationship-unconfirmed  []
}

// Without the mental health label, the community service gets a thin
// notification and the other care home is refused by the role directive.
func ExamplePolicy_Evaluate() {
	policy := consent.DefaultPolicy()
	recorded := time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)
	directives := []consent.Directive{
		{ID: "no-social-care", Kind: consent.KindDenyRole, Role: consent.RoleSocialCare, Recorded: recorded, RecordedBy: "X26"},
		{ID: "thin-community", Kind: consent.KindNotificationOnly, Role: consent.RoleCommunity, Recorded: recorded, RecordedBy: "X26"},
	}
	event := consent.Event{ID: "ev-2", Type: "uk.carehub.discharge.v1", Publisher: "RRK",
		Time: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), HasDocument: true}
	for _, r := range []consent.Recipient{{ODS: "RY4", Role: consent.RoleCommunity}, {ODS: "VN4K2", Role: consent.RoleSocialCare}} {
		d, _ := policy.Evaluate(consent.Request{Event: event, Recipient: r, Basis: consent.BasisCareRelationship, Directives: directives})
		fmt.Println(r.ODS, d.Effect, d.Rule, d.DirectiveID, d.Has(consent.NotificationOnly))
	}
	// An invalid directive is an error and no decision: the router retries.
	bad := append(directives, consent.Directive{ID: "x", Kind: consent.KindDenyOrganisation, Organisation: "rrk"})
	d, err := policy.Evaluate(consent.Request{Event: event, Recipient: consent.Recipient{ODS: "RY4", Role: consent.RoleCommunity},
		Basis: consent.BasisCareRelationship, Directives: bad})
	fmt.Printf("%q %v\n", d.Effect, err)
	// Output:
	// RY4 permit directive:notification-only thin-community true
	// VN4K2 deny directive:deny-role no-social-care false
	// "" consent request is invalid; /directives/2/recorded (required); /directives/2/recordedBy (required); /directives/2/organisation (ods-code)
}

func ExampleDirective_Validate() {
	d := consent.Directive{ID: "9434765919", Kind: consent.KindNotificationOnly, Recorded: time.Now(), RecordedBy: "X26"}
	fmt.Println(d.Validate())
	// Output:
	// consent directive is invalid; /id (looks-like-nhs-number); /organisation (organisation-or-role)
}

func ExampleConsentFromFHIR() {
	patient := nhs.MustParse("9990500002")
	raw := []byte(`{
	  "resourceType": "Consent", "status": "active",
	  "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
	  "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
	  "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990500002"}},
	  "dateTime": "2026-02-01T09:00:00Z",
	  "organization": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "X26"}}],
	  "provision": {"type": "permit", "provision": [
	    {"id": "no-rrk", "type": "deny", "actor": [{
	      "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
	      "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RRK"}}}]},
	    {"id": "research", "type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}
	  ]}}`)
	_, err := consent.ConsentFromFHIR(raw, patient)
	fmt.Println(string(problem.OperationOutcome(err)))

	raw = []byte(string(raw[:len(raw)-len(`,
	    {"id": "research", "type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}
	  ]}}`)]) + `]}}`)
	ds, err := consent.ConsentFromFHIR(raw, patient)
	fmt.Println(len(ds), ds[0].Kind, ds[0].Organisation, ds[0].RecordedBy, err)
	// Output:
	// {"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"fhir-unsupported-element"}]},"diagnostics":"carehub cannot honour provision.purpose: it limits the provision to purposes of use (emergency treatment, say), and carehub shares for direct care with nothing in an event that tells one purpose from another","expression":["Consent.provision.provision[1].purpose"]}]}
	// 1 deny-organisation RRK X26 <nil>
}
