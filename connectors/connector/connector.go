// Package connector holds the contracts between the hub and its connectors.
// It is the only hub package a connector imports; with the shared
// vocabulary under schemas/, it is everything a connector needs.
//
// # Sources
//
// A source connector receives messages from senders (HTTP, MLLP, ...),
// authenticates them as an organisation, and hands them to an Ingest. The ack
// contract: Ingest.Accept returns nil only once the event is durable in Kafka
// (acks from all in-sync replicas), and only then may the source answer the
// sender positively (HTTP 202, HL7 MSA|AA). When Accept returns an error,
// nothing was published and the source answers negatively with the error's
// kind (problem.KindOf) mapped to its protocol. A message the source refuses
// itself, before Ingest (unauthenticated, unparseable), it reports with
// Env.Refuse, so that the hub counts every refusal once.
//
// A well-formed message from an authenticated sender that carehub does not
// share (an HL7 v2 trigger it does not map, a patient it cannot identify)
// is recorded, never refused: the source hands it to Ingest.Hold, which
// returns nil only once the held record is durable, and only then may the
// source answer positively. Nothing held reaches a recipient; operators
// list and count held records (the hub's GET /v1/held).
//
// # Sinks
//
// A sink connector delivers one event to one recipient. The delivery
// contract: Deliver returns nil only once the recipient has accepted the
// event; an error marked Permanent means the recipient rejected it and a
// retry cannot help (the hub moves it to the dead-letter topic); any other
// error means "not delivered yet" (the hub redelivers later, in order). A sink
// retries transient failures itself, within the hub's Retry bounds, without
// end unless Retry.MaxAttempts says otherwise, until ctx ends.
//
// The end of Deliver's ctx means "stop": the hub is draining (or the
// recipient's outbox moved to another process). It does not mean "abort":
//
//   - an attempt already under way (a request on the wire, a frame sent)
//     finishes, bounded by the sink's own per-attempt timeout, not by ctx,
//     and its answer counts: if the recipient accepted it, Deliver returns
//     nil. A recipient that has read a copy must get to answer, else the
//     hub, not knowing, sends it again after the restart;
//   - no further attempt starts, and a wait between attempts ends at once;
//   - a Deliver that stops without delivering returns an error that is not
//     Permanent (the hub delivers the copy again later).
//
// The hub bounds the whole drain (carehub serve --stop-timeout). Package
// connectors/connector/retry implements these rules, and the consent
// re-check below, once: an HTTP client (go-retryablehttp) and a loop for
// any other protocol. The conformance suite checks them.
//
// # Consent holds until the moment of delivery
//
// A patient may change their directives while a copy waits in an outbox
// (the recipient was down) or between two attempts. The hub re-checks
// every copy just before it calls Deliver; a sink re-checks before every
// later attempt, and a sink that hands copies over later than Deliver (a
// pull feed serving copies when a GP system reads them) re-checks at that
// moment, by calling SinkEnv.Consent.Recheck with the Delivery as it was
// given (its Decision field is the hub's sealed routing decision). The
// answer is the same decision function the router used, on the patient's
// directives as they are then, after the same freshness barrier:
//
//   - Verdict.Permit false: do not hand the copy over; return
//     Withheld(v.Rule). The hub audits it as withheld, with the rule.
//   - Verdict.Body differs from the body in hand (a directive recorded
//     since makes it a notification): do not hand over what you hold;
//     hand over Verdict.Body, or return ErrConsentChanged and the hub
//     prepares the copy again.
//   - an error: no answer (the consent store is unreachable): hand
//     nothing over; treat it as a transient failure.
//
// # Factories and the registration list
//
// Each connector package declares one factory (SourceFactory or
// SinkFactory): its type name, which is the key of its section in the
// configuration file; a function returning its configuration with every
// default applied; a constructor; and a probe through which the
// conformance suite (connectortest) drives it. Package connectors/all lists
// every factory, one line each; the hub knows connectors only through that
// list. NewRegistry refuses a factory without a probe, so no connector can
// skip the conformance suite.
package connector

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Accepted identifies an event made durable.
type Accepted struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	// Duplicate is true when an event with the same source and id and the
	// same content had already been accepted (a sender's retry): nothing was
	// published again, and the sender gets the same positive answer.
	Duplicate bool `json:"duplicate,omitempty"`
}

