// Package audit defines the records carehub writes to the carehub.audit
// topic: one per routing decision (permit or deny, the rule that decided,
// the form of the copy and the version of the patient's directives that
// decided), one before each handover to a push recipient (sending) and one
// per delivery outcome (delivered, withheld at the moment of delivery,
// dead-lettered), one per consent change (who, when, before and
// after), one per look at a patient's record through the admin API (who
// and what), one per accepted event with a flag (an event time older
// than the deployment's bound), one per change to a recipient or its
// subscriptions (who, before and after, secrets hidden), and one per
// patient added to or removed from a recipient's patient list (who, whom
// by pseudonym, which list). Records are keyed by the patient's keyed
// pseudonym (recipient changes by RecipientKey) and never hold an NHS
// number, a name or a payload. The topic
// is append-only and kept for years (retention.audit).
package audit

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/carehub/carehub/consent"
)

// Kinds of record.
const (
	KindDecision      = "decision"
	KindDelivery      = "delivery"
	KindFeedRead      = "feed-read" // a pull recipient read an event (or its number, withheld) from its feed
	KindConsentChange = "consent-change"
	KindAccess        = "access"
	KindReceived      = "received"
	// KindRecipientChange: an operator (or the configuration file at
	// start-up) created, changed, deleted, paused or resumed a recipient
	// or one of its subscriptions. Keyed by RecipientKey, not a patient.
	KindRecipientChange = "recipient-change"
	// KindListChange: a patient was added to or removed from a
	// recipient's patient list, by the recipient itself, an operator or
	// the configuration file. Keyed by the patient's pseudonym.
	KindListChange = "list-change"
)

// Delivery outcomes.
const (
	// Sending: written, durably, before a copy is handed to a push
	// recipient's connector; from then on it may reach the recipient. The
	// outcome record follows; a sending record without one (the hub
	// stopped or crashed before it could write the outcome) means the
	// recipient may have the copy. A pull feed writes none: its reads are
	// audited before they are answered.
	Sending      = "sending"
	Delivered    = "delivered"
	DeadLettered = "dead-lettered"
	// Withheld: the copy was routed, but the patient's directives at the
	// moment of delivery (or, for a feed, of reading) deny it; it was not
	// sent (a feed served only its number).
	Withheld = "withheld"
	Read     = "read" // feed-read: the event was served
)

// Actions of access and consent-change records.
const (
	ActionConsentRead      = "consent-read"
	ActionConsentChange    = "consent-change"
	ActionConsentWithdraw  = "consent-withdraw"
	ActionExplain          = "explain"
	ActionDisclosuresRead  = "disclosures-read"
	ActionDeadLetterList   = "dead-letters-read"
	ActionDeadLetterReplay = "dead-letter-replay"
	ActionDeadLetterClose  = "dead-letter-resolve"
	ActionHeldRead         = "held-read"    // held messages listed with their originals
	ActionHeldRelease      = "held-release" // a held message taken in again
	ActionHeldResolve      = "held-resolve" // a held message closed without sharing, with a reason
	ActionBackfill         = "backfill"     // a backfill started, run or resumed for a recipient

	// Actions of recipient-change records.
	ActionRecipientCreate    = "recipient-create"
	ActionRecipientUpdate    = "recipient-update"
	ActionRecipientDelete    = "recipient-delete"
	ActionRecipientPause     = "recipient-pause"
	ActionRecipientResume    = "recipient-resume"
	ActionSubscriptionCreate = "subscription-create"
	ActionSubscriptionUpdate = "subscription-update"
	ActionSubscriptionDelete = "subscription-delete"

	// Actions of list-change records.
	ActionListAdd    = "patient-list-add"
	ActionListRemove = "patient-list-remove"
)

// ActorConfig is the actor of changes the hub makes from its
// configuration file at start-up (or on SIGHUP, for patient list files).
const ActorConfig = "config"

// RecipientKey is the Kafka key of a recipient-change record: records
// about one recipient share a partition, in order.
func RecipientKey(ods string) string { return "recipient/" + ods }

