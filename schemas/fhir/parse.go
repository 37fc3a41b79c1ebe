package fhir

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/uuid"
)

// Inbound is a FHIR message or Encounter read as a canonical event.
type Inbound struct {
	ID    string // the CloudEvents id
	Type  string // the event type
	Event []byte // the CloudEvents JSON document, not yet validated by schema
	root  string
	// ptrs maps canonical JSON pointers (into Event) to the JSON pointers
	// of the elements they came from (into the FHIR document).
	ptrs map[string]string
}

// Locate re-points the violations of a *problem.Error about the canonical
// event (from schema validation, say) at the FHIR elements they came from,
// and returns it as a *PathError; the nearest known element stands in for
// one with no counterpart. Other errors come back unchanged.
func (in *Inbound) Locate(err error) error {
	var pe *problem.Error
	if !errors.As(err, &pe) {
		return err
	}
	out := *pe
	out.Violations = nil
	for _, v := range pe.Violations {
		v.Pointer = in.locate(v.Pointer)
		out.Violations = append(out.Violations, v)
	}
	return &PathError{Root: in.root, Err: &out}
}

func (in *Inbound) locate(ptr string) string {
	for p := ptr; ; {
		if f, ok := in.ptrs[p]; ok {
			return f
		}
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return ""
		}
		p = p[:i]
	}
}

// maxViolations bounds what one document can make us report.
const maxViolations = 50

// reader walks a decoded FHIR document, collecting violations.
type reader struct {
	vs []problem.Violation
}

func (r *reader) bad(ptr, rule, detail string) {
	if len(r.vs) < maxViolations {
		r.vs = append(r.vs, problem.Violation{Pointer: ptr, Rule: rule, Detail: detail})
	}
}

// node is a JSON value and where it is.
type node struct {
	v   any
	ptr string
}

func (n node) obj() map[string]any { m, _ := n.v.(map[string]any); return m }

func (n node) get(k string) node {
	return node{v: n.obj()[k], ptr: n.ptr + "/" + strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")}
}

func (n node) str(k string) string { s, _ := n.obj()[k].(string); return s }

func (n node) list(k string) []node {
	c := n.get(k)
	a, _ := c.v.([]any)
	out := make([]node, len(a))
	for i, x := range a {
		out[i] = node{v: x, ptr: c.ptr + "/" + strconv.Itoa(i)}
	}
	return out
}

func (n node) present() bool { return n.v != nil }

// decode parses a FHIR JSON document of resource type want.
func decode(raw []byte, want string) (node, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return node{}, problem.New(problem.Malformed, "the body is not JSON")
	}
	if dec.More() {
		return node{}, problem.New(problem.Malformed, "the body holds more than one JSON value")
	}
	n := node{v: v}
	if n.obj() == nil {
		return node{}, problem.New(problem.Malformed, "the body is not a JSON object")
	}
	if rt := n.str("resourceType"); rt != want {
		return node{}, &PathError{Root: want, Err: &problem.Error{Kind: problem.Invalid,
			Message:    "the body is not a FHIR " + want,
			Violations: []problem.Violation{{Pointer: "/resourceType", Rule: RuleStructure, Detail: "resourceType must be " + want}}}}
	}
	return n, nil
}

// codings returns the codings of a CodeableConcept node.
func codings(n node) []node { return n.list("coding") }

// v2Events maps HL7 v2 trigger events (as FHIR messages name them) to
// event types, as the HL7 v2 ADT source maps them (connectors/mllp/hl7/adt).
var v2Events = map[string]string{
	"A01": event.TypeAdmission, "A04": event.TypeAdmission, "A06": event.TypeAdmission,
	"A02": event.TypeTransfer, "A21": event.TypeTransfer, "A22": event.TypeTransfer,
	"A03": event.TypeDischarge,
	"A11": event.TypeAdmissionCancelled, "A13": event.TypeDischargeCancelled,
	"A12": event.TypeTransferCancelled, "A52": event.TypeTransferCancelled, "A53": event.TypeTransferCancelled,
	"A16": event.TypeDischargePending, "A25": event.TypeDischargePendingCancelled,
	"A07": event.TypePatientClassChanged,
	"A05": event.TypePatientUpdated, "A08": event.TypePatientUpdated, "A28": event.TypePatientUpdated,
	"A31": event.TypePatientUpdated, "A47": event.TypePatientUpdated,
	"A40": event.TypePatientMerged,
}

// encounterTypes are the event types whose message carries an Encounter.
var encounterTypes = map[string]bool{
	event.TypeAdmission: true, event.TypeTransfer: true, event.TypeDischarge: true,
	event.TypeAdmissionCancelled: true, event.TypeDischargeCancelled: true,
	event.TypeDischargePending: true, event.TypeDischargePendingCancelled: true,
	event.TypeTransferCancelled: true, event.TypePatientClassChanged: true,
}

// destinationTypes are the event types whose data may name a discharge
// destination (hospitalization.destination and dischargeDisposition):
// where the patient went, is expected to go or was expected to go.
var destinationTypes = map[string]bool{
	event.TypeAdmission: true, event.TypeTransfer: true, event.TypeDischarge: true,
	event.TypeDischargePending: true, event.TypeDischargePendingCancelled: true,
}

// eventType reads MessageHeader.eventCoding.
func eventType(c node) (string, bool) {
	code := c.str("code")
	switch c.str("system") {
	case SystemEvent:
		if code == "care-plan" {
			code = "careplan"
		}
		return event.TypeNamed(code)
	case SystemV2Event:
		t, ok := v2Events[code]
		return t, ok
	}
	return "", false
}

