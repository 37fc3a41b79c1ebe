// Package media names the media types carehub speaks, once: what each
// endpoint accepts and answers with, what a delivery carries, and what a
// record on Kafka holds. Compare them with Is, which ignores parameters
// (charset) and case, as RFC 9110 says media types compare.
package media

import (
	"mime"
	"strings"
)

// The media types.
const (
	// JSON is plain JSON: the data of every event (its datacontenttype), the
	// simple form of consent directives, and the hub's own answers.
	JSON = "application/json"
	// CloudEvent is one event in the CloudEvents structured mode.
	CloudEvent = "application/cloudevents+json"
	// CloudEventBatch is a JSON array of events (CloudEvents batched mode).
	CloudEventBatch = "application/cloudevents-batch+json"
	// FHIR is a FHIR R4 resource in JSON.
	FHIR = "application/fhir+json"
	// Problem is an RFC 9457 problem document.
	Problem = "application/problem+json"
	// HL7v2 is an HL7 version 2 message in its pipe-and-hat encoding (ER7),
	// as FHIR names it: what a held MLLP message holds.
	HL7v2 = "x-application/hl7-v2+er7"
	// NDJSON is newline-delimited JSON, one value a line: a backfill run's
	// progress, one job a line, as it goes.
	NDJSON = "application/x-ndjson"
	// EventStream is a server-sent events stream (WHATWG HTML): a pull
	// recipient's live feed.
	EventStream = "text/event-stream"
	// Text is plain text: a recipient's whole patient list, one NHS number
	// a line (PUT /v1/recipients/{ods}/patients).
	Text = "text/plain"
	// CloudEventFormats begins the media type of every CloudEvents event
	// format (application/cloudevents+json, +xml, -batch+json, ...): one
	// the hub does not read is still no binary-mode event.
	CloudEventFormats = "application/cloudevents"
)

// Of returns the media type of a Content-Type header value, lower-cased
// and without parameters, or "" if it does not parse.
func Of(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	return strings.ToLower(mt)
}

// Is reports whether a Content-Type header value names one of the media
// types.
func Is(contentType string, types ...string) bool {
	mt := Of(contentType)
	for _, t := range types {
		if mt != "" && mt == t {
			return true
		}
	}
	return false
}
