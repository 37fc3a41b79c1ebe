package adt

import (
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// mapping is the state of mapping one message.
type mapping struct {
	mp      *Mapper
	m       *hl7.Message
	trigger string
	time    time.Time
}

type mapFunc func(x *mapping) (evType string, d *data, skipped string, err error)

// triggers maps each supported trigger event to its mapping. See doc.go
// for the decisions behind each.
var triggers = map[string]mapFunc{
	"A01": admission, // admit/visit notification
	"A04": admission, // register a patient: an attendance (ED, outpatient) has begun
	"A02": transferred,
	"A12": transferred, // cancel transfer: back from PV1-6 to PV1-3
	"A21": leave,       // patient goes on a leave of absence
	"A22": leave,       // patient returns from a leave of absence
	"A03": discharged,
	"A11": cancelled(event.TypeAdmissionCancelled),
	"A13": cancelled(event.TypeDischargeCancelled),
	"A05": updated, // pre-admit: no encounter has begun; the person is known
	"A08": updated,
	"A28": updated,
	"A31": updated,
	"A40": merged,
}

// Triggers returns the supported trigger events, sorted.
func Triggers() []string {
	return []string{"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A12", "A13", "A21", "A22", "A28", "A31", "A40"}
}

func admission(x *mapping) (string, *data, string, error) {
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	enc, err := x.encounter(true, false)
	if err != nil {
		return "", nil, "", err
	}
	d := &data{Patient: p, Encounter: enc}
	if dest, err := x.destination(); err != nil {
		return "", nil, "", err
	} else if dest != nil {
		d.Discharge = &discharge{Destination: dest}
	}
	return event.TypeAdmission, d, "", nil
}

func discharged(x *mapping) (string, *data, string, error) {
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	enc, err := x.encounter(false, true)
	if err != nil {
		return "", nil, "", err
	}
	dest, err := x.destination()
	if err != nil {
		return "", nil, "", err
	}
	if dest == nil {
		dest = &destination{Type: "other"}
	}
	return event.TypeDischarge, &data{Patient: p, Encounter: enc, Discharge: &discharge{Destination: dest}}, "", nil
}

func transferred(x *mapping) (string, *data, string, error) {
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return "", nil, "", err
	}
	pv1 := x.m.Segment("PV1")
	from, err := x.location(pv1, 6)
	if err != nil {
		return "", nil, "", err
	}
	to, err := x.location(pv1, 3)
	if err != nil {
		return "", nil, "", err
	}
	if from == nil {
		return "", nil, "", invalid(hl7.CodeRequiredFieldMissing, "PV1", 6, 0, 0, reasonNoLocation)
	}
	if to == nil {
		return "", nil, "", invalid(hl7.CodeRequiredFieldMissing, "PV1", 3, 0, 0, reasonNoLocation)
	}
	return event.TypeTransfer, &data{Patient: p, Encounter: enc,
		Transfer: &transfer{From: from, To: to, Time: formatTime(x.time)}}, "", nil
}

// leaveOfAbsence is the location of a patient on leave (A21) or coming back
// from it (A22).
const leaveOfAbsence = "leave of absence"

func leave(x *mapping) (string, *data, string, error) {
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return "", nil, "", err
	}
	ward, err := x.location(x.m.Segment("PV1"), 3)
	if err != nil {
		return "", nil, "", err
	}
	if ward == nil {
		return "", nil, "", invalid(hl7.CodeRequiredFieldMissing, "PV1", 3, 0, 0, reasonNoLocation)
	}
	away := &location{Name: leaveOfAbsence}
	t := &transfer{From: ward, To: away, Time: formatTime(x.time)}
	if x.trigger == "A22" {
		t.From, t.To = away, ward
	}
	return event.TypeTransfer, &data{Patient: p, Encounter: enc, Transfer: t}, "", nil
}

