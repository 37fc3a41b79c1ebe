package consent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// Reading a FHIR R4 Consent (ConsentFromFHIR). The package documentation's
// FHIR section says what each element means; this file is that reading.

// The base decision of a Consent: what it says where no provision applies.
const (
	basePermit = "permit"
	baseDeny   = "deny"
)

// policyRules maps the policy rules carehub honours to their base decision.
// v3-ActCode OPTIN and OPTINR are an opt-in (carehub's own policy applies),
// OPTOUT and OPTOUTE an opt-out (nothing is shared but what the provisions
// permit, still within carehub's policy).
var policyRules = map[[2]string]string{
	{systemActCode, "OPTIN"}:   basePermit,
	{systemActCode, "OPTINR"}:  basePermit,
	{systemActCode, "OPTOUT"}:  baseDeny,
	{systemActCode, "OPTOUTE"}: baseDeny,
	{systemPolicy, codePolicy}: basePermit,
}

// labelCategories maps HL7 sensitivity codes (v3-ActCode
// InformationSensitivityPolicy, and the v3-Confidentiality codes by type of
// information) to carehub's categories. A label in this map restricts a
// provision to those categories.
var labelCategories = map[[2]string][]string{
	{systemActCode, "PSY"}:         {CategoryMentalHealth},
	{systemActCode, "BH"}:          {CategoryMentalHealth},
	{systemActCode, "PSYTHPN"}:     {CategoryMentalHealth},
	{systemActCode, "SEX"}:         {CategorySexualHealth},
	{systemActCode, "STD"}:         {CategorySexualHealth},
	{systemActCode, "SDV"}:         {CategorySafeguarding},
	{systemActCode, "GENDER"}:      {CategoryGenderIdentity},
	{systemActCode, "HIV"}:         {CategoryHIV},
	{systemActCode, "ETH"}:         {CategorySubstanceMisuse},
	{systemActCode, "SUD"}:         {CategorySubstanceMisuse},
	{systemActCode, "SPI"}:         {CategoryMentalHealth, CategorySubstanceMisuse},
	{systemConfidentiality, "PSY"}: {CategoryMentalHealth},
	{systemConfidentiality, "SDV"}: {CategorySafeguarding},
	{systemConfidentiality, "HIV"}: {CategoryHIV},
	{systemConfidentiality, "ETH"}: {CategorySubstanceMisuse},
}

// normalLabel reports whether a label is a confidentiality level no higher
// than normal: information carrying no sensitive category. A provision
// restricted to it is a provision about events without sensitive
// categories, which is what a carehub directive without categories is.
func normalLabel(c fhirCoding) bool {
	if c.System != systemConfidentiality {
		return false
	}
	switch c.Code {
	case "N", "L", "M", "U":
		return true
	}
	return false
}

// Categories that HL7 sensitivity codes map to, besides the built-in
// sensitive ones. They are sensitive in a deployment that lists them in
// Policy.ExtraSensitiveCategories.
const (
	CategoryHIV             = "hiv"
	CategorySubstanceMisuse = "substance-misuse"
)

// readCtx is what the Consent tells each provision it holds.
type readCtx struct {
	base          string
	recorded      time.Time // the Consent's dateTime, for provisions that do not say
	recordedBy    string    // the Consent's first organization, likewise
	rootPeriod    Period    // bounds every provision
	rootPeriodPtr string
}

// ConsentFromFHIR reads a FHIR R4 Consent resource (JSON) holding a patient's
// directives, in the mapping the package documentation describes, and checks
// that it is about patient: the patient the caller is acting for (a Consent
// naming another NHS number is refused).
//
// Anything the mapping cannot honour exactly is refused rather than ignored,
// saying why: a provision element carehub does not apply (purpose, data,
// dataPeriod, code, deeper nesting), a modifier extension, a policy rule or
// policy other than an opt-in, an opt-out or carehub's own, an actor that is
// not an organisation carehub can identify, a security label carehub has no
// category for. An ignored restriction could share what its author meant to
// withhold.
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

