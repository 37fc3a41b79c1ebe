package consent

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // Europe/London for date-only periods, whatever the host has installed

	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// FHIR systems and URLs of the Consent mapping (see the package documentation).
const (
	systemODS             = "https://fhir.nhs.uk/Id/ods-organization-code"
	systemNHSNumber       = "https://fhir.nhs.uk/Id/nhs-number"
	systemScope           = "http://terminology.hl7.org/CodeSystem/consentscope"
	systemLOINC           = "http://loinc.org"
	systemParticipant     = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
	systemCategory        = "https://carehub.dev/fhir/CodeSystem/sensitivity-category"
	systemContent         = "https://carehub.dev/fhir/CodeSystem/content-class"
	systemPolicy          = "https://carehub.dev/fhir/CodeSystem/sharing-policy"
	systemActCode         = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	systemConfidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
	systemAction          = "http://terminology.hl7.org/CodeSystem/consentaction"
	// PolicyURI names carehub's sharing policy in Consent.policy.uri: a
	// Consent may name it, and no other.
	PolicyURI        = "https://carehub.dev/fhir/policy/direct-care"
	extRecorded      = "https://carehub.dev/fhir/StructureDefinition/directive-recorded"
	extRecordedBy    = "https://carehub.dev/fhir/StructureDefinition/directive-recorded-by"
	extRecipientRole = "https://carehub.dev/fhir/StructureDefinition/recipient-role"

	codePatientPrivacy = "patient-privacy"
	codeConsentLOINC   = "59284-0"
	codeRecipient      = "IRCP" // information recipient
	codePrimary        = "PRCP" // primary information recipient
	codeOptIn          = "OPTIN"
	codeDocument       = "document"
	codePolicy         = "direct-care"
)

// Output shapes. Field order is the order of the FHIR R4 definitions, so that
// the output reads like the specification's examples.
type (
	fhirCoding struct {
		System  string `json:"system"`
		Code    string `json:"code"`
		Display string `json:"display,omitempty"`
	}
	fhirCodeableConcept struct {
		Coding []fhirCoding `json:"coding"`
	}
	fhirIdentifier struct {
		System string `json:"system"`
		Value  string `json:"value"`
	}
	fhirReference struct {
		Type       string         `json:"type,omitempty"`
		Identifier fhirIdentifier `json:"identifier"`
	}
	fhirExtension struct {
		URL           string `json:"url"`
		ValueDateTime string `json:"valueDateTime,omitempty"`
		ValueString   string `json:"valueString,omitempty"`
		ValueCode     string `json:"valueCode,omitempty"`
	}
	fhirPeriod struct {
		Start string `json:"start,omitempty"`
		End   string `json:"end,omitempty"`
	}
	fhirActor struct {
		Role      fhirCodeableConcept `json:"role"`
		Reference fhirReference       `json:"reference"`
	}
	fhirProvision struct {
		ID            string          `json:"id,omitempty"`
		Extension     []fhirExtension `json:"extension,omitempty"`
		Type          string          `json:"type"`
		Period        *fhirPeriod     `json:"period,omitempty"`
		Actor         []fhirActor     `json:"actor,omitempty"`
		SecurityLabel []fhirCoding    `json:"securityLabel,omitempty"`
		Class         []fhirCoding    `json:"class,omitempty"`
		Provision     []fhirProvision `json:"provision,omitempty"`
	}
	fhirPolicy struct {
		URI string `json:"uri"`
	}
	fhirRootProvision struct {
		Provision []fhirProvision `json:"provision,omitempty"`
	}
	fhirConsent struct {
		ResourceType string                `json:"resourceType"`
		Status       string                `json:"status"`
		Scope        fhirCodeableConcept   `json:"scope"`
		Category     []fhirCodeableConcept `json:"category"`
		Patient      fhirReference         `json:"patient"`
		DateTime     string                `json:"dateTime,omitempty"`
		Policy       []fhirPolicy          `json:"policy"`
		PolicyRule   fhirCodeableConcept   `json:"policyRule"`
		Provision    *fhirRootProvision    `json:"provision,omitempty"`
	}
)