func cancelled(evType string) mapFunc {
	return func(x *mapping) (string, *data, string, error) {
		p, err := x.patient()
		if err != nil {
			return "", nil, "", err
		}
		enc, err := x.encounter(false, false)
		if err != nil {
			return "", nil, "", err
		}
		return evType, &data{Patient: p, Encounter: enc}, "", nil
	}
}

func updated(x *mapping) (string, *data, string, error) {
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	return event.TypePatientUpdated, &data{Patient: p}, "", nil
}

func merged(x *mapping) (string, *data, string, error) {
	if len(x.m.Segments("PID")) > 1 || len(x.m.Segments("MRG")) > 1 {
		return "", nil, "", rejected(hl7.CodeApplicationInternalError, "PID", 0, 0, reasonOneMerge)
	}
	p, err := x.patient()
	if err != nil {
		return "", nil, "", err
	}
	mrg := x.m.Segment("MRG")
	if mrg == nil {
		return "", nil, "", &Error{Ack: hl7.AckAE, Code: hl7.CodeSegmentSequence, Segment: "MRG", Reason: reasonNoSegment}
	}
	n, err := nhsNumber(mrg, 1)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Reason = reasonMergedNHSInvalid
		}
		return "", nil, "", err
	}
	if n.IsZero() || n.Digits() == p.NHSNumber {
		return "", nil, SkippedMergeLocal, nil
	}
	mergedP := &mergedPatient{NHSNumber: n.Digits()}
	if mergedP.Identifier, err = identifiers(mrg, 1); err != nil {
		return "", nil, "", err
	}
	return event.TypePatientMerged, &data{Patient: p, MergedPatient: mergedP}, "", nil
}

// eventTime is EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7.
func (x *mapping) eventTime() (time.Time, error) {
	evn := x.m.Segment("EVN")
	for _, f := range []struct {
		seg   *hl7.Segment
		name  string
		field int
	}{{evn, "EVN", 6}, {evn, "EVN", 2}, {x.m.Segment("MSH"), "MSH", 7}} {
		v := strings.TrimSpace(f.seg.Field(f.field).Component(1).String())
		if v == "" {
			continue
		}
		t, ok := parseTS(v, x.mp.loc, 8)
		if !ok {
			return time.Time{}, invalid(hl7.CodeDataType, f.name, f.field, 0, 0, reasonBadTime)
		}
		return t, nil
	}
	return time.Time{}, invalid(hl7.CodeRequiredFieldMissing, "MSH", 7, 0, 0, reasonNoTime)
}

func (x *mapping) segment(name string) (*hl7.Segment, error) {
	s := x.m.Segment(name)
	if s == nil {
		return nil, &Error{Ack: hl7.AckAE, Code: hl7.CodeSegmentSequence, Segment: name, Reason: reasonNoSegment}
	}
	return s, nil
}

// patient maps PID and PD1.
func (x *mapping) patient() (*patient, error) {
	pid, err := x.segment("PID")
	if err != nil {
		return nil, err
	}
	n, err := nhsNumber(pid, 3)
	if err != nil {
		return nil, err
	}
	if n.IsZero() {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PID", 3, 0, 0, reasonNoNHS)
	}
	p := &patient{NHSNumber: n.Digits()}
	if p.GPPractice, err = gpPractice(x.m.Segment("PD1")); err != nil {
		return nil, err
	}
	if p.Identifier, err = identifiers(pid, 3); err != nil {
		return nil, err
	}
	if p.Name, err = personName(pid); err != nil {
		return nil, err
	}
	if v := strings.TrimSpace(pid.Field(7).Component(1).String()); v != "" {
		d, ok := parseDate(v)
		if !ok {
			return nil, invalid(hl7.CodeDataType, "PID", 7, 0, 0, reasonBirthDate)
		}
		p.BirthDate = d
	}
	if v := strings.TrimSpace(pid.Field(8).Component(1).String()); v != "" {
		g, ok := genders[strings.ToUpper(v)]
		if !ok {
			return nil, invalid(hl7.CodeTableValueNotFound, "PID", 8, 0, 0, reasonGender)
		}
		p.Gender = g
	}
	if v := strings.TrimSpace(pid.Field(29).Component(1).String()); v != "" {
		t, ok := parseTS(v, x.mp.loc, 8)
		if !ok {
			return nil, invalid(hl7.CodeDataType, "PID", 29, 0, 0, reasonBadTime)
		}
		p.DeceasedDateTime = formatTime(t)
	}
	if p.Address, err = homeAddress(pid); err != nil {
		return nil, err
	}
	if p.Telecom, err = telecoms(pid); err != nil {
		return nil, err
	}
	return p, nil
}

