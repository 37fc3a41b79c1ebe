// Package problem is carehub's small, append-only set of error kinds and the
// one place that maps them onto the answers each protocol gives a sender:
// HTTP status and RFC 9457 problem details, HL7 v2 acknowledgement codes, and
// FHIR OperationOutcome issue codes.
//
// An *Error carries a public message that is always safe to show (it never
// holds patient data: no NHS number, name or field value) and, separately, the
// wrapped cause for operators. Error() returns only the public part, so an
// error string can reach a log line or a response body without leaking:
//
//	err := problem.Violated("/data/patient/nhsNumber", "nhs-number-check-digit",
//		"NHS number fails the modulus 11 check")
//	problem.KindOf(err).HTTPStatus() // 422
//	problem.KindOf(err).HL7Ack()     // "AE"
//
// Kinds are append-only: a new kind is added at the end, never renumbered.
package problem

import (
	"errors"
	"strings"
)

// Kind classifies an error by what the sender should do about it.
type Kind int

// The kinds. Append only.
const (
	Other                Kind = iota // unclassified; treated as an internal error
	Invalid                          // the content breaks a rule: fix it and resend
	Unsupported                      // a type or media type the hub does not accept
	Unauthenticated                  // no or unknown credentials
	Forbidden                        // credentials valid, action not allowed (e.g. publishing as another organisation)
	TooLarge                         // the body or frame exceeds a configured limit
	NotFound                         // the addressed resource does not exist
	Conflict                         // the request conflicts with current state
	Unavailable                      // a transient failure (broker down, shutting down): retry later
	Internal                         // a bug or unexpected failure on the hub's side
	Malformed                        // the body cannot be parsed at all (not JSON, broken framing)
	MediaType                        // a Content-Type the endpoint does not accept
	Gone                             // what was asked for existed but is no longer kept (a feed's numbers past retention)
	Precondition                     // a precondition (If-Match) does not hold: the resource changed since it was read
	PreconditionRequired             // the change needs a precondition (If-Match) and none was given
)

var kindNames = [...]string{
	Other:                "other",
	Invalid:              "invalid",
	Unsupported:          "unsupported",
	Unauthenticated:      "unauthenticated",
	Forbidden:            "forbidden",
	TooLarge:             "too-large",
	NotFound:             "not-found",
	Conflict:             "conflict",
	Unavailable:          "unavailable",
	Internal:             "internal",
	Malformed:            "malformed",
	MediaType:            "media-type",
	Gone:                 "gone",
	Precondition:         "precondition-failed",
	PreconditionRequired: "precondition-required",
}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "other"
	}
	return kindNames[k]
}

// HTTPStatus is the status an HTTP API answers with for this kind.
func (k Kind) HTTPStatus() int {
	switch k {
	case Invalid:
		return 422
	case Malformed:
		return 400
	case Unsupported:
		return 422
	case MediaType:
		return 415
	case Unauthenticated:
		return 401
	case Forbidden:
		return 403
	case TooLarge:
		return 413
	case NotFound:
		return 404
	case Conflict:
		return 409
	case Unavailable:
		return 503
	case Gone:
		return 410
	case Precondition:
		return 412
	case PreconditionRequired:
		return 428
	default:
		return 500
	}
}

// HL7Ack is the original-mode acknowledgement code (MSA-1) for this kind:
// AE when the content is wrong and the sender must correct it, AR when the
// message was rejected for another reason (not allowed, not supported, or the
// hub cannot take it now and the sender should retry).
func (k Kind) HL7Ack() string {
	switch k {
	case Invalid, Malformed, TooLarge:
		return "AE"
	default:
		return "AR"
	}
}

// FHIRIssueCode is the OperationOutcome.issue.code (value set issue-type).
func (k Kind) FHIRIssueCode() string {
	switch k {
	case Invalid:
		return "invalid"
	case Malformed:
		return "structure"
	case Unsupported, MediaType:
		return "not-supported"
	case Unauthenticated:
		return "login"
	case Forbidden:
		return "forbidden"
	case TooLarge:
		return "too-costly"
	case NotFound:
		return "not-found"
	case Conflict, Precondition, PreconditionRequired:
		return "conflict"
	case Unavailable:
		return "transient"
	case Gone:
		return "not-found"
	default:
		return "exception"
	}
}

// Violation is one broken rule at one place in a document. Every field is
// safe to show: the pointer and rule name a location and a rule, never a value.
type Violation struct {
	Pointer string `json:"pointer"`          // RFC 6901 JSON pointer into the submitted document
	Rule    string `json:"rule"`             // the rule broken, e.g. "nhs-number-check-digit" or a schema keyword location
	Detail  string `json:"detail,omitempty"` // a public explanation of the rule
}

// Error is an error with a kind and a public message.
type Error struct {
	Kind       Kind
	Message    string      // public: shown to senders and in logs
	Violations []Violation // public: what is wrong, where
	Err        error       // private cause; not part of Error()
}

// Error returns the public message with the location of the first violations.
// It never includes the cause's text.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	for i, v := range e.Violations {
		if i == 3 {
			b.WriteString("; ...")
			break
		}
		b.WriteString("; ")
		b.WriteString(v.Pointer)
		if v.Rule != "" {
			b.WriteString(" (" + v.Rule + ")")
		}
	}
	return b.String()
}

// Unwrap returns the private cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns an error of the given kind with a public message.
func New(kind Kind, msg string) *Error { return &Error{Kind: kind, Message: msg} }

// Wrap returns an error of the given kind whose public message is msg and
// whose private cause is err.
func Wrap(kind Kind, msg string, err error) *Error {
	return &Error{Kind: kind, Message: msg, Err: err}
}

// Violated returns an Invalid error for one rule broken at one JSON pointer.
func Violated(pointer, rule, detail string) *Error {
	return &Error{Kind: Invalid, Message: detail, Violations: []Violation{{Pointer: pointer, Rule: rule, Detail: detail}}}
}

// KindOf returns the kind of the first *Error in err's chain, or Other.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Other
}

// Public returns a message about err that is safe to show: the public text of
// the first *Error in its chain, or a generic text for any other error (whose
// own text may embed values, URLs or identifiers).
func Public(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Error()
	}
	return "internal error"
}
