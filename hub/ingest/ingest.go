// Package ingest turns validated input from source connectors into durable
// events on carehub.events. It implements connector.Ingest.
//
// Each event is validated against its schema and the code rules (event
// package), checked to be published by the authenticated organisation
// itself, keyed by the keyed pseudonym of the patient's NHS number (so one
// patient's events stay in one partition, in order, and no raw identifier
// reaches a key or a header), and produced with acks from all in-sync
// replicas. Accept returns only after that acknowledgement.
//
// # Event time
//
// The event's time (CloudEvents time) decides which of the patient's
// directive periods apply, so it is bounded: an event dated more than
// Options.MaxFutureSkew after now is refused (problem.Invalid at /time,
// rule event-time-future: HTTP 422, HL7 AE); an event dated more than
// Options.FlagOlderThan before now is accepted (a PAS catching up after an
// outage is normal) and an audit record of kind received with the flag
// event-time-old is written with it, in the same produce.
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// RuleEventTimeFuture is the rule of an event dated too far in the future.
const RuleEventTimeFuture = "event-time-future"

// Options bound the event time. A zero bound is no bound.
type Options struct {
	MaxFutureSkew time.Duration
	FlagOlderThan time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Ingest validates and publishes events.
type Ingest struct {
	validator *event.Validator
	pseudo    *nhs.Pseudonymiser
	pub       message.Publisher
	opts      Options
}

// New builds an Ingest.
func New(v *event.Validator, p *nhs.Pseudonymiser, pub message.Publisher, opts Options) (*Ingest, error) {
	if v == nil || p == nil || pub == nil {
		return nil, errors.New("ingest: validator, pseudonymiser and publisher are required")
	}
	if opts.MaxFutureSkew < 0 || opts.FlagOlderThan < 0 {
		return nil, errors.New("ingest: negative event time bounds")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Ingest{validator: v, pseudo: p, pub: pub, opts: opts}, nil
}

// Accept implements connector.Ingest.
func (in *Ingest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	p, acc, err := in.prepare(ctx, org, raw)
	if err != nil {
		return connector.Accepted{}, err
	}
	if err := in.publish([]prepared{p}); err != nil {
		return connector.Accepted{}, err
	}
	return acc, nil
}

// prepared is one event ready to publish, with its audit record if it is
// flagged.
type prepared struct {
	msg  *message.Message
	flag *message.Message
}

// AcceptBatch implements connector.Ingest.
func (in *Ingest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	out := make([]connector.Result, len(raws))
	var ps []prepared
	var idx []int
	for i, raw := range raws {
		p, acc, err := in.prepare(ctx, org, raw)
		out[i] = connector.Result{Accepted: acc, Err: err}
		if err == nil {
			ps = append(ps, p)
			idx = append(idx, i)
		}
	}
	if len(ps) == 0 {
		return out
	}
	if err := in.publish(ps); err != nil {
		for _, i := range idx {
			out[i].Err = err
		}
	}
	return out
}

// Message builds the Kafka message for a validated event: the CloudEvents
// JSON as value (structured mode), the pseudonym as key, and the
// non-identifying attributes as headers.
func Message(ev *event.Event, key string) (*message.Message, error) {
	body, err := ev.Marshal()
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "encoding event", err)
	}
	msg := message.NewMessage(ev.ID, body)
	msg.Metadata.Set(topic.MetaKey, key)
	msg.Metadata.Set(topic.MetaEventID, ev.ID)
	msg.Metadata.Set(topic.MetaEventType, ev.Type)
	msg.Metadata.Set(topic.MetaSource, ev.Source)
	msg.Metadata.Set("content-type", media.CloudEvent)
	return msg, nil
}

func (in *Ingest) prepare(ctx context.Context, org string, raw []byte) (prepared, connector.Accepted, error) {
	ev, err := in.validator.Parse(raw)
	if err != nil {
		return prepared{}, connector.Accepted{}, err
	}
	acc := connector.Accepted{ID: ev.ID, Type: ev.Type}
	if ev.Publisher != org {
		return prepared{}, acc, &problem.Error{
			Kind:       problem.Forbidden,
			Message:    "this API key publishes as urn:ods:" + org + " only",
			Violations: []problem.Violation{{Pointer: "/source", Rule: "source-matches-credentials"}},
		}
	}
	now := in.opts.Now()
	if s := in.opts.MaxFutureSkew; s > 0 && ev.Time.After(now.Add(s)) {
		detail := "the event time is more than " + s.String() + " in the future: check the sender's clock and time zone"
		return prepared{}, acc, &problem.Error{Kind: problem.Invalid, Message: detail,
			Violations: []problem.Violation{{Pointer: "/time", Rule: RuleEventTimeFuture, Detail: detail}}}
	}
	key := in.pseudo.Pseudonym(ev.Patient.NHSNumber)
	msg, err := Message(ev, key)
	if err != nil {
		return prepared{}, acc, err
	}
	msg.SetContext(ctx)
	p := prepared{msg: msg}
	if o := in.opts.FlagOlderThan; o > 0 && ev.Time.Before(now.Add(-o)) {
		rec := audit.Record{Time: now.UTC(), Kind: audit.KindReceived, EventID: ev.ID, EventType: ev.Type, Publisher: ev.Publisher,
			Patient: key, Flags: []string{audit.FlagEventTimeOld}, Reason: "event time older than " + o.String() + " when accepted"}
		p.flag = message.NewMessage(watermill.NewUUID(), rec.Marshal())
		p.flag.Metadata.Set(topic.MetaKey, key)
		p.flag.Metadata.Set(topic.MetaEventID, ev.ID)
	}
	return p, acc, nil
}

// TopicsPublisher publishes to several topics in one produce (kafkawm's
// Publisher): a flagged event and its audit record go together.
type TopicsPublisher interface {
	PublishTopics(byTopic map[string][]*message.Message) error
}

func (in *Ingest) publish(ps []prepared) error {
	var msgs, flags []*message.Message
	for _, p := range ps {
		msgs = append(msgs, p.msg)
		if p.flag != nil {
			flags = append(flags, p.flag)
		}
	}
	var err error
	switch tp, ok := in.pub.(TopicsPublisher); {
	case len(flags) == 0:
		err = in.pub.Publish(topic.Events, msgs...)
	case ok:
		err = tp.PublishTopics(map[string][]*message.Message{topic.Events: msgs, topic.Audit: flags})
	default:
		if err = in.pub.Publish(topic.Audit, flags...); err == nil {
			err = in.pub.Publish(topic.Events, msgs...)
		}
	}
	if err != nil {
		return problem.Wrap(problem.Unavailable, "the event could not be made durable; retry later", err)
	}
	return nil
}

var _ connector.Ingest = (*Ingest)(nil)