// nhsNumber finds the NHS number among the identifiers of seg's field
// (PID-3, MRG-1): a repetition whose identifier type (CX.5) is NH or whose
// assigning authority (CX.4.1) is NHS. It returns the zero Number when
// there is none, and an *Error when one is malformed or two differ.
func nhsNumber(seg *hl7.Segment, field int) (nhs.Number, error) {
	var found nhs.Number
	for i, rep := range seg.Field(field).Repetitions() {
		typ := strings.ToUpper(strings.TrimSpace(rep.Component(5).String()))
		auth := strings.ToUpper(strings.TrimSpace(rep.Component(4).Sub(1).String()))
		if typ != "NH" && auth != "NHS" {
			continue
		}
		v := strings.TrimSpace(rep.Component(1).String())
		if v == "" {
			continue
		}
		n, err := nhs.ParseLoose(v)
		if err != nil {
			reason := reasonNHSFormat
			var pe *problem.Error
			if errors.As(err, &pe) && len(pe.Violations) == 1 && pe.Violations[0].Rule == nhs.RuleCheckDigit {
				reason = reasonNHSCheck
			}
			return nhs.Number{}, invalid(hl7.CodeDataType, seg.Name(), field, i+1, 1, reason)
		}
		if !found.IsZero() && n != found {
			return nhs.Number{}, invalid(hl7.CodeDataType, seg.Name(), field, i+1, 1, reasonNHSTwo)
		}
		found = n
	}
	return found, nil
}

// identifiers maps the medical record numbers (CX.5 = MR) of PID-3 or
// MRG-1. Other identifier types (social security, insurance, ...) are not
// shared.
func identifiers(seg *hl7.Segment, field int) ([]identifier, error) {
	var out []identifier
	for i, rep := range seg.Field(field).Repetitions() {
		if strings.ToUpper(strings.TrimSpace(rep.Component(5).String())) != "MR" {
			continue
		}
		v := strings.TrimSpace(rep.Component(1).String())
		if v == "" {
			continue
		}
		if len(v) > 100 {
			return nil, invalid(hl7.CodeValueTooLong, seg.Name(), field, i+1, 1, reasonTooLong)
		}
		id := identifier{Value: v}
		if auth := strings.TrimSpace(rep.Component(4).Sub(1).String()); ods.Valid(auth) {
			id.System = "urn:ods:" + auth
		}
		if len(out) == 10 {
			break
		}
		out = append(out, id)
	}
	return out, nil
}

// gpPractice is the ODS code of the registered GP practice: PD1-3 (XON),
// the organisation identifier (XON.10, v2.5+) or else the ID number
// (XON.3, as NHS ITK v2.4 messages carry it).
func gpPractice(pd1 *hl7.Segment) (string, error) {
	org := pd1.Field(3).Rep(1)
	comp := 10
	v := strings.TrimSpace(org.Component(10).String())
	if v == "" {
		comp = 3
		v = strings.TrimSpace(org.Component(3).String())
	}
	if v == "" {
		return "", nil
	}
	if !ods.Valid(v) {
		return "", invalid(hl7.CodeDataType, "PD1", 3, 0, comp, reasonGPFormat)
	}
	return v, nil
}