func (p *fhirParser) consent(raw json.RawMessage, patient nhs.Number) []Directive {
	m, ok := p.object(raw, "",
		[]string{"resourceType", "status", "scope", "category", "patient", "dateTime", "organization", "policy", "policyRule", "provision"},
		[]string{"id", "meta", "text", "language", "contained", "extension", "identifier", "performer",
			"sourceAttachment", "sourceReference", "verification"},
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
	p.policy(m["policy"])
	ctx := readCtx{base: p.policyRule(m["policyRule"])}
	if m["dateTime"] != nil {
		ctx.recorded, _ = p.dateTime(m["dateTime"], "/dateTime", 's') // a date alone: the start of that day
	}
	if m["organization"] != nil {
		if refs, ok := p.array(m["organization"], "/organization"); ok {
			// The first organisation carehub can identify records the
			// provisions that do not name their recorder. One it cannot
			// identify is no error unless a provision needs it.
			for i, r := range refs {
				var q fhirParser
				if ods, ok := q.organisation(r, "/organization/"+strconv.Itoa(i), "an organization"); ok && ctx.recordedBy == "" {
					ctx.recordedBy = ods
				}
			}
		}
	}

	var ds []readDirective
	if m["provision"] == nil {
		if ctx.base == "" {
			ctx.base = basePermit
		}
		return p.finish(p.optOut(ctx, "/policyRule"))
	}
	root, ok := p.object(m["provision"], "/provision",
		[]string{"id", "extension", "type", "period", "actor", "action", "securityLabel", "class", "provision"}, nil,
		provisionRefused)
	if !ok {
		return nil
	}
	if root["period"] != nil {
		ctx.rootPeriod, _ = p.period(root["period"], "/provision/period")
		ctx.rootPeriodPtr = "/provision/period"
	}
	// A root provision that names an actor, a label or a class (as HL7's
	// pkb example does) is itself a provision, an exception to the base;
	// one that names at most a period and a type restates the base.
	targets := root["actor"] != nil || root["securityLabel"] != nil || root["class"] != nil || hasRoleExtension(root["extension"])
	rootType := ""
	if root["type"] != nil {
		if t, ok := p.str(root["type"], "/provision/type"); ok {
			if t != basePermit && t != baseDeny {
				p.bad("/provision/type", VFHIRValue, "type is permit or deny")
			} else {
				rootType = t
			}
		}
	}
	if !targets && rootType != "" {
		switch {
		case ctx.base == "":
			ctx.base = rootType
		case ctx.base != rootType:
			p.bad("/provision/type", VFHIRMapping, "the root provision's type contradicts the policy rule (opt-in is permit, opt-out is deny); "+
				"FHIR R4 allows no type on the root provision: leave it out")
		}
	}
	if ctx.base == "" {
		ctx.base = basePermit // carehub's policy: share as it allows
	}
	basePtr := "/policyRule"
	if m["policyRule"] == nil {
		basePtr = "/provision/type"
	}
	ds = append(ds, p.optOut(ctx, basePtr)...)
	if targets {
		ds = append(ds, p.provision(m["provision"], "/provision", ctx, true)...)
	}
	if root["provision"] != nil {
		nested, ok := p.array(root["provision"], "/provision/provision")
		if ok && len(nested) > MaxDirectives {
			p.bad("/provision/provision", VTooMany, "a patient holds at most "+strconv.Itoa(MaxDirectives)+" directives")
			return nil
		}
		var explicit []string
		for i, raw := range nested {
			ptr := "/provision/provision/" + strconv.Itoa(i)
			got := p.provision(raw, ptr, ctx, false)
			for _, d := range got {
				if d.generated {
					continue
				}
				if slices.Contains(explicit, d.ID) {
					p.bad(ptr+"/id", VUniqueID, "two provisions share this id")
				}
				explicit = append(explicit, d.ID)
			}
			ds = append(ds, got...)
		}
	}
	return p.finish(ds)
}

// provisionRefused are the provision elements carehub cannot honour, and why.
var provisionRefused = map[string]string{
	"purpose": "carehub cannot honour provision.purpose: it limits the provision to purposes of use (emergency treatment, say), " +
		"and carehub shares for direct care with nothing in an event that tells one purpose from another",
	"code": "carehub cannot honour provision.code: it selects records by their type (a document code, say), " +
		"and carehub's directives select by recipient, role and sensitivity category, never by record type",
	"data": "carehub cannot honour provision.data: it names particular records, and carehub's directives apply to " +
		"all of a patient's events (by recipient, role and sensitivity category), never to one record",
	"dataPeriod":        "carehub cannot honour provision.dataPeriod: give the period in provision.period, which carehub judges against the event's time",
	"modifierExtension": "carehub cannot honour modifier extensions",
}

// finish drops the repeats of generated directives (two provisions that say
// the same thing, as HL7's pkb example does), keeping the one recorded last,
// and checks the count.
func (p *fhirParser) finish(ds []readDirective) []Directive {
	out := make([]Directive, 0, len(ds))
	at := map[string]int{}
	for _, d := range ds {
		if i, seen := at[d.ID]; seen && d.generated {
			if d.Recorded.After(out[i].Recorded) {
				out[i] = d.Directive
			}
			continue
		}
		at[d.ID] = len(out)
		out = append(out, d.Directive)
	}
	if len(out) > MaxDirectives && len(p.vs) == 0 {
		p.bad("/provision", VTooMany, "the Consent says more than a patient's "+strconv.Itoa(MaxDirectives)+" directives can hold")
	}
	return out
}

// readDirective is a directive read from a provision, and whether its id
// was generated (the provision had none).
type readDirective struct {
	Directive
	generated bool
}

// optOut returns the directives of an opt-out base, none for an opt-in: a
// deny-role for every role, in the root provision's period. A permit for an
// organisation lifts a deny-role for it (rule 6), so the provisions that
// permit are the exceptions to the opt-out, and the policy's other rules
// (the relationship, sensitive categories) still apply.
func (p *fhirParser) optOut(ctx readCtx, ptr string) []readDirective {
	if ctx.base != baseDeny {
		return nil
	}
	if ctx.recorded.IsZero() || ctx.recordedBy == "" {
		p.bad(ptr, VRequired, "an opt-out needs when and by whom it was recorded: the Consent's dateTime and its organization by ODS code")
		return nil
	}
	var out []readDirective
	for _, r := range RoleNames() {
		out = append(out, readDirective{Directive: Directive{
			ID: "opt-out-" + r, Kind: KindDenyRole, Role: Role(r), Period: ctx.rootPeriod,
			Recorded: ctx.recorded, RecordedBy: ctx.recordedBy,
		}})
	}
	return out
}

// policyRule returns the base decision of the policy rule: permit or deny,
// or "" when there is none.
func (p *fhirParser) policyRule(raw json.RawMessage) string {
	if raw == nil {
		return ""
	}
	cs, ok := p.codeableConcept(raw, "/policyRule")
	if !ok {
		return ""
	}
	base := ""
	for i, c := range cs {
		b, known := policyRules[[2]string{c.System, c.Code}]
		switch {
		case !known:
			p.bad("/policyRule/coding/"+strconv.Itoa(i), VFHIRUnsupported,
				"carehub honours an opt-in (v3-ActCode OPTIN, OPTINR), an opt-out (OPTOUT, OPTOUTE) or its own policy ("+
					systemPolicy+"#"+codePolicy+"); another policy rule would change what the provisions mean")
		case base != "" && b != base:
			p.bad("/policyRule/coding/"+strconv.Itoa(i), VFHIRMapping, "the policy rule's codings disagree: one is an opt-in, another an opt-out")
		default:
			base = b
		}
	}
	return base
}

// policy checks Consent.policy: a policy named by uri must be carehub's.
func (p *fhirParser) policy(raw json.RawMessage) {
	if raw == nil {
		return
	}
	ps, ok := p.array(raw, "/policy")
	if !ok {
		return
	}
	for i, e := range ps {
		ptr := "/policy/" + strconv.Itoa(i)
		m, ok := p.object(e, ptr, []string{"uri"}, []string{"id", "extension", "authority"},
			map[string]string{"modifierExtension": "carehub cannot honour modifier extensions"})
		if !ok || m["uri"] == nil {
			continue
		}
		if u, ok := p.str(m["uri"], ptr+"/uri"); ok && u != PolicyURI {
			p.bad(ptr+"/uri", VFHIRUnsupported, "carehub applies its own sharing policy ("+PolicyURI+
				"); a Consent that names another policy asks for rules carehub does not know, and is not ignored")
		}
	}
}

func hasRoleExtension(raw json.RawMessage) bool {
	var exts []struct {
		URL string `json:"url"`
	}
	_ = json.Unmarshal(raw, &exts)
	for _, e := range exts {
		if e.URL == extRecipientRole {
			return true
		}
	}
	return false
}

func hasCoding(cs []fhirCoding, system, code string) bool {
	for _, c := range cs {
		if c.System == system && c.Code == code {
			return true
		}
	}
	return false
}

// patient checks the Consent's patient. A patient identified by NHS number
// must be want; a patient given otherwise (a literal reference to a record
// carehub does not hold, a display, a local identifier) is taken to be the
// patient the request addresses.
func (p *fhirParser) patient(raw json.RawMessage, want nhs.Number) {
	if raw == nil {
		p.bad("/patient", VRequired, "the patient is required")
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
	if want.IsZero() {
		p.bad("/patient", VPatientSwitch, "the Consent is not addressed to a patient")
		return
	}
	if m["identifier"] == nil {
		return
	}
	var id struct {
		System string `json:"system"`
	}
	if json.Unmarshal(m["identifier"], &id) == nil && id.System != systemNHSNumber {
		return // a local identifier: the addressed patient
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
	if n != want {
		p.bad("/patient/identifier/value", VPatientSwitch, "the Consent is about a different patient from the one addressed")
	}
}

// literalOrg matches a literal reference to an Organization whose id is an
// ODS code, relative (Organization/RX1) or absolute
// (https://directory.spineservices.nhs.uk/STU3/Organization/RX1), with an
// optional version.
var literalOrg = regexp.MustCompile(`(?:^|/)Organization/([A-Za-z0-9]{1,16})(?:/_history/[^/]+)?$`)

// literalAny matches a literal reference to a resource of any type.
var literalAny = regexp.MustCompile(`(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$`)

// organisation reads a Reference to an Organization carehub can identify:
// by identifier in the ODS system, or by a literal reference whose id is an
// ODS code (as the NHS ODS FHIR API and the Spine Directory Service name
// organisations; letters are taken as upper case, and an id of digits only is
// a local record number, not an ODS code). With both, the identifier decides
// and a reference that does not resolve is not an error.
func (p *fhirParser) organisation(raw json.RawMessage, ptr, what string) (string, bool) {
	m, ok := p.object(raw, ptr, []string{"identifier", "type", "reference"}, []string{"id", "extension", "display"}, nil)
	if !ok {
		return "", false
	}
	if m["type"] != nil {
		if t, ok := p.str(m["type"], ptr+"/type"); !ok || t != "Organization" {
			if ok {
				p.bad(ptr+"/type", VFHIRValue, what+" must be a reference to an Organization: carehub directives name organisations")
			}
			return "", false
		}
	}
	if m["identifier"] != nil {
		return p.identifier(m["identifier"], ptr+"/identifier", systemODS, what)
	}
	if m["reference"] == nil {
		p.bad(ptr+"/identifier", VRequired, what+" is named by ODS code: an identifier in "+systemODS+", or a reference Organization/<ODS code>")
		return "", false
	}
	ref, ok := p.str(m["reference"], ptr+"/reference")
	if !ok {
		return "", false
	}
	if mm := literalOrg.FindStringSubmatch(ref); mm != nil {
		// All digits is a local record number, never an ODS code (every
		// ODS code has a letter).
		if code := strings.ToUpper(mm[1]); ods.Valid(code) && strings.ContainsAny(code, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			return code, true
		}
	} else if mm := literalAny.FindStringSubmatch(ref); mm != nil {
		detail := what + " must be a reference to an Organization: carehub directives name organisations"
		if t := mm[1]; t == "Practitioner" || t == "PractitionerRole" || t == "Patient" || t == "RelatedPerson" {
			detail += "; carehub delivers to organisations and cannot keep a person within one from seeing, " +
				"nor give a person access to, what the organisation receives"
		}
		p.bad(ptr+"/reference", VFHIRValue, detail)
		return "", false
	}
	detail := what + " cannot be identified: carehub resolves no reference to a record it does not hold; " +
		"name the organisation by ODS code (an identifier in " + systemODS + ", or a reference Organization/<ODS code>)"
	if strings.HasPrefix(ref, "#") {
		detail = what + " is a contained resource, which carehub does not read; name the organisation by ODS code (an identifier in " + systemODS + ")"
	}
	p.bad(ptr+"/reference", VFHIRUnresolved, detail)
	return "", false
}

// VFHIRUnresolved is the rule of a reference carehub cannot resolve.
const VFHIRUnresolved = "fhir-reference-unresolved"

// period reads a Period: a date alone is the whole of that day in the UK.
func (p *fhirParser) period(raw json.RawMessage, ptr string) (Period, bool) {
	var out Period
	pm, ok := p.object(raw, ptr, []string{"start", "end"}, []string{"id", "extension"}, nil)
	if !ok {
		return out, false
	}
	good := true
	if pm["start"] != nil {
		if t, ok := p.dateTime(pm["start"], ptr+"/start", 's'); ok {
			out.Start = &t
		} else {
			good = false
		}
	}
	if pm["end"] != nil {
		if t, ok := p.dateTime(pm["end"], ptr+"/end", 'e'); ok {
			out.End = &t
		} else {
			good = false
		}
	}
	if good && out.Start != nil && out.End != nil && out.End.Before(*out.Start) {
		p.bad(ptr+"/end", VPeriodOrder, "a period must not end before it starts")
		good = false
	}
	return out, good
}

// within returns the part of p inside bound (the root provision's period),
// and false when they do not overlap.
func within(p, bound Period) (Period, bool) {
	out := p
	if bound.Start != nil && (out.Start == nil || out.Start.Before(*bound.Start)) {
		out.Start = bound.Start
	}
	if bound.End != nil && (out.End == nil || out.End.After(*bound.End)) {
		out.End = bound.End
	}
	if out.Start != nil && out.End != nil && out.End.Before(*out.Start) {
		return p, false
	}
	return out, true
}

// generatedID returns the stable id of a directive read from a provision
// without one: "fhir-" and 16 hex digits of a SHA-256 of what the directive
// says (kind, organisation, role, categories, period), not of where it sits
// in the document or when it was recorded. The same provision sent again,
// in any position, gets the same id; audit records keep naming it.
func generatedID(d *Directive) string {
	cats := slices.Clone(d.Categories)
	slices.Sort(cats)
	var b strings.Builder
	b.WriteString(string(d.Kind) + "|" + d.Organisation + "|" + string(d.Role) + "|" + strings.Join(cats, ",") + "|")
	if d.Period.Start != nil {
		b.WriteString(d.Period.Start.UTC().Format(time.RFC3339Nano))
	}
	b.WriteByte('|')
	if d.Period.End != nil {
		b.WriteString(d.Period.End.UTC().Format(time.RFC3339Nano))
	}
	sum := sha256.Sum256([]byte(b.String()))
	return "fhir-" + hex.EncodeToString(sum[:8])
}

// provision reads one provision as directives: one per organisation it names
// (one when it names none). root is set for a root provision read as an
// exception (its period is the root period; its nested provisions are read
// by the caller).
func (p *fhirParser) provision(raw json.RawMessage, ptr string, ctx readCtx, root bool) []readDirective {
	start := len(p.vs)
	handled := []string{"id", "extension", "type", "period", "actor", "action", "securityLabel", "class"}
	refused := provisionRefused
	if root {
		handled = append(handled, "provision")
	} else {
		refused = maps2(provisionRefused, "provision",
			"carehub reads one level of nested provisions, one directive each; deeper nesting is not supported")
	}
	m, ok := p.object(raw, ptr, handled, nil, refused)
	if !ok {
		return nil
	}
	var d Directive
	locs := map[string]string{"": ptr}
	id := ""
	if m["id"] != nil {
		id, _ = p.str(m["id"], ptr+"/id")
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
		if ctx.recorded.IsZero() {
			p.bad(ptr, VRequired, "when the directive was recorded is required: the directive-recorded extension, or the Consent's dateTime")
		}
		d.Recorded = ctx.recorded
		locs["/recorded"] = "/dateTime"
	}
	if !haveRecordedBy {
		if ctx.recordedBy == "" {
			p.bad(ptr, VRequired, "who recorded the directive is required: the directive-recorded-by extension, or the Consent's organization by ODS code")
		}
		d.RecordedBy = ctx.recordedBy
		locs["/recordedBy"] = "/organization/0"
	}

	// Type: a provision without one is an exception to the base.
	typ := ""
	if m["type"] != nil {
		if t, ok := p.str(m["type"], ptr+"/type"); ok {
			if t != basePermit && t != baseDeny {
				p.bad(ptr+"/type", VFHIRValue, "type is permit or deny")
			}
			typ = t
		}
	} else if ctx.base == basePermit {
		typ = baseDeny
	} else {
		typ = basePermit
	}

	// Period, bounded by the root provision's.
	if !root && m["period"] != nil {
		if per, ok := p.period(m["period"], ptr+"/period"); ok {
			d.Period = per
			locs["/period/start"] = ptr + "/period/start"
			locs["/period/end"] = ptr + "/period/end"
		}
	}
	if bounded, ok := within(d.Period, ctx.rootPeriod); ok {
		d.Period = bounded
	} else {
		p.bad(ptr+"/period", VFHIRMapping, "this provision's period lies outside the root provision's, which bounds it: it could never apply")
	}
	if locs["/period/start"] == "" && ctx.rootPeriodPtr != "" {
		locs["/period/start"] = ctx.rootPeriodPtr + "/start"
		locs["/period/end"] = ctx.rootPeriodPtr + "/end"
	}

	// Action: all carehub does is share events with recipients. A deny
	// that names sharing (access, disclose) among other actions is
	// honoured by withholding: a recipient that is sent nothing can collect,
	// use or correct nothing, and denying more can only make carehub share
	// less. Only access and disclose grant sharing: a permit's other actions
	// grant nothing carehub does and are left to the systems that hold the
	// record. A provision whose actions are all outside sharing is refused:
	// honouring it would withhold (or share) what it does not speak of, and
	// ignoring it would pretend to honour it.
	if m["action"] != nil {
		if acts, ok := p.array(m["action"], ptr+"/action"); ok {
			sharing, other := false, false
			for i, a := range acts {
				aptr := ptr + "/action/" + strconv.Itoa(i)
				cs, ok := p.codeableConcept(a, aptr)
				if !ok {
					continue
				}
				for j, c := range cs {
					switch {
					case c.System == systemAction && (c.Code == "access" || c.Code == "disclose"):
						sharing = true
					case c.System == systemAction && (c.Code == "collect" || c.Code == "use" || c.Code == "correct"):
						other = true
					default:
						p.bad(aptr+"/coding/"+strconv.Itoa(j), VFHIRUnsupported,
							"carehub reads the actions of "+systemAction+" (access, disclose, collect, use, correct); "+
								"it controls one, sharing events with a recipient (access or disclose)")
					}
				}
			}
			if other && !sharing {
				p.bad(ptr+"/action", VFHIRUnsupported, "this provision is about collecting, using or correcting the record, "+
					"which carehub does not do: it controls sharing events with a recipient (consentaction access or disclose); "+
					"name access or disclose for carehub to act on it")
			}
		}
	}

	// Actors: organisations that receive (IRCP, PRCP).
	var orgs []string
	if m["actor"] != nil {
		if actors, ok := p.array(m["actor"], ptr+"/actor"); ok {
			for i, a := range actors {
				aptr := ptr + "/actor/" + strconv.Itoa(i)
				am, ok := p.object(a, aptr, []string{"role", "reference"}, []string{"id", "extension"},
					map[string]string{"modifierExtension": "carehub cannot honour modifier extensions"})
				if !ok {
					continue
				}
				if am["role"] == nil {
					p.bad(aptr+"/role", VRequired, "an actor needs a role (IRCP or PRCP, a recipient)")
				} else if cs, ok := p.codeableConcept(am["role"], aptr+"/role"); ok {
					for j, c := range cs {
						if c.System != systemParticipant || (c.Code != codeRecipient && c.Code != codePrimary) {
							p.bad(aptr+"/role/coding/"+strconv.Itoa(j), VFHIRUnsupported, actorRoleDetail(c))
						}
					}
				}
				if am["reference"] == nil {
					p.bad(aptr+"/reference", VRequired, "an actor needs a reference to an organisation by ODS code")
				} else if code, ok := p.organisation(am["reference"], aptr+"/reference", "the organisation"); ok && !slices.Contains(orgs, code) {
					orgs = append(orgs, code)
					loc := aptr + "/reference/reference"
					if strings.Contains(string(am["reference"]), `"identifier"`) {
						loc = aptr + "/reference/identifier/value"
					}
					locs["/organisation/"+code] = loc
				}
			}
		}
	}

	// Security labels and classes: categories, the normal level, and the
	// document class.
	document, normal := false, false
	catsAt := ""
	readLabels := func(key string, allowDocument bool) {
		if m[key] == nil {
			return
		}
		cs, ok := p.codingList(m[key], ptr+"/"+key)
		if !ok {
			return
		}
		for i, c := range cs {
			cptr := ptr + "/" + key + "/" + strconv.Itoa(i)
			cats, mapped := labelCategories[[2]string{c.System, c.Code}]
			switch {
			case c.System == systemCategory:
				locs["/categories/"+strconv.Itoa(len(d.Categories))] = cptr + "/code"
				d.Categories = append(d.Categories, c.Code)
			case allowDocument && c.System == systemContent && c.Code == codeDocument:
				document = true
				continue
			case normalLabel(c):
				normal = true
				continue
			case mapped && len(cats) > 0:
				for _, cat := range cats {
					if !slices.Contains(d.Categories, cat) {
						locs["/categories/"+strconv.Itoa(len(d.Categories))] = cptr
						d.Categories = append(d.Categories, cat)
					}
				}
			case key == "class" && (c.System == systemResourceTypes || c.System == systemMIME):
				p.bad(cptr, VFHIRUnsupported, "this class selects records by resource or media type, which carehub cannot apply: "+
					"it shares events, not resources or documents by type; in class it understands only the document class of "+systemContent+
					" (share notifications without documents) and the sensitivity codes it maps to its categories")
				continue
			default:
				p.bad(cptr, VFHIRUnsupported, "carehub has no category for this label: it understands "+systemCategory+
					", the sensitivity codes of v3-ActCode it maps to its categories (PSY, BH, SEX, STD, SDV, GENDER, HIV, ETH, SUD, SPI), "+
					"the normal confidentiality levels (v3-Confidentiality N, L, M, U) and, in class, the document class of "+systemContent)
				continue
			}
			if catsAt == "" {
				catsAt = cptr
			}
		}
	}
	readLabels("securityLabel", false)
	readLabels("class", true)
	if catsAt != "" {
		locs["/categories"] = catsAt
	}
	if normal && len(d.Categories) > 0 {
		p.bad(ptr+"/securityLabel", VFHIRMapping, "a provision is about normal information or about sensitive categories, not both: "+
			"split it in two provisions")
	}
	if len(p.vs) > start {
		return nil
	}

	// Kind, from the shape of the provision: one directive per organisation.
	if len(orgs) == 0 {
		orgs = []string{""}
	}
	var out []readDirective
	for _, org := range orgs {
		dd := d
		dd.Categories = slices.Clone(d.Categories)
		dd.Organisation = org
		hasOrg, hasRole := org != "", haveRole
		switch {
		case hasOrg && hasRole:
			p.bad(ptr, VTargetOneOf, "a provision names an organisation (actor) or a role (recipient-role extension), not both")
		case typ == basePermit && document:
			p.bad(ptr+"/class", VFHIRMapping, "a permit provision cannot be limited to documents; to share notifications only, use a deny provision with the document class")
		case typ == basePermit && !hasOrg:
			p.bad(ptr, VFHIRMapping, "a permit provision names the organisation it permits (actor); role-level permits are not supported")
		case typ == basePermit:
			dd.Kind = KindPermitOrganisation
		case len(dd.Categories) > 0:
			p.bad(catsAt, VFHIRMapping, "only a permit provision takes categories: carehub withholds an organisation's events all or nothing")
		case normal:
			p.bad(ptr+"/securityLabel", VFHIRMapping, "a deny provision applies to all of an organisation's events; it cannot be limited to normal information")
		case document && (hasOrg || hasRole):
			dd.Kind = KindNotificationOnly
		case document:
			p.bad(ptr, VFHIRMapping, "a notification-only provision names an organisation (actor) or a role (recipient-role extension)")
		case hasOrg:
			dd.Kind = KindDenyOrganisation
		case hasRole:
			dd.Kind = KindDenyRole
		default:
			dd.Kind = KindConfidential
		}
		if len(p.vs) > start {
			return nil
		}
		generated := false
		switch {
		case id == "":
			dd.ID, generated = generatedID(&dd), true
		case len(orgs) > 1:
			dd.ID = id + "." + org
		default:
			dd.ID = id
		}
		out = append(out, readDirective{Directive: dd, generated: generated})
	}
	locs["/kind"] = ptr + "/type"

	// The directives' own rules, re-pointed into the FHIR document.
	for _, dd := range out {
		var vs []problem.Violation
		dd.violations("", &vs)
		for _, v := range vs {
			at, ok := locs[v.Pointer]
			if v.Pointer == "/organisation" {
				at, ok = locs["/organisation/"+dd.Organisation]
			}
			if !ok {
				at = ptr
			}
			p.bad(at, v.Rule, v.Detail)
		}
	}
	if len(p.vs) > start {
		return nil
	}
	return out
}

// Code systems of provision.class that select records by type.
const (
	systemResourceTypes = "http://hl7.org/fhir/resource-types"
	systemMIME          = "urn:ietf:bcp:13"
)

// actorRoleDetail says why an actor's role is refused. The custodian
// (CST) and author (AUT) roles select records by where they are held or
// who wrote them (HL7's notAuthor, Out and Emergency examples): carehub's
// directives select recipients, and its events carry no such restriction
// it could apply.
func actorRoleDetail(c fhirCoding) string {
	if c.System == systemParticipant && (c.Code == "CST" || c.Code == "AUT") {
		return "this actor's role (" + c.Code + ") selects records by the organisation that holds or wrote them, which carehub cannot apply: " +
			"its directives say who may receive the patient's events (an actor with role IRCP or PRCP of " + systemParticipant + "), not whose records they are"
	}
	return "carehub directives name recipients only: the actor's role must be IRCP or PRCP (" + systemParticipant + ")"
}

// maps2 returns m with one more entry.
func maps2(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for kk, vv := range m {
		out[kk] = vv
	}
	out[k] = v
	return out
}