// Result is the outcome for one event of a batch.
type Result struct {
	Accepted
	Err error
}

// Ingest validates events and makes them durable.
type Ingest interface {
	// Accept validates one CloudEvents JSON document published by the
	// organisation org (an ODS code established by authentication) and returns
	// once it is durable. On error nothing was published.
	//
	// An event is identified by its source and id together. The same event
	// accepted again within the hub's duplicate window (a sender's retry) is
	// answered as accepted, with Accepted.Duplicate set, and not published
	// again; the same source and id with other content is an error of kind
	// problem.Conflict.
	Accept(ctx context.Context, org string, raw []byte) (Accepted, error)
	// AcceptBatch validates every document, then makes all valid ones durable
	// together. It returns one Result per document, in order.
	AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []Result
	// Hold records a message published by org that is acknowledged but not
	// shared, and returns once the record is durable. On error nothing was
	// recorded and the source answers negatively (the sender resends).
	Hold(ctx context.Context, org string, h Held) error
}

// Held is a message a source acknowledges without publishing an event: it
// is kept, with why, for an operator to release or resolve. Every field
// but NHSNumber, LocalID and Original is metadata that is safe to log.
type Held struct {
	// ID identifies the message: stable for a resend of it (an HL7 v2
	// message's is the event id it would have had). At most 256 bytes.
	ID string
	// Time is when the message says its event happened; zero if unknown.
	Time time.Time
	// Trigger names the kind of message, e.g. "ADT^A15": fixed vocabulary
	// of the protocol, never a value from the message's content.
	Trigger string
	// Reason is one of the Held* reason codes.
	Reason string
	// Detail is a fixed public text saying why, for people.
	Detail string
	// NHSNumber is the patient's NHS number when the message carries one
	// (the record is keyed by its pseudonym); else the zero Number.
	NHSNumber nhs.Number
	// LocalID is the sender's local identifier of the patient (a hospital
	// number), used, pseudonymised, as the key when there is no NHS number.
	LocalID string
	// ContentType is the media type of Original (media.HL7v2, ...).
	ContentType string
	// Original is the message as received.
	Original []byte
}

// Reasons a message is held (Held.Reason). They are a fixed vocabulary:
// admin queries filter and count by them.
const (
	// HeldTriggerNotShared: a message type or trigger carehub does not
	// share (the README lists the decision for each).
	HeldTriggerNotShared = "trigger-not-shared"
	// HeldNoNHSNumber: the patient has no NHS number (hospital number only:
	// an unidentified A&E attendance, a number not yet traced).
	HeldNoNHSNumber = "no-nhs-number"
	// HeldNHSNumberUnverified: the sender says the NHS number is not
	// verified (HL7 v2 PID-32 other than 01).
	HeldNHSNumberUnverified = "nhs-number-unverified"
	// HeldNHSNumberStatusMissing: the sender does not say whether the NHS
	// number is verified, and the source requires it to.
	HeldNHSNumberStatusMissing = "nhs-number-status-missing"
	// HeldLocalMerge: a merge of two local records that retires no NHS
	// number: recipients hold nothing under the retired record.
	HeldLocalMerge = "local-merge"
)

// HeldReasons returns every reason code, in a fixed order.
func HeldReasons() []string {
	return []string{HeldTriggerNotShared, HeldNoNHSNumber, HeldNHSNumberUnverified, HeldNHSNumberStatusMissing, HeldLocalMerge}
}

// Releaser is implemented by a source whose held messages an operator can
// release once the reason they were held no longer holds: the trigger is
// now shared (a newer carehub), the source's settings now share it (say,
// allowUnverifiedNHSNumbers), or the operator has traced the patient and
// gives the NHS number (HeldMessage.NHSNumber).
//
// Reread maps the held original exactly as the source maps a message it
// receives now, with its current settings, and publishes nothing: the hub
// then takes Reread.Events in through Ingest.AcceptBatch as the org that
// sent the message, so they are validated, deduplicated by (source, id)
// and routed like any input. Reread returns ErrNotMine when the message is
// not one this source reads (another organisation, another media type);
// Reread.Held when the message would still be held, with the reason; and
// an error of kind problem.Invalid, with a public text, when it cannot be
// mapped (an NHS number given that the message contradicts).
type Releaser interface {
	Reread(ctx context.Context, m HeldMessage) (Reread, error)
}