// refIndex finds resources of a message by fullUrl, by Type/id and by a
// relative URL's tail.
type refIndex map[string]node

func (ix refIndex) resolve(ref node) (node, bool) {
	s := ref.str("reference")
	if s == "" {
		return node{}, false
	}
	if n, ok := ix[s]; ok {
		return n, true
	}
	// An absolute URL ending in Type/id names an entry with that type and id.
	parts := strings.Split(s, "/")
	if len(parts) >= 2 {
		if n, ok := ix[parts[len(parts)-2]+"/"+parts[len(parts)-1]]; ok {
			return n, true
		}
	}
	return node{}, false
}

// odsOf reads an ODS code from a Reference (identifier, or the identifier of
// the Organization or Location it resolves to).
func (r *reader) odsOf(ref node, ix refIndex, required bool, what string) (string, string) {
	if !ref.present() {
		if required {
			r.bad(ref.ptr, RuleRequired, what+" is required")
		}
		return "", ref.ptr
	}
	id := ref.get("identifier")
	if !id.present() {
		if res, ok := ix.resolve(ref); ok {
			for _, i := range res.list("identifier") {
				if i.str("system") == SystemODS {
					id = i
					break
				}
			}
		}
	}
	if !id.present() || id.str("system") != SystemODS {
		if required {
			r.bad(ref.ptr, RuleODS, what+" must name an organisation by its ODS code ("+SystemODS+")")
		}
		return "", ref.ptr
	}
	v := id.str("value")
	if !ods.Valid(v) {
		r.bad(id.get("value").ptr, RuleODS, what+": not an ODS code")
		return "", id.get("value").ptr
	}
	return v, id.get("value").ptr
}

var ukPostcode = regexp.MustCompile(`^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$`)
var lowerCode = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
var fullDate = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)

// dateTime returns a FHIR dateTime that has a time and an offset, as the
// canonical event needs, or "".
func dateTime(s string) string {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.Format(time.RFC3339Nano)
	}
	return ""
}

// patient reads a Patient resource.
func (r *reader) patient(p node, ix refIndex, ptrs map[string]string) *Patient {
	ptrs["/data/patient"] = p.ptr
	out := &Patient{}
	for _, id := range p.list("identifier") {
		sys, val := id.str("system"), id.str("value")
		switch {
		case sys == SystemNHSNumber && id.str("use") == "old":
			// A number the patient had (previousNHS reads it).
		case sys == SystemNHSNumber:
			n, err := nhs.ParseLoose(val)
			if err != nil {
				var pe *problem.Error
				rule := RuleNHSNumber
				if errors.As(err, &pe) && len(pe.Violations) == 1 {
					rule = pe.Violations[0].Rule
				}
				r.bad(id.get("value").ptr, rule, "NHS number is not valid (ten digits with a modulus 11 check digit)")
				continue
			}
			if out.NHSNumber != "" && out.NHSNumber != n.Digits() {
				r.bad(id.ptr, RuleNHSNumber, "the Patient carries two different NHS numbers")
				continue
			}
			out.NHSNumber = n.Digits()
			ptrs["/data/patient/nhsNumber"] = id.get("value").ptr
		case val != "":
			ptrs["/data/patient/identifier/"+strconv.Itoa(len(out.Identifier))] = id.ptr
			out.Identifier = append(out.Identifier, Identifier{System: sys, Value: val})
		}
	}
	if out.NHSNumber == "" && len(r.vs) == 0 {
		r.bad(p.get("identifier").ptr, RuleRequired, "the Patient must carry an NHS number ("+SystemNHSNumber+")")
	}
	for _, gp := range p.list("generalPractitioner") {
		if v, ptr := r.odsOf(gp, ix, false, "generalPractitioner"); v != "" {
			out.GPPractice = v
			ptrs["/data/patient/gpPractice"] = ptr
			break
		}
	}
	names := p.list("name")
	if len(names) > 0 {
		n := names[0]
		for _, c := range names {
			if u := c.str("use"); u == "official" || u == "usual" {
				n = c
				break
			}
		}
		ptrs["/data/patient/name"] = n.ptr
		nm := &Name{Text: n.str("text"), Family: n.str("family"), Given: strs(n, "given"), Prefix: strs(n, "prefix"), Suffix: strs(n, "suffix")}
		if nm.Text != "" || nm.Family != "" || len(nm.Given) > 0 || len(nm.Prefix) > 0 || len(nm.Suffix) > 0 {
			out.Name = nm
		}
	}
	if g := p.str("gender"); g != "" {
		out.Gender = g
		ptrs["/data/patient/gender"] = p.get("gender").ptr
	}
	if b := p.str("birthDate"); fullDate.MatchString(b) {
		out.BirthDate = b
		ptrs["/data/patient/birthDate"] = p.get("birthDate").ptr
	}
	if d := dateTime(p.str("deceasedDateTime")); d != "" {
		out.DeceasedDateTime = d
		ptrs["/data/patient/deceasedDateTime"] = p.get("deceasedDateTime").ptr
	}
	addrs := p.list("address")
	if len(addrs) > 0 {
		a := addrs[0]
		for _, c := range addrs {
			if c.str("use") == "home" {
				a = c
				break
			}
		}
		ptrs["/data/patient/address"] = a.ptr
		ad := &Address{Line: strs(a, "line"), City: a.str("city"), District: a.str("district")}
		if pc := a.str("postalCode"); ukPostcode.MatchString(pc) {
			ad.PostalCode = pc
		}
		if len(ad.Line) > 0 || ad.City != "" || ad.District != "" || ad.PostalCode != "" {
			out.Address = ad
		}
	}
	for _, t := range p.list("telecom") {
		sys, val := t.str("system"), t.str("value")
		if val == "" {
			continue
		}
		switch sys {
		case "phone", "email", "sms":
		default:
			sys = "other"
		}
		use := t.str("use")
		switch use {
		case "home", "work", "mobile", "temp", "old", "":
		default:
			use = ""
		}
		ptrs["/data/patient/telecom/"+strconv.Itoa(len(out.Telecom))] = t.ptr
		out.Telecom = append(out.Telecom, Telecom{System: sys, Value: val, Use: use})
	}
	return out
}

