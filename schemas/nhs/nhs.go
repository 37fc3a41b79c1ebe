// Package nhs holds the NHS number: a patient identifier that validates
// itself on the way in and redacts itself on the way out.
//
// # Usage
//
// Parse a number from an API payload (exactly ten ASCII digits), or with
// ParseLoose from a feed that formats it for people (HL7 v2 PID-3 often
// carries "943 476 5919" or "943-476-5919"):
//
//	n, err := nhs.Parse(s)
//	if err != nil {
//		// err is a *problem.Error of kind Invalid with rule
//		// "nhs-number-format" or "nhs-number-check-digit". Its text never
//		// holds the input: re-point it with problem.Violated at the field
//		// you read s from.
//	}
//
// A Number prints as "NHS(redacted)" whatever you do with it: fmt (every
// verb, including %#v), zap (zap.Any and zap.Stringer take its String
// method), and log/slog (LogValue). Digits returns the real value for the
// few places that must have it, and MarshalJSON writes the real digits,
// because inside an event payload the number is the data itself.
//
// Known ways to reveal the digits, all deliberate: Digits, MarshalJSON and
// anything built on encoding/json, which includes zap.Reflect and zap.Any
// of a struct that holds a Number (zap reflects structs through
// encoding/json). Never log a payload struct.
//
// A Pseudonymiser turns a Number into a keyed pseudonym (HMAC-SHA256), the
// only form of the identifier that may sit in a Kafka key, header, metric or
// log line.
//
// # Validation
//
// An NHS number is ten digits whose last digit is a modulus 11 check digit:
// multiply the first nine digits by the weights 10 down to 2, sum, and take
// 11 minus the remainder mod 11; a result of 11 means a check digit of 0, a
// result of 10 means no number with those nine digits is valid. This package
// checks exactly that and nothing else: it does not reject ranges that are
// not issued in England (such as 000...), so a Scottish CHI number that
// happens to pass modulus 11 passes here too.
//
// # Concurrency
//
// Number is a comparable value type, safe to copy and share. A Pseudonymiser
// is safe for concurrent use by multiple goroutines.
package nhs

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/carehub/carehub/schemas/problem"
)

// Rule names reported in the Violations of the errors this package returns.
const (
	RuleFormat     = "nhs-number-format"      // not exactly ten ASCII digits
	RuleCheckDigit = "nhs-number-check-digit" // ten digits, but the modulus 11 check fails
)

// Public texts of the errors. They hold no digit, so no part of an input can
// be mistaken for them (and a test can assert that an error string holds no
// digit at all).
const (
	detailFormat     = "NHS number must be exactly ten digits"
	detailCheckDigit = "NHS number fails the modulus eleven check digit test"
)

// Number is a valid NHS number. The zero Number is "no number" (IsZero).
//
// The value is held masked with a per-process random key, so that code which
// prints through reflection without calling methods (fmt on a struct with an
// unexported Number field, pretty-printers, test diff tools) shows noise,
// not the digits. Numbers compare with == as expected within a process; do
// not persist the struct itself, persist Digits or the JSON form.
type Number struct {
	v uint64 // value ^ mask; 0 means the zero Number
}

// mask has its top bit set, so value^mask is never 0 for any ten-digit value
// (all below 2^34) and the zero Number stays distinct from every number.
var mask = func() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return binary.LittleEndian.Uint64(b[:]) | 1<<63
}()

// Parse returns the Number spelled by s, which must be exactly ten ASCII
// digits (no spaces, no sign) with a valid modulus 11 check digit.
//
// A non-nil error is a *problem.Error of kind problem.Invalid with one
// Violation whose Rule is RuleFormat or RuleCheckDigit and whose Pointer is
// empty (the caller knows where s came from). Its text never holds s.
func Parse(s string) (Number, error) {
	if len(s) != 10 {
		return Number{}, formatError()
	}
	var v uint64
	for i := 0; i < 10; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return Number{}, formatError()
		}
		v = v*10 + uint64(c-'0')
	}
	if check, ok := CheckDigit(s[:9]); !ok || check != int(s[9]-'0') {
		return Number{}, checkDigitError()
	}
	return Number{v: v ^ mask}, nil
}

