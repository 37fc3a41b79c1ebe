package consent

import (
	"context"
	"strconv"

	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// Rule names used by Policy, in the order of the rule table in the package
// documentation. They are stable: audit records and metrics key on them.
const (
	RuleDenyOrganisation    = "directive:deny-organisation"
	RuleConfidential        = "directive:confidential"
	RuleConfidentialEvent   = "event:confidential" // row 4 when the event, not a directive, is confidential
	RuleSensitiveGPOnly     = "policy:sensitive-category-gp-only"
	RuleDenyRole            = "directive:deny-role"
	RuleNotificationOnly    = "directive:notification-only"
	RulePermitOrganisation  = "directive:permit-organisation"
	RuleConfidentialAllowed = "policy:confidential-allowed"
	// Rows 1, 2 and 11 use Relationship's names: RuleUnknownBasis,
	// RuleRelationshipUnconfirmed and RuleRelationshipConfirmed.
)

// Rules returns every rule the deciders of this package decide by
// (Relationship, Policy, FollowUp), in the order of the rule table, then
// FollowUp's: the vocabulary that audit records and metrics key on. A
// rule added to a decider is added here.
func Rules() []string {
	return []string{
		RuleUnknownBasis, RuleRelationshipUnconfirmed, RuleDenyOrganisation, RuleConfidential, RuleConfidentialEvent,
		RuleSensitiveGPOnly, RuleDenyRole, RuleNotificationOnly, RulePermitOrganisation, RuleConfidentialAllowed,
		RuleRelationshipConfirmed, RuleOriginalNotReceived, RuleOriginalWithheld,
	}
}

// The sensitive categories every deployment has. Policy.ExtraSensitiveCategories
// adds to them; nothing removes them.
const (
	CategorySexualHealth   = "sexual-health"
	CategoryMentalHealth   = "mental-health"
	CategorySafeguarding   = "safeguarding"
	CategoryGenderIdentity = "gender-identity"
)

// Policy is the deployment's consent policy and the Decider that applies it
// with the patient's directives, by the rule table in the package
// documentation.
//
// The zero Policy is valid and the strictest: only the built-in sensitive
// categories, and a confidential patient's events go to no one.
// DefaultPolicy is what a deployment starts from. A Policy is read, never
// written, by Decide: it is safe for concurrent use as long as no one
// changes its fields while it is in use.
type Policy struct {
	// ExtraSensitiveCategories are category codes the deployment treats as
	// sensitive in addition to the built-in Category* codes (which are
	// always sensitive: a deployment cannot switch them off).
	ExtraSensitiveCategories []string `json:"extraSensitiveCategories,omitempty" yaml:"extra_sensitive_categories,omitempty"`
	// ConfidentialAllow lists the bases on which a confidential patient's
	// events are still shared (rule table, row 4). A request holds its own
	// Basis, and also registered-gp when the event names the recipient as
	// the registered GP and discharge-destination when the event names the
	// recipient as the discharge destination; only a GP practice ever holds
	// registered-gp. Empty means nothing is shared.
	ConfidentialAllow []Basis `json:"confidentialAllow,omitempty" yaml:"confidential_allow,omitempty"`
}

// DefaultPolicy returns the policy a deployment starts from: the built-in
// sensitive categories only, and a confidential patient's events shared
// with the registered GP only.
func DefaultPolicy() Policy {
	return Policy{ConfidentialAllow: []Basis{BasisRegisteredGP}}
}

// Validate reports every problem with p, with pointers into its JSON form.
func (p *Policy) Validate() error {
	var vs []problem.Violation
	for i, c := range p.ExtraSensitiveCategories {
		ptr := "/extraSensitiveCategories/" + strconv.Itoa(i)
		if !ValidCategory(c) {
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: VCategory,
				Detail: "a category code is lower-case letters and digits in words joined by '-', at most 64 characters"})
		}
		for _, e := range p.ExtraSensitiveCategories[:i] {
			if e == c {
				vs = append(vs, problem.Violation{Pointer: ptr, Rule: VDuplicate, Detail: "a category is listed twice"})
				break
			}
		}
	}
	for i, b := range p.ConfidentialAllow {
		ptr := "/confidentialAllow/" + strconv.Itoa(i)
		if !b.Valid() {
			vs = append(vs, problem.Violation{Pointer: ptr, Rule: VPolicyBasis,
				Detail: "a basis is one of registered-gp, discharge-destination, patient-list, care-relationship"})
		}
		for _, e := range p.ConfidentialAllow[:i] {
			if e == b {
				vs = append(vs, problem.Violation{Pointer: ptr, Rule: VDuplicate, Detail: "a basis is listed twice"})
				break
			}
		}
	}
	return invalid("consent policy is invalid", vs)
}