// previousNHS reads the NHS number a Patient was known by until a
// correction: an identifier in the NHS number system with use old that is
// not the patient's number now.
func (r *reader) previousNHS(p node, current string, ptrs map[string]string) string {
	for _, id := range p.list("identifier") {
		if id.str("system") != SystemNHSNumber || id.str("use") != "old" {
			continue
		}
		n, err := nhs.ParseLoose(id.str("value"))
		if err != nil {
			rule := RuleNHSNumber
			var pe *problem.Error
			if errors.As(err, &pe) && len(pe.Violations) == 1 {
				rule = pe.Violations[0].Rule
			}
			r.bad(id.get("value").ptr, rule, "the previous NHS number (identifier use old) is not valid (ten digits with a modulus 11 check digit)")
			return ""
		}
		if n.Digits() != current {
			ptrs["/data/previousNhsNumber"] = id.get("value").ptr
			return n.Digits()
		}
	}
	return ""
}

func strs(n node, k string) []string {
	var out []string
	for _, x := range n.list(k) {
		if s, ok := x.v.(string); ok && s != "" {
			out = append(out, s)
		}
	}
	return out
}

// classFromActCode maps v3 ActCode encounter classes to canonical ones.
var classFromActCode = map[string]string{
	"IMP": "inpatient", "ACUTE": "inpatient", "NONAC": "inpatient", "EMER": "emergency",
	"AMB": "outpatient", "VR": "outpatient", "HH": "outpatient", "FLD": "outpatient",
	"SS": "day-case", "PRENC": "preadmission", "OBSENC": "inpatient",
}

// classOf reads a canonical encounter class from a Coding: carehub's own
// code, a v3 ActCode, or the v3 NullFlavor (unknown). ok is false for a
// coding of none of these systems.
func classOf(c node) (string, bool) {
	switch c.str("system") {
	case SystemClass:
		return c.str("code"), true
	case SystemActCode:
		if v, ok := classFromActCode[c.str("code")]; ok {
			return v, true
		}
		return "other", true
	case SystemNullFlavor:
		return "unknown", true
	}
	return "", false
}

// extensions returns the extensions of a node with the given URL.
func extensions(n node, url string) []node {
	var out []node
	for _, x := range n.list("extension") {
		if x.str("url") == url {
			out = append(out, x)
		}
	}
	return out
}

// destinationFromCode maps discharge disposition codes to destination
// types (HL7's hosp is a hospice).
var destinationFromCode = map[string]string{
	SystemDisposition + "|home": "home", SystemDisposition + "|alt-home": "home",
	SystemDisposition + "|long": "care-home", SystemDisposition + "|snf": "nursing-home",
	SystemDisposition + "|hosp": "hospice", SystemDisposition + "|other-hcf": "hospital",
	SystemDisposition + "|psy": "hospital", SystemDisposition + "|rehab": "hospital",
	"http://snomed.info/sct|306689006": "home",
}

// destinationKind is the destination type an NHS Data Dictionary discharge
// destination code names; "" for a code that is not one.
func destinationKind(code string) string {
	dc, _ := event.LookupDestinationCode(code)
	return dc.Kind
}

// containedIndex indexes a resource's contained resources by id (the last
// of two with one id wins), once per resource: an Encounter may reference
// its contained Locations from every location and extension.
func containedIndex(n node) map[string]node {
	out := map[string]node{}
	for _, c := range n.list("contained") {
		out[c.str("id")] = c
	}
	return out
}

// location reads a Location (contained, by the Encounter's containedIndex,
// or in the message) or a display-only reference as a canonical location.
func location(ref node, contained map[string]node, ix refIndex) *Location {
	l := &Location{}
	var res node
	if s := ref.str("reference"); strings.HasPrefix(s, "#") {
		res = contained[s[1:]]
	} else if n, ok := ix.resolve(ref); ok {
		res = n
	}
	if res.present() {
		for _, id := range res.list("identifier") {
			v := id.str("value")
			switch id.str("system") {
			case SystemODS:
				if ods.Valid(v) {
					l.ODS = v
				}
			case SystemWard:
				l.Ward = v
			case SystemRoom:
				l.Room = v
			case SystemBed:
				l.Bed = v
			}
		}
		l.Name = res.str("name")
	} else {
		if id := ref.get("identifier"); id.str("system") == SystemODS && ods.Valid(id.str("value")) {
			l.ODS = id.str("value")
		}
		l.Name = ref.str("display")
	}
	if l.empty() {
		return nil
	}
	return l
}

