// Package hl7 parses, reads and acknowledges HL7 version 2 messages, such as
// the ADT (admission, discharge, transfer) messages hospitals exchange.
//
// # What an HL7 v2 message looks like
//
// A message is text made of segments, one per line, each terminated by a
// carriage return (CR, 0x0D). A segment starts with a three-character ID
// (MSH, EVN, PID, PV1, or a site-defined Z-segment such as ZNM) followed by
// fields separated by the field separator, usually '|':
//
//	MSH|^~\&|PAS|RX1|HUB|CAREHUB|20240102120000||ADT^A01^ADT_A01|MSG0001|P|2.4
//	EVN|A01|20240102120000
//	PID|1||9990500002^^^NHS^NH~D123^^^RX1^MR||SMITH^JOHN^^^MR||19580119|M
//
// Fields have structure of their own. A field can repeat (separated by '~'),
// each repetition can have components (separated by '^'), and each component
// subcomponents (separated by '&'). Above, PID-3 (patient identifiers) has
// two repetitions; in the first, component 1 is the NHS number and component
// 4 the assigning authority "NHS".
//
// The message header MSH declares these delimiters itself: MSH-1 is the
// field separator (the character right after "MSH") and MSH-2 holds the
// component, repetition, escape and subcomponent characters, plus in v2.7
// an optional truncation character. Counting fields from 1 as the standard
// does, MSH-3 is therefore the first field after "^~\&" - a classic
// off-by-one trap that Segment.Field gets right.
//
// A delimiter that occurs in data is written as an escape sequence: \F\ for
// the field separator, \S\ component, \R\ repetition, \T\ subcomponent and
// \E\ for the escape character itself. Other escapes carry bytes in hex
// (\X0D\), line breaks (\.br\) and formatting.
//
// The String methods of Field, Repetition, Component, Subcomponent and
// Element (and Message.Value) decode escapes into plain UTF-8 text, reading
// raw bytes and hex escapes in the character set MSH-18 declares. The rules
// (HL7 v2 chapter 2, "escape sequences"), shown with the default escape
// character:
//
//	\F\ \S\ \T\ \R\ \E\   field, component, subcomponent, repetition separator, escape character
//	\P\                   truncation character (v2.7), only when MSH-2 declares one
//	\Xhhhh..\             the bytes given in hex (even number of digits, any case),
//	                      each byte one character in ISO-8859-1/-15 messages;
//	                      otherwise UTF-8 if the bytes are valid UTF-8, else
//	                      ISO-8859-1 (what Escape writes for U+0080..U+00FF)
//	\.br\                 line break: "\n"
//	\.sp\ \.spN\          N line breaks (default 1)
//	\.ce\                 line break (the centring is lost in plain text)
//	\.skN\                N spaces (default 1)
//	\.in±N\ \.ti±N\       N spaces when N > 0, nothing otherwise
//	\.fi\ \.nf\           removed (fill/no-fill modes have no plain-text form)
//	\H\ \N\               removed (highlighting has no plain-text form)
//	\Cxxyy\ \Mxxyy[zz]\   removed: character-set switches are not applied, so
//	                      they are dropped rather than rendered as garbage
//	\Z..\                 removed (locally defined escapes)
//
// Counts are capped at 100. Anything else - an unknown sequence, an escape
// character with no closing escape character before the next delimiter, or a
// malformed hex or formatting sequence - is kept literally. Decoding never
// fails and never panics.
//
// An empty field means "no value sent". The explicit null, written as two
// double quotes (""), means "delete the stored value"; IsNull tells them
// apart.
//
// # Reading a message
//
// Parse splits the message once and keeps the raw (escaped) text, so that
// Encode gives back the exact bytes that were parsed. Values are unescaped
// and converted to UTF-8 only when String is called:
//
//	m, err := hl7.Parse(payload)
//	nhs := m.Segment("PID").Field(3).Rep(1).Component(1).String()
//	name, err := m.Value("PID-5.1") // terse path, see Path
//
// Missing segments and fields read as empty values rather than errors, and
// methods of a nil *Segment are safe, so lookups chain without checks.
//
// # Character sets
//
// MSH-18 names the character set. ASCII, ISO-8859-1 ("8859/1"),
// ISO-8859-15 and UTF-8 are decoded; when MSH-18 is empty, valid UTF-8 is
// passed through and other bytes are read as ISO-8859-1. Any other declared
// character set makes Parse fail with an error wrapping
// ErrUnsupportedCharset, so that text is never silently garbled.
//
// # Errors and patient data
//
// Parse errors are *ParseError values that locate the problem (segment,
// segment position and occurrence, field number, byte offset) and carry an
// HL7 table 0357 error code, ready for an ERR segment. They never contain
// field values, so they can be logged and returned to the sender without
// leaking patient data. For the same reason Message and Segment print as a
// structural summary, not as their content.
//
// # Batches
//
// Files and batches wrap several messages in FHS/BHS ... BTS/FTS
// envelopes. This package does not read them: an MLLP frame carries one
// message, and Parse rejects envelope segments and a second MSH with a
// segment sequence error (code 100).
//
// # Acknowledging
//
// NewACK builds the acknowledgement a receiver returns: MSH addressed back
// to the sender, MSA with the acknowledgement code and the original control
// ID, and ERR segments for the problems found. When Parse fails,
// ParseHeader usually still recovers the MSH so that the acknowledgement can
// be addressed properly:
//
//	m, err := hl7.Parse(payload)
//	if err != nil {
//		var pe *hl7.ParseError
//		errors.As(err, &pe)
//		hdr, _ := hl7.ParseHeader(payload) // nil if even MSH is broken
//		ack := hl7.NewACK(hdr, hl7.AckAR, newID(), time.Now(), pe.Detail())
//		...
//	}
package hl7