// Flags of received records.
const (
	// FlagEventTimeOld: the event's time is older than events.flagOlderThan
	// when it was accepted (a PAS catching up after an outage, or a clock
	// that is wrong).
	FlagEventTimeOld = "event-time-old"
	// FlagNotAcknowledged: the event reached carehub.events, but its
	// publisher was never told it was accepted (the ingest gave up waiting
	// and answered 503 / HL7 AR, and the broker wrote the event afterwards,
	// or the event but not its record in time): the router voided the
	// publish attempt in carehub.accepted before any record of it, did not
	// route it, and backfill skips it. The record's Position
	// names the copy that was dropped; a resend with the same id is
	// another copy, routed once acknowledged.
	FlagNotAcknowledged = "not-acknowledged"
)

// EventPosition names one record of carehub.events: "partition/offset".
func EventPosition(partition int, offset int64) string {
	return strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}

// Record is one audit entry.
type Record struct {
	Time         time.Time `json:"time"`
	Kind         string    `json:"kind"`
	EventID      string    `json:"eventId,omitempty"`
	EventType    string    `json:"eventType,omitempty"`
	Publisher    string    `json:"publisher,omitempty"`
	Patient      string    `json:"patient"` // keyed pseudonym
	Recipient    string    `json:"recipient,omitempty"`
	Subscription string    `json:"subscription,omitempty"`
	Basis        string    `json:"basis,omitempty"`
	Effect       string    `json:"effect,omitempty"`
	Rule         string    `json:"rule,omitempty"`
	Directive    string    `json:"directive,omitempty"` // id of the directive that decided, if any
	Obligations  []string  `json:"obligations,omitempty"`
	// Form is the form of the copy: full, notification or notice (a
	// permit's copy in a decision record; what was sent in a delivery
	// record).
	Form string `json:"form,omitempty"`
	// DirectiveVersions are the versions of the patient's directives that
	// decided: the patient's own first, then those of each number merged
	// into it (0: none recorded).
	DirectiveVersions []DirectiveVersion `json:"directiveVersions,omitempty"`
	// Relation is how the event follows earlier events on its encounter
	// or care plan (continues, updates, corrects), when it does.
	Relation string `json:"relation,omitempty"`
	// About names the event a notice (registration-ended, withheld notice)
	// was issued about.
	About    string `json:"about,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	Status   int    `json:"status,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Number   int64  `json:"number,omitempty"` // feed-read: the event's number in the recipient's feed
	Via      string `json:"via,omitempty"`    // feed-read: json, fhir or sse
	// Flags of a received record.
	Flags []string `json:"flags,omitempty"`
	// Position, on a received record flagged not-acknowledged, is the
	// event's record in carehub.events (EventPosition).
	Position string `json:"position,omitempty"`
	// Actor is who looked or changed (access and consent-change records):
	// the operator the admin API key belongs to.
	Actor string `json:"actor,omitempty"`
	// Action is what the actor did.
	Action string `json:"action,omitempty"`
	// Follows, on a recipient-change or list-change record, names the
	// state the change was made against: the ChangeID of the change that
	// wrote it, or None when no change of it was ever recorded. Records
	// written before carehub recorded it have none (see Applied).
	Follows string `json:"follows,omitempty"`
	// Before and After are the patient's directives before and after a
	// consent change.
	Before *ConsentState `json:"before,omitempty"`
	After  *ConsentState `json:"after,omitempty"`
	// RecipientChange is what a recipient-change record changed.
	RecipientChange *RecipientChange `json:"recipientChange,omitempty"`
}

// RecipientChange is a recipient's entry before and after a change: its
// configuration entry (secrets hidden) at each version.
type RecipientChange struct {
	FromVersion int64           `json:"fromVersion"`
	ToVersion   int64           `json:"toVersion"`
	Before      json.RawMessage `json:"before,omitempty"`
	After       json.RawMessage `json:"after,omitempty"`
}

// DirectiveVersion is the version of one patient number's directives.
type DirectiveVersion struct {
	Patient string `json:"patient"` // keyed pseudonym
	Version int64  `json:"version"`
}

// ConsentState is a patient's directives at one version.
type ConsentState struct {
	Version    int64               `json:"version"`
	Directives []consent.Directive `json:"directives"`
}

// Marshal encodes r.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r) // a Record always encodes
	return b
}

// Unmarshal decodes a record.
func Unmarshal(b []byte) (Record, error) {
	var r Record
	err := json.Unmarshal(b, &r)
	return r, err
}