// encounter reads an Encounter resource into d.
func (r *reader) encounter(e node, typ string, ix refIndex, d *Data, ptrs map[string]string) {
	ptrs["/data/encounter"] = e.ptr
	enc := &Encounter{}
	ids := e.list("identifier")
	chosen := -1
	for i, id := range ids {
		if id.str("system") == SystemEncounterID {
			chosen = i
		}
	}
	for i, id := range ids {
		if chosen < 0 && id.str("value") != "" && (id.str("use") == "official" || id.str("use") == "usual") {
			chosen = i
		}
	}
	if chosen < 0 && len(ids) > 0 && ids[0].str("value") != "" {
		chosen = 0
	}
	for i, id := range ids {
		if i == chosen {
			enc.ID = id.str("value")
			ptrs["/data/encounter/id"] = id.get("value").ptr
		} else if v := id.str("value"); v != "" {
			enc.Identifier = append(enc.Identifier, Identifier{System: id.str("system"), Value: v})
		}
	}
	if enc.ID == "" {
		enc.ID = e.str("id")
		ptrs["/data/encounter/id"] = e.get("id").ptr
	}
	if enc.ID == "" {
		r.bad(e.get("identifier").ptr, RuleRequired, "the Encounter needs an identifier (or an id) naming it at the sender")
	}
	for _, t := range e.list("type") {
		for _, c := range codings(t) {
			if c.str("system") == SystemClass {
				enc.Class = c.str("code")
			}
		}
	}
	if enc.Class == "" {
		if c := e.get("class"); c.present() {
			if v, ok := classFromActCode[c.str("code")]; ok {
				enc.Class = v
			} else if c.str("system") != SystemNullFlavor {
				enc.Class = "other"
			}
		}
	}
	ptrs["/data/encounter/class"] = e.get("class").ptr
	if p := e.get("period"); p.present() {
		per := &Period{Start: dateTime(p.str("start")), End: dateTime(p.str("end"))}
		if per.Start != "" || per.End != "" {
			enc.Period = per
			ptrs["/data/encounter/period"] = p.ptr
		}
	}
	if sp := e.get("serviceProvider"); sp.present() {
		if v, ptr := r.odsOf(sp, ix, false, "serviceProvider"); v != "" {
			enc.ServiceProvider = &Organisation{ODS: v, Name: sp.str("display")}
			ptrs["/data/encounter/serviceProvider"] = ptr
		}
	}
	if st := e.get("serviceType"); st.present() {
		enc.Specialty = st.str("text")
		if cs := codings(st); enc.Specialty == "" && len(cs) > 0 {
			enc.Specialty = cs[0].str("code")
		}
		ptrs["/data/encounter/specialty"] = st.ptr
	}
	hosp := e.get("hospitalization")
	if as := hosp.get("admitSource"); as.present() {
		for _, c := range codings(as) {
			if v := strings.ToLower(c.str("code")); lowerCode.MatchString(v) {
				enc.AdmitSource = v
				ptrs["/data/encounter/admitSource"] = c.ptr
				break
			}
		}
	}
	locs := e.list("location")
	cont := containedIndex(e)
	byStatus := func(status ...string) (node, bool) {
		var found node
		ok := false
		for _, l := range locs {
			for _, s := range status {
				if l.str("status") == s {
					found, ok = l, true
				}
			}
		}
		return found, ok
	}
	switch typ {
	case event.TypeTransfer:
		t := &Transfer{}
		for _, l := range locs {
			switch l.str("status") {
			case "completed":
				t.From = location(l.get("location"), cont, ix)
				ptrs["/data/transfer/from"] = l.ptr
			case "active", "":
				t.To = location(l.get("location"), cont, ix)
				t.Time = dateTime(l.get("period").str("start"))
				ptrs["/data/transfer/to"] = l.ptr
			}
		}
		ptrs["/data/transfer"] = e.get("location").ptr
		if t.From == nil || t.To == nil {
			r.bad(e.get("location").ptr, RuleRequired, "a transfer needs the location left (status completed) and the location entered (status active)")
		}
		d.Transfer = t
		// The encounter is where the patient now is, unless it keeps
		// another place for them (reserved: a bed held during leave).
		enc.Location = t.To
		if p, ok := ptrs["/data/transfer/to"]; ok {
			ptrs["/data/encounter/location"] = p
		}
		if l, ok := byStatus("reserved"); ok {
			enc.Location = location(l.get("location"), cont, ix)
			ptrs["/data/encounter/location"] = l.ptr
		}
	case event.TypeTransferCancelled:
		// The location history as corrected: the patient is at the active
		// location; the one they did not move to is named by the
		// cancelled-transfer extension.
		t := &Transfer{}
		ptrs["/data/transfer"] = e.get("location").ptr
		if l, ok := byStatus("active", ""); ok {
			t.From = location(l.get("location"), cont, ix)
			ptrs["/data/transfer/from"] = l.ptr
		}
		if t.From == nil {
			r.bad(e.get("location").ptr, RuleRequired, "a cancelled transfer needs the location the patient is at (Encounter.location with status active)")
		}
		xs := extensions(e, ExtCancelledTransfer)
		for _, x := range xs {
			for _, sub := range x.list("extension") {
				switch sub.str("url") {
				case "location":
					t.To = location(sub.get("valueReference"), cont, ix)
					ptrs["/data/transfer/to"] = sub.ptr
				case "recorded":
					t.Time = dateTime(sub.str("valueDateTime"))
					ptrs["/data/transfer/time"] = sub.ptr
				}
			}
		}
		if t.To == nil {
			at := e.get("extension").ptr
			if len(xs) > 0 {
				at = xs[0].ptr
			}
			r.bad(at, RuleRequired, "a cancelled transfer needs the location the patient did not move to (extension "+ExtCancelledTransfer+", sub-extension location)")
		}
		d.Transfer = t
		enc.Location = t.From
		if p, ok := ptrs["/data/transfer/from"]; ok {
			ptrs["/data/encounter/location"] = p
		}
		if l, ok := byStatus("reserved"); ok {
			enc.Location = location(l.get("location"), cont, ix)
			ptrs["/data/encounter/location"] = l.ptr
		}
	default:
		if len(locs) > 0 {
			l := locs[len(locs)-1]
			for _, c := range locs {
				if c.str("status") == "active" {
					l = c
				}
			}
			enc.Location = location(l.get("location"), cont, ix)
			ptrs["/data/encounter/location"] = l.ptr
		}
	}
	d.Encounter = enc

	if typ == event.TypePatientClassChanged {
		r.classChange(e, enc, d, ptrs)
	}

	// Where the patient goes (or is, or was, expected to go).
	// The kind of place: carehub's own type, else the kind the NHS Data
	// Dictionary code names, else HL7's discharge disposition; the code
	// itself is kept (an unknown one too, so that the schema refuses it
	// at its coding).
	var dst *Destination
	var ownKind, codeKind, dispKind string
	if dd := hosp.get("dischargeDisposition"); dd.present() {
		dst = &Destination{Type: "other"}
		for _, c := range codings(dd) {
			code := c.str("code")
			switch sys := c.str("system"); {
			case sys == SystemDestination:
				if ownKind == "" {
					ownKind = code
				}
			case sys == SystemDischargeDestinationEngland:
				if dst.Code == "" {
					dst.Code = code
					codeKind = destinationKind(code)
					ptrs["/data/discharge/destination/code"] = c.get("code").ptr
				}
			default:
				if v, ok := destinationFromCode[sys+"|"+code]; ok && dispKind == "" {
					dispKind = v
				}
			}
		}
		ptrs["/data/discharge/destination/type"] = dd.ptr
		ptrs["/data/discharge/destination"] = dd.ptr
	}
	if ref := hosp.get("destination"); ref.present() {
		if dst == nil {
			dst = &Destination{Type: "other"}
		}
		if v, ptr := r.odsOf(ref, ix, false, "hospitalization.destination"); v != "" {
			dst.ODS = v
			ptrs["/data/discharge/destination/ods"] = ptr
		}
		if n := ref.str("display"); n != "" {
			dst.Name = n
		}
	}
	if dst != nil {
		switch {
		case ownKind != "":
			dst.Type = ownKind
		case codeKind == "home" && dst.ODS != "":
			// Never home beside a named organisation: the
			// organisation stands, as the HL7 v2 mapping has it.
			dst.Type = "other"
		case codeKind != "":
			dst.Type = codeKind
		case dispKind != "":
			dst.Type = dispKind
		}
	}
	ptrs["/data/discharge"] = hosp.ptr
	if dst != nil && destinationTypes[typ] {
		d.Discharge = &Discharge{Destination: dst}
	}
	if typ == event.TypeDischargePending {
		// When the discharge is expected: R5's Encounter.plannedEndDate,
		// by its R4 cross-version extension.
		for _, x := range extensions(e, ExtPlannedEndDate) {
			if t := dateTime(x.str("valueDateTime")); t != "" {
				if d.Discharge == nil {
					d.Discharge = &Discharge{}
				}
				d.Discharge.ExpectedTime = t
				ptrs["/data/discharge/expectedTime"] = x.get("valueDateTime").ptr
				break
			}
			r.bad(x.ptr, RuleValue, "the planned end date must be a dateTime with a time and an offset")
		}
	}
	if typ == event.TypeDischarge && dst == nil {
		r.bad(hosp.ptr, RuleRequired, "a discharge needs hospitalization.dischargeDisposition (where the patient went)")
	}
}

