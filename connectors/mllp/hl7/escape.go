package hl7

import (
	"strings"
	"unicode/utf8"
)

// maxRepeat caps the counts of formatting escapes such as \.sp99\ so that a
// tiny message cannot expand into a huge string.
const maxRepeat = 100

// unescape decodes the HL7 escape sequences in s, a raw value written with
// delimiters d, and returns plain UTF-8 text, reading raw bytes and hex
// escapes in character set cs. It is what Field.String and the other String
// methods return; the package documentation lists the sequences. It never
// fails and never panics.
func unescape(s string, d *Delimiters, cs Charset) string {
	esc := d.Escape
	i := -1
	if esc != 0 {
		i = strings.IndexByte(s, esc)
	}
	if i < 0 {
		if !textNeedsDecoding(s, cs) {
			return s
		}
		return string(appendText(make([]byte, 0, len(s)+8), s, cs))
	}
	buf := make([]byte, 0, len(s))
	for {
		buf = appendText(buf, s[:i], cs)
		s = s[i:]
		// s[0] is the escape character; look for the closing one, which must
		// come before any delimiter.
		k := 1
		for k < len(s) && s[k] != esc && !d.isDelimiter(s[k]) {
			k++
		}
		if k < len(s) && s[k] == esc {
			var ok bool
			if buf, ok = appendEscape(buf, s[1:k], d, cs); !ok {
				buf = appendText(buf, s[:k+1], cs)
			}
			s = s[k+1:]
		} else {
			buf = append(buf, esc) // unterminated: keep the escape character
			s = s[1:]
		}
		if i = strings.IndexByte(s, esc); i < 0 {
			buf = appendText(buf, s, cs)
			return string(buf)
		}
	}
}

// appendEscape decodes the content of one escape sequence (without the
// surrounding escape characters). It reports false if the sequence is not
// recognised or malformed, in which case the caller keeps it literally.
func appendEscape(buf []byte, c string, d *Delimiters, cs Charset) ([]byte, bool) {
	if len(c) == 0 {
		return buf, false
	}
	if len(c) == 1 {
		switch c[0] {
		case 'F':
			return append(buf, d.Field), true
		case 'S':
			return append(buf, d.Component), true
		case 'T':
			return append(buf, d.Subcomponent), true
		case 'R':
			return append(buf, d.Repetition), true
		case 'E':
			return append(buf, d.Escape), true
		case 'P':
			if d.Truncation != 0 {
				return append(buf, d.Truncation), true
			}
		case 'H', 'N':
			return buf, true // highlighting on and off
		}
		return buf, false
	}
	switch c[0] {
	case 'X':
		h := c[1:]
		if len(h)%2 != 0 || !isHex(h) {
			return buf, false
		}
		var small [64]byte
		b := small[:0]
		if len(h)/2 > len(small) {
			b = make([]byte, 0, len(h)/2)
		}
		for j := 0; j < len(h); j += 2 {
			b = append(b, unhex(h[j])<<4|unhex(h[j+1]))
		}
		return appendHexBytes(buf, b, cs), true
	case 'C':
		return buf, len(c) == 5 && isHex(c[1:])
	case 'M':
		return buf, (len(c) == 5 || len(c) == 7) && isHex(c[1:])
	case 'Z':
		return buf, true
	case '.':
		return appendFormatting(buf, c[1:])
	}
	return buf, false
}

// appendFormatting renders a formatted-text command such as "br" or "sp2".
func appendFormatting(buf []byte, c string) ([]byte, bool) {
	if len(c) < 2 {
		return buf, false
	}
	cmd, arg := c[:2], strings.TrimLeft(c[2:], " ")
	n, hasArg, ok := parseCount(arg)
	if !ok {
		return buf, false
	}
	switch cmd {
	case "br", "ce", "fi", "nf":
		if hasArg {
			return buf, false
		}
		if cmd == "fi" || cmd == "nf" {
			return buf, true
		}
		return append(buf, '\n'), true
	case "sp":
		if !hasArg || n < 1 {
			n = 1
		}
		return appendRepeat(buf, '\n', n), true
	case "sk":
		if !hasArg {
			n = 1
		}
		return appendRepeat(buf, ' ', n), true
	case "in", "ti":
		return appendRepeat(buf, ' ', n), true
	}
	return buf, false
}

// parseCount parses an optional signed decimal count.
func parseCount(s string) (n int, present, ok bool) {
	if s == "" {
		return 0, false, true
	}
	neg := false
	if s[0] == '+' || s[0] == '-' {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" || len(s) > 6 {
		return 0, false, false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false, false
		}
		n = n*10 + int(s[i]-'0')
	}
	if neg {
		n = -n
	}
	return n, true, true
}

func appendRepeat(buf []byte, c byte, n int) []byte {
	n = min(n, maxRepeat)
	for ; n > 0; n-- {
		buf = append(buf, c)
	}
	return buf
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isDigit(c) && !('a' <= c && c <= 'f') && !('A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

const hexDigits = "0123456789abcdef"

// Escape encodes plain text s for use as a value in a message written with
// delimiters d. The result is 7-bit ASCII, safe in any message whatever its
// declared character set:
//
//   - the delimiters and the escape character become \F\ \S\ \T\ \R\ \E\,
//     and the truncation character (if d declares one) \P\;
//   - a line break (CR LF, CR or LF) becomes \.br\;
//   - other control characters become \Xhh\;
//   - U+0080..U+00FF become \Xhh\ (their ISO-8859-1 byte), and other
//     non-ASCII characters \Xhh..\ with their UTF-8 bytes; String reverses
//     both (invalid UTF-8 in s is escaped byte by byte).
//
// Hex digits are written in lower case, one sequence per character.
func Escape(s string, d Delimiters) string {
	clean := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c >= 0x7F || c == d.Escape || d.isDelimiter(c) || (c == d.Truncation && c != 0) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	seq := func(body string) {
		b.WriteByte(d.Escape)
		b.WriteString(body)
		b.WriteByte(d.Escape)
	}
	hexSeq := func(bs ...byte) {
		b.WriteByte(d.Escape)
		b.WriteByte('X')
		for _, x := range bs {
			b.WriteByte(hexDigits[x>>4])
			b.WriteByte(hexDigits[x&15])
		}
		b.WriteByte(d.Escape)
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\r' || c == '\n':
			seq(".br")
			if c == '\r' && i+1 < len(s) && s[i+1] == '\n' {
				i++
			}
		case c < ' ' || c == 0x7F:
			hexSeq(c)
		case c == d.Escape:
			seq("E")
		case c == d.Field:
			seq("F")
		case c == d.Component:
			seq("S")
		case c == d.Subcomponent:
			seq("T")
		case c == d.Repetition:
			seq("R")
		case c == d.Truncation && c != 0:
			seq("P")
		case c < utf8.RuneSelf:
			b.WriteByte(c)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				hexSeq(c)
			case r <= 0xFF:
				hexSeq(byte(r))
			default:
				hexSeq([]byte(s[i : i+size])...)
			}
			i += size
			continue
		}
		i++
	}
	return b.String()
}
