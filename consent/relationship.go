package consent

import "context"

// Relationship is the first policy: it permits a candidate only when the
// event itself confirms the relationship the subscription named, and denies
// everything else. It ignores directives; Policy (the full model) builds on it.
//
//	basis                   permitted when
//	registered-gp           event's gpPractice equals the recipient's ODS code
//	discharge-destination   event's discharge destination equals the recipient's ODS code
//	patient-list            always (the list itself is the relationship)
//	care-relationship       always (the recorded relationship is the relationship)
//	anything else           never
type Relationship struct{}

// Rule names used by Relationship.
const (
	RuleRelationshipConfirmed   = "relationship-confirmed"
	RuleRelationshipUnconfirmed = "relationship-unconfirmed"
	RuleUnknownBasis            = "unknown-basis"
)

// Decide implements Decider.
func (Relationship) Decide(_ context.Context, req Request) (Decision, error) {
	return relationship(req), nil
}

func relationship(req Request) Decision {
	deny := Decision{Effect: Deny, Rule: RuleRelationshipUnconfirmed}
	switch req.Basis {
	case BasisRegisteredGP:
		if req.Event.GPPractice == "" || req.Event.GPPractice != req.Recipient.ODS {
			return deny
		}
	case BasisDischargeDestination:
		if req.Event.DischargeDestination == "" || req.Event.DischargeDestination != req.Recipient.ODS {
			return deny
		}
	case BasisPatientList, BasisCareRelationship:
	default:
		return Decision{Effect: Deny, Rule: RuleUnknownBasis}
	}
	return Decision{Effect: Permit, Rule: RuleRelationshipConfirmed}
}