// classChange reads a class change: the class now is Encounter.class (as
// read into enc), the class before the last Encounter.classHistory entry
// that ended (else the one before the last).
func (r *reader) classChange(e node, enc *Encounter, d *Data, ptrs map[string]string) {
	hist := e.list("classHistory")
	ptrs["/data/classChange"] = e.get("classHistory").ptr
	ptrs["/data/classChange/to"] = e.get("class").ptr
	var before node
	for _, h := range hist {
		if h.get("period").str("end") != "" {
			before = h
		}
	}
	if !before.present() && len(hist) >= 2 {
		before = hist[len(hist)-2]
	}
	cc := &ClassChange{To: enc.Class}
	if cc.To == "" {
		cc.To, _ = classOf(e.get("class"))
	}
	if before.present() {
		if c, ok := classOf(before.get("class")); ok && c != "" {
			cc.From = c
			ptrs["/data/classChange/from"] = before.get("class").ptr
		} else {
			r.bad(before.get("class").ptr, RuleValue, "the class before must be a v3 ActCode ("+SystemActCode+") or a carehub class ("+SystemClass+")")
			return
		}
	}
	if cc.From == "" {
		r.bad(e.get("classHistory").ptr, RuleRequired, "a class change needs Encounter.classHistory with the class before (its period ended)")
		return
	}
	if cc.To == "" {
		r.bad(e.get("class").ptr, RuleRequired, "a class change needs Encounter.class (the class now)")
		return
	}
	d.ClassChange = cc
}