// fhirTime renders t as a FHIR dateTime, in its own offset when FHIR can
// write that offset (whole minutes), else in UTC. A date-only period read
// as midnight in Europe/London can fall, far enough back, in London's local
// mean time (-00:01:15), which RFC 3339 would cut to -00:01 and so move the
// instant (found by FuzzConsentFromFHIR, corpus bd135b53aca90961).
func fhirTime(t time.Time) string {
	if _, off := t.Zone(); off%60 != 0 {
		t = t.UTC()
	}
	return t.Format(time.RFC3339Nano)
}

// ToFHIR renders a patient's directives as one FHIR R4 Consent resource (see
// the package documentation for the mapping). The directives are validated
// first: an invalid one is an error of kind Invalid with pointers of the form
// "/directives/2/organisation", and nothing is rendered. The NHS number is
// the one value of patient data in the output, as the Consent's patient.
func ToFHIR(ds []Directive, patient nhs.Number) ([]byte, error) {
	var vs []problem.Violation
	if patient.IsZero() {
		vs = append(vs, problem.Violation{Pointer: "/patient", Rule: VNHSNumber, Detail: "a Consent needs the patient's NHS number"})
	}
	directiveViolations(ds, "/directives", &vs)
	if err := invalid("cannot render invalid directives as FHIR", vs); err != nil {
		return nil, err
	}
	c := fhirConsent{
		ResourceType: "Consent",
		Status:       "active",
		Scope: fhirCodeableConcept{Coding: []fhirCoding{
			{System: systemScope, Code: codePatientPrivacy, Display: "Privacy Consent"}}},
		Category: []fhirCodeableConcept{{Coding: []fhirCoding{
			{System: systemLOINC, Code: codeConsentLOINC}}}},
		Patient: fhirReference{Type: "Patient", Identifier: fhirIdentifier{System: systemNHSNumber, Value: patient.Digits()}},
		Policy:  []fhirPolicy{{URI: PolicyURI}},
		PolicyRule: fhirCodeableConcept{Coding: []fhirCoding{
			{System: systemActCode, Code: codeOptIn, Display: "opt-in"}}},
	}
	var latest time.Time
	for i := range ds {
		d := &ds[i]
		if d.Recorded.After(latest) {
			latest = d.Recorded
		}
		if c.Provision == nil {
			c.Provision = &fhirRootProvision{}
		}
		c.Provision.Provision = append(c.Provision.Provision, provisionOf(d))
	}
	if !latest.IsZero() {
		c.DateTime = fhirTime(latest)
	}
	out, err := json.Marshal(c)
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "encoding a FHIR Consent", err)
	}
	return out, nil
}

func provisionOf(d *Directive) fhirProvision {
	p := fhirProvision{ID: d.ID, Type: "deny", Extension: []fhirExtension{
		{URL: extRecorded, ValueDateTime: fhirTime(d.Recorded)},
		{URL: extRecordedBy, ValueString: d.RecordedBy},
	}}
	if d.Role != "" {
		p.Extension = append(p.Extension, fhirExtension{URL: extRecipientRole, ValueCode: string(d.Role)})
	}
	if d.Period.Start != nil || d.Period.End != nil {
		p.Period = &fhirPeriod{}
		if d.Period.Start != nil {
			p.Period.Start = fhirTime(*d.Period.Start)
		}
		if d.Period.End != nil {
			p.Period.End = fhirTime(*d.Period.End)
		}
	}
	if d.Organisation != "" {
		p.Actor = []fhirActor{{
			Role:      fhirCodeableConcept{Coding: []fhirCoding{{System: systemParticipant, Code: codeRecipient}}},
			Reference: fhirReference{Type: "Organization", Identifier: fhirIdentifier{System: systemODS, Value: d.Organisation}},
		}}
	}
	switch d.Kind {
	case KindPermitOrganisation:
		p.Type = "permit"
		for _, c := range d.Categories {
			p.SecurityLabel = append(p.SecurityLabel, fhirCoding{System: systemCategory, Code: c})
		}
	case KindNotificationOnly:
		p.Class = []fhirCoding{{System: systemContent, Code: codeDocument}}
	}
	return p
}

