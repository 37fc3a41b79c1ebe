// Package deliver consumes one recipient's outbox, in order, and hands each
// copy to the recipient's sink connector, once the patient's consent has
// been re-checked at that moment.
//
// Outcomes: delivered → audited (with the form delivered and the directive
// versions that permitted it) and committed; withheld by the re-check →
// not sent, the patient index told (Rechecker.Settle: the recipient does
// not have it, so no update or correction of it follows it there), audited
// as withheld with the rule, committed; delivered in a narrower form than
// routed → the index told that form, so that a correction of it is no
// fuller; permanently
// rejected → written to carehub.dlq with its reason, audited, committed,
// and delivery goes on; anything else (the recipient is down, the consent
// store cannot answer, the hub is stopping) → not committed, redelivered
// later in the same order. A recipient that is down delays only its own
// outbox: each recipient has its own consumer group and goroutines.
//
// # Delivery and its audit are separate steps
//
// Once a recipient has accepted a copy, nothing sends it again for the
// sake of a record: a write that fails after the handover (the outcome's
// audit record, a dead letter) is retried in process, with capped backoff
// (WriteRetryMin to WriteRetryMax), until it succeeds, while the outbox
// waits behind it. Logs say which record, the event id, the attempt and
// the error's class, never a payload.
//
// The audit trail never holds less than what was disclosed. Before a copy
// is handed to a push recipient's sink, a delivery record with outcome
// "sending" is written (write ahead: it is durable before the first byte
// can leave), and the outcome record follows. If the hub stops, or
// crashes, after the handover and before the outcome is written, the
// sending record stands: the copy may have reached the recipient, and the
// trail says so. The copy is then not committed and is delivered again
// after the restart (the recipient drops the duplicate by its delivery id,
// the webhook-id), and its outcome is written then; if the patient's
// directives withhold it by then, the withheld record follows the sending
// record, and the disclosure report shows both. A sending record costs one
// more write per handover; a hub that cannot write it sends nothing (the
// copy waits, as for a consent store that cannot answer). A pull feed's
// append discloses nothing (its reads are audited before they are
// answered): it writes no sending record.
//
// # Stopping
//
// The deliverer's stop context (and the copy's own, which ends when its
// partition stops) ends the sink's Deliver context, with the meaning the
// connector contract gives it: an attempt under way finishes and counts,
// none starts after. A copy delivered during the stop is audited and
// committed like any other.
//
// # The re-check
//
// Gate is the hub's connector.Consent. Just before a copy is handed to the
// sink, Handle asks it; the sink asks it again before every retry (the
// connector contract), and a sink that serves copies later (a pull feed)
// asks it when it serves them. Gate decides the copy's sealed routing
// decision again with the patient's directives as they are then
// (route.Router.Recheck: the same decision function, after the same
// freshness barrier as routing): a copy now denied is not sent; a copy now
// under the notification-only obligation goes in that form.
package deliver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Rechecker decides a copy again (route.Router implements it).
type Rechecker interface {
	Recheck(ctx context.Context, key, sealed string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error)
	Narrow(body []byte) ([]byte, error)
	// Settle records in the patient index what became of a copy when that
	// is less than routing recorded (route.Router.Settle).
	Settle(ctx context.Context, s route.Settlement) error
}

// RuleUndecidable is the rule of a copy withheld because it carries no
// routing decision to re-check (a copy written by something other than
// the router).
const RuleUndecidable = "recheck:no-routing-decision"

// Gate is the hub's connector.Consent. It is built before the router (the
// sinks that hold it are built first) and answers with an error, so that
// nothing is sent, until Set gives it the router.
type Gate struct {
	r atomic.Pointer[Rechecker]
}

// Set gives the gate the router it re-checks with.
func (g *Gate) Set(r Rechecker) { g.r.Store(&r) }