// DeadLetter is the value written to carehub.dlq: the delivery that was
// permanently rejected, with the reason, so it can be replayed. A record of
// the same topic and key with Resolution set closes an earlier dead letter
// (replayed or dismissed by an operator); the retention sweep removes dead
// letters once resolved and a window has passed.
type DeadLetter struct {
	Time      time.Time `json:"time"`
	Recipient string    `json:"recipient"`
	// Publisher and EventID identify the event together (two publishers
	// may use one id): the publisher's ODS code, as delivery records name
	// it. Dead letters written before carehub recorded it have none (see
	// deadletter.Letters).
	Publisher string          `json:"publisher,omitempty"`
	EventID   string          `json:"eventId"`
	EventType string          `json:"eventType,omitempty"`
	Patient   string          `json:"patient,omitempty"`
	Reason    string          `json:"reason,omitempty"`
	Status    int             `json:"status,omitempty"`
	Attempts  int             `json:"attempts,omitempty"`
	Event     json.RawMessage `json:"event,omitempty"`
	// Answer is the recipient's JSON answer to the rejection (a FHIR
	// OperationOutcome), when it gave one.
	Answer json.RawMessage `json:"answer,omitempty"`
	// Decision is the sealed routing decision of the copy (see
	// route.Sealer), kept so that a replay is re-checked like any copy.
	Decision string `json:"decision,omitempty"`
	// Form is the form of the copy; Basis why the recipient got it.
	Form  string `json:"form,omitempty"`
	Basis string `json:"basis,omitempty"`
	// Resolution, on a resolution record, says what closed the dead
	// letter at Offset of the same partition.
	Resolution *Resolution `json:"resolution,omitempty"`
}

// Resolution closes a dead letter.
type Resolution struct {
	Offset int64  `json:"offset"`
	Action string `json:"action"` // replayed, withheld (consent denied it at replay) or dismissed
	Actor  string `json:"actor"`
	// Note is the operator's reason for a dismissal.
	Note string `json:"note,omitempty"`
	// Rule is the consent rule that withheld the copy at replay.
	Rule string `json:"rule,omitempty"`
}

// NotApplied is the outcome a report gives a change record whose change
// never took effect (Applied).
const NotApplied = "not-applied"

// None is the Follows of a change made against a state no change record
// wrote (a recipient, a pause or a place on a list never recorded before).
const None = "none"

// ChangeID is the identity of the state a change wrote: the time of its
// change record, which the state's own record carries (a recipient's
// updated, a pause's since, a list member's added, or the
// carehub-change header of a tombstone).
func ChangeID(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// HeaderChange is the header of a tombstone that carries the ChangeID of
// the change that wrote it (a resume, a patient taken off a list).
const HeaderChange = "carehub-change"

// Change is what Applied needs to know of one change record: what it
// changed (Key: a patient, a recipient, a place on a list), the identity
// of the state it was made against (Before) and of the state it wrote
// (After).
type Change struct {
	Key, Before, After string
}

// Applied reports, for each of changes (the changes of audit records, in
// the order the records were written; nil for a record that is not a
// change, or one that cannot be an attempt, reported true), whether it took
// effect. current returns the identity of the state in force now of a key.
//
// Every change record is written, and acknowledged, before the change
// itself (no Kafka produce spans two topics atomically), and every change
// is made against the state in force, read after catching up. So a change
// took effect exactly when the state it wrote was ever in force: when a
// later change was made against it (a later record's Before is its
// After), or when it is in force now. A change whose state appears in
// neither was an attempt: its own write failed, or the process stopped
// first. Two changes that wrote the same state (the same identity) cannot
// be told apart, and need not be: what was in force is what both said.
//
// The consent store (consentstore.Applied) and the recipient directory
// (directory.Directory.Applied) derive their outcomes here.
func Applied(changes []*Change, current func(key string) string) []bool {
	out := make([]bool, len(changes))
	// seen: the states some later change was made against.
	seen := map[Change]bool{}
	for i := len(changes) - 1; i >= 0; i-- {
		c := changes[i]
		if c == nil {
			out[i] = true
			continue
		}
		out[i] = seen[Change{Key: c.Key, Before: c.After}] || current(c.Key) == c.After
		seen[Change{Key: c.Key, Before: c.Before}] = true
	}
	return out
}
