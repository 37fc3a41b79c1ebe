// Package route is the hub's router: it consumes carehub.events, finds the
// subscriptions each event matches, asks the consent Decider for a decision
// per candidate recipient, produces one copy per permitted recipient to that
// recipient's outbox, and writes one audit record per decision.
//
// Ack contract: Handle returns nil only after every outbox copy and every
// audit record is acknowledged by Kafka; only then is the event's offset
// committed. Any failure, a consent error included, returns an error: the
// event is redelivered, never skipped (fail closed).
//
// A recipient that matches an event on more than one basis receives it once:
// the first permitted basis, in the order registered GP, then discharge
// destination, decides the copy; every decision is still audited.
package route

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Directives supplies a patient's current directives, by the patient's
// keyed pseudonym. Sync returns once every change acknowledged before the
// call is visible to For. Both return an error when they cannot answer (not
// loaded, broker unreachable): the router then fails closed.
type Directives interface {
	Sync(ctx context.Context) error
	For(patient string) ([]consent.Directive, error)
}

// NoDirectives is a Directives with none recorded for anyone.
type NoDirectives struct{}

// Sync implements Directives.
func (NoDirectives) Sync(context.Context) error { return nil }

// For implements Directives.
func (NoDirectives) For(string) ([]consent.Directive, error) { return nil, nil }

// Router routes events.
type Router struct {
	subs       atomic.Pointer[Subscriptions]
	decider    consent.Decider
	directives Directives
	pub        message.Publisher
	log        *zap.Logger
	now        func() time.Time
}

// New builds a Router.
func New(subs *Subscriptions, d consent.Decider, dirs Directives, pub message.Publisher, log *zap.Logger) (*Router, error) {
	if subs == nil || d == nil || dirs == nil || pub == nil || log == nil {
		return nil, errors.New("route: subscriptions, decider, directives, publisher and logger are required")
	}
	r := &Router{decider: d, directives: dirs, pub: pub, log: log, now: time.Now}
	r.subs.Store(subs)
	return r, nil
}

// SetSubscriptions replaces the subscriptions events are matched against
// (patient lists reloaded, say). An event being decided keeps the ones it
// started with; every event decided after the call uses subs.
func (r *Router) SetSubscriptions(subs *Subscriptions) {
	if subs != nil {
		r.subs.Store(subs)
	}
}

// Plan is what routing one event produces, before it is published.
type Plan struct {
	Outbox map[string][]*message.Message // by topic
	Audit  []*message.Message
}

// TopicsPublisher publishes to several topics in one produce. kafkawm's
// Publisher implements it; with it the router waits for one round trip per
// event instead of one per topic.
type TopicsPublisher interface {
	PublishTopics(byTopic map[string][]*message.Message) error
}

// Handle is the watermill handler for carehub.events.
func (r *Router) Handle(msg *message.Message) error {
	plan, err := r.Plan(msg)
	if err != nil {
		return err
	}
	if len(plan.Audit) == 0 && len(plan.Outbox) == 0 {
		return nil
	}
	if tp, ok := r.pub.(TopicsPublisher); ok {
		all := make(map[string][]*message.Message, len(plan.Outbox)+1)
		for t, msgs := range plan.Outbox {
			all[t] = msgs
		}
		all[topic.Audit] = plan.Audit
		if err := tp.PublishTopics(all); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing outbox copies and audit records", err)
		}
		return nil
	}
	for t, msgs := range plan.Outbox {
		if err := r.pub.Publish(t, msgs...); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing to an outbox", err)
		}
	}
	if err := r.pub.Publish(topic.Audit, plan.Audit...); err != nil {
		return problem.Wrap(problem.Unavailable, "publishing audit records", err)
	}
	return nil
}

// Verdict is the decision for one candidate recipient.
type Verdict struct {
	Subscription *Subscription
	Decision     consent.Decision
	// Copy is true for the one permitted verdict per recipient that
	// produces the outbox copy.
	Copy bool
}