// Recheck implements connector.Consent.
func (g *Gate) Recheck(ctx context.Context, d connector.Delivery) (connector.Verdict, error) {
	v, _, err := g.recheck(ctx, d)
	return v, err
}

func (g *Gate) recheck(ctx context.Context, d connector.Delivery) (connector.Verdict, []audit.DirectiveVersion, error) {
	if d.Form == string(event.FormNotice) && d.Decision == "" {
		// A content-free notice: nothing about the patient to withhold.
		return connector.Verdict{Permit: true, Body: d.Body, Form: d.Form, Rule: route.RuleWithheldNotice}, nil, nil
	}
	if d.Decision == "" {
		return connector.Verdict{Permit: false, Rule: RuleUndecidable}, nil, nil
	}
	p := g.r.Load()
	if p == nil {
		return connector.Verdict{}, nil, problem.New(problem.Unavailable, "the consent re-check is not ready")
	}
	r := *p
	dec, _, versions, err := r.Recheck(ctx, d.PatientRef, d.Decision)
	if err != nil {
		return connector.Verdict{}, nil, err
	}
	if !dec.Permitted() {
		return connector.Verdict{Permit: false, Rule: dec.Rule, Directive: dec.DirectiveID}, versions, nil
	}
	v := connector.Verdict{Permit: true, Body: d.Body, Form: d.Form, Rule: dec.Rule, Directive: dec.DirectiveID}
	if dec.Has(consent.NotificationOnly) && d.Form == string(event.FormFull) {
		thin, err := r.Narrow(d.Body)
		if err != nil {
			return connector.Verdict{}, nil, problem.Wrap(problem.Internal, "making the notification-only form of a copy", err)
		}
		v.Body, v.Form = thin, string(event.FormNotification)
	}
	return v, versions, nil
}

// settle tells the router's patient index that dl was withheld (rule) or
// delivered in a narrower form than it was routed in (form).
func (g *Gate) settle(ctx context.Context, dl connector.Delivery, rule, form string) error {
	if dl.Decision == "" || dl.PatientRef == "" {
		return nil // not a copy the router recorded a receipt of
	}
	p := g.r.Load()
	if p == nil {
		return problem.New(problem.Unavailable, "the consent re-check is not ready")
	}
	return (*p).Settle(ctx, route.Settlement{Key: dl.PatientRef, Recipient: dl.Recipient, Source: dl.EventSource, EventID: dl.EventID,
		Sealed: dl.Decision, Rule: rule, Form: form})
}

var _ connector.Consent = (*Gate)(nil)

// Observer is told of each delivery outcome (hub/metrics counts them). It
// must not block.
type Observer interface {
	// Outcome: a copy for recipient ended as audit.Delivered,
	// audit.Withheld or audit.DeadLettered (told once the outcome is
	// audited), or was Postponed (a transient failure: it is redelivered).
	Outcome(recipient, outcome string)
	// Latency: a copy was handed to recipient d after the hub accepted its
	// event (told for copies that carry topic.MetaAccepted).
	Latency(recipient string, d time.Duration)
}

// Postponed is the Observer outcome of a copy not delivered yet: the
// recipient is down, consent could not be re-checked, or the hub is
// stopping. It is delivered later, in order.
const Postponed = "postponed"

type noObserver struct{}

func (noObserver) Outcome(string, string)        {}
func (noObserver) Latency(string, time.Duration) {}

// Deliverer delivers one recipient's outbox.
type Deliverer struct {
	recipient string
	sink      connector.Sink
	gate      *Gate
	pub       message.Publisher
	log       *zap.Logger
	obs       Observer
	stop      context.Context // stops in-flight deliveries when the hub stops (see connector.Sink)
	now       func() time.Time
	// push: the sink hands copies to the recipient when it delivers them
	// (not a pull feed, whose reads are audited as they are served): a
	// sending record precedes every handover.
	push bool
	// writeRetry paces the retries of a record write (audit, dead letter).
	writeRetry connector.Retry
}

