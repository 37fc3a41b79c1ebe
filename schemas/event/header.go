package event

import (
	"net/textproto"
	"strings"
	"unicode/utf8"
)

// The CloudEvents HTTP protocol binding carries attributes as ce- headers in
// binary mode (and may in structured mode), their values percent-encoded
// (section 3.1.3.2). Sources decode them (DecodeHeaderValue); sinks that add
// ce- headers to a delivery encode them (EncodeHeaderValue).

// EncodeHeaderValue percent-encodes an attribute's string value for a ce-
// header: space, '"', '%' and every byte outside printable ASCII become %XY
// (upper-case hex) of their UTF-8 bytes.
func EncodeHeaderValue(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if needsEncoding(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsEncoding(c) {
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&0xf])
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

func needsEncoding(c byte) bool { return c <= ' ' || c == '"' || c == '%' || c >= 0x7f }

// DecodeHeaderValue undoes the HTTP binding's encoding of a header value
// (section 3.1.3.2): a double-quoted string is unquoted (older senders),
// then one round of percent-decoding is made. A '%' not followed by two hex
// digits is taken as itself, as senders that do not encode (the CloudEvents
// JavaScript SDK among them) send it. The result must be UTF-8.
func DecodeHeaderValue(v string) (string, bool) {
	v = textproto.TrimString(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			if v[i] == '\\' && i+1 < len(v)-1 {
				i++
			}
			b.WriteByte(v[i])
		}
		v = b.String()
	}
	if strings.IndexByte(v, '%') >= 0 {
		var b strings.Builder
		b.Grow(len(v))
		for i := 0; i < len(v); i++ {
			if v[i] == '%' && i+2 < len(v) && isHex(v[i+1]) && isHex(v[i+2]) {
				b.WriteByte(unhex(v[i+1])<<4 | unhex(v[i+2]))
				i += 2
				continue
			}
			b.WriteByte(v[i])
		}
		v = b.String()
	}
	if !utf8.ValidString(v) {
		return "", false
	}
	for _, r := range v {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return "", false
		}
	}
	return v, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
