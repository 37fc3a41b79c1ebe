// Package deliver consumes one recipient's outbox, in order, and hands each
// event to the recipient's sink connector.
//
// Outcomes: delivered → audited and committed; permanently rejected → written
// to carehub.dlq with its reason, audited, committed, and delivery goes on;
// anything else (the recipient is down, the hub is stopping) → not committed,
// redelivered later in the same order. A recipient that is down delays only
// its own outbox: each recipient has its own consumer group and goroutines.
package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Deliverer delivers one recipient's outbox.
type Deliverer struct {
	recipient string
	sink      connector.Sink
	pub       message.Publisher
	log       *zap.Logger
	stop      context.Context // ends in-flight retries when the hub stops
	now       func() time.Time
}

// New builds a Deliverer. stop ends in-flight deliveries (they are then
// redelivered after restart).
func New(stop context.Context, recipient string, sink connector.Sink, pub message.Publisher, log *zap.Logger) (*Deliverer, error) {
	if recipient == "" || sink == nil || pub == nil || log == nil || stop == nil {
		return nil, errors.New("deliver: recipient, sink, publisher, logger and stop context are required")
	}
	return &Deliverer{recipient: recipient, sink: sink, pub: pub, stop: stop,
		log: log.With(zap.String("recipient", recipient)), now: time.Now}, nil
}

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
	rec := audit.Record{
		Kind: audit.KindDelivery, EventID: dl.EventID, EventType: dl.EventType,
		Publisher: strings.TrimPrefix(dl.EventSource, event.SourcePrefix),
		Patient:   key, Recipient: d.recipient, Basis: msg.Metadata.Get(topic.MetaBasis),
	}
	out, err := d.sink.Deliver(ctx, dl)
	rec.Time, rec.Status, rec.Attempts = d.now().UTC(), out.Status, out.Attempts
	if err == nil {
		rec.Outcome = audit.Delivered
		d.log.Info("delivered", zap.String("event_id", dl.EventID), zap.String("event_type", dl.EventType),
			zap.Int("attempts", out.Attempts), zap.Int("status", out.Status))
		return d.publishAudit(rec)
	}
	reason, permanent := connector.IsPermanent(err)
	if !permanent {
		d.log.Info("delivery postponed", zap.String("event_id", dl.EventID),
			zap.Int("attempts", out.Attempts), logging.Err(err))
		return problem.Wrap(problem.Unavailable, "delivery postponed", err)
	}
	rec.Outcome, rec.Reason = audit.DeadLettered, reason
	dead := audit.DeadLetter{
		Time: rec.Time, Recipient: d.recipient, EventID: dl.EventID, EventType: dl.EventType,
		Patient: key, Reason: reason, Status: out.Status, Attempts: out.Attempts, Event: json.RawMessage(msg.Payload),
	}
	if out.Answer != "" && json.Valid([]byte(out.Answer)) {
		dead.Answer = json.RawMessage(out.Answer)
	}
	b, _ := json.Marshal(dead)
	dm := message.NewMessage(watermill.NewUUID(), b)
	dm.Metadata.Set(topic.MetaKey, d.recipient)
	dm.Metadata.Set(topic.MetaEventID, dl.EventID)
	dm.Metadata.Set(topic.MetaRecipient, d.recipient)
	if err := d.pub.Publish(topic.DLQ, dm); err != nil {
		return problem.Wrap(problem.Unavailable, "publishing a dead letter", err)
	}
	d.log.Warn("dead-lettered", zap.String("event_id", dl.EventID), zap.String("reason", reason), zap.Int("status", out.Status))
	return d.publishAudit(rec)
}

func (d *Deliverer) publishAudit(rec audit.Record) error {
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, rec.Patient)
	m.Metadata.Set(topic.MetaEventID, rec.EventID)
	if err := d.pub.Publish(topic.Audit, m); err != nil {
		return problem.Wrap(problem.Unavailable, "publishing an audit record", err)
	}
	return nil
}
