package hl7

import (
	"strings"
	"unicode/utf8"
)

// Charset is a character set code from MSH-18 (HL7 table 0211), normalised
// by LookupCharset. Text values are always returned as UTF-8; the Charset
// says how the raw bytes of the message are to be read.
type Charset string

// Supported character sets.
const (
	// CharsetUnspecified: MSH-18 empty. HL7 then means 7-bit ASCII; in
	// practice senders put UTF-8 or ISO-8859-1 there, so text that is valid
	// UTF-8 is passed through and anything else is read as ISO-8859-1.
	CharsetUnspecified Charset = ""
	// CharsetASCII ("ASCII", "ISO IR6") is treated like CharsetUnspecified,
	// so that mislabelled 8-bit text degrades gracefully.
	CharsetASCII Charset = "ASCII"
	// CharsetLatin1 ("8859/1", "ISO IR100"): every byte is one character.
	CharsetLatin1 Charset = "8859/1"
	// CharsetLatin9 ("8859/15"): ISO-8859-1 with the euro sign and seven
	// other replacements.
	CharsetLatin9 Charset = "8859/15"
	// CharsetUTF8 ("UNICODE UTF-8", also the common "UTF-8"): bytes are UTF-8;
	// invalid sequences in text become U+FFFD.
	CharsetUTF8 Charset = "UNICODE UTF-8"
)

// LookupCharset normalises an MSH-18 code (case and surrounding spaces are
// ignored). It returns an error wrapping ErrUnsupportedCharset, of type
// *CharsetError, for codes this package cannot decode, such as the
// multi-byte Asian sets or UTF-16.
func LookupCharset(code string) (Charset, error) {
	c := strings.ToUpper(strings.TrimSpace(code))
	switch c {
	case "":
		return CharsetUnspecified, nil
	case "ASCII", "ISO IR6", "US-ASCII":
		return CharsetASCII, nil
	case "8859/1", "ISO IR100", "ISO-8859-1":
		return CharsetLatin1, nil
	case "8859/15", "ISO IR203", "ISO-8859-15":
		return CharsetLatin9, nil
	case "UNICODE UTF-8", "UTF-8", "UTF8":
		return CharsetUTF8, nil
	case "UNICODE":
		// Deprecated by HL7 (it names no encoding), but every NHS ITK v2.4
		// message declares it and means UTF-8.
		return CharsetUTF8, nil
	}
	return "", &CharsetError{Charset: printableCode(code)}
}

// printableCode returns code if it is an HL7 table 0211 character set code
// (or has the shape of one, like "8859/7" or "ISO IR58"), so that it can
// appear in an error message without any risk of carrying message data (a
// sender that shifts its MSH fields could put a name in MSH-18); otherwise a
// placeholder.
func printableCode(code string) string {
	code = strings.TrimSpace(code)
	u := strings.ToUpper(code)
	switch u {
	case "ASCII", "UNICODE", "UNICODE UTF-8", "UNICODE UTF-16", "UNICODE UTF-32", "UTF-8",
		"GB 18030-2000", "KS X 1001", "CNS 11643-1992", "BIG-5":
		return code
	}
	for _, prefix := range []string{"8859/", "ISO IR"} {
		if n := strings.TrimPrefix(u, prefix); n != u && n != "" && len(n) <= 3 && strings.Trim(n, "0123456789") == "" {
			return code
		}
	}
	return "(unrecognised code)"
}

// latin9 lists the ISO-8859-15 code points that differ from ISO-8859-1.
var latin9 = map[byte]rune{
	0xA4: '€', 0xA6: 'Š', 0xA8: 'š', 0xB4: 'Ž', 0xB8: 'ž', 0xBC: 'Œ', 0xBD: 'œ', 0xBE: 'Ÿ',
}

// appendSingleByte appends s decoded as ISO-8859-1 or ISO-8859-15.
func appendSingleByte[T string | []byte](dst []byte, s T, cs Charset) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			continue
		}
		r := rune(c)
		if cs == CharsetLatin9 {
			if l, ok := latin9[c]; ok {
				r = l
			}
		}
		dst = utf8.AppendRune(dst, r)
	}
	return dst
}

// appendText appends literal message text s, decoded from cs to UTF-8.
func appendText(dst []byte, s string, cs Charset) []byte {
	switch cs {
	case CharsetLatin1, CharsetLatin9:
		return appendSingleByte(dst, s, cs)
	case CharsetUTF8:
		if utf8.ValidString(s) {
			return append(dst, s...)
		}
		return append(dst, strings.ToValidUTF8(s, "\uFFFD")...)
	default:
		if utf8.ValidString(s) {
			return append(dst, s...)
		}
		return appendSingleByte(dst, s, CharsetLatin1)
	}
}

// appendHexBytes appends the bytes of one \Xhh..\ escape. In single-byte
// character sets each byte is a character. Otherwise a valid UTF-8 sequence
// is taken as UTF-8 and anything else as ISO-8859-1 bytes, which is what
// Escape produces for U+0080..U+00FF.
func appendHexBytes(dst, b []byte, cs Charset) []byte {
	switch cs {
	case CharsetLatin1, CharsetLatin9:
		return appendSingleByte(dst, b, cs)
	}
	if utf8.Valid(b) {
		return append(dst, b...)
	}
	return appendSingleByte(dst, b, CharsetLatin1)
}

// textNeedsDecoding reports whether s, containing no escape character, must
// be converted to be returned as UTF-8.
func textNeedsDecoding(s string, cs Charset) bool {
	switch cs {
	case CharsetLatin1, CharsetLatin9:
		for i := 0; i < len(s); i++ {
			if s[i] >= utf8.RuneSelf {
				return true
			}
		}
		return false
	}
	return !utf8.ValidString(s)
}
