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
// With a Memory (WithMemory; the hub gives it a dedup.Store), an event is
// identified by (source, id): a retry of an event accepted within the
// duplicate window is answered as accepted and not published again, and an
// id reused for other content is refused with a Conflict (409). The event is
// published before it is remembered, and answered accepted only once both
// are durable. Each publish is an attempt (header carehub_attempt) with its
// own record, the acknowledgement the router requires (package ackgate): an
// event answered Unavailable (HTTP 503, HL7 AR) is routed only if its
// record, cut short, still reached carehub.accepted before the router
// voided the attempt; then the resend with the same id is answered as a
// duplicate. Otherwise it is never routed, and the resend is published.
//
// Hold writes a message a source acknowledges without sharing to
// carehub.held (package held), keyed the same way (or by the pseudonym of
// the sender's local identifier when the patient has no NHS number), also
// with acks from all in-sync replicas before it returns.
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
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Memory remembers the events accepted within a window by (source, id), in
// Kafka: *dedup.Store.
type Memory interface {
	ClaimAll(ctx context.Context, sources, ids []string, digests []dedup.Digest) ([]dedup.Claim, error)
	Abandon(c dedup.Claim)
	// Record's error may tell which claims failed (FailedAt(i), i an
	// index of cs, as *dedup.RecordError does); else all did.
	Record(ctx context.Context, cs ...dedup.Claim) error
}

// RuleEventTimeFuture is the rule of an event dated too far in the future.
const RuleEventTimeFuture = "event-time-future"

