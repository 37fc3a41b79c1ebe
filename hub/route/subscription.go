package route

import (
	"errors"
	"fmt"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/event"
)

// Subscription is one recipient's standing request for events.
type Subscription struct {
	ID        string
	Recipient consent.Recipient
	Basis     consent.Basis
	Types     map[string]bool // CloudEvents types
}

// Candidate is a recipient an event may go to, and why.
type Candidate struct {
	Subscription *Subscription
}

// Subscriptions matches events to subscriptions. It is immutable once built
// and safe for concurrent use.
type Subscriptions struct {
	byRecipient map[string][]*Subscription
	all         []*Subscription
}

// NewSubscriptions validates and indexes subs.
func NewSubscriptions(subs []Subscription) (*Subscriptions, error) {
	s := &Subscriptions{byRecipient: map[string][]*Subscription{}}
	var errs []error
	for i := range subs {
		sub := subs[i]
		if !sub.Basis.Valid() {
			errs = append(errs, fmt.Errorf("subscription %s: unknown basis %q", sub.ID, sub.Basis))
		}
		if !sub.Recipient.Role.Valid() {
			errs = append(errs, fmt.Errorf("subscription %s: unknown role %q", sub.ID, sub.Recipient.Role))
		}
		s.all = append(s.all, &sub)
		s.byRecipient[sub.Recipient.ODS] = append(s.byRecipient[sub.Recipient.ODS], &sub)
	}
	return s, errors.Join(errs...)
}

// Match returns the candidates for ev: each subscription whose type list
// holds the event's type and whose basis the event itself names. A
// publisher is never a candidate for its own events.
func (s *Subscriptions) Match(ev *event.Event) []Candidate {
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
	return out
}

// Recipients lists every recipient's ODS code once.
func (s *Subscriptions) Recipients() []string {
	var out []string
	for ods := range s.byRecipient {
		out = append(out, ods)
	}
	return out
}