// Bounds of the retries of a record write.
const (
	WriteRetryMin = 100 * time.Millisecond
	WriteRetryMax = 5 * time.Second
)

// New builds a Deliverer. The end of stop stops in-flight deliveries: an
// attempt under way finishes, none starts after, and a copy not delivered
// is redelivered after restart.
func New(stop context.Context, recipient string, sink connector.Sink, gate *Gate, pub message.Publisher, log *zap.Logger) (*Deliverer, error) {
	if recipient == "" || sink == nil || gate == nil || pub == nil || log == nil || stop == nil {
		return nil, errors.New("deliver: recipient, sink, gate, publisher, logger and stop context are required")
	}
	_, pull := sink.(connector.HTTPSink)
	return &Deliverer{recipient: recipient, sink: sink, gate: gate, pub: pub, stop: stop,
		log: log.With(zap.String("recipient", recipient)), obs: noObserver{}, now: time.Now, push: !pull,
		writeRetry: connector.Retry{MinBackoff: WriteRetryMin, MaxBackoff: WriteRetryMax}}, nil
}

// Observe makes d tell o of every outcome. Call it before d is in use.
func (d *Deliverer) Observe(o Observer) *Deliverer {
	if o != nil {
		d.obs = o
	}
	return d
}

// maxReshapes bounds how often one copy is prepared again because its
// form changed while it was being delivered.
const maxReshapes = 3