// HeldMessage is a held original, as Ingest.Hold recorded it.
type HeldMessage struct {
	Org         string // the ODS code of the organisation that sent it
	ContentType string // Held.ContentType
	Original    []byte
	// NHSNumber, when not zero, is the patient's NHS number as an operator
	// traced and verified it: for a message without one, it is the
	// patient's; for a message whose number was not verified, it must be
	// that number, which is then taken as verified. A message about more
	// than one patient, or naming another number, is refused.
	NHSNumber nhs.Number
}

// Reread is what a held message becomes when read again.
type Reread struct {
	// Events are the CloudEvents JSON documents it maps to, in order.
	Events []json.RawMessage
	// Held, when set, says why it would still be held (Events is empty).
	Held *Held
}

// ErrNotMine is returned by Releaser.Reread for a message the source does
// not read.
var ErrNotMine = errors.New("connector: not a message this source reads")

// Authenticator maps a request's credentials to the organisation they belong
// to. It returns a *problem.Error of kind Unauthenticated when there are none
// or they are unknown.
type Authenticator interface {
	Organisation(r *http.Request) (string, error)
}

// Refusals hears of the messages a source refuses itself, before it hands
// anything to Ingest: a sender it cannot authenticate, a request in no
// content mode it speaks, a message it cannot parse or map. The hub counts
// them (its /metrics) beside the refusals of Ingest, which counts its own.
// A source reports each message it refuses itself once, after answering
// or while answering, and never one that Ingest refused. org is the
// organisation the message came from as far as the source knows it (the
// authenticated one, or the one a listener is bound to), "" when it does
// not; kind classifies the refusal as the answer did. Neither may carry
// anything from the message.
type Refusals interface {
	Refused(ctx context.Context, org string, kind problem.Kind)
}

// RefusalsFunc adapts a function to a Refusals.
type RefusalsFunc func(ctx context.Context, org string, kind problem.Kind)

// Refused calls f.
func (f RefusalsFunc) Refused(ctx context.Context, org string, kind problem.Kind) { f(ctx, org, kind) }

// Env is what a source is given to run.
type Env struct {
	Ingest Ingest
	// Refusals, when set, hears of the messages the source refuses before
	// Ingest (call Env.Refuse, which does nothing when it is not set).
	Refusals Refusals
	Auth     Authenticator
	// Mux is the hub's HTTP API; HTTP-based sources add their routes here
	// in Register (they must not block before registering).
	Mux *http.ServeMux
	// MaxBodyBytes is the largest request body the hub's HTTP API takes
	// (http.maxBodyBytes): an HTTP source reads no more, and answers 413.
	MaxBodyBytes int64
	Log          *zap.Logger
}

// Refuse tells e.Refusals, when set, of a message the source refused
// before Ingest.
func (e Env) Refuse(ctx context.Context, org string, kind problem.Kind) {
	if e.Refusals != nil {
		e.Refusals.Refused(ctx, org, kind)
	}
}

// Source is a source connector.
type Source interface {
	// Register adds the source's HTTP routes, if any, to env.Mux, and binds
	// any listener of its own, so that a taken port fails the hub at start.
	Register(env Env) error
	// Run serves until ctx ends, then drains: it stops taking new input and
	// finishes (answers) what is in flight before returning.
	Run(ctx context.Context, env Env) error
}

// Delivery is one event for one recipient.
type Delivery struct {
	EventID     string
	EventSource string // the CloudEvents source: urn:ods:<publisher>
	EventType   string
	Recipient   string // ODS code
	PatientRef  string // keyed pseudonym of the NHS number, never the number; "" for a content-free notice
	Body        []byte // the CloudEvents JSON document to deliver
	// Form is the form of Body: full, notification or notice.
	Form string
	// Decision is the hub's sealed routing decision of the copy: opaque
	// to sinks, passed back unchanged to Consent.Recheck. A sink that
	// stores copies to serve later stores it with them.
	Decision string
}

// DeliveryID is the identifier of the delivered event that a sink sends its
// recipient to drop redeliveries by (the webhook-id of a webhook): the same
// for every delivery of one event, and different for two events that share an
// id but not a source (event.DeliveryID).
func (d Delivery) DeliveryID() string { return event.DeliveryID(d.EventSource, d.EventID) }

