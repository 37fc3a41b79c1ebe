package consent

import (
	"encoding/json"
	"errors"
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
	systemODS         = "https://fhir.nhs.uk/Id/ods-organization-code"
	systemNHSNumber   = "https://fhir.nhs.uk/Id/nhs-number"
	systemScope       = "http://terminology.hl7.org/CodeSystem/consentscope"
	systemLOINC       = "http://loinc.org"
	systemParticipant = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
	systemCategory    = "https://carehub.dev/fhir/CodeSystem/sensitivity-category"
	systemContent     = "https://carehub.dev/fhir/CodeSystem/content-class"
	systemPolicy      = "https://carehub.dev/fhir/CodeSystem/sharing-policy"
	systemViolation   = "https://carehub.dev/fhir/CodeSystem/violation-rule"
	extRecorded       = "https://carehub.dev/fhir/StructureDefinition/directive-recorded"
	extRecordedBy     = "https://carehub.dev/fhir/StructureDefinition/directive-recorded-by"
	extRecipientRole  = "https://carehub.dev/fhir/StructureDefinition/recipient-role"

	codePatientPrivacy = "patient-privacy"
	codeConsentLOINC   = "59284-0"
	codeRecipient      = "IRCP"
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
	fhirConsent struct {
		ResourceType string                `json:"resourceType"`
		Status       string                `json:"status"`
		Scope        fhirCodeableConcept   `json:"scope"`
		Category     []fhirCodeableConcept `json:"category"`
		Patient      fhirReference         `json:"patient"`
		DateTime     string                `json:"dateTime,omitempty"`
		PolicyRule   fhirCodeableConcept   `json:"policyRule"`
		Provision    fhirProvision         `json:"provision"`
	}
)