// document reads a DocumentReference, or a FHIR document Bundle, as an
// attachment or a reference.
func document(n node) (*Attachment, *DocumentRef) {
	if n.str("resourceType") == "Bundle" {
		b, _ := json.Marshal(n.v)
		comp := node{}
		if es := n.list("entry"); len(es) > 0 {
			comp = es[0].get("resource")
		}
		a := &Attachment{ContentType: media.FHIR, Data: base64.StdEncoding.EncodeToString(b), Title: comp.str("title")}
		if c := dateTime(comp.str("date")); c != "" {
			a.Creation = c
		}
		if a.Title == "" {
			a.Title = "Discharge summary"
		}
		return a, nil
	}
	for _, c := range n.list("content") {
		att := c.get("attachment")
		ct := att.str("contentType")
		if ct == "" {
			continue
		}
		title := att.str("title")
		if title == "" {
			title = n.str("description")
		}
		if u := att.str("url"); u != "" && att.str("data") == "" {
			ref := &DocumentRef{URL: u, ContentType: ct, Title: title}
			if s, ok := att.get("size").v.(json.Number); ok {
				if v, err := s.Int64(); err == nil {
					ref.Size = &v
				}
			}
			return nil, ref
		}
		a := &Attachment{ContentType: ct, Language: att.str("language"), Title: title, Creation: dateTime(att.str("creation"))}
		data := att.str("data")
		if raw, err := base64.StdEncoding.DecodeString(data); err == nil && strings.HasPrefix(media.Of(ct), "text/") && utf8.Valid(raw) && len(raw) > 0 {
			a.Text = string(raw)
		} else {
			a.Data = data
		}
		if s, ok := att.get("size").v.(json.Number); ok {
			if v, err := s.Int64(); err == nil {
				a.Size = &v
			}
		}
		return a, nil
	}
	return nil, nil
}