// Outcome describes a finished delivery.
type Outcome struct {
	Attempts int
	Status   int // the recipient's last status (HTTP), or 0
	// Answer is the recipient's own account of a permanent rejection, as a
	// JSON document (a FHIR OperationOutcome), or nil. The hub keeps it
	// with the dead letter only: it may quote the payload, so it never
	// reaches a log, an audit record or an error.
	Answer string
}

// Sink is a sink connector: it delivers to one recipient.
type Sink interface {
	Deliver(ctx context.Context, d Delivery) (Outcome, error)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(ctx context.Context, d Delivery) (Outcome, error)

// Deliver calls f.
func (f SinkFunc) Deliver(ctx context.Context, d Delivery) (Outcome, error) { return f(ctx, d) }

// SinkEnv is what the hub gives a sink it builds for a recipient.
type SinkEnv struct {
	Recipient string // the recipient's ODS code
	Retry     Retry  // how to retry transient failures
	Log       *zap.Logger

	// Consent re-checks a copy against the patient's directives as they
	// are now (see "Consent holds until the moment of delivery" above).
	// The hub always sets it; it may be called before the hub has
	// started, and answers with an error until it can decide.
	Consent Consent

	// The pull fields, set only for a sink whose configuration is a
	// PullConfig (see feed.go): the recipient's feed, the authenticator of
	// recipients' own keys (Organisation returns the recipient's ODS code),
	// and the audit of reads. A pull sink re-checks consent with Consent
	// when it serves a copy, as a push sink does when it sends one.
	Feed    Feed
	Readers Authenticator
	Audit   ReadAudit
}

// Consent is the hub's re-check of a copy at the moment it is handed over.
type Consent interface {
	// Recheck decides d again with the patient's directives as they are
	// now. It never returns Permit with an error.
	Recheck(ctx context.Context, d Delivery) (Verdict, error)
}

// ConsentFunc adapts a function to a Consent.
type ConsentFunc func(ctx context.Context, d Delivery) (Verdict, error)

// Recheck calls f.
func (f ConsentFunc) Recheck(ctx context.Context, d Delivery) (Verdict, error) { return f(ctx, d) }

// Verdict is the answer of a re-check.
type Verdict struct {
	// Permit: the copy may be handed over, as Body.
	Permit bool
	// Body is what to hand over: the copy's body, or its narrower form.
	Body []byte
	// Form is the form of Body.
	Form string
	// Rule is the rule that decided; Directive the patient directive it
	// applied, if any. Neither holds patient data.
	Rule, Directive string
}

// AlwaysPermit is a Consent that permits every copy as it is: for tests
// and tools that deliver outside a hub, never for a hub's recipients.
var AlwaysPermit = ConsentFunc(func(_ context.Context, d Delivery) (Verdict, error) {
	return Verdict{Permit: true, Body: d.Body, Form: d.Form, Rule: "always-permit"}, nil
})

// ErrConsentChanged is returned by a sink that stopped because a re-check
// changed the copy's form: the hub prepares the copy again.
var ErrConsentChanged = errors.New("the patient's consent changed the form of this copy; prepare it again")

type withheld struct{ rule string }

func (w *withheld) Error() string { return "withheld by consent: " + w.rule }

// Withheld marks a copy that a re-check withheld; rule is the rule that
// decided (safe to show: rules hold no patient data).
func Withheld(rule string) error { return &withheld{rule: rule} }

// IsWithheld reports whether err is Withheld, and the rule.
func IsWithheld(err error) (string, bool) {
	var w *withheld
	if errors.As(err, &w) {
		return w.rule, true
	}
	return "", false
}

type permanent struct {
	reason string
	err    error
}

func (p *permanent) Error() string { return "permanently rejected: " + p.reason }
func (p *permanent) Unwrap() error { return p.err }

// Permanent marks a delivery failure that no retry can fix. reason must be
// safe to show (no URL, no payload): it is stored with the dead letter.
func Permanent(reason string, err error) error { return &permanent{reason: reason, err: err} }

// IsPermanent reports whether err was marked Permanent, and its reason.
func IsPermanent(err error) (string, bool) {
	var p *permanent
	if errors.As(err, &p) {
		return p.reason, true
	}
	return "", false
}
