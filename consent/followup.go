package consent

import (
	"context"
	"slices"

	"github.com/carehub/carehub/schemas/problem"
)

// Rules of the decisions FollowUp adds to the rule table.
const (
	// RuleOriginalNotReceived: a correction goes only to recipients that
	// received an event it corrects.
	RuleOriginalNotReceived = "follow-up:original-not-received"
	// RuleOriginalWithheld: an update goes to nobody who was withheld the
	// earlier events on its reference and received none of them.
	RuleOriginalWithheld = "follow-up:original-withheld"
)

// Relation is how an event relates to earlier events about the same
// reference (an encounter or a care plan of the same patient).
type Relation int

// The relations (package schemas/event names which event type has which).
const (
	// Standalone: decided on its own.
	Standalone Relation = iota
	// Continues: decided with the sensitivity categories of every earlier
	// event on the reference added to its own.
	Continues
	// Updates: as Continues; and denied to a recipient that was withheld
	// the earlier events and received none of them.
	Updates
	// Corrects: denied to a recipient that received no event it corrects;
	// for one that did, decided on the basis on which it received it, with
	// the earlier events' categories added.
	Corrects
)

// Original is what the earlier events on the same reference did for one
// recipient.
type Original struct {
	// Received: the recipient received at least one of them (for Corrects:
	// one of those the event corrects).
	Received bool
	// Withheld: it was a candidate for at least one and was denied.
	Withheld bool
	// Basis is the basis on which it received one (when Received).
	Basis Basis
	// Labels are the sensitivity categories of every earlier event on the
	// reference.
	Labels []string
}

// FollowUp decides req, an event related by rel to earlier events whose
// outcome for the recipient is orig, with d:
//
//	relation    decision
//	Standalone  d(req)
//	Continues   d(req with orig.Labels added to the event's labels)
//	Updates     deny follow-up:original-withheld if orig.Withheld and not orig.Received;
//	            else as Continues, and when orig.Received and req.Basis is orig.Basis,
//	            the relationship counts as confirmed (the earlier event confirmed it)
//	Corrects    deny follow-up:original-not-received unless orig.Received;
//	            else d(req on orig.Basis, the relationship confirmed, orig.Labels added)
//
// "The relationship confirmed" means the request is decided with the
// event naming the recipient for that basis (registered GP practice or
// discharge destination), so row 2 of the table holds as it did for the
// original; every other row, and the patient's current directives, decide
// as for any event. FollowUp leaves req unchanged.
func FollowUp(ctx context.Context, d Decider, req Request, rel Relation, orig Original) (Decision, error) {
	switch rel {
	case Standalone:
		return d.Decide(ctx, req)
	case Continues:
		return d.Decide(ctx, withLabels(req, orig.Labels))
	case Updates:
		if orig.Withheld && !orig.Received {
			return Decision{Effect: Deny, Rule: RuleOriginalWithheld}, nil
		}
		req = withLabels(req, orig.Labels)
		if orig.Received && req.Basis == orig.Basis {
			req = confirmed(req)
		}
		return d.Decide(ctx, req)
	case Corrects:
		if !orig.Received {
			return Decision{Effect: Deny, Rule: RuleOriginalNotReceived}, nil
		}
		req = withLabels(req, orig.Labels)
		req.Basis = orig.Basis
		return d.Decide(ctx, confirmed(req))
	}
	return Decision{}, problem.New(problem.Invalid, "consent: unknown follow-up relation")
}

// withLabels returns req with labels added to the event's (no duplicates).
func withLabels(req Request, labels []string) Request {
	if len(labels) == 0 {
		return req
	}
	out := slices.Clone(req.Event.Labels)
	for _, l := range labels {
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	req.Event.Labels = out
	return req
}

// confirmed returns req with the event naming the recipient for its basis.
func confirmed(req Request) Request {
	switch req.Basis {
	case BasisRegisteredGP:
		req.Event.GPPractice = req.Recipient.ODS
	case BasisDischargeDestination:
		req.Event.DischargeDestination = req.Recipient.ODS
	}
	return req
}

// Merged is a Decider for a patient whose record absorbed others (an HL7
// A40 merge): the directives of every number apply, and a deny wins where
// they conflict. Decide decides the request once with its own directives
// (the surviving number's) and once with each set in Others (each retired
// number's, in the order they were merged), all with Decider, and returns:
//
//   - the surviving number's decision if it denies;
//   - else the first set's decision that denies;
//   - else the first decision (surviving number first) that carries the
//     notification-only obligation;
//   - else the surviving number's decision.
//
// Sets are decided apart, never pooled: a permit-organisation recorded
// under one number does not lift a deny-role recorded under the other, and
// supersession works within one number's directives only.
type Merged struct {
	Decider Decider
	Others  [][]Directive
}

// Decide implements Decider.
func (m Merged) Decide(ctx context.Context, req Request) (Decision, error) {
	first, err := m.Decider.Decide(ctx, req)
	if err != nil || first.Effect == Deny || len(m.Others) == 0 {
		return first, err
	}
	notify := Decision{}
	if first.Has(NotificationOnly) {
		notify = first
	}
	for _, ds := range m.Others {
		r := req
		r.Directives = ds
		d, err := m.Decider.Decide(ctx, r)
		if err != nil {
			return Decision{}, err
		}
		if d.Effect == Deny {
			return d, nil
		}
		if notify.Effect == "" && d.Has(NotificationOnly) {
			notify = d
		}
	}
	if notify.Effect != "" {
		return notify, nil
	}
	return first, nil
}

// Recheck is the decision at the moment of delivery for a copy routed
// under routed, where now decides the same request with the patient's
// directives as they are at delivery (the same Decider, the same event
// facts): now when it denies; else now with routed's notification-only
// obligation kept, since a copy routed as a notification cannot carry more
// than one. A Permit from routed never survives a Deny from now.
func Recheck(routed, now Decision) Decision {
	if now.Effect != Permit {
		return now
	}
	if routed.Has(NotificationOnly) && !now.Has(NotificationOnly) {
		now.Obligations = append(slices.Clone(now.Obligations), NotificationOnly)
	}
	return now
}