// FromMessage reads a FHIR message Bundle sent by org (the organisation
// its credentials belong to): MessageHeader first, naming the event
// (eventCoding in SystemEvent, or an HL7 v2 trigger in SystemV2Event) and the
// sender by ODS code (it must be org); a Patient with the NHS number; the
// Encounter or CarePlan the event is about; and for a discharge the summary
// as a DocumentReference or a FHIR document Bundle. Bundle.timestamp is the
// event time; its id is Bundle.identifier when its system is SystemEventID
// (as carehub sends), else MessageHeader.id, else Bundle.identifier.
func FromMessage(raw []byte, org string) (*Inbound, error) {
	root, err := decode(raw, "Bundle")
	if err != nil {
		return nil, err
	}
	r := &reader{}
	ptrs := map[string]string{"": "", "/data": "", "/time": "/timestamp"}
	in := &Inbound{root: "Bundle", ptrs: ptrs}
	fail := func() error {
		return &PathError{Root: "Bundle", Err: &problem.Error{Kind: problem.Invalid,
			Message: "the FHIR message cannot be read as a carehub event", Violations: r.vs}}
	}
	if root.str("type") != "message" {
		r.bad(root.get("type").ptr, RuleStructure, "Bundle.type must be message")
		return nil, fail()
	}
	entries := root.list("entry")
	if len(entries) == 0 || entries[0].get("resource").str("resourceType") != "MessageHeader" {
		r.bad(root.get("entry").ptr, RuleStructure, "the first entry of a message must be its MessageHeader")
		return nil, fail()
	}
	ix := refIndex{}
	byType := map[string][]node{}
	for _, e := range entries {
		res := e.get("resource")
		rt := res.str("resourceType")
		if u := e.str("fullUrl"); u != "" {
			ix[u] = res
		}
		if id := res.str("id"); id != "" && rt != "" {
			ix[rt+"/"+id] = res
		}
		byType[rt] = append(byType[rt], res)
	}
	hdr := entries[0].get("resource")
	ptrs["/type"] = hdr.get("eventCoding").ptr
	ptrs["/id"] = hdr.get("id").ptr
	ptrs["/source"] = hdr.get("sender").ptr

	typ, ok := eventType(hdr.get("eventCoding"))
	if !ok {
		r.bad(hdr.get("eventCoding").ptr, RuleUnsupported, "eventCoding must name an event carehub carries ("+SystemEvent+": "+strings.Join(event.ShortNames(), ", ")+"; or an HL7 v2 trigger in "+SystemV2Event+")")
		return nil, fail()
	}
	sender, senderPtr := r.odsOf(hdr.get("sender"), ix, true, "MessageHeader.sender")
	if len(r.vs) > 0 {
		return nil, fail()
	}
	if sender != org {
		return nil, &PathError{Root: "Bundle", Err: &problem.Error{Kind: problem.Forbidden,
			Message:    "this API key publishes as " + org + " only",
			Violations: []problem.Violation{{Pointer: senderPtr, Rule: RuleSender, Detail: "MessageHeader.sender must be the organisation the credentials belong to"}}}}
	}
	if bid := root.get("identifier"); bid.str("system") == SystemEventID && bid.str("value") != "" {
		in.ID = bid.str("value")
		ptrs["/id"] = bid.get("value").ptr
	} else {
		in.ID = hdr.str("id")
	}
	if in.ID == "" {
		in.ID = root.get("identifier").str("value")
		ptrs["/id"] = root.get("identifier").ptr
	}
	if in.ID == "" {
		r.bad(hdr.get("id").ptr, RuleRequired, "the MessageHeader needs an id (or the Bundle an identifier): it is the event's id")
	}
	when, err := time.Parse(time.RFC3339, root.str("timestamp"))
	if err != nil {
		r.bad(root.get("timestamp").ptr, RuleRequired, "Bundle.timestamp (an instant) is required: it is the event's time")
	}

	// The focus: the first resource MessageHeader.focus names, else the
	// first Encounter or CarePlan of the message.
	var focus node
	for _, f := range hdr.list("focus") {
		n, ok := ix.resolve(f)
		if !ok {
			r.bad(f.ptr, RuleReference, "MessageHeader.focus does not resolve to an entry of the message")
			continue
		}
		focus = n
		break
	}
	pick := func(rt string) node {
		if focus.str("resourceType") == rt {
			return focus
		}
		if l := byType[rt]; len(l) > 0 {
			return l[0]
		}
		return node{}
	}
	d := &Data{}
	var patient node
	switch {
	case focus.str("resourceType") == "Patient":
		patient = focus
	default:
		subj := pick("Encounter").get("subject")
		if !subj.present() {
			subj = pick("CarePlan").get("subject")
		}
		if n, ok := ix.resolve(subj); ok && n.str("resourceType") == "Patient" {
			patient = n
		} else {
			patient = pick("Patient")
		}
	}
	if !patient.present() {
		r.bad(root.get("entry").ptr, RuleRequired, "the message must carry the Patient")
		return nil, fail()
	}
	d.Patient = r.patient(patient, ix, ptrs)
	switch {
	case encounterTypes[typ]:
		enc := pick("Encounter")
		if !enc.present() {
			r.bad(root.get("entry").ptr, RuleRequired, "an encounter event must carry the Encounter")
			break
		}
		r.encounter(enc, typ, ix, d, ptrs)
		if typ == event.TypeDischarge {
			// Regression (found by FuzzFromMessage): an Encounter without
			// a discharge destination left d.Discharge nil, and a
			// DocumentReference beside it crashed the mapping.
			if d.Discharge == nil {
				d.Discharge = &Discharge{}
			}
			if doc := pick("DocumentReference"); doc.present() {
				d.Discharge.Summary, d.Discharge.SummaryReference = document(doc)
				ptrs["/data/discharge/summary"], ptrs["/data/discharge/summaryReference"] = doc.ptr, doc.ptr
			} else if b := pick("Bundle"); b.present() && b.str("type") == "document" {
				d.Discharge.Summary, _ = document(b)
				ptrs["/data/discharge/summary"] = b.ptr
			}
		}
	case typ == event.TypeCarePlan:
		cp := pick("CarePlan")
		if !cp.present() {
			r.bad(root.get("entry").ptr, RuleRequired, "a care plan event must carry the CarePlan")
			break
		}
		d.CarePlan = r.carePlan(cp, ix, ptrs)
		if doc := pick("DocumentReference"); doc.present() {
			d.CarePlan.Document, d.CarePlan.DocumentReference = document(doc)
			ptrs["/data/carePlan/document"], ptrs["/data/carePlan/documentReference"] = doc.ptr, doc.ptr
		}
	case typ == event.TypePatientUpdated:
		d.PreviousNHSNumber = r.previousNHS(patient, d.Patient.NHSNumber, ptrs)
	case typ == event.TypePatientMerged:
		for _, l := range patient.list("link") {
			if l.str("type") != "replaces" {
				continue
			}
			other := l.get("other")
			id := other.get("identifier")
			if res, ok := ix.resolve(other); ok && !id.present() {
				for _, i := range res.list("identifier") {
					if i.str("system") == SystemNHSNumber {
						id = i
					}
				}
			}
			if id.str("system") == SystemNHSNumber {
				n, err := nhs.ParseLoose(id.str("value"))
				if err != nil {
					r.bad(id.get("value").ptr, RuleNHSNumber, "the retired NHS number is not valid")
					break
				}
				d.MergedPatient = &Merged{NHSNumber: n.Digits()}
				ptrs["/data/mergedPatient"] = l.ptr
			}
		}
		if d.MergedPatient == nil && len(r.vs) == 0 {
			r.bad(patient.get("link").ptr, RuleRequired, "a merge needs Patient.link (type replaces) to the retired record's NHS number")
		}
	}
	d.Sensitivity = labels(root, hdr, focus, patient)
	d.Confidential = confidentiality(ptrs, root, hdr, focus, patient)
	if len(r.vs) > 0 {
		return nil, fail()
	}
	return in.finish(org, typ, when, d)
}

func (r *reader) carePlan(cp node, ix refIndex, ptrs map[string]string) *CarePlan {
	ptrs["/data/carePlan"] = cp.ptr
	out := &CarePlan{Status: cp.str("status"), Title: cp.str("title"), Created: dateTime(cp.str("created"))}
	for _, id := range cp.list("identifier") {
		if id.str("system") == SystemCarePlanID || out.ID == "" {
			out.ID = id.str("value")
			ptrs["/data/carePlan/id"] = id.get("value").ptr
		}
	}
	if out.ID == "" {
		out.ID = cp.str("id")
		ptrs["/data/carePlan/id"] = cp.get("id").ptr
	}
	if out.ID == "" {
		r.bad(cp.get("identifier").ptr, RuleRequired, "the CarePlan needs an identifier (or an id)")
	}
	ptrs["/data/carePlan/status"] = cp.get("status").ptr
	if p := cp.get("period"); p.present() {
		per := &Period{Start: dateTime(p.str("start")), End: dateTime(p.str("end"))}
		if per.Start != "" || per.End != "" {
			out.Period = per
			ptrs["/data/carePlan/period"] = p.ptr
		}
	}
	if a := cp.get("author"); a.present() {
		if v, ptr := r.odsOf(a, ix, false, "author"); v != "" {
			out.Author = &Organisation{ODS: v, Name: a.str("display")}
			ptrs["/data/carePlan/author"] = ptr
		}
	}
	ptrs["/data/carePlan/title"] = cp.get("title").ptr
	return out
}

