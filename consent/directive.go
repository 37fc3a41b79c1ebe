package consent

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// Kind is the kind of a Directive.
type Kind string

// The kinds of directive. See the package documentation for how they combine.
const (
	// KindDenyOrganisation: do not share with the named organisation. Nothing
	// overrides it: not a permit-organisation, not the policy.
	KindDenyOrganisation Kind = "deny-organisation"
	// KindDenyRole: do not share with any organisation of the named role.
	// A permit-organisation for a recipient lifts it for that recipient.
	KindDenyRole Kind = "deny-role"
	// KindNotificationOnly: share a notification, never documents, with the
	// named organisation or with every organisation of the named role
	// (exactly one of the two). It is an obligation on a permit, not a deny.
	KindNotificationOnly Kind = "notification-only"
	// KindPermitOrganisation: the patient explicitly permits the named
	// organisation. It lifts role-level denials and restrictions for it,
	// never an organisation-level one. With Categories it is restricted to
	// events carrying one of them, and it is how a patient lets a named
	// recipient other than the registered GP receive those sensitive
	// categories.
	KindPermitOrganisation Kind = "permit-organisation"
	// KindConfidential: the patient is a confidential patient (like the PDS
	// "S" flag). Nothing is shared except what Policy.ConfidentialAllow names.
	KindConfidential Kind = "confidential"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindDenyOrganisation, KindDenyRole, KindNotificationOnly, KindPermitOrganisation, KindConfidential:
		return true
	}
	return false
}

// Directive is one instruction recorded by or for a patient, in the simple
// JSON form the admin API uses. It holds no patient data: the patient it
// belongs to is the key it is stored under, never a field.
type Directive struct {
	// ID identifies the directive in decisions and audit records: 1 to 64
	// letters, digits, '-' or '.', and not ten digits (the shape of an NHS
	// number).
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	// Organisation is the ODS code the directive names (deny-organisation,
	// permit-organisation, and notification-only for one organisation).
	Organisation string `json:"organisation,omitempty"`
	// Role is the role the directive names (deny-role, and notification-only
	// for a role).
	Role Role `json:"role,omitempty"`
	// Categories restrict a permit-organisation to events carrying at least
	// one of these category codes, and let those categories through to the
	// organisation even when they are sensitive. Only permit-organisation
	// takes categories.
	Categories []string `json:"categories,omitempty"`
	// Period bounds when the directive is in force, judged against the
	// event's time. The zero Period is always in force.
	Period Period `json:"period,omitzero"`
	// Recorded is when the directive was recorded. Of the directives of one
	// scope, only those recorded last count (see the package documentation).
	Recorded time.Time `json:"recorded"`
	// RecordedBy names who recorded it: an ODS code or an administrator id,
	// never the patient's own identifiers.
	RecordedBy string `json:"recordedBy"`
}

// Period is a span of time. Both ends are inclusive, as in FHIR; a nil end is
// unbounded.
type Period struct {
	Start *time.Time `json:"start,omitempty"`
	End   *time.Time `json:"end,omitempty"`
}

// Contains reports whether t lies within p (inclusive at both ends).
func (p Period) Contains(t time.Time) bool {
	if p.Start != nil && t.Before(*p.Start) {
		return false
	}
	if p.End != nil && t.After(*p.End) {
		return false
	}
	return true
}

// MaxDirectives is the most directives one patient, and so one Request, may
// hold. It bounds the cost of a decision; real patients hold a handful.
const MaxDirectives = 100