// preferredRep returns the repetition of f whose component 7 (the type
// code of XPN and XAD) is code, else the first, with its 1-based index;
// false when f is empty.
func preferredRep(f hl7.Field, code string) (hl7.Repetition, int, bool) {
	reps := f.Repetitions()
	if len(reps) == 0 {
		return hl7.Repetition{}, 0, false
	}
	for i, r := range reps {
		if strings.EqualFold(strings.TrimSpace(r.Component(7).String()), code) {
			return r, i + 1, true
		}
	}
	return reps[0], 1, true
}

// personName maps the legal name (XPN.7 = L) of PID-5, or its first.
func personName(pid *hl7.Segment) (*humanName, error) {
	pick, idx, ok := preferredRep(pid.Field(5), "L")
	if !ok {
		return nil, nil
	}
	n := &humanName{}
	var err error
	get := func(comp, max int) string {
		c := pick.Component(comp)
		v := strings.TrimSpace(c.String())
		if comp == 1 {
			v = strings.TrimSpace(c.Sub(1).String()) // XPN.1 is FN: the surname is FN.1
		}
		if len(v) > max && err == nil {
			err = invalid(hl7.CodeValueTooLong, "PID", 5, idx, comp, reasonTooLong)
		}
		return v
	}
	n.Family = get(1, 100)
	for _, c := range []int{2, 3} {
		if v := get(c, 100); v != "" {
			n.Given = append(n.Given, v)
		}
	}
	if v := get(4, 40); v != "" {
		n.Suffix = []string{v}
	}
	if v := get(5, 40); v != "" {
		n.Prefix = []string{v}
	}
	if err != nil {
		return nil, err
	}
	if n.Family == "" && n.Given == nil && n.Prefix == nil && n.Suffix == nil {
		return nil, nil
	}
	return n, nil
}

// genders maps PID-8 (HL7 table 0001, and the NHS Data Dictionary person
// gender codes some UK feeds send) to FHIR administrative gender.
var genders = map[string]string{
	"M": "male", "F": "female", "O": "other", "A": "other", "X": "other", "U": "unknown", "N": "unknown",
	"1": "male", "2": "female", "0": "unknown", "9": "unknown",
}

var postcodeRE = regexp.MustCompile(`^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$`) // as schemas/patient.v1.json

// homeAddress maps the home address (XAD.7 = H) of PID-11, or its first.
func homeAddress(pid *hl7.Segment) (*address, error) {
	pick, idx, ok := preferredRep(pid.Field(11), "H")
	if !ok {
		return nil, nil
	}
	a := &address{}
	tooLong := func(comp int) error { return invalid(hl7.CodeValueTooLong, "PID", 11, idx, comp, reasonTooLong) }
	// XAD.1 is a SAD: street or mailing address & street name & dwelling number.
	var street []string
	for _, s := range pick.Component(1).Subs() {
		if v := strings.TrimSpace(s.String()); v != "" {
			street = append(street, v)
		}
	}
	for i, v := range []string{strings.Join(street, " "), strings.TrimSpace(pick.Component(2).String())} {
		if v == "" {
			continue
		}
		if len(v) > 100 {
			return nil, tooLong(i + 1)
		}
		a.Line = append(a.Line, v)
	}
	if a.City = strings.TrimSpace(pick.Component(3).String()); len(a.City) > 100 {
		return nil, tooLong(3)
	}
	if a.District = strings.TrimSpace(pick.Component(4).String()); len(a.District) > 100 {
		return nil, tooLong(4)
	}
	// A postcode that is not shaped like a UK one (an address abroad) is
	// left out rather than refused.
	if pc := strings.TrimSpace(pick.Component(5).String()); postcodeRE.MatchString(pc) {
		a.PostalCode = pc
	}
	if a.Line == nil && a.City == "" && a.District == "" && a.PostalCode == "" {
		return nil, nil
	}
	return a, nil
}

