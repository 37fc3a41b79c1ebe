package route

import (
	"errors"
	"fmt"
	"strings"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/schemas/event"
)

// Subscription is one recipient's standing request for events.
type Subscription struct {
	ID        string
	Recipient consent.Recipient
	Basis     consent.Basis
	Types     map[string]bool // CloudEvents types
	// Patients is the recipient's patient list, for BasisPatientList only:
	// the pseudonyms of its patients.
	Patients patientlist.Set
}

// matchable are the bases the router matches, in the order they are listed
// to people.
var matchable = []consent.Basis{consent.BasisRegisteredGP, consent.BasisDischargeDestination, consent.BasisPatientList}

// CheckBasis reports whether the router can match subscriptions on basis
// b, and if not, why.
func CheckBasis(b consent.Basis) error {
	for _, m := range matchable {
		if b == m {
			return nil
		}
	}
	names := make([]string, len(matchable))
	for i, m := range matchable {
		names[i] = string(m)
	}
	if b == consent.BasisCareRelationship {
		return fmt.Errorf("basis %q cannot be matched yet (no source records care relationships): use one of %s", b, strings.Join(names, ", "))
	}
	return fmt.Errorf("unknown basis %q: one of %s", b, strings.Join(names, ", "))
}

// Candidate is a recipient an event may go to, and why.
type Candidate struct {
	Subscription *Subscription
}

// Subscriptions matches events to subscriptions. It is immutable once built
// and safe for concurrent use.
type Subscriptions struct {
	byRecipient map[string][]*Subscription
	byPatient   map[string][]*Subscription // patient-list subscriptions by patient pseudonym
	all         []*Subscription
}

// NewSubscriptions validates and indexes subs.
func NewSubscriptions(subs []Subscription) (*Subscriptions, error) {
	s := &Subscriptions{byRecipient: map[string][]*Subscription{}, byPatient: map[string][]*Subscription{}}
	var errs []error
	for i := range subs {
		sub := subs[i]
		err := CheckBasis(sub.Basis)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("subscription %s: %w", sub.ID, err))
		case sub.Basis == consent.BasisPatientList && sub.Patients == nil:
			errs = append(errs, fmt.Errorf("subscription %s: a patient-list subscription needs its patient list", sub.ID))
		case sub.Basis != consent.BasisPatientList && sub.Patients != nil:
			errs = append(errs, fmt.Errorf("subscription %s: only a patient-list subscription has a patient list", sub.ID))
		}
		if !sub.Recipient.Role.Valid() {
			errs = append(errs, fmt.Errorf("subscription %s: unknown role %q", sub.ID, sub.Recipient.Role))
		}
		s.all = append(s.all, &sub)
		s.byRecipient[sub.Recipient.ODS] = append(s.byRecipient[sub.Recipient.ODS], &sub)
		for p := range sub.Patients {
			s.byPatient[p] = append(s.byPatient[p], &sub)
		}
	}
	return s, errors.Join(errs...)
}

// Of returns the subscriptions of one recipient.
func (s *Subscriptions) Of(ods string) []*Subscription { return s.byRecipient[ods] }

// Match returns the candidates for ev, about the patient known by the
// pseudonyms keys (the patient's number, and any merged with it): each
// subscription whose type list holds the event's type and whose basis
// holds for the event. The event itself names the registered GP practice
// and the discharge destination; a patient list holds one of the numbers
// or not. A publisher is never a candidate for its own events.
func (s *Subscriptions) Match(ev *event.Event, keys ...string) []Candidate {
	var out []Candidate
	try := func(ods string, basis consent.Basis) {
		if ods == "" || ods == ev.Publisher {
			return
		}
		for _, sub := range s.byRecipient[ods] {
			if sub.Basis == basis && sub.Types[ev.Type] {
				out = append(out, Candidate{Subscription: sub})
			}
		}
	}
	try(ev.Patient.GPPractice, consent.BasisRegisteredGP)
	try(ev.DischargeDestination, consent.BasisDischargeDestination)
	seen := map[*Subscription]bool{}
	for _, key := range keys {
		if key == "" {
			continue
		}
		for _, sub := range s.byPatient[key] {
			if sub.Recipient.ODS != ev.Publisher && sub.Types[ev.Type] && !seen[sub] {
				seen[sub] = true
				out = append(out, Candidate{Subscription: sub})
			}
		}
	}
	return out
}
