package hl7

import (
	"errors"
	"strconv"
	"strings"
)

// HL7 table 0357 (message error condition codes), as used in ERR-3 and in
// ParseError.Code.
const (
	CodeAccepted                 = "0"   // Message accepted
	CodeSegmentSequence          = "100" // Segment sequence error
	CodeRequiredFieldMissing     = "101" // Required field missing
	CodeDataType                 = "102" // Data type error
	CodeTableValueNotFound       = "103" // Table value not found
	CodeValueTooLong             = "104" // Value too long (v2.6+)
	CodeUnsupportedMessageType   = "200" // Unsupported message type
	CodeUnsupportedEventCode     = "201" // Unsupported event code
	CodeUnsupportedProcessingID  = "202" // Unsupported processing id
	CodeUnsupportedVersionID     = "203" // Unsupported version id
	CodeUnknownKeyIdentifier     = "204" // Unknown key identifier
	CodeDuplicateKeyIdentifier   = "205" // Duplicate key identifier
	CodeApplicationRecordLocked  = "206" // Application record locked
	CodeApplicationInternalError = "207" // Application internal error
)

var codeTexts = map[string]string{
	CodeAccepted:                 "Message accepted",
	CodeSegmentSequence:          "Segment sequence error",
	CodeRequiredFieldMissing:     "Required field missing",
	CodeDataType:                 "Data type error",
	CodeTableValueNotFound:       "Table value not found",
	CodeValueTooLong:             "Value too long",
	CodeUnsupportedMessageType:   "Unsupported message type",
	CodeUnsupportedEventCode:     "Unsupported event code",
	CodeUnsupportedProcessingID:  "Unsupported processing id",
	CodeUnsupportedVersionID:     "Unsupported version id",
	CodeUnknownKeyIdentifier:     "Unknown key identifier",
	CodeDuplicateKeyIdentifier:   "Duplicate key identifier",
	CodeApplicationRecordLocked:  "Application record locked",
	CodeApplicationInternalError: "Application internal error",
}

// CodeText returns the standard description of an HL7 table 0357 error
// code, or "" for a code outside the table.
func CodeText(code string) string { return codeTexts[code] }

// ParseError reports a message that could not be parsed or failed a
// structural check. It names locations and rules only: Error() never
// contains field values, so it is safe to log and to send back in an ERR
// segment (see Detail).
type ParseError struct {
	Segment      string // segment ID, e.g. "MSH"; "" when the segment has no valid ID
	SegmentIndex int    // 1-based position of the segment in the input; 0 if not applicable
	Sequence     int    // 1-based occurrence of this segment ID (ERR-2.2); 0 if unknown
	Field        int    // 1-based field number (MSH-1 is the field separator); 0 for the whole segment
	Offset       int    // byte offset in the input where the problem was found
	Code         string // HL7 table 0357 error code, e.g. CodeSegmentSequence
	Reason       string // the rule that was broken; never contains message data
	Err          error  // underlying sentinel error, e.g. ErrUnsupportedCharset; may be nil
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString("hl7: ")
	switch {
	case isSegmentID(e.Segment):
		// The location as ERR-2 and the logs write it (ErrDetail.Location).
		b.WriteString(e.Detail().Location())
		b.WriteString(" (")
		if e.SegmentIndex > 0 {
			b.WriteString("segment ")
			b.WriteString(strconv.Itoa(e.SegmentIndex))
			b.WriteString(", ")
		}
	case e.SegmentIndex > 0:
		b.WriteString("segment ")
		b.WriteString(strconv.Itoa(e.SegmentIndex))
		if e.Field > 0 {
			b.WriteString(" field ")
			b.WriteString(strconv.Itoa(e.Field))
		}
		b.WriteString(" (")
	default:
		b.WriteString("(")
	}
	b.WriteString("offset ")
	b.WriteString(strconv.Itoa(e.Offset))
	b.WriteString("): ")
	b.WriteString(e.Reason)
	if e.Code != "" {
		b.WriteString(" [HL7 0357 ")
		b.WriteString(e.Code)
		if t := CodeText(e.Code); t != "" {
			b.WriteByte(' ')
			b.WriteString(t)
		}
		b.WriteByte(']')
	}
	return b.String()
}

// Unwrap returns the underlying sentinel error, if any.
func (e *ParseError) Unwrap() error { return e.Err }

// Detail converts the error into an ErrDetail for NewACK: ERR-2 location,
// ERR-3 code, severity E, and the Reason as diagnostic text.
func (e *ParseError) Detail() ErrDetail {
	return ErrDetail{
		Segment:    e.Segment,
		Sequence:   e.Sequence,
		Field:      e.Field,
		Code:       e.Code,
		Severity:   SeverityError,
		Diagnostic: e.Reason,
	}
}

// ErrUnsupportedCharset is wrapped by the error Parse returns when MSH-18
// names a character set this package cannot decode. Use errors.As with
// *CharsetError to get the code.
var ErrUnsupportedCharset = errors.New("hl7: unsupported character set")

// CharsetError reports an unsupported MSH-18 character set code.
type CharsetError struct {
	Charset string // the MSH-18 code, or "(unprintable)" if it is not a plausible code
}

func (e *CharsetError) Error() string {
	return "hl7: unsupported character set " + strconv.Quote(e.Charset)
}

// Is makes errors.Is(err, ErrUnsupportedCharset) true.
func (e *CharsetError) Is(target error) bool { return target == ErrUnsupportedCharset }

// PathError reports a malformed terse path passed to ParsePath or
// Message.Value. It quotes the path, which is written by the programmer and
// contains no message data.
type PathError struct {
	Path   string
	Reason string
}

func (e *PathError) Error() string {
	return "hl7: invalid path " + strconv.Quote(e.Path) + ": " + e.Reason
}

// isSegmentID reports whether s is a syntactically valid segment ID: an
// upper-case letter followed by two upper-case letters or digits.
func isSegmentID(s string) bool {
	return len(s) == 3 && isUpper(s[0]) && (isUpper(s[1]) || isDigit(s[1])) && (isUpper(s[2]) || isDigit(s[2]))
}

func isUpper(c byte) bool { return 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlnum(c byte) bool { return isUpper(c) || isDigit(c) || ('a' <= c && c <= 'z') }