// labels collects sensitivity categories from meta.security.
func labels(ns ...node) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range ns {
		for _, s := range n.get("meta").list("security") {
			if c := s.str("code"); s.str("system") == SystemSensitivity && c != "" && !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	sort.Strings(out)
	return out
}

// confidentiality reads data.confidential from meta.security codings in
// v3 Confidentiality: R (restricted), V (very restricted) or REDACTED on
// any of the resources make the event confidential; otherwise N, U, L or
// M say explicitly that it is not; with none of these it is unsaid.
func confidentiality(ptrs map[string]string, ns ...node) *bool {
	var out *bool
	for _, n := range ns {
		for _, s := range n.get("meta").list("security") {
			if s.str("system") != SystemConfidentiality {
				continue
			}
			switch s.str("code") {
			case "R", "V", "REDACTED":
				yes := true
				ptrs["/data/confidential"] = s.ptr
				return &yes
			case "N", "U", "L", "M":
				if out == nil {
					no := false
					out = &no
					ptrs["/data/confidential"] = s.ptr
				}
			}
		}
	}
	return out
}

// finish writes the CloudEvent, with the envelope encoder every part of
// carehub uses (event.Event.Marshal): one key order, one time format.
func (in *Inbound) finish(org, typ string, when time.Time, d *Data) (*Inbound, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "encoding the event", err)
	}
	in.Type = typ
	ev := &event.Event{ID: in.ID, Source: event.SourcePrefix + org, Type: typ, Time: when,
		DataContentType: media.JSON, Data: data}
	if in.Event, err = ev.Marshal(); err != nil {
		return nil, problem.Wrap(problem.Internal, "encoding the event", err)
	}
	return in, nil
}

// encounterEvents maps a lone Encounter's status to the event it reports.
var encounterEvents = map[string]string{
	"arrived": event.TypeAdmission, "triaged": event.TypeAdmission, "in-progress": event.TypeAdmission,
	"finished": event.TypeDischarge, "entered-in-error": event.TypeAdmissionCancelled, "cancelled": event.TypeAdmissionCancelled,
}

// FromEncounter reads a lone Encounter posted by org, for systems that send
// only the resource. Its status and period decide the event: arrived,
// triaged or in-progress is an admission (time: period.start), finished a
// discharge (time: period.end), entered-in-error or cancelled a cancelled
// admission. The patient is Encounter.subject: a logical reference by NHS
// number (subject.identifier) or a contained Patient. The event id is a
// name-based UUID of the organisation and the document, so a resend of the
// same Encounter is the same event. now is the time used when the period
// does not give one.
func FromEncounter(raw []byte, org string, now time.Time) (*Inbound, error) {
	enc, err := decode(raw, "Encounter")
	if err != nil {
		return nil, err
	}
	r := &reader{}
	ptrs := map[string]string{"": "", "/data": "", "/type": "/status", "/time": "/period", "/source": "", "/id": ""}
	in := &Inbound{root: "Encounter", ptrs: ptrs}
	fail := func() error {
		return &PathError{Root: "Encounter", Err: &problem.Error{Kind: problem.Invalid,
			Message: "the FHIR Encounter cannot be read as a carehub event", Violations: r.vs}}
	}
	typ, ok := encounterEvents[enc.str("status")]
	if !ok {
		r.bad(enc.get("status").ptr, RuleUnsupported, "Encounter.status must be arrived, triaged, in-progress (an admission), finished (a discharge), entered-in-error or cancelled (a cancelled admission)")
		return nil, fail()
	}
	subj := enc.get("subject")
	var patient node
	if s := subj.str("reference"); strings.HasPrefix(s, "#") {
		for _, c := range enc.list("contained") {
			if c.str("id") == s[1:] && c.str("resourceType") == "Patient" {
				patient = c
			}
		}
	}
	d := &Data{}
	switch {
	case patient.present():
		d.Patient = r.patient(patient, refIndex{}, ptrs)
	case subj.get("identifier").str("system") == SystemNHSNumber:
		id := subj.get("identifier")
		n, err := nhs.ParseLoose(id.str("value"))
		if err != nil {
			r.bad(id.get("value").ptr, RuleNHSNumber, "NHS number is not valid (ten digits with a modulus 11 check digit)")
			return nil, fail()
		}
		d.Patient = &Patient{NHSNumber: n.Digits()}
		ptrs["/data/patient"], ptrs["/data/patient/nhsNumber"] = subj.ptr, id.get("value").ptr
	default:
		r.bad(subj.ptr, RuleRequired, "Encounter.subject must name the patient by NHS number (subject.identifier with system "+SystemNHSNumber+") or reference a contained Patient")
		return nil, fail()
	}
	r.encounter(enc, typ, refIndex{}, d, ptrs)
	if len(r.vs) > 0 {
		return nil, fail()
	}
	when := now.UTC()
	if p := d.Encounter.Period; p != nil {
		s := p.Start
		if typ == event.TypeDischarge && p.End != "" {
			s = p.End
		}
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			when = t
		}
	}
	d.Sensitivity = labels(enc)
	d.Confidential = confidentiality(ptrs, enc, patient)
	in.ID = uuid.NewSHA1(namespace, append([]byte(org+"\x00"), raw...)).String()
	return in.finish(org, typ, when, d)
}
