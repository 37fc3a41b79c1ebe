package consent

import (
	"context"
	"time"
)

// Effect is the outcome of a decision.
type Effect string

// The effects.
const (
	Permit Effect = "permit"
	Deny   Effect = "deny"
)

// Obligation is a condition attached to a Permit that the delivery must honour.
type Obligation string

// The obligations.
const (
	// NotificationOnly: deliver the event without clinical documents (for a
	// discharge: without the discharge summary).
	NotificationOnly Obligation = "notification-only"
)

// Role is the kind of organisation a recipient is.
type Role string

// The roles.
const (
	RoleGPPractice Role = "gp-practice"
	RoleHospital   Role = "hospital"
	RoleSocialCare Role = "social-care"
	RoleCommunity  Role = "community"
)

// roles are the known roles, in the order they are listed to people.
var roles = []Role{RoleGPPractice, RoleHospital, RoleSocialCare, RoleCommunity}

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	for _, k := range roles {
		if r == k {
			return true
		}
	}
	return false
}

// RoleNames returns the known roles' names (a new slice).
func RoleNames() []string {
	out := make([]string, len(roles))
	for i, r := range roles {
		out[i] = string(r)
	}
	return out
}

// Basis is why a recipient is a candidate for an event.
type Basis string

// The bases.
const (
	// BasisRegisteredGP: the recipient is the patient's registered GP practice
	// named in the event (data.patient.gpPractice).
	BasisRegisteredGP Basis = "registered-gp"
	// BasisDischargeDestination: the recipient is named in the event as the
	// organisation the patient is discharged to (data.discharge.destination.ods).
	BasisDischargeDestination Basis = "discharge-destination"
	// BasisPatientList: the patient is on an explicit list the recipient holds.
	BasisPatientList Basis = "patient-list"
	// BasisCareRelationship: the recipient has an active care relationship
	// with the patient recorded with the hub.
	BasisCareRelationship Basis = "care-relationship"
)

// Valid reports whether b is one of the known bases.
func (b Basis) Valid() bool {
	switch b {
	case BasisRegisteredGP, BasisDischargeDestination, BasisPatientList, BasisCareRelationship:
		return true
	}
	return false
}

// Event is what a decision needs to know about an event. It holds no patient
// identifier.
type Event struct {
	ID        string
	Type      string    // CloudEvents type, e.g. org.carehub.discharge.v1
	Publisher string    // ODS code of the publishing organisation
	Time      time.Time // when the event happened (CloudEvents time)
	// Labels are the sensitivity categories the event carries (codes such as
	// "sexual-health", "mental-health", "safeguarding", "gender-identity", or
	// any code the deployment configures).
	Labels []string
	// Confidential is true when the publisher marks the event's record
	// protected (data.confidential; HL7 v2 PD1-12 Y): rules 4 and 10 treat
	// it as a confidential directive would, for this event only.
	Confidential bool
	// HasDocument is true when the event carries a clinical document (inline
	// or by reference), such as a discharge summary.
	HasDocument bool
	// GPPractice is the ODS code of the patient's registered GP practice, as
	// the event states it.
	GPPractice string
	// DischargeDestination is the ODS code of the organisation the patient is
	// discharged to, if the event names one.
	DischargeDestination string
}

// Recipient is the candidate organisation.
type Recipient struct {
	ODS  string
	Role Role
}

// Request is everything a decision depends on.
type Request struct {
	Event      Event
	Recipient  Recipient
	Basis      Basis
	Directives []Directive
}

// Decision is the answer to a Request.
type Decision struct {
	Effect      Effect
	Rule        string // the rule that decided, e.g. "relationship-confirmed"
	Obligations []Obligation
	// DirectiveID is the ID of the patient directive the deciding rule
	// applied, when the rule is about one (empty otherwise). Like Rule, it
	// never holds patient data.
	DirectiveID string
}

// Permitted reports whether the decision permits delivery.
func (d Decision) Permitted() bool { return d.Effect == Permit }

// Has reports whether the decision carries obligation o.
func (d Decision) Has(o Obligation) bool {
	for _, x := range d.Obligations {
		if x == o {
			return true
		}
	}
	return false
}

// Decider decides one Request. See the package documentation for the contract.
type Decider interface {
	Decide(ctx context.Context, req Request) (Decision, error)
}

// DeciderFunc adapts a function to a Decider.
type DeciderFunc func(ctx context.Context, req Request) (Decision, error)

// Decide calls f.
func (f DeciderFunc) Decide(ctx context.Context, req Request) (Decision, error) { return f(ctx, req) }