func fhirTime(t time.Time) string { return t.Format(time.RFC3339Nano) }

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
		PolicyRule: fhirCodeableConcept{Coding: []fhirCoding{
			{System: systemPolicy, Code: codePolicy, Display: "carehub direct care sharing policy"}}},
		Provision: fhirProvision{Type: "permit"},
	}
	var latest time.Time
	for i := range ds {
		d := &ds[i]
		if d.Recorded.After(latest) {
			latest = d.Recorded
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

// ConsentFromFHIR reads a FHIR R4 Consent resource (JSON) holding a patient's
// directives, in the mapping the package documentation describes, and checks
// that it is about patient: the patient the caller is acting for (a Consent
// about anyone else is refused).
//
// Anything the mapping cannot honour exactly is refused rather than ignored:
// a provision element carehub does not apply (action, purpose, data,
// dataPeriod, code, deeper nesting), a modifier extension, another policy
// rule, an actor that is not an information recipient named by ODS code. An
// ignored restriction could share what its author meant to withhold.
//
// Errors are *problem.Error (TooLarge, Malformed or Invalid) listing every
// problem found; OperationOutcome renders them with FHIRPath expressions.
// No error text holds a value from the document.
func ConsentFromFHIR(raw []byte, patient nhs.Number) ([]Directive, error) {
	if err := strictJSON(raw); err != nil {
		return nil, err
	}
	p := &fhirParser{}
	ds := p.consent(json.RawMessage(raw), patient)
	if len(p.vs) > 0 {
		return nil, &fhirError{root: "Consent", err: &problem.Error{Kind: problem.Invalid,
			Message: "the FHIR Consent is invalid or asks for what carehub cannot honour", Violations: p.vs}}
	}
	return ds, nil
}

type fhirParser struct {
	vs []problem.Violation
}

// maxViolations bounds the violations reported for one document, so that a
// hostile megabyte cannot make a megabyte of OperationOutcome.
const maxViolations = 100

func (p *fhirParser) bad(ptr, rule, detail string) {
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

// reference reads a logical Reference by identifier.
func (p *fhirParser) reference(raw json.RawMessage, ptr, typ, system, what string) (string, bool) {
	m, ok := p.object(raw, ptr, []string{"identifier", "type"}, []string{"id", "extension", "display"},
		map[string]string{"reference": what + " must be given by identifier, not by a literal reference"})
	if !ok {
		return "", false
	}
	if m["type"] != nil {
		if t, ok := p.str(m["type"], ptr+"/type"); !ok || t != typ {
			if ok {
				p.bad(ptr+"/type", VFHIRValue, what+" must be a reference to a "+typ)
			}
			return "", false
		}
	}
	if m["identifier"] == nil {
		p.bad(ptr+"/identifier", VRequired, what+" must be given by identifier")
		return "", false
	}
	return p.identifier(m["identifier"], ptr+"/identifier", system, what)
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

func (p *fhirParser) consent(raw json.RawMessage, patient nhs.Number) []Directive {
	m, ok := p.object(raw, "",
		[]string{"resourceType", "status", "scope", "category", "patient", "dateTime", "organization", "policyRule", "provision"},
		[]string{"id", "meta", "text", "language", "contained", "extension", "identifier", "performer",
			"sourceAttachment", "sourceReference", "policy", "verification"},
		map[string]string{
			"implicitRules":     "carehub cannot honour implicit rules",
			"modifierExtension": "carehub cannot honour modifier extensions",
		})
	if !ok {
		return nil
	}
	if rt, ok := p.str(m["resourceType"], "/resourceType"); ok && rt != "Consent" {
		p.bad("/resourceType", VFHIRValue, "expected a Consent resource")
		return nil
	} else if !ok {
		return nil
	}
	if s, ok := p.str(m["status"], "/status"); ok && s != "active" {
		p.bad("/status", VFHIRValue, "status must be active: send the directives that remain in force, and none to revoke them all")
	}
	if m["scope"] == nil {
		p.bad("/scope", VRequired, "scope is required")
	} else if cs, ok := p.codeableConcept(m["scope"], "/scope"); ok && !hasCoding(cs, systemScope, codePatientPrivacy) {
		p.bad("/scope", VFHIRValue, "scope must be patient-privacy ("+systemScope+")")
	}
	if m["category"] == nil {
		p.bad("/category", VRequired, "category is required")
	} else {
		p.array(m["category"], "/category")
	}
	p.patient(m["patient"], patient)
	if m["policyRule"] != nil {
		if cs, ok := p.codeableConcept(m["policyRule"], "/policyRule"); ok {
			for i, c := range cs {
				if c.System != systemPolicy || c.Code != codePolicy {
					p.bad("/policyRule/coding/"+strconv.Itoa(i), VFHIRUnsupported,
						"carehub applies its own sharing policy ("+systemPolicy+"#"+codePolicy+"); another policy rule would change what the provisions mean")
				}
			}
		}
	}
	var fallback struct {
		recorded   time.Time
		recordedBy string
	}
	if m["dateTime"] != nil {
		fallback.recorded, _ = p.dateTime(m["dateTime"], "/dateTime", 's') // a date alone: the start of that day
	}
	if m["organization"] != nil {
		if refs, ok := p.array(m["organization"], "/organization"); ok {
			for i, r := range refs {
				// Only the first organisation is used, as the recorder of
				// provisions that do not name their own.
				ods, ok := p.reference(r, "/organization/"+strconv.Itoa(i), "Organization", systemODS, "an organization")
				if ok && fallback.recordedBy == "" {
					fallback.recordedBy = ods
				}
			}
		}
	}
	if m["provision"] == nil {
		p.bad("/provision", VRequired, "a provision of type permit is required: it states carehub's base rule (share as the sharing policy allows); the directives are its nested provisions")
		return nil
	}
	rootOnly := "the root provision states the base rule only; put each directive in a nested provision"
	root, ok := p.object(m["provision"], "/provision", []string{"type", "provision"}, []string{"id", "extension"},
		map[string]string{"period": rootOnly, "actor": rootOnly, "action": rootOnly, "securityLabel": rootOnly,
			"purpose": rootOnly, "class": rootOnly, "code": rootOnly, "dataPeriod": rootOnly, "data": rootOnly,
			"modifierExtension": "carehub cannot honour modifier extensions"})
	if !ok {
		return nil
	}
	if root["type"] == nil {
		p.bad("/provision/type", VRequired, "the root provision must be of type permit (the base rule)")
	} else if t, ok := p.str(root["type"], "/provision/type"); ok && t != "permit" {
		p.bad("/provision/type", VFHIRValue, "the root provision must be of type permit (the base rule); record a confidential patient as a nested deny provision with no actor")
	}
	if root["provision"] == nil {
		return nil
	}
	nested, ok := p.array(root["provision"], "/provision/provision")
	if !ok {
		return nil
	}
	if len(nested) > MaxDirectives {
		p.bad("/provision/provision", VTooMany, "a patient holds at most "+strconv.Itoa(MaxDirectives)+" directives")
		return nil
	}
	ds := make([]Directive, 0, len(nested))
	for i, raw := range nested {
		ptr := "/provision/provision/" + strconv.Itoa(i)
		d, ok := p.provision(raw, ptr, fallback.recorded, fallback.recordedBy)
		if !ok {
			continue
		}
		for j := range ds {
			if ds[j].ID == d.ID {
				p.bad(ptr+"/id", VUniqueID, "two provisions share this id")
			}
		}
		ds = append(ds, d)
	}
	return ds
}

func hasCoding(cs []fhirCoding, system, code string) bool {
	for _, c := range cs {
		if c.System == system && c.Code == code {
			return true
		}
	}
	return false
}

func (p *fhirParser) patient(raw json.RawMessage, want nhs.Number) {
	if raw == nil {
		p.bad("/patient", VRequired, "the patient is required, identified by NHS number")
		return
	}
	m, ok := p.object(raw, "/patient", []string{"identifier", "type"}, []string{"id", "extension", "display", "reference"}, nil)
	if !ok {
		return
	}
	if m["type"] != nil {
		if t, ok := p.str(m["type"], "/patient/type"); ok && t != "Patient" {
			p.bad("/patient/type", VFHIRValue, "the patient must be a reference to a Patient")
		}
	}
	if m["identifier"] == nil {
		p.bad("/patient/identifier", VRequired, "the patient must be identified by NHS number")
		return
	}
	v, ok := p.identifier(m["identifier"], "/patient/identifier", systemNHSNumber, "the patient")
	if !ok {
		return
	}
	n, err := nhs.Parse(v)
	if err != nil {
		p.bad("/patient/identifier/value", VNHSNumber, "the patient's NHS number is not a valid NHS number")
		return
	}
	if want.IsZero() || n != want {
		p.bad("/patient/identifier/value", VPatientSwitch, "the Consent is about a different patient from the one addressed")
	}
}

// provision reads one nested provision as one directive.
func (p *fhirParser) provision(raw json.RawMessage, ptr string, recorded time.Time, recordedBy string) (Directive, bool) {
	start := len(p.vs)
	m, ok := p.object(raw, ptr,
		[]string{"id", "extension", "type", "period", "actor", "securityLabel", "class"}, nil,
		map[string]string{
			"action":            "carehub cannot honour provision.action: a directive covers all sharing of events",
			"purpose":           "carehub cannot honour provision.purpose",
			"code":              "carehub cannot honour provision.code",
			"data":              "carehub cannot honour provision.data",
			"dataPeriod":        "carehub cannot honour provision.dataPeriod: give the period in provision.period, which carehub judges against the event's time",
			"provision":         "carehub reads one level of nested provisions, one directive each; deeper nesting is not supported",
			"modifierExtension": "carehub cannot honour modifier extensions",
		})
	if !ok {
		return Directive{}, false
	}
	var d Directive
	locs := map[string]string{"": ptr}
	if m["id"] == nil {
		p.bad(ptr+"/id", VRequired, "each nested provision needs an id: it is the directive's id")
	} else {
		d.ID, _ = p.str(m["id"], ptr+"/id")
		locs["/id"] = ptr + "/id"
	}

	// Extensions.
	var haveRecorded, haveRecordedBy, haveRole bool
	if m["extension"] != nil {
		exts, _ := p.array(m["extension"], ptr+"/extension")
		for i, e := range exts {
			eptr := ptr + "/extension/" + strconv.Itoa(i)
			var probe struct {
				URL string `json:"url"`
			}
			if json.Unmarshal(e, &probe) != nil || probe.URL == "" {
				p.bad(eptr+"/url", VRequired, "an extension needs a url")
				continue
			}
			switch probe.URL {
			case extRecorded, extRecordedBy, extRecipientRole:
			default:
				continue // not ours, and a plain extension may be ignored
			}
			valueKey := map[string]string{extRecorded: "valueDateTime", extRecordedBy: "valueString", extRecipientRole: "valueCode"}[probe.URL]
			em, ok := p.object(e, eptr, []string{"url", valueKey}, []string{"id"}, nil)
			if !ok {
				continue
			}
			if em[valueKey] == nil {
				p.bad(eptr+"/"+valueKey, VRequired, "this extension takes a "+valueKey)
				continue
			}
			vptr := eptr + "/" + valueKey
			switch probe.URL {
			case extRecorded:
				if haveRecorded {
					p.bad(eptr, VDuplicate, "the recorded extension is given twice")
				}
				haveRecorded = true
				d.Recorded, _ = p.dateTime(em[valueKey], vptr, 0)
				locs["/recorded"] = vptr
			case extRecordedBy:
				if haveRecordedBy {
					p.bad(eptr, VDuplicate, "the recorded-by extension is given twice")
				}
				haveRecordedBy = true
				d.RecordedBy, _ = p.str(em[valueKey], vptr)
				locs["/recordedBy"] = vptr
			case extRecipientRole:
				if haveRole {
					p.bad(eptr, VDuplicate, "the recipient-role extension is given twice")
				}
				haveRole = true
				role, _ := p.str(em[valueKey], vptr)
				d.Role = Role(role)
				locs["/role"] = vptr
			}
		}
	}
	if !haveRecorded {
		if recorded.IsZero() {
			p.bad(ptr, VRequired, "when the directive was recorded is required: the directive-recorded extension, or the Consent's dateTime")
		}
		d.Recorded = recorded
		locs["/recorded"] = "/dateTime"
	}
	if !haveRecordedBy {
		if recordedBy == "" {
			p.bad(ptr, VRequired, "who recorded the directive is required: the directive-recorded-by extension, or the Consent's organization by ODS code")
		}
		d.RecordedBy = recordedBy
		locs["/recordedBy"] = "/organization/0/identifier/value"
	}

	// Type.
	var typ string
	if m["type"] == nil {
		p.bad(ptr+"/type", VRequired, "a nested provision needs a type, permit or deny")
	} else if typ, ok = p.str(m["type"], ptr+"/type"); ok && typ != "permit" && typ != "deny" {
		p.bad(ptr+"/type", VFHIRValue, "type is permit or deny")
	}

	// Period.
	if m["period"] != nil {
		pm, ok := p.object(m["period"], ptr+"/period", []string{"start", "end"}, []string{"id", "extension"}, nil)
		if ok {
			if pm["start"] != nil {
				if t, ok := p.dateTime(pm["start"], ptr+"/period/start", 's'); ok {
					d.Period.Start = &t
				}
				locs["/period/start"] = ptr + "/period/start"
			}
			if pm["end"] != nil {
				if t, ok := p.dateTime(pm["end"], ptr+"/period/end", 'e'); ok {
					d.Period.End = &t
				}
				locs["/period/end"] = ptr + "/period/end"
			}
		}
	}

	// Actor.
	if m["actor"] != nil {
		actors, ok := p.array(m["actor"], ptr+"/actor")
		if ok && len(actors) > 1 {
			p.bad(ptr+"/actor", VFHIRMapping, "name one organisation per provision: one directive each")
		} else if ok {
			aptr := ptr + "/actor/0"
			am, ok := p.object(actors[0], aptr, []string{"role", "reference"}, []string{"id", "extension"}, nil)
			if ok {
				if am["role"] == nil {
					p.bad(aptr+"/role", VRequired, "an actor needs a role (IRCP, information recipient)")
				} else if cs, ok := p.codeableConcept(am["role"], aptr+"/role"); ok {
					for i, c := range cs {
						if c.System != systemParticipant || c.Code != codeRecipient {
							p.bad(aptr+"/role/coding/"+strconv.Itoa(i), VFHIRUnsupported,
								"carehub directives name recipients only: the actor's role must be IRCP ("+systemParticipant+")")
						}
					}
				}
				if am["reference"] == nil {
					p.bad(aptr+"/reference", VRequired, "an actor needs a reference to an organisation by ODS code")
				} else if ods, ok := p.reference(am["reference"], aptr+"/reference", "Organization", systemODS, "the organisation"); ok {
					d.Organisation = ods
					locs["/organisation"] = aptr + "/reference/identifier/value"
				}
			}
		}
	}

	// Security labels and classes: categories, and the document class.
	document := false
	catsAt := ""
	readCodes := func(key string, allowDocument bool) {
		if m[key] == nil {
			return
		}
		cs, ok := p.codingList(m[key], ptr+"/"+key)
		if !ok {
			return
		}
		for i, c := range cs {
			cptr := ptr + "/" + key + "/" + strconv.Itoa(i)
			switch {
			case c.System == systemCategory:
				locs["/categories/"+strconv.Itoa(len(d.Categories))] = cptr + "/code"
				d.Categories = append(d.Categories, c.Code)
				if catsAt == "" {
					catsAt = cptr
				}
			case allowDocument && c.System == systemContent && c.Code == codeDocument:
				document = true
			default:
				p.bad(cptr, VFHIRUnsupported, "carehub understands categories in "+systemCategory+
					" and, in class, the document class of "+systemContent)
			}
		}
	}
	readCodes("securityLabel", false)
	readCodes("class", true)
	if catsAt != "" {
		locs["/categories"] = catsAt
	}

	if len(p.vs) > start {
		return Directive{}, false
	}

	// Kind, from the shape of the provision.
	hasOrg, hasRole := d.Organisation != "", haveRole
	switch {
	case hasOrg && hasRole:
		p.bad(ptr, VTargetOneOf, "a provision names an organisation (actor) or a role (recipient-role extension), not both")
	case typ == "permit" && document:
		p.bad(ptr+"/class", VFHIRMapping, "a permit provision cannot be limited to documents; to share notifications only, use a deny provision with the document class")
	case typ == "permit" && !hasOrg:
		p.bad(ptr, VFHIRMapping, "a permit provision names the organisation it permits (actor); role-level permits are not supported")
	case typ == "permit":
		d.Kind = KindPermitOrganisation
	case len(d.Categories) > 0:
		p.bad(catsAt, VFHIRMapping, "only a permit provision takes categories")
	case document && (hasOrg || hasRole):
		d.Kind = KindNotificationOnly
	case document:
		p.bad(ptr, VFHIRMapping, "a notification-only provision names an organisation (actor) or a role (recipient-role extension)")
	case hasOrg:
		d.Kind = KindDenyOrganisation
	case hasRole:
		d.Kind = KindDenyRole
	default:
		d.Kind = KindConfidential
	}
	if len(p.vs) > start {
		return Directive{}, false
	}
	locs["/kind"] = ptr + "/type"

	// The directive's own rules, re-pointed into the FHIR document.
	var vs []problem.Violation
	d.violations("", &vs)
	for _, v := range vs {
		at, ok := locs[v.Pointer]
		if !ok {
			at = ptr
		}
		p.bad(at, v.Rule, v.Detail)
	}
	return d, len(p.vs) == start
}

// OperationOutcome renders err as a FHIR R4 OperationOutcome (JSON): one
// issue per violation of a *problem.Error in err's chain, with severity
// error, the code of its Kind (problem.Kind.FHIRIssueCode), the violated rule
// as details, its public detail as diagnostics and, for errors from
// ConsentFromFHIR, a FHIRPath expression locating the element
// ("Consent.provision.provision[1].actor[0]"). Only public text is used:
// an error that is not a *problem.Error becomes "internal error". A nil err
// renders a single informational issue.
func OperationOutcome(err error) []byte {
	type issue struct {
		Severity    string               `json:"severity"`
		Code        string               `json:"code"`
		Details     *fhirCodeableConcept `json:"details,omitempty"`
		Diagnostics string               `json:"diagnostics,omitempty"`
		Expression  []string             `json:"expression,omitempty"`
	}
	out := struct {
		ResourceType string  `json:"resourceType"`
		Issue        []issue `json:"issue"`
	}{ResourceType: "OperationOutcome"}
	var pe *problem.Error
	switch {
	case err == nil:
		out.Issue = []issue{{Severity: "information", Code: "informational", Diagnostics: "no problem found"}}
	case !errors.As(err, &pe):
		out.Issue = []issue{{Severity: "error", Code: problem.Internal.FHIRIssueCode(), Diagnostics: "internal error"}}
	default:
		root := ""
		var fe *fhirError
		if errors.As(err, &fe) {
			root = fe.root
		}
		code := pe.Kind.FHIRIssueCode()
		if pe.Kind == problem.Other {
			code = problem.Internal.FHIRIssueCode()
		}
		for _, v := range pe.Violations {
			is := issue{Severity: "error", Code: code, Diagnostics: v.Detail}
			if v.Rule != "" {
				is.Details = &fhirCodeableConcept{Coding: []fhirCoding{{System: systemViolation, Code: v.Rule}}}
			}
			if x := fhirPath(root, v.Pointer); x != "" {
				is.Expression = []string{x}
			}
			out.Issue = append(out.Issue, is)
		}
		if len(out.Issue) == 0 {
			out.Issue = []issue{{Severity: "error", Code: code, Diagnostics: pe.Message}}
		}
	}
	b, merr := json.Marshal(out)
	if merr != nil { // cannot happen: every field is a string
		return []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception"}]}`)
	}
	return b
}

// fhirPath turns a JSON pointer into a FHIRPath expression rooted at the
// resource type root: "/provision/provision/1/actor/0" becomes
// "Consent.provision.provision[1].actor[0]". With no root the path is
// relative ("directives[2].kind").
func fhirPath(root, ptr string) string {
	var b strings.Builder
	b.WriteString(root)
	if ptr == "" {
		return b.String()
	}
	for _, seg := range strings.Split(ptr[1:], "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		if _, err := strconv.Atoi(seg); err == nil && seg != "" {
			b.WriteString("[" + seg + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(seg)
	}
	return b.String()
}