// fhirError is a *problem.Error whose violation pointers point into a FHIR
// resource of type root; OperationOutcome turns them into FHIRPath.
type fhirError struct {
	root string
	err  *problem.Error
}

func (e *fhirError) Error() string { return e.err.Error() }
func (e *fhirError) Unwrap() error { return e.err }

// FHIRRoot implements problem.FHIRRooted: the violations point into a
// Consent, so problem.OperationOutcome locates them by FHIRPath.
func (e *fhirError) FHIRRoot() string { return e.root }

type fhirParser struct {
	vs []problem.Violation
}

// maxViolations bounds the violations reported for one document, so that a
// hostile megabyte cannot make a megabyte of OperationOutcome.
const maxViolations = 100

func (p *fhirParser) bad(ptr, rule, detail string) {
	// A root provision read as a provision is checked twice; say each
	// problem once.
	for _, v := range p.vs {
		if v.Pointer == ptr && v.Rule == rule && v.Detail == detail {
			return
		}
	}
	switch {
	case len(p.vs) < maxViolations:
		p.vs = append(p.vs, problem.Violation{Pointer: ptr, Rule: rule, Detail: detail})
	case len(p.vs) == maxViolations:
		p.vs = append(p.vs, problem.Violation{Pointer: "", Rule: "too-many-problems",
			Detail: "more problems were found; only the first " + strconv.Itoa(maxViolations) + " are listed"})
	}
}

// Rule names of FHIR mapping violations, beyond the directive ones.
const (
	VFHIRType        = "fhir-type"
	VFHIRUnsupported = "fhir-unsupported-element"
	VFHIRValue       = "fhir-value"
	VFHIRMapping     = "fhir-mapping"
)

// elementName reports whether an unexpected member name may be repeated in
// an error: FHIR element names are ASCII letters (with '_' for primitive
// extensions), so a name that is anything else may be data and is not shown.
func elementName(k string) bool {
	k = strings.TrimPrefix(k, "_")
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// object decodes raw as a JSON object. Members in handled are returned;
// members in ignored (and "_" primitive extensions of either) are dropped;
// any other member is a violation, with the reason in refused when given.
func (p *fhirParser) object(raw json.RawMessage, ptr string, handled, ignored []string, refused map[string]string) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &m) != nil {
		p.bad(ptr, VFHIRType, "expected a JSON object")
		return nil, false
	}
	for _, k := range slices.Sorted(maps.Keys(m)) { // sorted: the same document, the same outcome
		base := strings.TrimPrefix(k, "_")
		if k != base && (contains(handled, base) || contains(ignored, base)) {
			delete(m, k) // a primitive's extension: never a modifier
			continue
		}
		if contains(handled, k) || contains(ignored, k) {
			continue
		}
		delete(m, k)
		switch {
		case refused[k] != "":
			p.bad(ptr+"/"+k, VFHIRUnsupported, refused[k])
		case elementName(k):
			p.bad(ptr+"/"+k, VFHIRUnsupported, "carehub does not support this element here and will not ignore it")
		default:
			p.bad(ptr, VFHIRUnsupported, "this object has a member whose name is not a FHIR element name")
		}
	}
	for _, k := range ignored {
		delete(m, k)
	}
	return m, true
}

func (p *fhirParser) str(raw json.RawMessage, ptr string) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil || strings.TrimSpace(s) == "" {
		p.bad(ptr, VFHIRType, "expected a non-empty string")
		return "", false
	}
	return s, true
}

func (p *fhirParser) array(raw json.RawMessage, ptr string) ([]json.RawMessage, bool) {
	var a []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &a) != nil || len(a) == 0 {
		p.bad(ptr, VFHIRType, "expected a non-empty JSON array")
		return nil, false
	}
	return a, true
}

