package adt

import (
	"strings"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/problem"
)

// Error reports a message that cannot become a canonical event. It names
// the place in the message (segment, field, repetition, component) and the
// rule broken, never a value, so it is safe to log and to send back in an
// ERR segment (see Detail). The place reads as hl7.ErrDetail.Location
// writes it ("PID^1^3^2^1"), in Error() as in the ACK's ERR-2, the log and
// a release's problem document.
type Error struct {
	// Ack is the original-mode acknowledgement the message deserves:
	// hl7.AckAE when its content is wrong (the sender must correct it),
	// hl7.AckAR when it is rejected (a type this mapping does not take).
	Ack hl7.AckCode
	// Code is the HL7 table 0357 error code, e.g. hl7.CodeRequiredFieldMissing.
	Code string
	// The location (ERR-2). Zero values are omitted.
	Segment    string
	Sequence   int
	Field      int
	Repetition int
	Component  int
	// Reason is a fixed public text: the rule that was broken.
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("adt: ")
	if loc := e.Detail().Location(); loc != "" {
		b.WriteString(loc)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	b.WriteString(" [HL7 0357 ")
	b.WriteString(e.Code)
	if t := hl7.CodeText(e.Code); t != "" {
		b.WriteByte(' ')
		b.WriteString(t)
	}
	b.WriteString("; ")
	b.WriteString(string(e.Ack))
	b.WriteByte(']')
	return b.String()
}

// Detail returns the error as an ERR segment's content for hl7.NewACK.
func (e *Error) Detail() hl7.ErrDetail {
	seq := e.Sequence
	if seq == 0 && e.Segment != "" {
		seq = 1
	}
	return hl7.ErrDetail{
		Segment: e.Segment, Sequence: seq, Field: e.Field, Repetition: e.Repetition, Component: e.Component,
		Code: e.Code, Severity: hl7.SeverityError, Diagnostic: e.Reason,
	}
}

// Unwrap returns the error as a *problem.Error, so that problem.KindOf
// classifies it: Invalid for AE, Unsupported for AR. Kind.HL7Ack then gives
// back Ack.
func (e *Error) Unwrap() error {
	kind := problem.Invalid
	if e.Ack == hl7.AckAR {
		kind = problem.Unsupported
	}
	return &problem.Error{Kind: kind, Message: e.Reason}
}

// The reasons, fixed public texts. Tests check that every Error carries one
// of them, so that no value can slip into an error by accident.
const (
	reasonNotADT             = "only ADT messages are accepted here"
	reasonVersion            = "only HL7 version 2 messages are accepted"
	reasonNoTime             = "no event time: EVN-6, EVN-2 and MSH-7 are all empty"
	reasonBadTime            = "not a valid HL7 date/time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])"
	reasonNoSegment          = "a segment this trigger event requires is missing"
	reasonOneMerge           = "only one PID/MRG pair per A40 message is supported"
	reasonNHSFormat          = "NHS number is not ten digits"
	reasonNHSCheck           = "NHS number fails the modulus 11 check digit test"
	reasonNHSTwo             = "two different NHS numbers for one patient"
	reasonGPFormat           = "registered GP practice is not an ODS code (3 to 9 capital letters and digits)"
	reasonNoEncounter        = "no encounter identifier (PV1-19 visit number)"
	reasonEncounterFormat    = "encounter identifier must be 1 to 64 printable ASCII characters without spaces"
	reasonBirthDate          = "date of birth is not a valid date"
	reasonGender             = "administrative sex is not a known code (M, F, O, U, A, N or NHS 0, 1, 2, 9)"
	reasonTooLong            = "value is longer than the canonical event allows"
	reasonNoLocation         = "the location is empty (a transfer needs where from and where to)"
	reasonMergedNHSInvalid   = "the merged patient's NHS number is invalid"
	reasonHeader             = "message header field missing"
	reasonNoClass            = "no patient class (PV1-2): a change of class needs the class it changed to"
	reasonSwapTwo            = "a swap (A17) names exactly two patients, each with a PID segment"
	reasonPreviousNHSInvalid = "the previous NHS number (MRG-1) is invalid"
	reasonConfirmedOther     = "the NHS number given on release is not the one the message names"
	reasonConfirmedTwo       = "an NHS number given on release applies to a message about one patient"
)

// reasons lists every reason, for tests.
var reasons = []string{
	reasonNotADT, reasonVersion, reasonNoTime, reasonBadTime, reasonNoSegment, reasonOneMerge,
	reasonNHSFormat, reasonNHSCheck, reasonNHSTwo, reasonGPFormat, reasonNoEncounter,
	reasonEncounterFormat, reasonBirthDate, reasonGender, reasonTooLong, reasonNoLocation, reasonMergedNHSInvalid,
	reasonHeader, reasonNoClass, reasonSwapTwo, reasonPreviousNHSInvalid, reasonConfirmedOther, reasonConfirmedTwo,
}

func invalid(code, seg string, field, rep, comp int, reason string) *Error {
	return &Error{Ack: hl7.AckAE, Code: code, Segment: seg, Sequence: 1, Field: field, Repetition: rep, Component: comp, Reason: reason}
}

func rejected(code, seg string, field, comp int, reason string) *Error {
	return &Error{Ack: hl7.AckAR, Code: code, Segment: seg, Sequence: 1, Field: field, Component: comp, Reason: reason}
}