// Decide finds the candidates for ev about the patient with pseudonym key
// and decides each, after catching up with every consent change
// acknowledged before the call. It publishes nothing.
func (r *Router) Decide(ctx context.Context, ev *event.Event, key string) ([]Verdict, error) {
	cands := r.subs.Load().Match(ev, key)
	if len(cands) == 0 {
		return nil, nil
	}
	if err := r.directives.Sync(ctx); err != nil {
		return nil, problem.Wrap(problem.Unavailable, "catching up with consent directives", err)
	}
	dirs, err := r.directives.For(key)
	if err != nil {
		return nil, problem.Wrap(problem.Unavailable, "reading consent directives", err)
	}
	facts := consent.Event{
		ID: ev.ID, Type: ev.Type, Publisher: ev.Publisher, Time: ev.Time,
		Labels: ev.Labels, HasDocument: ev.HasDocument, Confidential: ev.Confidential,
		GPPractice: ev.Patient.GPPractice, DischargeDestination: ev.DischargeDestination,
	}
	out := make([]Verdict, 0, len(cands))
	sent := map[string]bool{}
	for _, c := range cands {
		sub := c.Subscription
		d, err := r.decider.Decide(ctx, consent.Request{Event: facts, Recipient: sub.Recipient, Basis: sub.Basis, Directives: dirs})
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "deciding consent", err)
		}
		if d.Rule == "" || (d.Effect != consent.Permit && d.Effect != consent.Deny) {
			return nil, problem.New(problem.Internal, "consent decision without an effect or a rule")
		}
		v := Verdict{Subscription: sub, Decision: d}
		if d.Permitted() && !sent[sub.Recipient.ODS] {
			v.Copy, sent[sub.Recipient.ODS] = true, true
		}
		out = append(out, v)
	}
	return out, nil
}

// Plan decides where msg goes without publishing anything.
func (r *Router) Plan(msg *message.Message) (*Plan, error) {
	key := msg.Metadata.Get(topic.MetaKey)
	ev, err := event.Unmarshal(msg.Payload)
	if err != nil {
		// Ingest validated it; an undecodable event here is a bug or a
		// foreign producer. Refuse it loudly and retry: never skip.
		return nil, problem.Wrap(problem.Internal, "decoding a routed event", err)
	}
	verdicts, err := r.Decide(msg.Context(), ev, key)
	if err != nil {
		return nil, err
	}
	plan := &Plan{Outbox: map[string][]*message.Message{}}
	var thin []byte // the notification-only body, made at most once per event
	for _, v := range verdicts {
		sub, d := v.Subscription, v.Decision
		rec := audit.Record{
			Time: r.now().UTC(), Kind: audit.KindDecision,
			EventID: ev.ID, EventType: ev.Type, Publisher: ev.Publisher, Patient: key,
			Recipient: sub.Recipient.ODS, Subscription: sub.ID, Basis: string(sub.Basis),
			Effect: string(d.Effect), Rule: d.Rule, Directive: d.DirectiveID,
		}
		for _, o := range d.Obligations {
			rec.Obligations = append(rec.Obligations, string(o))
		}
		plan.Audit = append(plan.Audit, auditMessage(rec, key))
		if !v.Copy {
			continue
		}
		body := msg.Payload
		if d.Has(consent.NotificationOnly) {
			if thin == nil {
				if thin, err = ev.NotificationOnly(); err != nil {
					return nil, problem.Wrap(problem.Internal, "removing documents for a notification-only copy", err)
				}
			}
			body = thin
		}
		out := message.NewMessage(ev.ID, body)
		for _, k := range []string{topic.MetaKey, topic.MetaSpecVersion, topic.MetaEventID, topic.MetaEventType, topic.MetaSource, "content-type"} {
			if val := msg.Metadata.Get(k); val != "" {
				out.Metadata.Set(k, val)
			}
		}
		out.Metadata.Set(topic.MetaRecipient, sub.Recipient.ODS)
		out.Metadata.Set(topic.MetaBasis, string(sub.Basis))
		out.Metadata.Set(topic.MetaRule, d.Rule)
		t := topic.Outbox(sub.Recipient.ODS)
		plan.Outbox[t] = append(plan.Outbox[t], out)
	}
	r.log.Debug("routed", zap.String("event_id", ev.ID), zap.String("event_type", ev.Type),
		zap.Int("verdicts", len(verdicts)), zap.Int("outboxes", len(plan.Outbox)))
	return plan, nil
}

func auditMessage(rec audit.Record, key string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, key)
	m.Metadata.Set(topic.MetaEventID, rec.EventID)
	return m
}
