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
// Hold writes a message a source acknowledges without sharing to
// carehub.held (package held), keyed the same way (or by the pseudonym of
// the sender's local identifier when the patient has no NHS number), also
// with acks from all in-sync replicas before it returns.
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/held"
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
	now       func() time.Time
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
	return &Ingest{validator: v, pseudo: p, pub: pub, now: time.Now}, nil
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

// Hold implements connector.Held: it checks the record's metadata, keys it
// by the patient's pseudonym (else the pseudonym of the sender's local
// identifier, else of the message id) and writes it to carehub.held with
// acks from all in-sync replicas.
func (in *Ingest) Hold(ctx context.Context, org string, h connector.Held) error {
	if err := checkHeld(h); err != nil {
		return err
	}
	if err := in.closed(); err != nil {
		return err
	}
	key := in.pseudo.Pseudonym(h.NHSNumber)
	if key == "" {
		key = in.pseudo.LocalPseudonym(org, h.LocalID)
	}
	if key == "" {
		key = in.pseudo.LocalPseudonym(org, "message\x00"+h.ID)
	}
	rec := held.Record{ID: h.ID, Source: org, Time: h.Time.UTC(), Received: in.now().UTC(), Trigger: h.Trigger,
		Reason: h.Reason, Detail: h.Detail, Patient: key, ContentType: h.ContentType, Original: h.Original}
	msg := message.NewMessage(h.ID, rec.Marshal())
	msg.Metadata.Set(topic.MetaKey, key)
	msg.Metadata.Set(topic.MetaHeldID, h.ID)
	msg.Metadata.Set(topic.MetaReason, h.Reason)
	msg.Metadata.Set(topic.MetaSource, event.SourcePrefix+org)
	msg.Metadata.Set("content-type", media.JSON)
	msg.SetContext(ctx)
	if err := in.pub.Publish(topic.Held, msg); err != nil {
		return problem.Wrap(problem.Unavailable, "the held message could not be made durable; retry later", err)
	}
	return nil
}

// MaxHeldBytes bounds a held message (the largest MLLP frame is smaller).
const MaxHeldBytes = 16 << 20

var triggerRE = regexp.MustCompile(`^[A-Za-z0-9_^]{1,32}$`)

// checkHeld checks what a source says about a held message: its metadata
// goes into headers and listings, so it must be the fixed vocabulary the
// contract promises.
func checkHeld(h connector.Held) error {
	var vs []problem.Violation
	if h.ID == "" || len(h.ID) > 256 || strings.ContainsFunc(h.ID, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		vs = append(vs, problem.Violation{Pointer: "/id", Rule: "held-id", Detail: "a held message needs an id of 1 to 256 printable characters"})
	}
	if !slices.Contains(connector.HeldReasons(), h.Reason) {
		vs = append(vs, problem.Violation{Pointer: "/reason", Rule: "held-reason", Detail: "the reason is not one of the held reason codes"})
	}
	if !triggerRE.MatchString(h.Trigger) {
		vs = append(vs, problem.Violation{Pointer: "/trigger", Rule: "held-trigger", Detail: "the trigger is 1 to 32 letters, digits, ^ or _"})
	}
	if len(h.Original) == 0 || len(h.Original) > MaxHeldBytes || h.ContentType == "" {
		vs = append(vs, problem.Violation{Pointer: "/original", Rule: "held-original", Detail: "a held message keeps its original (1 byte to 16 MiB) and its media type"})
	}
	if len(vs) > 0 {
		return &problem.Error{Kind: problem.Internal, Message: "the source described a held message wrongly", Violations: vs}
	}
	return nil
}

func (in *Ingest) publish(msgs ...*message.Message) error {
	if err := in.pub.Publish(topic.Events, msgs...); err != nil {
		return problem.Wrap(problem.Unavailable, "the event could not be made durable; retry later", err)
	}
	return nil
}

var _ connector.Ingest = (*Ingest)(nil)
