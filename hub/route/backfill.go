package route

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
)

// Outcomes of deciding a past event again for one recipient (Backfill).
const (
	// BackfillSent: a copy (or a content-free notice) goes to the
	// recipient's outbox.
	BackfillSent = "sent"
	// BackfillWithheld: the recipient is a candidate, and consent as of
	// now denies every copy; the decisions are audited.
	BackfillWithheld = "withheld"
	// BackfillNotForRecipient: the event matches none of the recipient's
	// subscriptions (and it received nothing on the event's encounter).
	BackfillNotForRecipient = "not-for-recipient"
	// BackfillAlreadyReceived: the recipient was already sent this event
	// (or its notice): nothing is written.
	BackfillAlreadyReceived = "already-received"
)

// Received says whether a recipient was already sent something: a copy
// of the event (publisher, id), or, with notice set, a content-free
// withheld notice about it.
type Received func(publisher, eventID string, notice bool) bool

// HasRecipient reports whether ods is a recipient the router routes to.
func (r *Router) HasRecipient(ods string) bool { return len(r.subs.Load().Of(ods)) > 0 }

// Backfill decides a past event (a record of carehub.events) again for one
// recipient only, by the same code as live routing (Decide: the
// subscriptions as they are now, the patient's directives as they are now,
// the follow-up context of the patient index), and plans what goes to that
// recipient and nowhere else: its copy or withheld notice, the audit
// record of each of its decisions (marked with the operator and the action
// backfill), and, for an event on an encounter or care plan, the receipt
// (or the withholding) in the patient index, so that a later correction
// follows it. Nothing else of the patient's index record changes (its GP,
// merges, labels belong to live routing), and no registration-ended
// notice is issued: that tells of a change of GP when it happens.
//
// When received says the recipient already had the copy (or notice) the
// plan would make, the outcome is BackfillAlreadyReceived and the plan is
// empty. It publishes nothing: the caller publishes the plan with
// PublishPlan, one event at a time (the next event of the patient is
// decided with the index record this one writes).
func (r *Router) Backfill(ctx context.Context, msg *message.Message, ods, actor string, received Received) (*Plan, string, error) {
	key := msg.Metadata.Get(topic.MetaKey)
	ev, err := event.Unmarshal(msg.Payload)
	if err != nil {
		return nil, "", problem.Wrap(problem.Internal, "decoding a past event", err)
	}
	dec, err := r.Decide(ctx, ev, key)
	if err != nil {
		return nil, "", err
	}
	var mine []Verdict
	for _, v := range dec.Verdicts {
		if v.Subscription.Recipient.ODS == ods && v.Notice != NoticeRegistrationEnded {
			mine = append(mine, v)
		}
	}
	empty := &Plan{Outbox: map[string][]*message.Message{}}
	if len(mine) == 0 {
		return empty, BackfillNotForRecipient, nil
	}
	outcome := BackfillWithheld
	for _, v := range mine {
		if v.Copy {
			if received(ev.Publisher, ev.ID, v.Notice == NoticeWithheld) {
				return empty, BackfillAlreadyReceived, nil
			}
			outcome = BackfillSent
		}
	}
	dec.Verdicts = mine
	dec.Updates = r.backfillIndex(dec, ods)
	plan, err := r.planOf(msg, ev, key, dec, func(rec *audit.Record) {
		rec.Actor, rec.Action = actor, audit.ActionBackfill
	})
	if err != nil {
		return nil, "", err
	}
	return plan, outcome, nil
}

// backfillIndex is the patient index record to write for a backfill: the
// patient's record as it is now, with the recipient's receipt (or its
// withholding) on the event's reference, and nothing else changed.
func (r *Router) backfillIndex(dec *Decided, ods string) map[string]patientindex.Record {
	ev := dec.Event
	if ev.Ref == "" {
		return nil
	}
	root := dec.Family[0]
	rec := r.cfg.Index.Get(root)
	f := rec.Refs[ev.Ref]
	if f == nil {
		f = &patientindex.Ref{Last: r.now().UTC()}
		if rec.Refs == nil {
			rec.Refs = map[string]*patientindex.Ref{}
		}
		rec.Refs[ev.Ref] = f
	}
	changed := false
	for _, v := range dec.Verdicts {
		if v.Notice != "" {
			continue
		}
		if v.Copy {
			f.Receive(ods, string(v.Subscription.Basis), string(v.Form), ev.Type, ev.Source, ev.ID)
			changed = true
		}
	}
	if !changed && f.Recipients[ods] == nil {
		for _, v := range dec.Verdicts {
			if v.Notice == "" && !v.Decision.Permitted() && !followUpRule(v.Decision.Rule) {
				f.Withhold(ods, v.Decision.Rule)
				changed = true
			}
		}
	}
	if !changed {
		return nil
	}
	rec.Seq++
	return map[string]patientindex.Record{root: rec}
}

// PublishPlan writes a plan as Handle does (copies, audit and index
// records in one produce) and applies its index records.
func (r *Router) PublishPlan(plan *Plan) error {
	if len(plan.Audit) == 0 && len(plan.Outbox) == 0 && len(plan.Index) == 0 {
		return nil
	}
	all := make(map[string][]*message.Message, len(plan.Outbox)+2)
	for t, msgs := range plan.Outbox {
		all[t] = msgs
	}
	if len(plan.Audit) > 0 {
		all[topic.Audit] = plan.Audit
	}
	if len(plan.Index) > 0 {
		all[topic.Patients] = plan.Index
	}
	if tp, ok := r.cfg.Publisher.(TopicsPublisher); ok {
		if err := tp.PublishTopics(all); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing outbox copies, audit and index records", err)
		}
	} else {
		for _, t := range sortedKeys(all) {
			if err := r.cfg.Publisher.Publish(t, all[t]...); err != nil {
				return problem.Wrap(problem.Unavailable, "publishing "+t, err)
			}
		}
	}
	for k, rec := range plan.commit {
		r.cfg.Index.Commit(k, rec)
	}
	return nil
}
