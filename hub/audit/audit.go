// Package audit defines the records carehub writes to the carehub.audit
// topic: one per routing decision (permit or deny, and the rule that decided)
// and one per delivery outcome. Records are keyed by the patient's keyed
// pseudonym and never hold an NHS number, a name or a payload.
package audit

import (
	"encoding/json"
	"time"
)

// Kinds of record.
const (
	KindDecision = "decision"
	KindDelivery = "delivery"
	KindFeedRead = "feed-read" // a pull recipient read an event (or its number, withheld) from its feed
)

// Delivery outcomes.
const (
	Delivered    = "delivered"
	DeadLettered = "dead-lettered"
	Read         = "read"     // feed-read: the event was served
	Withheld     = "withheld" // feed-read: consent re-checked at read time withheld it; only its number was served
)

// Record is one audit entry.
type Record struct {
	Time         time.Time `json:"time"`
	Kind         string    `json:"kind"`
	EventID      string    `json:"eventId"`
	EventType    string    `json:"eventType"`
	Publisher    string    `json:"publisher,omitempty"`
	Patient      string    `json:"patient"` // keyed pseudonym
	Recipient    string    `json:"recipient"`
	Subscription string    `json:"subscription,omitempty"`
	Basis        string    `json:"basis,omitempty"`
	Effect       string    `json:"effect,omitempty"`
	Rule         string    `json:"rule,omitempty"`
	Directive    string    `json:"directive,omitempty"` // id of the directive that decided, if any
	Obligations  []string  `json:"obligations,omitempty"`
	Outcome      string    `json:"outcome,omitempty"`
	Status       int       `json:"status,omitempty"`
	Attempts     int       `json:"attempts,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	Number       int64     `json:"number,omitempty"` // feed-read: the event's number in the recipient's feed
	Via          string    `json:"via,omitempty"`    // feed-read: json, fhir or sse
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
// permanently rejected, with the reason, so it can be replayed.
type DeadLetter struct {
	Time      time.Time       `json:"time"`
	Recipient string          `json:"recipient"`
	EventID   string          `json:"eventId"`
	EventType string          `json:"eventType"`
	Patient   string          `json:"patient"`
	Reason    string          `json:"reason"`
	Status    int             `json:"status,omitempty"`
	Attempts  int             `json:"attempts"`
	Event     json.RawMessage `json:"event"`
	// Answer is the recipient's JSON answer to the rejection (a FHIR
	// OperationOutcome), when it gave one.
	Answer json.RawMessage `json:"answer,omitempty"`
}