// Options bound the event time and the wait. A zero bound is no bound.
type Options struct {
	MaxFutureSkew time.Duration
	FlagOlderThan time.Duration
	// Timeout bounds accepting one event or batch (or holding a message),
	// from the call: catching up with the Memory, publishing and recording
	// share one context deadline. Past it the answer is problem.Unavailable
	// (HTTP 503 with Retry-After, HL7 AR): the event's attempt was not
	// acknowledged; the router routes it only if its record still reached
	// carehub.accepted before the router voided the attempt (then the
	// resend with the same id is a duplicate), never otherwise (then the
	// resend is published). The hub sets kafka.publishTimeout; each event
	// carries it (header carehub_publish_timeout, milliseconds), and the
	// router waits for a record until acceptance + the larger of it and its
	// own + a margin (package ackgate).
	Timeout time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Ingest validates and publishes events.
type Ingest struct {
	validator *event.Validator
	pseudo    *nhs.Pseudonymiser
	pub       message.Publisher
	mem       Memory
	log       *zap.Logger
	gate      func() error // nil: always open
	opts      Options
}

// SetGate makes Accept, AcceptBatch and Hold ask gate before publishing: a
// non-nil error (a *problem.Error, usually of kind Unavailable, with a
// reason safe to show) is the answer of every valid event, and nothing is
// published; an invalid event still gets its own answer. The hub closes the
// gate while its data directory's free space is below the floor. Call it
// before the Ingest is in use.
func (in *Ingest) SetGate(gate func() error) { in.gate = gate }

// closed returns the gate's refusal, if any.
func (in *Ingest) closed() error {
	if in.gate == nil {
		return nil
	}
	return in.gate()
}

// New builds an Ingest. Without WithMemory it does not recognise retries.
func New(v *event.Validator, p *nhs.Pseudonymiser, pub message.Publisher, opts Options) (*Ingest, error) {
	if v == nil || p == nil || pub == nil {
		return nil, errors.New("ingest: validator, pseudonymiser and publisher are required")
	}
	if opts.MaxFutureSkew < 0 || opts.FlagOlderThan < 0 || opts.Timeout < 0 {
		return nil, errors.New("ingest: negative bounds")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Ingest{validator: v, pseudo: p, pub: pub, log: zap.NewNop(), opts: opts}, nil
}

// WithMemory makes the Ingest recognise events by (source, id): an event
// accepted before with the same content is answered as accepted again
// (Accepted.Duplicate) and not published; with other content it is refused
// (problem.Conflict, 409). log hears of records that could not be written.
func (in *Ingest) WithMemory(m Memory, log *zap.Logger) *Ingest {
	in.mem = m
	if log != nil {
		in.log = log
	}
	return in
}

// RuleIDReused is the rule of the Conflict answered for an id reused.
const RuleIDReused = "event-id-reused"

func conflict() error {
	return &problem.Error{
		Kind:    problem.Conflict,
		Message: "this source already published a different event with this id",
		Violations: []problem.Violation{{Pointer: "/id", Rule: RuleIDReused,
			Detail: "an event with this source and id was accepted with different content: give each event its own id, and resend a retry unchanged"}},
	}
}

// Accept implements connector.Ingest.
func (in *Ingest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	res := in.AcceptBatch(ctx, org, []json.RawMessage{raw})[0]
	return res.Accepted, res.Err
}

// AcceptBatch implements connector.Ingest. With a Memory, the valid events
// are claimed together after one catch-up with it; the new ones are
// published together, then recorded together; an event accepted before is
// answered Duplicate, and one listed twice in the batch shares the fate of
// its first listing.
func (in *Ingest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	ctx, cancel := in.bound(ctx)
	defer cancel()
	out := make([]connector.Result, len(raws))
	var msgs []prepared
	var idx []int
	var sources, ids []string
	var digests []dedup.Digest
	for i, raw := range raws {
		p, acc, err := in.prepare(ctx, org, raw)
		out[i] = connector.Result{Accepted: acc, Err: err}
		if err == nil {
			msgs = append(msgs, p)
			idx = append(idx, i)
			sources = append(sources, p.msg.Metadata.Get(topic.MetaSource))
			ids = append(ids, acc.ID)
			digests = append(digests, dedup.DigestOf(p.msg.Payload))
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
	if in.mem == nil {
		if err := in.publish(msgs); err != nil {
			failed := failedRecords(err)
			for j, i := range idx {
				if failed(j) {
					out[i].Err = err
				}
			}
		}
		return out
	}
	claims, err := in.mem.ClaimAll(ctx, sources, ids, digests)
	if err != nil {
		err = problem.Wrap(problem.Unavailable, "the hub cannot tell a retry from a new event right now; retry later", err)
		for _, i := range idx {
			out[i].Err = err
		}
		return out
	}
	var fresh []prepared
	var claimed []dedup.Claim
	freshAt := map[int]int{} // position in claims → position in fresh
	for j, c := range claims {
		if c.State == dedup.New {
			// The attempt names this publish: its record (or the void a
			// router writes if none comes in time) decides whether the
			// event is routed (package ackgate).
			msgs[j].msg.Metadata.Set(topic.MetaAttempt, c.Attempt)
			// Its record carries the time its void would (the
			// header), so that they expire together.
			c.Accepted = msgs[j].at
			claims[j] = c
			freshAt[j] = len(fresh)
			fresh = append(fresh, msgs[j])
			claimed = append(claimed, c)
		}
	}
	var pubErr, recErr error
	failed := func(int) bool { return false }
	unrecorded := map[int]bool{} // positions in fresh whose record failed
	if len(fresh) > 0 {
		if pubErr = in.publish(fresh); pubErr != nil {
			failed = failedRecords(pubErr)
		}
		var written []dedup.Claim
		var writtenAt []int // position in fresh of each written claim
		for k, c := range claimed {
			if failed(k) {
				in.mem.Abandon(c)
			} else {
				written = append(written, c)
				writtenAt = append(writtenAt, k)
			}
		}
		if len(written) > 0 {
			err := in.mem.Record(ctx, written...)
			if ctx.Err() != nil {
				// Past the deadline, whatever Record says (all
				// recorded, or some: a partial error names only the
				// failed ones): the router voids an attempt only once
				// the deadline (+ a margin) has passed without a record,
				// so a 202 must mean the record was in the topic before
				// it, and one acknowledged now may not have been. Every
				// event is answered 503. A record may still win (the
				// event is then routed, and the resend is a duplicate).
				err = fmt.Errorf("recording accepted events: acknowledged after the deadline: %w", ctx.Err())
			}
			if err != nil {
				// The record is the acknowledgement the router requires:
				// an attempt without one is voided and never routed
				// (package ackgate), so its event is not accepted. Per
				// event: the records the broker did write stand, and
				// their events are answered accepted. A retry with the
				// same id publishes again, or finds the record if the
				// write reached the topic after all (before any void).
				notRecorded := failedRecords(err)
				n := 0
				for w, k := range writtenAt {
					if notRecorded(w) {
						unrecorded[k] = true
						n++
					}
				}
				in.log.Warn("accepted events not recorded in Kafka: answered unavailable, they will not be routed",
					zap.Int("events", n), logging.Err(err))
				recErr = problem.Wrap(problem.Unavailable, "the event could not be recorded as accepted; retry later with the same id", err)
			}
		}
	}
	for j, c := range claims {
		i := idx[j]
		fj := j
		if c.RepeatOf > 0 {
			fj = c.RepeatOf - 1
		}
		first := claims[fj]
		switch {
		case c.State == dedup.Conflict || first.State == dedup.Conflict:
			out[i].Err = conflict()
		case first.State == dedup.New && pubErr != nil && failed(freshAt[fj]):
			out[i].Err = pubErr
		case first.State == dedup.New && recErr != nil && unrecorded[freshAt[fj]]:
			out[i].Err = recErr
		case c.State == dedup.Duplicate:
			out[i].Duplicate = true
		}
	}
	return out
}

// bound gives ctx the deadline of Options.Timeout from now (or keeps its
// own, if that is earlier). The messages published carry it
// (message.SetContext), and the publisher gives up by then.
func (in *Ingest) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if in.opts.Timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, in.opts.Timeout)
}

// failedRecords tells, for a failed publish, which records were not
// acknowledged. Per-event truth: when the publisher says which (a
// kafkawm.PublishError), only those events are answered "not durable"; the
// others are in the topic and will be delivered, so they are answered as
// accepted. Without that detail, every record counts as failed.
func failedRecords(err error) func(int) bool {
	var partial interface{ FailedAt(int) bool }
	if errors.As(err, &partial) {
		return partial.FailedAt
	}
	return func(int) bool { return true }
}

// Message builds the Kafka message for a validated event: the CloudEvents
// JSON as value (structured mode, content-type application/cloudevents+json),
// the pseudonym as key, and the non-identifying attributes as headers, as the
// CloudEvents Kafka binding names them (ce_specversion, ce_id, ce_type,
// ce_source).
func Message(ev *event.Event, key string) (*message.Message, error) {
	body, err := ev.Marshal()
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "encoding event", err)
	}
	msg := message.NewMessage(ev.ID, body)
	msg.Metadata.Set(topic.MetaKey, key)
	msg.Metadata.Set(topic.MetaSpecVersion, event.SpecVersion)
	msg.Metadata.Set(topic.MetaEventID, ev.ID)
	msg.Metadata.Set(topic.MetaEventType, ev.Type)
	msg.Metadata.Set(topic.MetaSource, ev.Source)
	msg.Metadata.Set("content-type", media.CloudEvent)
	return msg, nil
}