// Rule names in the Violations of this package's validation errors
// (problem.Violation.Rule), for callers that act on a particular one.
const (
	VRequired      = "required"
	VForbidden     = "not-allowed-for-kind"
	VIDFormat      = "directive-id-format"
	VLooksLikeNHS  = "looks-like-nhs-number"
	VKind          = "directive-kind"
	VODSCode       = "ods-code"
	VRole          = "role"
	VCategory      = "category-code"
	VDuplicate     = "duplicate"
	VPeriodOrder   = "period-order"
	VPeriodZero    = "period-bound-zero"
	VTargetOneOf   = "organisation-or-role"
	VTooMany       = "too-many-directives"
	VRecordedBy    = "recorded-by-format"
	VEventTime     = "event-time-required"
	VUniqueID      = "directive-id-unique"
	VPolicyBasis   = "basis"
	VNHSNumber     = "nhs-number"
	VPatientSwitch = "patient-mismatch"
)

// Validate reports every problem with d as one *problem.Error of kind
// Invalid, whose violations point into d's JSON form ("/organisation",
// "/categories/1", ...). It returns nil when d is valid.
func (d Directive) Validate() error {
	var vs []problem.Violation
	d.violations("", &vs)
	return invalid("consent directive is invalid", vs)
}

// ok is the allocation-free fast check behind Validate: ok() == (Validate() == nil).
func (d *Directive) ok() bool {
	if !validID(d.ID) || d.Recorded.IsZero() || !validRecordedBy(d.RecordedBy) {
		return false
	}
	if (d.Period.Start != nil && d.Period.Start.IsZero()) || (d.Period.End != nil && d.Period.End.IsZero()) {
		return false
	}
	if d.Period.Start != nil && d.Period.End != nil && d.Period.End.Before(*d.Period.Start) {
		return false
	}
	switch d.Kind {
	case KindDenyOrganisation:
		return ods.Valid(d.Organisation) && d.Role == "" && len(d.Categories) == 0
	case KindDenyRole:
		return d.Organisation == "" && d.Role.Valid() && len(d.Categories) == 0
	case KindNotificationOnly:
		if d.Organisation != "" {
			return ods.Valid(d.Organisation) && d.Role == "" && len(d.Categories) == 0
		}
		return d.Role.Valid() && len(d.Categories) == 0
	case KindPermitOrganisation:
		if !ods.Valid(d.Organisation) || d.Role != "" {
			return false
		}
		for i, c := range d.Categories {
			if !ValidCategory(c) {
				return false
			}
			for _, e := range d.Categories[:i] {
				if e == c {
					return false
				}
			}
		}
		return true
	case KindConfidential:
		return d.Organisation == "" && d.Role == "" && len(d.Categories) == 0
	}
	return false
}

