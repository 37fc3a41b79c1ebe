package hl7

import (
	"strconv"
	"strings"
	"time"
)

// AckCode is an acknowledgement code (HL7 table 0008), sent in MSA-1.
type AckCode string

// Acknowledgement codes. The A* codes are for original-mode and
// application acknowledgements, the C* codes for enhanced-mode accept
// acknowledgements.
const (
	AckAA AckCode = "AA" // application accept
	AckAE AckCode = "AE" // application error
	AckAR AckCode = "AR" // application reject
	AckCA AckCode = "CA" // commit accept
	AckCE AckCode = "CE" // commit error
	AckCR AckCode = "CR" // commit reject
)

// Severity is an ERR-4 severity (HL7 table 0516).
type Severity byte

// Severities. The zero value is treated as SeverityError.
const (
	SeverityError       Severity = 'E'
	SeverityWarning     Severity = 'W'
	SeverityInformation Severity = 'I'
)

// ErrDetail describes one problem to report in an ERR segment of an
// acknowledgement. ParseError.Detail builds one from a parse error.
type ErrDetail struct {
	// Error location (ERR-2, v2.5 ERL data type). Zero values are omitted.
	Segment      string // segment ID, e.g. "PID"
	Sequence     int    // occurrence of the segment in the message, from 1
	Field        int    // field position, from 1
	Repetition   int    // field repetition, from 1
	Component    int    // component number, from 1
	Subcomponent int    // subcomponent number, from 1

	Code     string   // HL7 table 0357 code (ERR-3.1); empty means CodeApplicationInternalError
	Severity Severity // ERR-4; zero means SeverityError

	// Diagnostic is free text for ERR-7 (diagnostic information). It is
	// escaped, but it is the caller's duty to keep patient data out of it;
	// ParseError.Reason qualifies.
	Diagnostic string
}

// DefaultACKVersion is the version NewACK declares when it has no original
// message to copy the version from.
const DefaultACKVersion = "2.5"

// NewACK builds an acknowledgement for orig and returns it in wire form
// (segments terminated by CR), ready to be framed with mllp.WriteFrame.
//
// The MSH uses the original's delimiters and version (MSH-12) and processing
// ID (MSH-11); sending and receiving application and facility are swapped
// (MSH-3/4 <-> MSH-5/6); MSH-7 is now, to the second with its UTC offset;
// MSH-9 is ACK^<original trigger>^ACK (the structure component is left out
// for versions before 2.3.1, which did not have it); MSH-10 is controlID;
// MSH-18 repeats the first character set the original declared, if it is
// one LookupCharset accepts.
//
// MSA-1 is code and MSA-2 the original's MSH-10, copied verbatim. Each
// ErrDetail becomes an ERR segment in v2.5 style: ERR-2 the location
// (SEG^sequence^field^repetition^component^subcomponent), ERR-3
// code^text^HL70357 using the standard text of table 0357, ERR-4 the
// severity and ERR-7 the diagnostic text. For versions before 2.5, whose
// receivers read ERR-1 instead, ERR-1 is filled too
// (SEG^sequence^field^code&text&HL70357) and MSA-3 carries the text of the
// first error. Nothing from the original message other than MSH-3 to MSH-6,
// MSH-9.2, MSH-10 to MSH-12 and MSH-18 is copied, so no patient data can
// leak into an acknowledgement.
//
// orig may be nil when the message could not be parsed at all (try
// ParseHeader first: it succeeds whenever the MSH segment is sound). NewACK
// then builds a minimal acknowledgement with the default delimiters, no
// addressing, MSH-9 "ACK", processing ID "P", version DefaultACKVersion and
// an empty MSA-2.
func NewACK(orig *Message, code AckCode, controlID string, now time.Time, errs ...ErrDetail) []byte {
	d := DefaultDelimiters
	version, procID := DefaultACKVersion, "P"
	var sendApp, sendFac, recvApp, recvFac, origID, trigger, charset string
	if orig != nil && orig.header() != nil {
		d = orig.delims
		h := orig.header()
		sendApp, sendFac = wireSafe(h.Field(5).Raw()), wireSafe(h.Field(6).Raw())
		recvApp, recvFac = wireSafe(h.Field(3).Raw()), wireSafe(h.Field(4).Raw())
		origID = wireSafe(h.Field(10).Raw())
		trigger = wireSafe(h.Field(9).Rep(1).Component(2).Raw())
		if v := wireSafe(h.Field(11).Raw()); v != "" {
			procID = v
		}
		if v := wireSafe(h.Field(12).Raw()); v != "" {
			version = v
		}
		// The acknowledgement is plain ASCII; echo the character set only if
		// it is one we know, so that the ACK itself always parses.
		var set Charset
		if cs := wireSafe(h.Field(18).Rep(1).Raw()); cs != "" {
			if c, err := LookupCharset(cs); err == nil {
				charset, set = cs, c
			}
		}
		// What is copied must be valid in the declared character set,
		// even when the original's own bytes were not (it is then refused).
		for _, f := range []*string{&sendApp, &sendFac, &recvApp, &recvFac, &origID, &trigger, &procID, &version} {
			*f = validIn(set, *f)
		}
	}
	ver := parseVersion(nth(version, d.Component, 1))
	legacyERR := ver.known && ver.less(2, 5, 0)
	withStructure := !ver.known || !ver.less(2, 3, 1)

	fs := d.Field
	var b strings.Builder
	b.Grow(256 + 128*len(errs))
	field := func(s string) { b.WriteByte(fs); b.WriteString(s) }

	// MSH
	b.WriteString("MSH")
	field(d.EncodingCharacters())
	field(sendApp)
	field(sendFac)
	field(recvApp)
	field(recvFac)
	field(Escape(now.Format("20060102150405-0700"), d)) // a sender may use + or - as a delimiter
	field("")                                           // MSH-8 security
	b.WriteByte(fs)
	b.WriteString("ACK")
	if trigger != "" || withStructure {
		b.WriteByte(d.Component)
		b.WriteString(trigger)
	}
	if withStructure {
		b.WriteByte(d.Component)
		b.WriteString("ACK")
	}
	field(Escape(controlID, d))
	field(procID)
	field(version)
	if charset != "" {
		b.WriteString(strings.Repeat(string(fs), 5)) // MSH-13 .. MSH-17
		field(charset)
	}
	b.WriteByte('\r')

	// MSA
	b.WriteString("MSA")
	field(string(code))
	field(origID)
	if legacyERR && len(errs) > 0 {
		field(Escape(CodeText(errCode(errs[0])), d))
	}
	b.WriteByte('\r')

	// ERR
	for _, e := range errs {
		code := errCode(e)
		text := Escape(CodeText(code), d)
		b.WriteString("ERR")
		b.WriteByte(fs) // ERR-1 (legacy ELD)
		if legacyERR {
			b.WriteString(location(e, d, false))
			b.WriteByte(d.Component)
			b.WriteString(Escape(code, d))
			b.WriteByte(d.Subcomponent)
			b.WriteString(text)
			b.WriteByte(d.Subcomponent)
			b.WriteString("HL70357")
		}
		field(location(e, d, true)) // ERR-2
		b.WriteByte(fs)             // ERR-3
		b.WriteString(Escape(code, d))
		b.WriteByte(d.Component)
		b.WriteString(text)
		b.WriteByte(d.Component)
		b.WriteString("HL70357")
		sev := e.Severity
		if sev == 0 {
			sev = SeverityError
		}
		field(Escape(string(rune(sev)), d)) // ERR-4
		if e.Diagnostic != "" {
			field("")                      // ERR-5 application error code
			field("")                      // ERR-6 application error parameter
			field(Escape(e.Diagnostic, d)) // ERR-7 diagnostic information
		}
		b.WriteByte('\r')
	}
	return []byte(b.String())
}