// prepared is one event ready to publish, with its audit record if it is
// flagged.
type prepared struct {
	msg  *message.Message
	flag *message.Message
	at   time.Time // the acceptance time in the header carehub_accepted
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
	msg.Metadata.Set(topic.MetaAccepted, now.UTC().Format(time.RFC3339Nano))
	if in.opts.Timeout > 0 {
		msg.Metadata.Set(topic.MetaPublishTimeout, strconv.FormatInt(in.opts.Timeout.Milliseconds(), 10))
	}
	msg.SetContext(ctx)
	p := prepared{msg: msg, at: now.UTC()}
	if o := in.opts.FlagOlderThan; o > 0 && ev.Time.Before(now.Add(-o)) {
		rec := audit.Record{Time: now.UTC(), Kind: audit.KindReceived, EventID: ev.ID, EventType: ev.Type, Publisher: ev.Publisher,
			Patient: key, Flags: []string{audit.FlagEventTimeOld}, Reason: "event time older than " + o.String() + " when accepted"}
		p.flag = message.NewMessage(watermill.NewUUID(), rec.Marshal())
		p.flag.SetContext(ctx)
		p.flag.Metadata.Set(topic.MetaKey, key)
		p.flag.Metadata.Set(topic.MetaEventID, ev.ID)
	}
	return p, acc, nil
}

// publish writes the events to carehub.events with acks from all in-sync
// replicas. The audit records of flagged events are written first: an
// event is never durable without its flag. A failure reports, through
// failedRecords, which of ps were not written.
func (in *Ingest) publish(ps []prepared) error {
	var msgs, flags []*message.Message
	for _, p := range ps {
		msgs = append(msgs, p.msg)
		if p.flag != nil {
			flags = append(flags, p.flag)
		}
	}
	if len(flags) > 0 {
		if err := in.pub.Publish(topic.Audit, flags...); err != nil {
			return problem.Wrap(problem.Unavailable, "the event could not be confirmed durable: resend it with the same id", err)
		}
	}
	if err := in.pub.Publish(topic.Events, msgs...); err != nil {
		return problem.Wrap(problem.Unavailable, "the event could not be confirmed durable: resend it with the same id", err)
	}
	return nil
}

// Hold implements connector.Held: it checks the record's metadata, keys it
// by the patient's pseudonym (else the pseudonym of the sender's local
// identifier, else of the message id) and writes it to carehub.held with
// acks from all in-sync replicas.
func (in *Ingest) Hold(ctx context.Context, org string, h connector.Held) error {
	if err := checkHeld(h); err != nil {
		return err
	}
	ctx, cancel := in.bound(ctx)
	defer cancel()
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
	rec := held.Record{ID: h.ID, Source: org, Time: h.Time.UTC(), Received: in.opts.Now().UTC(), Trigger: h.Trigger,
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

var _ connector.Ingest = (*Ingest)(nil)