// violations appends every problem with d, with pointers under prefix.
func (d *Directive) violations(prefix string, vs *[]problem.Violation) {
	add := func(ptr, rule, detail string) {
		*vs = append(*vs, problem.Violation{Pointer: prefix + ptr, Rule: rule, Detail: detail})
	}
	switch {
	case d.ID == "":
		add("/id", VRequired, "a directive needs an id")
	case looksLikeNHSNumber(d.ID):
		add("/id", VLooksLikeNHS, "a directive id must not have the shape of an NHS number (ten digits)")
	case !validID(d.ID):
		add("/id", VIDFormat, "a directive id is 1 to 64 letters, digits, '-' or '.'")
	}
	if d.Recorded.IsZero() {
		add("/recorded", VRequired, "a directive needs the time it was recorded")
	}
	switch {
	case d.RecordedBy == "":
		add("/recordedBy", VRequired, "a directive needs who recorded it (an ODS code or an administrator id)")
	case looksLikeNHSNumber(d.RecordedBy):
		add("/recordedBy", VLooksLikeNHS, "recordedBy must not have the shape of an NHS number (ten digits)")
	case !validRecordedBy(d.RecordedBy):
		add("/recordedBy", VRecordedBy, "recordedBy is 1 to 64 letters, digits, or '-', '.', '_', '@', ':'")
	}
	if d.Period.Start != nil && d.Period.Start.IsZero() {
		add("/period/start", VPeriodZero, "a period start, when given, must be a real time")
	}
	if d.Period.End != nil && d.Period.End.IsZero() {
		add("/period/end", VPeriodZero, "a period end, when given, must be a real time")
	}
	if d.Period.Start != nil && d.Period.End != nil && d.Period.End.Before(*d.Period.Start) {
		add("/period/end", VPeriodOrder, "a period must not end before it starts")
	}

	org := func(need bool) {
		switch {
		case d.Organisation == "" && need:
			add("/organisation", VRequired, "this kind of directive names an organisation by ODS code")
		case d.Organisation != "" && !ods.Valid(d.Organisation):
			add("/organisation", VODSCode, "an ODS code is 3 to 10 upper-case letters and digits")
		}
	}
	role := func(need bool) {
		switch {
		case d.Role == "" && need:
			add("/role", VRequired, "this kind of directive names a role")
		case d.Role != "" && !d.Role.Valid():
			add("/role", VRole, "role is one of "+strings.Join(RoleNames(), ", "))
		}
	}
	noOrg := func() {
		if d.Organisation != "" {
			add("/organisation", VForbidden, "this kind of directive names no organisation")
		}
	}
	noRole := func() {
		if d.Role != "" {
			add("/role", VForbidden, "this kind of directive names no role")
		}
	}
	noCategories := func() {
		if len(d.Categories) > 0 {
			add("/categories", VForbidden, "only a permit-organisation directive takes categories")
		}
	}
	switch d.Kind {
	case KindDenyOrganisation:
		org(true)
		noRole()
		noCategories()
	case KindDenyRole:
		role(true)
		noOrg()
		noCategories()
	case KindNotificationOnly:
		switch {
		case d.Organisation == "" && d.Role == "":
			add("/organisation", VTargetOneOf, "a notification-only directive names an organisation or a role")
		case d.Organisation != "" && d.Role != "":
			add("/role", VTargetOneOf, "a notification-only directive names an organisation or a role, not both")
		}
		org(false)
		role(false)
		noCategories()
	case KindPermitOrganisation:
		org(true)
		noRole()
		for i, c := range d.Categories {
			ptr := "/categories/" + strconv.Itoa(i)
			if !ValidCategory(c) {
				add(ptr, VCategory, "a category code is lower-case letters and digits in words joined by '-', at most 64 characters")
				continue
			}
			for _, e := range d.Categories[:i] {
				if e == c {
					add(ptr, VDuplicate, "a category is listed twice")
					break
				}
			}
		}
	case KindConfidential:
		noOrg()
		noRole()
		noCategories()
	case "":
		add("/kind", VRequired, "a directive needs a kind")
	default:
		add("/kind", VKind, "kind is one of deny-organisation, deny-role, notification-only, permit-organisation, confidential")
	}
}

// PatientConsent is one patient's current directives: the value of the
// patient's record in the compacted carehub.consent topic and the body of
// the admin API. The patient is the record's key, never a field.
type PatientConsent struct {
	// Version increases by one with every accepted change.
	Version int64 `json:"version"`
	// Updated is when the last change was accepted.
	Updated    time.Time   `json:"updated"`
	Directives []Directive `json:"directives"`
}

// Validate reports every problem with c: each directive's, duplicate ids,
// and more than MaxDirectives.
func (c PatientConsent) Validate() error {
	var vs []problem.Violation
	if c.Version < 0 {
		vs = append(vs, problem.Violation{Pointer: "/version", Rule: "version", Detail: "version must not be negative"})
	}
	directiveViolations(c.Directives, "/directives", &vs)
	return invalid("patient consent is invalid", vs)
}

func directiveViolations(ds []Directive, prefix string, vs *[]problem.Violation) {
	if len(ds) > MaxDirectives {
		*vs = append(*vs, problem.Violation{Pointer: prefix, Rule: VTooMany,
			Detail: "a patient holds at most " + strconv.Itoa(MaxDirectives) + " directives"})
	}
	for i := range ds {
		p := prefix + "/" + strconv.Itoa(i)
		ds[i].violations(p, vs)
		for j := range ds[:i] {
			if ds[i].ID != "" && ds[j].ID == ds[i].ID {
				*vs = append(*vs, problem.Violation{Pointer: p + "/id", Rule: VUniqueID,
					Detail: "two directives share this id (first at index " + strconv.Itoa(j) + ")"})
				break
			}
		}
	}
}