// Handle is the watermill handler for the recipient's outbox topic.
func (d *Deliverer) Handle(msg *message.Message) error {
	ctx, cancel := context.WithCancel(msg.Context())
	defer cancel()
	defer context.AfterFunc(d.stop, cancel)()

	key := msg.Metadata.Get(topic.MetaKey)
	dl := connector.Delivery{
		EventID:     msg.Metadata.Get(topic.MetaEventID),
		EventSource: msg.Metadata.Get(topic.MetaSource),
		EventType:   msg.Metadata.Get(topic.MetaEventType),
		Recipient:   d.recipient,
		PatientRef:  key,
		Body:        msg.Payload,
		Form:        msg.Metadata.Get(topic.MetaForm),
		Decision:    msg.Metadata.Get(topic.MetaDecision),
	}
	if dl.EventSource == "" || dl.EventID == "" {
		// A copy without the headers (written by another producer): the
		// event itself names its source and id, which together identify it.
		ev, err := event.Unmarshal(msg.Payload)
		if err != nil {
			return problem.Wrap(problem.Internal, "decoding an outbox copy without ce_source or ce_id", err)
		}
		dl.EventID, dl.EventSource = ev.ID, ev.Source
		if dl.EventType == "" {
			dl.EventType = ev.Type
		}
	}
	if dl.Form == "" {
		dl.Form = string(event.FormFull)
	}
	if dl.EventType == event.TypeWithheldNotice {
		dl.PatientRef = "" // no pseudonym goes with a content-free notice
	}
	rec := audit.Record{
		Kind: audit.KindDelivery, EventID: dl.EventID, EventType: dl.EventType, About: msg.Metadata.Get(topic.MetaAbout),
		Publisher: strings.TrimPrefix(dl.EventSource, event.SourcePrefix),
		Patient:   key, Recipient: d.recipient, Basis: msg.Metadata.Get(topic.MetaBasis),
	}
	for reshapes := 0; ; reshapes++ {
		v, versions, err := d.gate.recheck(ctx, dl)
		if err != nil {
			d.log.Info("delivery postponed: consent could not be re-checked", zap.String("event_id", dl.EventID), logging.Err(err))
			d.obs.Outcome(d.recipient, Postponed)
			return problem.Wrap(problem.Unavailable, "re-checking consent before delivery", err)
		}
		rec.DirectiveVersions = versions
		if !v.Permit {
			return d.withheld(ctx, dl, rec, v.Rule, v.Directive)
		}
		send := dl
		send.Body, send.Form = v.Body, v.Form
		if ctx.Err() != nil {
			return problem.Wrap(problem.Unavailable, "delivery postponed: the hub is stopping", ctx.Err())
		}
		if d.push {
			// Write ahead: from the first attempt on, the copy may reach
			// the recipient, so the audit trail says so before it can.
			sending := rec
			sending.Time, sending.Outcome, sending.Form = d.now().UTC(), audit.Sending, send.Form
			if err := d.writeAudit(ctx, sending); err != nil {
				return err // nothing sent: the copy is redelivered
			}
		}
		// A stop while the sink delivers lets the attempt under way finish
		// (connector.Sink): say why the drain waits.
		stopping := context.AfterFunc(ctx, func() {
			d.log.Info("stopping: letting the delivery attempt under way finish", zap.String("event_id", dl.EventID))
		})
		out, err := d.sink.Deliver(ctx, send)
		stopping()
		rec.Time, rec.Status, rec.Attempts, rec.Form = d.now().UTC(), out.Status, out.Attempts, send.Form
		if err == nil {
			if at, perr := time.Parse(time.RFC3339Nano, msg.Metadata.Get(topic.MetaAccepted)); perr == nil {
				d.obs.Latency(d.recipient, max(rec.Time.Sub(at), 0))
			}
			rec.Outcome = audit.Delivered
			d.log.Info("delivered", zap.String("event_id", dl.EventID), zap.String("event_type", dl.EventType),
				zap.String("form", send.Form), zap.Int("attempts", out.Attempts), zap.Int("status", out.Status))
			if send.Form == string(event.FormNotification) && dl.Form == string(event.FormFull) {
				// Narrowed at delivery: a correction of it must be no
				// fuller (route.Router.Settle).
				if err := d.settle(ctx, dl, "", send.Form); err != nil {
					return err
				}
			}
			// The recipient has it: whatever happens now, it is not sent
			// again for the audit's sake. The write is retried until it
			// succeeds or the hub stops (then the sending record stands,
			// and the copy is redelivered after restart).
			return d.writeAudit(ctx, rec)
		}
		if rule, ok := connector.IsWithheld(err); ok {
			// The sink's re-check withheld it between attempts: name the
			// directive and versions that decided, as they stand now.
			directive := ""
			if again, versions, err := d.gate.recheck(ctx, dl); err == nil && !again.Permit && again.Rule == rule {
				directive, rec.DirectiveVersions = again.Directive, versions
			}
			return d.withheld(ctx, dl, rec, rule, directive)
		}
		if errors.Is(err, connector.ErrConsentChanged) && reshapes < maxReshapes {
			continue
		}
		reason, permanent := connector.IsPermanent(err)
		if !permanent {
			d.log.Info("delivery postponed", zap.String("event_id", dl.EventID),
				zap.Int("attempts", out.Attempts), logging.Err(err))
			d.obs.Outcome(d.recipient, Postponed)
			return problem.Wrap(problem.Unavailable, "delivery postponed", err)
		}
		return d.deadLetter(ctx, rec, send, reason, out)
	}
}

// withheld audits a copy the re-check withheld: it was not sent. First the
// patient index learns that the recipient does not have it (so that no
// update or correction of it follows it there), durably, before the copy
// can be committed past.
func (d *Deliverer) withheld(ctx context.Context, dl connector.Delivery, rec audit.Record, rule, directive string) error {
	rec.Time, rec.Outcome, rec.Rule, rec.Directive, rec.Effect = d.now().UTC(), audit.Withheld, rule, directive, string(consent.Deny)
	d.log.Info("withheld at delivery", zap.String("event_id", rec.EventID), zap.String("rule", rule))
	if err := d.settle(ctx, dl, rule, ""); err != nil {
		return err
	}
	return d.writeAudit(ctx, rec)
}

