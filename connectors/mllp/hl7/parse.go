package hl7

import (
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

const utf8BOM = "\xEF\xBB\xBF"

// MaxMessageSize is the largest message Parse accepts: 1 GiB. (Field
// positions are stored as 32-bit offsets; real messages are far smaller, and
// transports such as MLLP enforce their own, lower limits.)
const MaxMessageSize = 1 << 30

// Parse parses one HL7 v2 message.
//
// Segments are terminated by CR, as the standard requires; CRLF and LF are
// tolerated, blank and whitespace-only lines are skipped, and a UTF-8 byte
// order mark and leading blank lines are ignored. A LF not preceded by CR
// ends a segment only if what follows looks like the start of a segment
// (a segment ID followed by the field separator, or end of line); otherwise
// it is kept as part of the value, as sloppy senders put line breaks in
// free-text fields.
//
// The first segment must be MSH; its MSH-1 and MSH-2 give the delimiters,
// and MSH-18 the character set. Every segment must start with a valid
// segment ID (an upper-case letter and two upper-case letters or digits;
// Z-segments included). data must hold exactly one message: batch and
// file envelope segments (FHS, BHS, BTS, FTS) and a second MSH are rejected
// with code 100.
//
// Parse copies data once; the returned Message does not refer to data.
// Errors are *ParseError values, which never contain message data.
func Parse(data []byte) (*Message, error) {
	m, err := parseMessage(string(data), 0, len(data), false)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// ParseHeader parses only the first segment of data, which must be an MSH
// segment, so that a receiver can still acknowledge a message whose body is
// malformed (echoing MSH-10 and swapping sender and receiver). Unlike Parse
// it does not reject an unsupported MSH-18 character set; the returned
// Message then reports CharsetUnspecified.
func ParseHeader(data []byte) (*Message, error) {
	m, err := parseMessage(string(data), 0, len(data), true)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// lines iterates over the segments of s[pos:end], returning [start, stop)
// of each non-blank line. See Parse for the rules.
type lines struct {
	s        string
	pos, end int
	fs       byte
}

func (it *lines) next() (start, stop int, ok bool) {
	s := it.s
	for {
		i := it.pos
		for i < it.end && (s[i] == '\r' || s[i] == '\n') {
			i++
		}
		if i >= it.end {
			it.pos = it.end
			return 0, 0, false
		}
		start = i
		lineEnd := it.end
		if cr := strings.IndexByte(s[i:it.end], '\r'); cr >= 0 {
			lineEnd = i + cr
		}
		stop = lineEnd
		for j := i; j < lineEnd; {
			lf := strings.IndexByte(s[j:lineEnd], '\n')
			if lf < 0 {
				break
			}
			k := j + lf
			if it.lfBreaks(k) {
				stop = k
				break
			}
			j = k + 1
		}
		it.pos = stop
		if !isBlank(s[start:stop]) {
			return start, stop, true
		}
	}
}

// lfBreaks reports whether the LF at s[k] ends a segment.
func (it *lines) lfBreaks(k int) bool {
	rest := it.s[k+1 : it.end]
	if len(rest) == 0 || rest[0] == '\r' || rest[0] == '\n' {
		return true
	}
	if len(rest) >= 3 && isSegmentID(rest[:3]) {
		return len(rest) == 3 || rest[3] == it.fs || rest[3] == '\r' || rest[3] == '\n'
	}
	// A whitespace-only remainder of the line is a blank line.
	for i := 0; i < len(rest); i++ {
		switch rest[i] {
		case ' ', '\t':
			continue
		case '\r', '\n':
			return true
		}
		return false
	}
	return true
}

func isBlank(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' && s[i] != '\t' {
			return false
		}
	}
	return true
}

// skipLeading returns the offset of the first byte of s[from:to] that is not
// a byte order mark (at offset 0 only) or whitespace.
func skipLeading(s string, from, to int) int {
	i := from
	if i == 0 && strings.HasPrefix(s[:to], utf8BOM) {
		i = len(utf8BOM)
	}
	for i < to && (s[i] == '\r' || s[i] == '\n' || s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// lineID returns the segment ID at s[i:], if it is a valid one.
func lineID(s string, i, to int) string {
	if to-i >= 3 && isSegmentID(s[i:i+3]) {
		return s[i : i+3]
	}
	return ""
}

// parseDelimiters reads MSH-1 and MSH-2 of the MSH segment starting at s[i],
// the first segment of the message.
func parseDelimiters(s string, i, to int) (Delimiters, *ParseError) {
	name := s[i : i+3]
	fail := func(field, off int, code, reason string) (Delimiters, *ParseError) {
		return Delimiters{}, &ParseError{Segment: name, SegmentIndex: 1, Sequence: 1, Field: field,
			Offset: off, Code: code, Reason: reason}
	}
	if i+3 >= to || s[i+3] == '\r' || s[i+3] == '\n' {
		return fail(1, i+3, CodeRequiredFieldMissing, name+"-1 (field separator) is missing")
	}
	fs := s[i+3]
	if !validDelimiterChar(fs) {
		return fail(1, i+3, CodeDataType, name+"-1 (field separator) must be a printable ASCII character other than a letter or digit")
	}
	j := i + 4
	k := j
	for k < to && s[k] != fs && s[k] != '\r' && s[k] != '\n' {
		k++
	}
	enc := s[j:k]
	// A LF that does not end the segment would be kept in MSH-2 as text
	// (see Parse): MSH-2 holds the encoding characters and nothing else.
	// (Regression, found by FuzzParse: MSH-2 read back with the LF and the
	// bytes after it.)
	if k < to && s[k] == '\n' && !(&lines{s: s, end: to, fs: fs}).lfBreaks(k) {
		return fail(2, k, CodeDataType, name+"-2 (encoding characters) must be followed by the field separator or the end of the segment")
	}
	switch {
	case len(enc) == 0:
		return fail(2, j, CodeRequiredFieldMissing, name+"-2 (encoding characters) is missing")
	case len(enc) < 4:
		return fail(2, j, CodeDataType, name+"-2 must declare 4 encoding characters (component, repetition, escape, subcomponent), found "+strconv.Itoa(len(enc)))
	case len(enc) > 5:
		return fail(2, j, CodeDataType, name+"-2 declares more than 5 encoding characters")
	}
	all := string(fs) + enc
	for p := 0; p < len(all); p++ {
		if p > 0 && !validDelimiterChar(all[p]) {
			return fail(2, j+p-1, CodeDataType, name+"-2 encoding character "+strconv.Itoa(p)+" must be a printable ASCII character other than a letter or digit")
		}
		if q := strings.IndexByte(all[p+1:], all[p]); q >= 0 {
			return fail(2, j+p+q, CodeDataType, name+"-1 and "+name+"-2 declare the same delimiter character twice")
		}
	}
	d := Delimiters{Field: fs, Component: enc[0], Repetition: enc[1], Escape: enc[2], Subcomponent: enc[3]}
	if len(enc) == 5 {
		d.Truncation = enc[4]
	}
	return d, nil
}

// parseMessage parses the message in s[from:to]. Offsets in errors and
// segments are relative to s.
func parseMessage(s string, from, to int, headerOnly bool) (*Message, *ParseError) {
	if to-from > MaxMessageSize {
		return nil, &ParseError{Offset: from, Code: CodeSegmentSequence, Reason: "message larger than MaxMessageSize"}
	}
	i := skipLeading(s, from, to)
	if i >= to {
		return nil, &ParseError{Offset: i, Code: CodeSegmentSequence, Reason: "message is empty"}
	}
	if to-i < 3 || s[i:i+3] != "MSH" {
		e := &ParseError{SegmentIndex: 1, Sequence: 1, Offset: i, Code: CodeSegmentSequence}
		switch e.Segment = lineID(s, i, to); e.Segment {
		case "":
			e.Reason = "message must start with an MSH segment; the first segment has no valid segment ID"
		case "FHS", "BHS":
			e.Reason = "message must start with an MSH segment, found batch envelope segment " + e.Segment + ": batch and file envelopes are not accepted, only a single message"
		default:
			e.Reason = "message must start with an MSH segment, found " + e.Segment
		}
		return nil, e
	}
	d, perr := parseDelimiters(s, i, to)
	if perr != nil {
		return nil, perr
	}
	fs := string(d.Field)
	it := lines{s: s, pos: i, end: to, fs: d.Field}
	var nseg, nsep int
	if headerOnly {
		nseg = 1
		lineEnd := to
		if e := strings.IndexAny(s[i:to], "\r\n"); e >= 0 {
			lineEnd = i + e
		}
		nsep = strings.Count(s[i:lineEnd], fs)
	} else {
		body := s[i:to]
		nseg = strings.Count(body, "\r") + strings.Count(body, "\n") + 1
		nsep = strings.Count(body, fs)
	}
	m := &Message{delims: d, segs: make([]Segment, 0, nseg)}
	// One pointer-free array holds the field boundaries of every segment.
	backing := make([]int32, 0, nsep)
	for {
		start, stop, ok := it.next()
		if !ok {
			break
		}
		line := s[start:stop]
		index := len(m.segs) + 1
		if len(line) < 3 || !isSegmentID(line[:3]) || (len(line) > 3 && line[3] != d.Field) {
			e := &ParseError{SegmentIndex: index, Offset: start, Code: CodeSegmentSequence,
				Reason: "segment does not start with a segment ID (an upper-case letter and two upper-case letters or digits) followed by the field separator"}
			return nil, e
		}
		name := line[:3]
		if index > 1 {
			reason, seq := "", 1
			switch name {
			case "MSH":
				reason, seq = "second MSH segment: the input holds more than one message, and only a single message is accepted", 2
			case "FHS", "BHS", "BTS", "FTS":
				reason = "batch envelope segment " + name + " inside a message: batch and file envelopes are not accepted"
			}
			if reason != "" {
				return nil, &ParseError{Segment: name, SegmentIndex: index, Sequence: seq, Offset: start,
					Code: CodeSegmentSequence, Reason: reason}
			}
		}
		first := len(backing)
		backing = appendSeparators(backing, line, d.Field)
		m.segs = append(m.segs, Segment{
			msg: m, name: name, raw: line, seps: backing[first:len(backing):len(backing)],
			offset: start, index: index, header: index == 1,
		})
		if headerOnly {
			break
		}
	}
	// MSH-18: character set (first repetition).
	code := m.segs[0].Field(18).Rep(1).Raw()
	cs, err := LookupCharset(code)
	if err != nil {
		if headerOnly {
			cs = CharsetUnspecified
		} else {
			return nil, &ParseError{Segment: "MSH", SegmentIndex: 1, Sequence: 1, Field: 18,
				Offset: m.segs[0].fieldOffset(18), Code: CodeTableValueNotFound,
				Reason: "MSH-18 " + err.Error()[len("hl7: "):], Err: err}
		}
	}
	m.charset = cs
	if cs == CharsetUTF8 && !headerOnly {
		if err := m.checkUTF8(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// checkUTF8 refuses a message that declares UTF-8 (MSH-18) and is not:
// read on, its bad bytes would become U+FFFD, so that what recipients get
// differs from what was sent without anyone being told. The error names
// the segment and field of the first invalid byte, never the bytes.
// Regression (issue 14): invalid UTF-8 was accepted and passed on altered.
func (m *Message) checkUTF8() *ParseError {
	for i := range m.segs {
		seg := &m.segs[i]
		if utf8.ValidString(seg.raw) {
			continue
		}
		bad := 0
		for bad < len(seg.raw) {
			r, size := utf8.DecodeRuneInString(seg.raw[bad:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			bad += size
		}
		field := 0
		for n, sep := range seg.seps {
			if int(sep) < bad {
				field = n + 1
			}
		}
		if seg.header {
			field++ // MSH-1 is the field separator itself
		}
		return &ParseError{Segment: seg.name, SegmentIndex: seg.index, Sequence: seg.Sequence(), Field: field,
			Offset: seg.offset + bad, Code: CodeDataType,
			Reason: "the message declares UTF-8 in MSH-18 but this field is not valid UTF-8"}
	}
	return nil
}

// appendSeparators appends the offset of every c in line to dst. Fields are
// short (often empty), so instead of one IndexByte call per field it tests
// eight bytes at a time with word arithmetic ("SWAR").
func appendSeparators(dst []int32, line string, c byte) []int32 {
	const (
		lo = 0x0101010101010101
		m7 = 0x7F7F7F7F7F7F7F7F
	)
	pattern := lo * uint64(c)
	p := 0
	for ; p+8 <= len(line); p += 8 {
		w := uint64(line[p]) | uint64(line[p+1])<<8 | uint64(line[p+2])<<16 | uint64(line[p+3])<<24 |
			uint64(line[p+4])<<32 | uint64(line[p+5])<<40 | uint64(line[p+6])<<48 | uint64(line[p+7])<<56
		x := w ^ pattern // bytes equal to c are now zero
		// High bit of each byte set exactly when that byte of x is zero.
		z := ^((x&m7 + m7) | x | m7)
		for z != 0 {
			dst = append(dst, int32(p+bits.TrailingZeros64(z)>>3))
			z &= z - 1
		}
	}
	for ; p < len(line); p++ {
		if line[p] == c {
			dst = append(dst, int32(p))
		}
	}
	return dst
}