// ParsePatientConsent decodes the admin API's JSON form strictly (no unknown
// fields, no duplicate keys, nothing after the value) and validates it.
// Errors are *problem.Error: Malformed when the bytes are not that JSON form,
// Invalid (with every violation) when a value breaks a rule. No error text
// holds a value from the input.
func ParsePatientConsent(raw []byte) (PatientConsent, error) {
	var c PatientConsent
	if err := strictJSON(raw); err != nil {
		return PatientConsent{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			// Field is a path of names without array indexes, so inside
			// the directives it can only point at the list.
			v := problem.Violation{Pointer: "/" + te.Field, Rule: "type", Detail: "this member has the wrong JSON type"}
			if strings.HasPrefix(te.Field, "directives.") {
				v = problem.Violation{Pointer: "/directives", Rule: "type",
					Detail: "the member " + strings.TrimPrefix(te.Field, "directives.") + " of a directive has the wrong JSON type"}
			}
			return PatientConsent{}, &problem.Error{Kind: problem.Malformed, Message: "patient consent is not in the expected form", Err: err,
				Violations: []problem.Violation{v}}
		}
		return PatientConsent{}, problem.Wrap(problem.Malformed, "patient consent is not in the expected form (unknown member, wrong type or bad time)", err)
	}
	if err := c.Validate(); err != nil {
		return PatientConsent{}, err
	}
	return c, nil
}

func invalid(msg string, vs []problem.Violation) error {
	if len(vs) == 0 {
		return nil
	}
	return &problem.Error{Kind: problem.Invalid, Message: msg, Violations: vs}
}

// Character classes of the identifier shapes, one bit each, so that a check
// is one table load per byte (they run on every decision).
const (
	cUpper    = 1 << iota // A-Z
	cLower                // a-z
	cDigit                // 0-9
	cHyphen               // -
	cDot                  // .
	cRecorder             // _ @ :
)

var charClass = func() (t [256]uint8) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = cUpper
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = cLower
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = cDigit
	}
	t['-'], t['.'] = cHyphen, cDot
	t['_'], t['@'], t[':'] = cRecorder, cRecorder, cRecorder
	return t
}()

// only reports whether every byte of s is in one of the classes of mask.
func only(s string, mask uint8) bool {
	for i := 0; i < len(s); i++ {
		if charClass[s[i]]&mask == 0 {
			return false
		}
	}
	return true
}

// ValidCategory reports whether s has the shape of a category code:
// lower-case ASCII letters and digits in words joined by single '-', at most
// 64 characters ("mental-health").
func ValidCategory(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	prev := byte('-') // so that a leading '-' is refused
	for i := 0; i < len(s); i++ {
		c := s[i]
		if charClass[c]&(cLower|cDigit|cHyphen) == 0 || c == '-' && prev == '-' {
			return false
		}
		prev = c
	}
	return prev != '-'
}

func validID(s string) bool {
	return len(s) > 0 && len(s) <= 64 && only(s, cUpper|cLower|cDigit|cHyphen|cDot) && !looksLikeNHSNumber(s)
}

func validRecordedBy(s string) bool {
	return len(s) > 0 && len(s) <= 64 && only(s, cUpper|cLower|cDigit|cHyphen|cDot|cRecorder) && !looksLikeNHSNumber(s)
}

// looksLikeNHSNumber reports whether s is ten ASCII digits. Identifiers that
// reach decisions and audit records must never be able to carry one.
func looksLikeNHSNumber(s string) bool {
	return len(s) == 10 && only(s, cDigit)
}
