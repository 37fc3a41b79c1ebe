// Package event is carehub's canonical event: a CloudEvents 1.0 envelope in
// structured JSON mode whose data is validated against the JSON Schema for
// its type (package schemas).
//
// # Usage
//
// Ingest validates what a sender sent, once, with a Validator built at start:
//
//	v, err := event.NewValidator() // compiles every schema; fails at start, not per event
//	...
//	e, err := v.Parse(body)
//	if err != nil {
//		problemhttp.Write(w, err) // 400 malformed, 415 unsupported type, 422 invalid + violations
//		return
//	}
//	key := pseudonymiser.Pseudonym(e.Patient.NHSNumber) // the Kafka key
//	value, _ := e.Marshal()                           // canonical envelope JSON
//
// A batch (application/cloudevents-batch+json) is split with ParseBatch and
// each element parsed on its own.
//
// The router reads events back from Kafka with Unmarshal, which trusts the
// topic (no schema validation) but extracts the same facts as Parse: the
// publisher, the patient's NHS number and GP practice, the encounter, the
// discharge destination, the sensitivity labels and whether a clinical
// document is attached. A copy goes in a Form: Full (the event; for a
// correction, its allow-list) or, under the consent obligation
// "notification-only", Notification: one allow-list for every type (the
// patient's identifiers, the encounter or care plan id, how to ask for the
// full record). TypeRule, one entry per type, says which reference an event
// is about, what each form keeps and how it follows earlier events.
//
// # Errors
//
// Every error is a *problem.Error, and no error text holds a value from the
// event: each problem.Violation names a JSON pointer into the submitted
// envelope (/data/patient/nhsNumber) and a rule, with a detail written from
// the rule alone. Schema violations have rules "schema:" + the JSON Schema
// keyword location with $ref hops left out,
// e.g. "schema:/properties/patient/required"; rules enforced in code
// have plain names (nhs-number-check-digit, cloudevents-source, ...).
// The jsonschema library's own messages quote instance values, so they are
// never used.
//
// Pointers are built from the sender's property names. A property name that
// does not look like a field name (for instance one that is all digits) is
// withheld and the pointer names its parent object instead.
//
// # Logging
//
// Event redacts itself: fmt, zap (MarshalLogObject) and slog (LogValue)
// show only metadata (id, type, publisher, time, data size), never data,
// labels or identifiers. Do not log Event.Data, Event.Subject or
// Event.Extensions.
//
// # Concurrency
//
// A Validator is immutable after NewValidator and safe for concurrent use.
// An Event is a plain value: safe to read from many goroutines, not to
// mutate while others read it.
package event