// telecoms maps PID-13 (home) and PID-14 (business) numbers and addresses.
func telecoms(pid *hl7.Segment) ([]contactPoint, error) {
	var out []contactPoint
	for _, field := range []int{13, 14} {
		for i, r := range pid.Field(field).Repetitions() {
			use := strings.ToUpper(strings.TrimSpace(r.Component(2).String()))
			equip := strings.ToUpper(strings.TrimSpace(r.Component(3).String()))
			cp := contactPoint{System: "phone"}
			switch {
			case equip == "INTERNET" || equip == "X.400" || use == "NET":
				cp.System = "email"
				cp.Value = strings.TrimSpace(r.Component(4).String())
			case equip == "FX" || equip == "BP" || equip == "MD" || equip == "TDD" || equip == "TTY":
				cp.System = "other"
			}
			if cp.Value == "" {
				cp.Value = strings.TrimSpace(r.Component(1).String())
			}
			if cp.Value == "" {
				cp.Value = strings.TrimSpace(r.Component(12).String())
			}
			if cp.Value == "" {
				var parts []string
				for _, c := range []int{5, 6, 7} {
					if v := strings.TrimSpace(r.Component(c).String()); v != "" {
						parts = append(parts, v)
					}
				}
				cp.Value = strings.Join(parts, " ")
			}
			if cp.Value == "" {
				continue
			}
			if len(cp.Value) > 200 {
				return nil, invalid(hl7.CodeValueTooLong, "PID", field, i+1, 1, reasonTooLong)
			}
			switch {
			case equip == "CP":
				cp.Use = "mobile"
			case field == 14 || use == "WPN":
				cp.Use = "work"
			case use == "VHN":
				cp.Use = "temp"
			case use == "PRN" || use == "ORN" || (use == "" && field == 13):
				cp.Use = "home"
			}
			if len(out) == 10 {
				return out, nil
			}
			out = append(out, cp)
		}
	}
	return out, nil
}

// isLocalID reports whether s is 1 to 64 printable ASCII characters
// without spaces (common.v1.json#/$defs/localId).
func isLocalID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// encounterClasses maps PV1-2 (HL7 table 0004) to the canonical class.
var encounterClasses = map[string]string{
	"I": "inpatient", "E": "emergency", "O": "outpatient", "P": "preadmission", "B": "maternity",
	"U": "unknown", "R": "other", "C": "other", "N": "other",
	"D": "day-case", // not in table 0004; sent by some UK systems for day cases
}

// isCode reports whether s is lower-case letters and digits in
// hyphen-separated words, at most 64 long (common.v1.json#/$defs/code).
func isCode(s string) bool {
	if len(s) < 1 || len(s) > 64 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// encounter maps PV1. startNow and endNow put the event time in the period
// when PV1-44 (admit) or PV1-45 (discharge) is empty.
func (x *mapping) encounter(startNow, endNow bool) (*encounter, error) {
	pv1, err := x.segment("PV1")
	if err != nil {
		return nil, err
	}
	id := strings.TrimSpace(pv1.Field(19).Component(1).String())
	if id == "" {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 19, 0, 1, reasonNoEncounter)
	}
	if !isLocalID(id) {
		return nil, invalid(hl7.CodeDataType, "PV1", 19, 0, 1, reasonEncounterFormat)
	}
	e := &encounter{ID: id, ServiceProvider: &organisation{ODS: x.mp.source}}
	if c := strings.ToUpper(strings.TrimSpace(pv1.Field(2).Component(1).String())); c != "" {
		if e.Class = encounterClasses[c]; e.Class == "" {
			e.Class = "other"
		}
	}
	var p period
	for _, f := range []struct {
		field int
		dst   *string
		now   bool
	}{{44, &p.Start, startNow}, {45, &p.End, endNow}} {
		v := strings.TrimSpace(pv1.Field(f.field).Rep(1).Component(1).String())
		switch {
		case v != "":
			t, ok := parseTS(v, x.mp.loc, 8)
			if !ok {
				return nil, invalid(hl7.CodeDataType, "PV1", f.field, 0, 0, reasonBadTime)
			}
			*f.dst = formatTime(t)
		case f.now:
			*f.dst = formatTime(x.time)
		}
	}
	if p != (period{}) {
		e.Period = &p
	}
	if e.Location, err = x.location(pv1, 3); err != nil {
		return nil, err
	}
	if v := strings.TrimSpace(pv1.Field(10).Component(1).String()); v != "" {
		if len(v) > 200 {
			return nil, invalid(hl7.CodeValueTooLong, "PV1", 10, 0, 1, reasonTooLong)
		}
		e.Specialty = v
	}
	if v := strings.ToLower(strings.TrimSpace(pv1.Field(14).Component(1).String())); isCode(v) {
		e.AdmitSource = v
	}
	return e, nil
}