// CheckDigit returns the modulus 11 check digit of the first nine digits
// of an NHS number, and false when there is none (the remainder gives 10:
// no NHS number starts with those nine digits). nine must be nine ASCII
// digits. This is the one place the check is computed.
func CheckDigit(nine string) (int, bool) {
	if len(nine) != 9 {
		return 0, false
	}
	sum := 0
	for i := 0; i < 9; i++ {
		c := nine[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		sum += int(c-'0') * (10 - i)
	}
	switch check := 11 - sum%11; check {
	case 11:
		return 0, true
	case 10:
		return 0, false
	default:
		return check, true
	}
}

// ParseLoose is Parse for feeds that format the number for people: it drops
// spaces, tabs and hyphens ("943 476 5919", "943-476-5919") before parsing.
// Use Parse for the JSON API, where the contract is ten digits.
func ParseLoose(s string) (Number, error) {
	var b [10]byte
	n := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '-':
			continue
		default:
			if n == len(b) {
				return Number{}, formatError()
			}
			b[n] = c
			n++
		}
	}
	return Parse(string(b[:n]))
}

// MustParse is Parse that panics on error, for tests and examples. The panic
// value is the error, which holds no digits.
func MustParse(s string) Number {
	n, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return n
}

func formatError() error {
	return problem.Violated("", RuleFormat, detailFormat)
}

func checkDigitError() error {
	return problem.Violated("", RuleCheckDigit, detailCheckDigit)
}

// IsZero reports whether n is the zero Number (no number).
func (n Number) IsZero() bool { return n.v == 0 }

// put writes the ten digits of a non-zero n into b.
func (n Number) put(b *[10]byte) {
	v := n.v ^ mask
	for i := 9; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
}

// Digits returns the ten digits, or "" for the zero Number. It is the one
// way to get the real value as text: use it only where the value itself is
// required (a payload, a lookup), never for logs or errors.
func (n Number) Digits() string {
	if n.IsZero() {
		return ""
	}
	var b [10]byte
	n.put(&b)
	return string(b[:])
}

const (
	redacted     = "NHS(redacted)"
	none         = "NHS(none)"
	goRedacted   = "nhs.Number(redacted)"
	goZeroNumber = "nhs.Number{}"
)

// String returns "NHS(redacted)", or "NHS(none)" for the zero Number.
func (n Number) String() string {
	if n.IsZero() {
		return none
	}
	return redacted
}

// GoString returns "nhs.Number(redacted)" (or "nhs.Number{}"), for %#v.
func (n Number) GoString() string {
	if n.IsZero() {
		return goZeroNumber
	}
	return goRedacted
}

// Format makes every fmt verb print the redacted form: %v %s %d %x and
// the rest print String, %q prints it quoted, %#v prints GoString.
func (n Number) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, n.GoString())
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(n.String()))
	default:
		_, _ = io.WriteString(f, n.String())
	}
}

// LogValue implements slog.LogValuer: the redacted form.
func (n Number) LogValue() slog.Value { return slog.StringValue(n.String()) }

// MarshalJSON writes the real digits as a JSON string (null for the zero
// Number): in a payload the number is the data. See the package comment.
func (n Number) MarshalJSON() ([]byte, error) {
	if n.IsZero() {
		return []byte("null"), nil
	}
	b := make([]byte, 12)
	b[0], b[11] = '"', '"'
	n.put((*[10]byte)(b[1:11]))
	return b, nil
}

// UnmarshalJSON reads a JSON string with Parse (strict: ten digits). JSON
// null leaves n unchanged, as encoding/json does for other types. Errors are
// those of Parse and never hold the input.
func (n *Number) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	// Ten digits need no escapes, so anything but "dddddddddd" is wrong;
	// strconv.Unquote would accept escaped digits, which no sender needs.
	if len(b) != 12 || b[0] != '"' || b[11] != '"' {
		return formatError()
	}
	v, err := Parse(string(b[1:11]))
	if err != nil {
		return err
	}
	*n = v
	return nil
}
