package route

import (
	"context"

	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
)

// Settlement is what became of one copy after routing, when that is less
// than the patient index recorded as it routed it: the copy was withheld
// (Rule set: at delivery, at a pull feed's read, at a dead letter's
// replay), or it was delivered in a narrower form than it was routed in
// (Form).
type Settlement struct {
	// Key is the copy's patient pseudonym (topic.MetaKey).
	Key       string
	Recipient string
	// Source and EventID are the copy's event: its CloudEvents source
	// attribute as published ("urn:ods:" and the publisher's ODS code:
	// the outbox copy's ce_source, a feed entry's Publisher, the source of
	// a dead letter's copy) and its id. The index names the copy by both
	// (patientindex.CopyID), so that another publisher's event with the
	// same id is another copy. Without a source, only a copy recorded
	// before copies were named so (by bare id) is found.
	Source  string
	EventID string
	// Sealed is the copy's sealed routing decision, when there is one: it
	// names the event's reference. Without it (a pull feed's read) the
	// reference is the one whose receipt holds the copy.
	Sealed string
	// Rule is the rule that withheld it; "" if it was delivered.
	Rule string
	// Form is the form it was delivered in.
	Form string
}

// Settle records s in the patient index (patientindex.Outcome), durably
// before it returns, so that corrections and updates follow what the
// recipient has, not what it was routed: a recipient withheld every copy
// it was routed on an encounter or care plan counts as withheld it (a
// later update of that encounter does not reach it, nor a correction), and
// one that received a copy only in the notification-only form is sent a
// correction of it in no fuller form. A copy the index holds no receipt of
// (a notice, a copy of an event with no reference, a reference since
// forgotten) settles nothing.
func (r *Router) Settle(ctx context.Context, s Settlement) error {
	if s.Key == "" || s.Recipient == "" || s.EventID == "" {
		return nil
	}
	if s.Rule == "" && s.Form != string(event.FormNotification) {
		return nil // delivered as routed, or fuller: nothing less to record
	}
	ref := ""
	if s.Sealed != "" {
		sealed, err := r.cfg.Sealer.Open(s.Sealed)
		if err != nil {
			return err
		}
		if sealed.Request.Event.Type == event.TypeRegistrationEnded {
			return nil // a notice: no receipt
		}
		ref = sealed.Ref // "" in copies sealed before it was: found by id
	}
	if err := r.cfg.Index.Sync(ctx); err != nil {
		return problem.Wrap(problem.Unavailable, "catching up with the patient index", err)
	}
	for _, k := range r.cfg.Index.Family(s.Key) {
		rec := r.cfg.Index.Get(k)
		for name, f := range rec.Refs {
			if ref != "" && name != ref {
				continue
			}
			rc := f.Recipients[s.Recipient]
			if rc == nil {
				continue
			}
			if _, _, ok := rc.Find(s.Source, s.EventID); !ok && (ref == "" || len(rc.Copies) > 0) {
				continue
			}
			o := patientindex.Outcome{Patient: k, Ref: name, Recipient: s.Recipient, Source: s.Source, EventID: s.EventID,
				Rule: s.Rule, Form: s.Form, Time: r.now().UTC()}
			if err := r.cfg.Index.Settle(ctx, o); err != nil {
				return problem.Wrap(problem.Unavailable, "recording in the patient index what became of a copy", err)
			}
			return nil
		}
	}
	return nil
}