// location maps a PL field (PV1-3, PV1-6): point of care (ward), room, bed,
// facility (an ODS site code) and description. Nil when empty.
func (x *mapping) location(seg *hl7.Segment, field int) (*location, error) {
	r := seg.Field(field).Rep(1)
	l := &location{}
	for _, c := range []struct {
		comp int
		dst  *string
	}{{1, &l.Ward}, {2, &l.Room}, {3, &l.Bed}, {9, &l.Name}} {
		v := strings.TrimSpace(r.Component(c.comp).Sub(1).String())
		if len(v) > 200 {
			return nil, invalid(hl7.CodeValueTooLong, seg.Name(), field, 0, c.comp, reasonTooLong)
		}
		*c.dst = v
	}
	if f := strings.TrimSpace(r.Component(4).Sub(1).String()); ods.Valid(f) {
		l.ODS = f
	}
	if *l == (location{}) {
		return nil, nil
	}
	return l, nil
}

// destinationCodes are the NHS Data Dictionary discharge destination codes
// (DISCHARGE DESTINATION CODE (HOSPITAL PROVIDER SPELL)), with the canonical
// type and a short description used as the name when no organisation is
// named.
var destinationCodes = map[string]struct{ typ, name string }{
	"19": {"home", "usual place of residence"},
	"29": {"other", "temporary place of residence"},
	"30": {"hospital", "NHS high security psychiatric hospital"},
	"37": {"other", "court"},
	"38": {"other", "penal establishment or police station"},
	"48": {"hospital", "high security psychiatric hospital, Scotland"},
	"49": {"hospital", "NHS hospital, high security psychiatric accommodation"},
	"50": {"hospital", "NHS hospital, medium secure unit"},
	"51": {"hospital", "NHS hospital, general ward"},
	"52": {"hospital", "NHS hospital, maternity or neonatal ward"},
	"53": {"hospital", "NHS hospital, mental health or learning disabilities ward"},
	"54": {"care-home", "NHS run care home"},
	"65": {"care-home", "local authority residential accommodation"},
	"66": {"other", "local authority foster care"},
	"79": {"other", "not applicable: patient died or stillbirth"},
	"84": {"hospital", "non-NHS hospital, medium secure unit"},
	"85": {"care-home", "non-NHS care home"},
	"86": {"nursing-home", "non-NHS nursing home"}, // retired code, still sent by older systems
	"87": {"hospital", "non-NHS hospital"},
	"88": {"hospice", "non-NHS hospice"},
	"98": {"other", "not applicable: spell not finished"},
	"99": {"other", "not known"},
}