func (p *Policy) ok() bool {
	for i, c := range p.ExtraSensitiveCategories {
		if !ValidCategory(c) {
			return false
		}
		for _, e := range p.ExtraSensitiveCategories[:i] {
			if e == c {
				return false
			}
		}
	}
	for i, b := range p.ConfidentialAllow {
		if !b.Valid() {
			return false
		}
		for _, e := range p.ConfidentialAllow[:i] {
			if e == b {
				return false
			}
		}
	}
	return true
}

// Sensitive reports whether the category code c is sensitive under p.
func (p *Policy) Sensitive(c string) bool {
	switch c {
	case CategorySexualHealth, CategoryMentalHealth, CategorySafeguarding, CategoryGenderIdentity:
		return true
	}
	for _, e := range p.ExtraSensitiveCategories {
		if e == c {
			return true
		}
	}
	return false
}

var zeroPolicy Policy

// Decide implements Decider. It is Evaluate; the context is not used, since
// a decision needs nothing that is not in the Request.
func (p *Policy) Decide(_ context.Context, req Request) (Decision, error) {
	return p.Evaluate(req)
}

// Evaluate decides req by the rule table in the package documentation. It is
// Decide without the interface call and the context, for hot loops and
// benchmarks. A nil *Policy evaluates as the zero Policy.
//
// It returns an error, and no decision, when the request or the policy is
// invalid: a *problem.Error of kind Invalid listing every problem with the
// request (pointers such as "/directives/2/organisation"), or of kind
// Internal when the policy itself is invalid. It never returns Permit with
// an error.
func (p *Policy) Evaluate(req Request) (Decision, error) {
	if p == nil {
		p = &zeroPolicy
	}
	if !p.ok() {
		pe := &problem.Error{Kind: problem.Internal, Message: "consent policy is invalid"}
		if err, ok := p.Validate().(*problem.Error); ok {
			pe.Violations = err.Violations
		}
		return Decision{}, pe
	}
	if !requestOK(&req) {
		return Decision{}, requestError(&req)
	}
	if d := relationship(req); d.Effect != Permit {
		return d, nil
	}
	return p.apply(&req), nil
}

// requestOK is the allocation-free check behind requestError.
func requestOK(req *Request) bool {
	if req.Event.Time.IsZero() || !ods.Valid(req.Recipient.ODS) || !req.Recipient.Role.Valid() {
		return false
	}
	for _, l := range req.Event.Labels {
		if !ValidCategory(l) {
			return false
		}
	}
	ds := req.Directives
	if len(ds) > MaxDirectives {
		return false
	}
	for i := range ds {
		if !ds[i].ok() {
			return false
		}
		id := ds[i].ID // not empty: ok() checked it
		for j := range ds[:i] {
			// The last bytes first: ids mostly differ there, and this
			// saves a call to compare memory on every pair.
			if e := ds[j].ID; e[len(e)-1] == id[len(id)-1] && e == id {
				return false
			}
		}
	}
	return true
}