// codings reads a CodeableConcept's codings as (system, code) pairs.
func (p *fhirParser) codeableConcept(raw json.RawMessage, ptr string) ([]fhirCoding, bool) {
	m, ok := p.object(raw, ptr, []string{"coding"}, []string{"id", "extension", "text"}, nil)
	if !ok {
		return nil, false
	}
	if m["coding"] == nil {
		p.bad(ptr+"/coding", VRequired, "expected codings")
		return nil, false
	}
	return p.codingList(m["coding"], ptr+"/coding")
}

func (p *fhirParser) codingList(raw json.RawMessage, ptr string) ([]fhirCoding, bool) {
	a, ok := p.array(raw, ptr)
	if !ok {
		return nil, false
	}
	out := make([]fhirCoding, 0, len(a))
	good := true
	for i, e := range a {
		c, ok := p.coding(e, ptr+"/"+strconv.Itoa(i))
		good = good && ok
		out = append(out, c)
	}
	return out, good
}

func (p *fhirParser) coding(raw json.RawMessage, ptr string) (fhirCoding, bool) {
	m, ok := p.object(raw, ptr, []string{"system", "code"}, []string{"id", "extension", "version", "display", "userSelected"}, nil)
	if !ok {
		return fhirCoding{}, false
	}
	var c fhirCoding
	if m["system"] == nil {
		p.bad(ptr+"/system", VRequired, "a coding needs a system")
		ok = false
	} else if c.System, ok = p.str(m["system"], ptr+"/system"); !ok {
		return c, false
	}
	if m["code"] == nil {
		p.bad(ptr+"/code", VRequired, "a coding needs a code")
		return c, false
	}
	code, ok2 := p.str(m["code"], ptr+"/code")
	c.Code = code
	return c, ok && ok2
}

// identifier reads an Identifier and checks its system.
func (p *fhirParser) identifier(raw json.RawMessage, ptr, system, what string) (string, bool) {
	m, ok := p.object(raw, ptr, []string{"system", "value"}, []string{"id", "extension", "use", "type", "period", "assigner"}, nil)
	if !ok {
		return "", false
	}
	if m["system"] == nil || m["value"] == nil {
		p.bad(ptr, VRequired, what+" is identified by system and value")
		return "", false
	}
	s, ok := p.str(m["system"], ptr+"/system")
	if !ok {
		return "", false
	}
	if s != system {
		p.bad(ptr+"/system", VFHIRValue, what+" must be identified in the system "+system)
		return "", false
	}
	return p.str(m["value"], ptr+"/value")
}

var london = sync.OnceValues(func() (*time.Location, error) { return time.LoadLocation("Europe/London") })

// dateTime reads a FHIR dateTime. A full date-time must carry an offset. A
// date alone is allowed when dateOnly is 's' or 'e' (a period's start or
// end) and means the start or the last instant of that day in the UK.
func (p *fhirParser) dateTime(raw json.RawMessage, ptr string, dateOnly byte) (time.Time, bool) {
	s, ok := p.str(raw, ptr)
	if !ok {
		return time.Time{}, false
	}
	if len(s) > len("2006-01-02") {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			p.bad(ptr, VFHIRValue, "expected a date-time with seconds and a time-zone offset (RFC 3339)")
			return time.Time{}, false
		}
		return t, true
	}
	if dateOnly != 0 && len(s) == len("2006-01-02") {
		loc, err := london()
		if err != nil {
			p.bad(ptr, VFHIRValue, "a date without a time cannot be read here: give a date-time with an offset")
			return time.Time{}, false
		}
		t, err := time.ParseInLocation("2006-01-02", s, loc)
		if err != nil {
			p.bad(ptr, VFHIRValue, "expected a date (YYYY-MM-DD) or a date-time with an offset")
			return time.Time{}, false
		}
		if dateOnly == 'e' {
			t = t.AddDate(0, 0, 1).Add(-time.Nanosecond)
		}
		return t, true
	}
	if dateOnly != 0 {
		p.bad(ptr, VFHIRValue, "expected a full date (YYYY-MM-DD) or a date-time with an offset; a year or a month alone is too coarse")
	} else {
		p.bad(ptr, VFHIRValue, "expected a date-time with seconds and a time-zone offset")
	}
	return time.Time{}, false
}