func errCode(e ErrDetail) string {
	if e.Code == "" {
		return CodeApplicationInternalError
	}
	return e.Code
}

// Location returns the error location as an ACK's ERR-2 carries it with the
// default delimiters ("PID^1^3^2^1": segment, its occurrence, field,
// repetition, component). Logs and tests use it, so a location reads the
// same everywhere.
func (e ErrDetail) Location() string { return location(e, DefaultDelimiters, true) }

// location formats an error location: the full ERL (v2.5 ERR-2) or the
// first three components used by the legacy ELD (ERR-1). The components
// are separated by the component separator and trailing empty ones are
// dropped (except in the legacy form, which is always three components
// long because the code follows).
func location(e ErrDetail, d Delimiters, full bool) string {
	seg := ""
	if isSegmentID(e.Segment) {
		seg = e.Segment
	}
	parts := []string{seg, num(e.Sequence), num(e.Field)}
	if full {
		parts = append(parts, num(e.Repetition), num(e.Component), num(e.Subcomponent))
		for len(parts) > 0 && parts[len(parts)-1] == "" {
			parts = parts[:len(parts)-1]
		}
	}
	return strings.Join(parts, string(d.Component))
}

func num(n int) string {
	if n <= 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// wireSafe drops control characters (CR, LF, MLLP framing bytes) from a raw
// value copied into an acknowledgement.
// validIn drops from s the bytes that are not UTF-8 when the acknowledgement
// declares UTF-8 (Parse refuses a message that breaks its declaration). A
// sender's other bytes are echoed as sent, so that it can match MSA-2.
func validIn(set Charset, s string) string {
	if set == CharsetUTF8 {
		return strings.ToValidUTF8(s, "")
	}
	return s
}

func wireSafe(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7F {
			return strings.Map(func(r rune) rune {
				if r < ' ' || r == 0x7F {
					return -1
				}
				return r
			}, s)
		}
	}
	return s
}

type version struct {
	known               bool
	major, minor, patch int
}

// parseVersion parses a version ID such as "2.3.1" or "2.5".
func parseVersion(s string) version {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) < 2 || len(parts) > 3 {
		return version{}
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return version{}
		}
		n[i] = v
	}
	return version{true, n[0], n[1], n[2]}
}

func (v version) less(major, minor, patch int) bool {
	if v.major != major {
		return v.major < major
	}
	if v.minor != minor {
		return v.minor < minor
	}
	return v.patch < patch
}