// requestError lists every problem with req.
func requestError(req *Request) error {
	var vs []problem.Violation
	if req.Event.Time.IsZero() {
		vs = append(vs, problem.Violation{Pointer: "/event/time", Rule: VEventTime,
			Detail: "the event's time is required: directive periods are judged against it"})
	}
	for i, l := range req.Event.Labels {
		if !ValidCategory(l) {
			vs = append(vs, problem.Violation{Pointer: "/event/labels/" + strconv.Itoa(i), Rule: VCategory,
				Detail: "a category code is lower-case letters and digits in words joined by '-', at most 64 characters"})
		}
	}
	if !ods.Valid(req.Recipient.ODS) {
		vs = append(vs, problem.Violation{Pointer: "/recipient/ods", Rule: VODSCode,
			Detail: "an ODS code is 3 to 10 upper-case letters and digits"})
	}
	if !req.Recipient.Role.Valid() {
		vs = append(vs, problem.Violation{Pointer: "/recipient/role", Rule: VRole,
			Detail: "role is one of gp-practice, hospital, social-care, community"})
	}
	directiveViolations(req.Directives, "/directives", &vs)
	if len(vs) == 0 { // unreachable while requestOK and this agree; fail closed anyway
		vs = append(vs, problem.Violation{Pointer: "", Rule: "request", Detail: "the request is invalid"})
	}
	return &problem.Error{Kind: problem.Invalid, Message: "consent request is invalid", Violations: vs}
}

// holds reports whether req holds basis b: its own Basis, or one the event
// itself confirms for the recipient. Only a GP practice holds registered-gp.
func holds(req *Request, b Basis) bool {
	switch b {
	case BasisRegisteredGP:
		if req.Recipient.Role != RoleGPPractice {
			return false
		}
		return req.Basis == b || req.Event.GPPractice != "" && req.Event.GPPractice == req.Recipient.ODS
	case BasisDischargeDestination:
		if req.Basis == b {
			return true
		}
		return req.Event.DischargeDestination != "" && req.Event.DischargeDestination == req.Recipient.ODS
	}
	return req.Basis == b
}

// targets reports whether d is about recipient r.
func targets(d *Directive, r Recipient) bool {
	switch d.Kind {
	case KindDenyOrganisation, KindPermitOrganisation:
		return d.Organisation == r.ODS
	case KindDenyRole:
		return d.Role == r.Role
	case KindNotificationOnly:
		if d.Organisation != "" {
			return d.Organisation == r.ODS
		}
		return d.Role == r.Role
	case KindConfidential:
		return true
	}
	return false
}

// sameScope reports whether a and b are of the same scope: the same kind,
// organisation, role and set of categories.
func sameScope(a, b *Directive) bool {
	if a.Kind != b.Kind || a.Organisation != b.Organisation || a.Role != b.Role || len(a.Categories) != len(b.Categories) {
		return false
	}
	for _, c := range a.Categories { // categories hold no duplicates (validated)
		if !contains(b.Categories, c) {
			return false
		}
	}
	return true
}

// superseded reports whether a directive of d's scope was recorded after d.
func superseded(d *Directive, ds []Directive) bool {
	for i := range ds {
		e := &ds[i]
		if e != d && e.Kind == d.Kind && e.Recorded.After(d.Recorded) && sameScope(d, e) {
			return true
		}
	}
	return false
}

// better reports whether a should be named in a decision rather than b: the
// later recorded, then the lower id.
func better(a, b *Directive) bool {
	if b == nil {
		return true
	}
	if !a.Recorded.Equal(b.Recorded) {
		return a.Recorded.After(b.Recorded)
	}
	return a.ID < b.ID
}

func contains(xs []string, x string) bool {
	for _, e := range xs {
		if e == x {
			return true
		}
	}
	return false
}