// destination works out where the patient is discharged to (A03), or is
// expected to go (A01, A04). The kind of place comes from the first NHS
// discharge destination code found in PV1-37.1 (discharged to location, as
// NHS ITK messages carry it), PV1-36.1 (discharge disposition) or PV2-27.1
// (expected discharge disposition); the organisation from the first value
// shaped like an ODS code at the configured DestinationFields (PV1-37.1 by
// default). Nil when neither is known.
func (x *mapping) destination() (*destination, error) {
	var code string
	for _, p := range []hl7.Path{pathPV1_37, pathPV1_36, pathPV2_27} {
		if v := strings.TrimSpace(x.m.Lookup(p).String()); destinationCodes[v].typ != "" {
			code = v
			break
		}
	}
	var org string
	for _, p := range x.mp.dest {
		if v := strings.TrimSpace(x.m.Lookup(p).String()); ods.Valid(v) {
			org = v
			break
		}
	}
	if code == "" && org == "" {
		return nil, nil
	}
	d := &destination{Type: "other", ODS: org}
	if code != "" {
		dc := destinationCodes[code]
		d.Type = dc.typ
		if org == "" && d.Type != "home" {
			d.Name = dc.name
		}
	}
	if org == "" && d.Type != "home" && d.Type != "other" {
		// The schema requires the organisation for these kinds of place;
		// without it, say what kind of place it is in words.
		d.Type = "other"
	}
	return d, nil
}

var (
	pathPV1_37 = hl7.MustParsePath("PV1-37.1.1")
	pathPV1_36 = hl7.MustParsePath("PV1-36.1")
	pathPV2_27 = hl7.MustParsePath("PV2-27.1")
)

// parseTS parses an HL7 TS/DTM value: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]]
// followed by an optional +/-ZZZZ offset; without one, the time is in loc.
// At least minDigits of the date and time must be given.
func parseTS(s string, loc *time.Location, minDigits int) (time.Time, bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	digits := s[:i]
	if len(digits) < minDigits || len(digits) > 14 || len(digits)%2 != 0 {
		return time.Time{}, false
	}
	rest := s[i:]
	nanos := 0
	if len(rest) > 0 && rest[0] == '.' {
		if len(digits) != 14 {
			return time.Time{}, false
		}
		j := 1
		for j < len(rest) && j <= 4 && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 1 {
			return time.Time{}, false
		}
		frac := rest[1:j]
		for k := 0; k < 9; k++ {
			nanos *= 10
			if k < len(frac) {
				nanos += int(frac[k] - '0')
			}
		}
		rest = rest[j:]
	}
	if len(rest) > 0 {
		if len(rest) != 5 || (rest[0] != '+' && rest[0] != '-') || !allDigits(rest[1:]) {
			return time.Time{}, false
		}
		h, m := atoi(rest[1:3]), atoi(rest[3:5])
		if h > 14 || m > 59 {
			return time.Time{}, false
		}
		off := (h*60 + m) * 60
		if rest[0] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	}
	num := func(from, to, def int) int {
		if len(digits) < to {
			return def
		}
		return atoi(digits[from:to])
	}
	y, mo, d := num(0, 4, 0), num(4, 6, 1), num(6, 8, 1)
	h, mi, se := num(8, 10, 0), num(10, 12, 0), num(12, 14, 0)
	if mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), d, h, mi, se, nanos, loc)
	if t.Day() != d || t.Month() != time.Month(mo) { // 31 February
		return time.Time{}, false
	}
	return t, true
}

// parseDate returns the date part of a TS as YYYY-MM-DD, or "" and true
// when the value gives only a year or a month (valid HL7, but not a date
// the canonical event can hold).
func parseDate(s string) (string, bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 4 || i == 6 {
		if i == len(s) {
			return "", true
		}
		return "", false
	}
	t, ok := parseTS(s, time.UTC, 8)
	if !ok {
		return "", false
	}
	if len(s) > 8 {
		// The date of birth is the date where the patient was born, so a
		// time with an offset does not move it: read the first 8 digits.
		t = time.Date(atoi(s[0:4]), time.Month(atoi(s[4:6])), atoi(s[6:8]), 0, 0, 0, 0, time.UTC)
	}
	return t.Format(time.DateOnly), true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}