// settle records what became of dl in the patient index (Gate.settle),
// retried in process like any record write (write): the copy is not
// committed past until it succeeds.
func (d *Deliverer) settle(ctx context.Context, dl connector.Delivery, rule, form string) error {
	return d.retry(ctx, "patient index outcome", dl.EventID, func() error { return d.gate.settle(ctx, dl, rule, form) })
}

func (d *Deliverer) deadLetter(ctx context.Context, rec audit.Record, sent connector.Delivery, reason string, out connector.Outcome) error {
	rec.Outcome, rec.Reason = audit.DeadLettered, reason
	dead := audit.DeadLetter{
		Time: rec.Time, Recipient: d.recipient, Publisher: rec.Publisher, EventID: sent.EventID, EventType: sent.EventType,
		Patient: rec.Patient, Reason: reason, Status: out.Status, Attempts: out.Attempts, Event: json.RawMessage(sent.Body),
		Decision: sent.Decision, Form: sent.Form, Basis: rec.Basis,
	}
	if !json.Valid(sent.Body) || bytes.TrimSpace(sent.Body) == nil {
		dead.Event = nil
	}
	if out.Answer != "" && json.Valid([]byte(out.Answer)) {
		dead.Answer = json.RawMessage(out.Answer)
	}
	b, _ := json.Marshal(dead)
	dm := message.NewMessage(watermill.NewUUID(), b)
	dm.Metadata.Set(topic.MetaKey, d.recipient)
	dm.Metadata.Set(topic.MetaEventID, sent.EventID)
	dm.Metadata.Set(topic.MetaRecipient, d.recipient)
	if err := d.write(ctx, topic.DLQ, "dead letter", sent.EventID, dm); err != nil {
		return err
	}
	d.log.Warn("dead-lettered", zap.String("event_id", sent.EventID), zap.String("reason", reason), zap.Int("status", out.Status))
	return d.writeAudit(ctx, rec)
}

// writeAudit writes rec to carehub.audit (see write).
func (d *Deliverer) writeAudit(ctx context.Context, rec audit.Record) error {
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, rec.Patient)
	m.Metadata.Set(topic.MetaEventID, rec.EventID)
	if err := d.write(ctx, topic.Audit, "audit record ("+rec.Outcome+")", rec.EventID, m); err != nil {
		return err
	}
	if rec.Outcome != audit.Sending {
		d.obs.Outcome(d.recipient, rec.Outcome)
	}
	return nil
}

// write publishes m to topic, retrying in process with capped backoff until
// it succeeds or ctx ends (the hub stops; it is tried once even then): a
// record that cannot be written never sends a copy to its recipient again.
// On a stop it returns an error, and the copy is redelivered after restart.
// Logs name the record, the event id, the attempt and the error's class.
func (d *Deliverer) write(ctx context.Context, topic, what, eventID string, m *message.Message) error {
	return d.retry(ctx, what, eventID, func() error { return d.pub.Publish(topic, m) })
}

// retry runs do until it succeeds or ctx ends (see write).
func (d *Deliverer) retry(ctx context.Context, what, eventID string, do func() error) error {
	for n := 1; ; n++ {
		err := do()
		if err == nil {
			if n > 1 {
				d.log.Info("written after retries", zap.String("record", what), zap.String("event_id", eventID), zap.Int("attempts", n))
			}
			return nil
		}
		stopped := func() error {
			d.log.Warn("writing failed; the hub is stopping: the copy will be delivered again after restart",
				zap.String("record", what), zap.String("event_id", eventID), zap.Int("attempt", n), logging.Err(err))
			return problem.Wrap(problem.Unavailable, "writing the "+what+" (the hub stopped first)", err)
		}
		if ctx.Err() != nil {
			return stopped()
		}
		wait := retry.Delay(d.writeRetry, n)
		d.log.Warn("writing failed; retrying", zap.String("record", what), zap.String("event_id", eventID),
			zap.Int("attempt", n), zap.Duration("wait", wait), logging.Err(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return stopped()
		case <-t.C:
		}
	}
}
