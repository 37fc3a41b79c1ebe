// Package ingest turns validated input from source connectors into durable
// events on carehub.events. It implements connector.Ingest.
//
// Each event is validated against its schema and the code rules (event
// package), checked to be published by the authenticated organisation
// itself, keyed by the keyed pseudonym of the patient's NHS number (so one
// patient's events stay in one partition, in order, and no raw identifier
// reaches a key or a header), and produced with acks from all in-sync
// replicas. Accept returns only after that acknowledgement.
package ingest

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// Ingest validates and publishes events.
type Ingest struct {
	validator *event.Validator
	pseudo    *nhs.Pseudonymiser
	pub       message.Publisher
	gate      func() error // nil: always open
}

// SetGate makes Accept and AcceptBatch ask gate before publishing: a
// non-nil error (a *problem.Error, usually of kind Unavailable, with a
// reason safe to show) is the answer of every valid event, and nothing is
// published; an invalid event still gets its own answer. The hub closes the gate
// while its data directory's free space is below the floor. Call it before
// the Ingest is in use.
func (in *Ingest) SetGate(gate func() error) { in.gate = gate }

// closed returns the gate's refusal, if any.
func (in *Ingest) closed() error {
	if in.gate == nil {
		return nil
	}
	return in.gate()
}

// New builds an Ingest.
func New(v *event.Validator, p *nhs.Pseudonymiser, pub message.Publisher) (*Ingest, error) {
	if v == nil || p == nil || pub == nil {
		return nil, errors.New("ingest: validator, pseudonymiser and publisher are required")
	}
	return &Ingest{validator: v, pseudo: p, pub: pub}, nil
}

// Accept implements connector.Ingest.
func (in *Ingest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	msg, acc, err := in.prepare(ctx, org, raw)
	if err != nil {
		return connector.Accepted{}, err
	}
	if err := in.closed(); err != nil {
		return connector.Accepted{}, err
	}
	if err := in.publish(msg); err != nil {
		return connector.Accepted{}, err
	}
	return acc, nil
}

// AcceptBatch implements connector.Ingest.
func (in *Ingest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	out := make([]connector.Result, len(raws))
	var msgs []*message.Message
	var idx []int
	for i, raw := range raws {
		msg, acc, err := in.prepare(ctx, org, raw)
		out[i] = connector.Result{Accepted: acc, Err: err}
		if err == nil {
			msgs = append(msgs, msg)
			idx = append(idx, i)
		}
	}
	if len(msgs) == 0 {
		return out
	}
	if err := in.closed(); err != nil {
		for _, i := range idx {
			out[i].Err = err
		}
		return out
	}
	if err := in.publish(msgs...); err != nil {
		// Per-event truth: when the publisher says which records were not
		// acknowledged, only those are answered "not durable"; the others
		// are in the topic and will be delivered, so they are answered as
		// accepted. Without that detail, every event is answered 503.
		var partial interface{ FailedAt(int) bool }
		perRecord := errors.As(err, &partial)
		for j, i := range idx {
			if !perRecord || partial.FailedAt(j) {
				out[i].Err = err
			}
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

func (in *Ingest) prepare(ctx context.Context, org string, raw []byte) (*message.Message, connector.Accepted, error) {
	ev, err := in.validator.Parse(raw)
	if err != nil {
		return nil, connector.Accepted{}, err
	}
	acc := connector.Accepted{ID: ev.ID, Type: ev.Type}
	if ev.Publisher != org {
		return nil, acc, &problem.Error{
			Kind:       problem.Forbidden,
			Message:    "this API key publishes as urn:ods:" + org + " only",
			Violations: []problem.Violation{{Pointer: "/source", Rule: "source-matches-credentials"}},
		}
	}
	msg, err := Message(ev, in.pseudo.Pseudonym(ev.Patient.NHSNumber))
	if err != nil {
		return nil, acc, err
	}
	msg.SetContext(ctx)
	return msg, acc, nil
}

func (in *Ingest) publish(msgs ...*message.Message) error {
	if err := in.pub.Publish(topic.Events, msgs...); err != nil {
		return problem.Wrap(problem.Unavailable, "the event could not be made durable; retry later", err)
	}
	return nil
}

var _ connector.Ingest = (*Ingest)(nil)