// applies reports whether the permit-organisation d, already known to be in
// force and about the recipient, applies to the event.
func applies(d *Directive, ev *Event) bool {
	if len(d.Categories) == 0 {
		return true
	}
	for _, l := range ev.Labels {
		if contains(d.Categories, l) {
			return true
		}
	}
	return false
}

// apply runs rows 3 to 11 of the rule table on a valid request whose
// relationship is confirmed. It is written for speed: one pass over the
// directives, no allocation except the obligations of a notification-only
// permit. The property test holds it to a literal reading of the table.
func (p *Policy) apply(req *Request) Decision {
	ds := req.Directives
	t := req.Event.Time
	var denyOrg, conf, denyRole, notifyOrg, notifyRole, permit *Directive
	var permitsBuf [8]*Directive
	permits := permitsBuf[:0]
	for i := range ds {
		d := &ds[i]
		if !targets(d, req.Recipient) || !d.Period.Contains(t) || superseded(d, ds) {
			continue
		}
		switch d.Kind {
		case KindDenyOrganisation:
			if better(d, denyOrg) {
				denyOrg = d
			}
		case KindConfidential:
			if better(d, conf) {
				conf = d
			}
		case KindDenyRole:
			if better(d, denyRole) {
				denyRole = d
			}
		case KindNotificationOnly:
			if d.Organisation != "" {
				if better(d, notifyOrg) {
					notifyOrg = d
				}
			} else if better(d, notifyRole) {
				notifyRole = d
			}
		case KindPermitOrganisation:
			if applies(d, &req.Event) {
				permits = append(permits, d)
				if better(d, permit) {
					permit = d
				}
			}
		}
	}

	// Row 3.
	if denyOrg != nil {
		return Decision{Effect: Deny, Rule: RuleDenyOrganisation, DirectiveID: denyOrg.ID}
	}
	// Row 4.
	if (conf != nil || req.Event.Confidential) && !p.confidentialAllowed(req) {
		if conf == nil {
			return Decision{Effect: Deny, Rule: RuleConfidentialEvent}
		}
		return Decision{Effect: Deny, Rule: RuleConfidential, DirectiveID: conf.ID}
	}
	// Row 5.
	if !holds(req, BasisRegisteredGP) {
		for _, l := range req.Event.Labels {
			if p.Sensitive(l) && !unlocked(permits, l) {
				return Decision{Effect: Deny, Rule: RuleSensitiveGPOnly}
			}
		}
	}
	// Row 6.
	if denyRole != nil && permit == nil {
		return Decision{Effect: Deny, Rule: RuleDenyRole, DirectiveID: denyRole.ID}
	}
	// Rows 7 and 8.
	if notifyOrg != nil {
		return Decision{Effect: Permit, Rule: RuleNotificationOnly, DirectiveID: notifyOrg.ID,
			Obligations: []Obligation{NotificationOnly}}
	}
	if notifyRole != nil && permit == nil {
		return Decision{Effect: Permit, Rule: RuleNotificationOnly, DirectiveID: notifyRole.ID,
			Obligations: []Obligation{NotificationOnly}}
	}
	// Row 9.
	if permit != nil {
		return Decision{Effect: Permit, Rule: RulePermitOrganisation, DirectiveID: permit.ID}
	}
	// Row 10.
	if conf != nil {
		return Decision{Effect: Permit, Rule: RuleConfidentialAllowed, DirectiveID: conf.ID}
	}
	if req.Event.Confidential {
		return Decision{Effect: Permit, Rule: RuleConfidentialAllowed}
	}
	// Row 11.
	return Decision{Effect: Permit, Rule: RuleRelationshipConfirmed}
}

func unlocked(permits []*Directive, label string) bool {
	for _, d := range permits {
		if contains(d.Categories, label) {
			return true
		}
	}
	return false
}

func (p *Policy) confidentialAllowed(req *Request) bool {
	for _, b := range p.ConfidentialAllow {
		if holds(req, b) {
			return true
		}
	}
	return false
}
