package hl7

import (
	"iter"
	"strconv"
	"strings"
)

// Message is a parsed HL7 v2 message: a sequence of segments.
//
// A Message is immutable and safe for concurrent reads. It holds one private
// copy of the input; every Segment, Field, Repetition, Component and
// Subcomponent is a view into that copy, and text is unescaped and decoded
// only when String is called.
type Message struct {
	delims  Delimiters
	charset Charset
	segs    []Segment
}

// Charset returns the character set declared in MSH-18 (first repetition),
// normalised; CharsetUnspecified if MSH-18 is empty.
func (m *Message) Charset() Charset { return m.charset }

// NumSegments returns the number of segments.
func (m *Message) NumSegments() int { return len(m.segs) }

// SegmentAt returns the i-th segment, counting from 1 like SegmentIndex in
// ParseError, or nil if there is no such segment.
func (m *Message) SegmentAt(i int) *Segment {
	if i < 1 || i > len(m.segs) {
		return nil
	}
	return &m.segs[i-1]
}

// AllSegments returns every segment in order.
func (m *Message) AllSegments() []*Segment {
	out := make([]*Segment, len(m.segs))
	for i := range m.segs {
		out[i] = &m.segs[i]
	}
	return out
}

// Segment returns the first segment with the given ID, or nil. Methods of a
// nil *Segment return empty values, so lookups can be chained:
//
//	ward := m.Segment("PV1").Field(3).Component(1).String() // "" if no PV1
func (m *Message) Segment(name string) *Segment { return m.SegmentN(name, 1) }

// SegmentN returns the n-th (1-based) segment with the given ID, or nil.
func (m *Message) SegmentN(name string, n int) *Segment {
	for i := range m.segs {
		if m.segs[i].name == name {
			if n--; n == 0 {
				return &m.segs[i]
			}
		}
	}
	return nil
}

// Segments returns every segment with the given ID, in order.
func (m *Message) Segments(name string) []*Segment {
	var out []*Segment
	for i := range m.segs {
		if m.segs[i].name == name {
			out = append(out, &m.segs[i])
		}
	}
	return out
}

// Encode returns the message in wire form: the raw text of each segment
// followed by a CR. For input that was already CR-terminated (no BOM, no
// blank lines) the result is byte-identical to the input; LF and CRLF line
// ends become CR.
func (m *Message) Encode() []byte {
	n := 0
	for i := range m.segs {
		n += len(m.segs[i].raw) + 1
	}
	b := make([]byte, 0, n)
	for i := range m.segs {
		b = append(b, m.segs[i].raw...)
		b = append(b, '\r')
	}
	return b
}

// String describes the message's structure - type and segment count - and
// deliberately not its content, so that logging a *Message by accident does
// not leak patient data. Use Encode for the content.
func (m *Message) String() string {
	if m == nil {
		return "hl7.Message(nil)"
	}
	return "hl7.Message{" + m.Type().String() + ", " + strconv.Itoa(len(m.segs)) + " segments}"
}

// GoString is String, so that %#v does not print content either.
func (m *Message) GoString() string { return m.String() }

// ControlID returns MSH-10, the message control ID, unescaped.
func (m *Message) ControlID() string { return m.header().Field(10).String() }

// Version returns MSH-12.1, the HL7 version ID, e.g. "2.4".
func (m *Message) Version() string { return m.header().Field(12).Component(1).String() }

// MessageType is the content of MSH-9.
type MessageType struct {
	Code      string // MSH-9.1, e.g. "ADT"
	Trigger   string // MSH-9.2, e.g. "A01"
	Structure string // MSH-9.3, e.g. "ADT_A01" (v2.3.1+; often empty)
}

// String returns the type in HL7 form, e.g. "ADT^A01^ADT_A01", omitting
// empty trailing components.
func (t MessageType) String() string {
	s := t.Code
	if t.Trigger != "" || t.Structure != "" {
		s += "^" + t.Trigger
	}
	if t.Structure != "" {
		s += "^" + t.Structure
	}
	return s
}

// Type returns MSH-9.
func (m *Message) Type() MessageType {
	r := m.header().Field(9).Rep(1)
	return MessageType{r.Component(1).String(), r.Component(2).String(), r.Component(3).String()}
}

func (m *Message) header() *Segment {
	if len(m.segs) == 0 {
		return nil
	}
	return &m.segs[0]
}

// ValidateHeader checks that the MSH fields every receiver needs are
// present: MSH-9.1 (message type), MSH-10 (control ID), MSH-11 (processing
// ID) and MSH-12 (version). It returns a *ParseError with code 101 naming
// the first missing field, or nil.
func (m *Message) ValidateHeader() error {
	h := m.header()
	check := []struct {
		field int
		empty bool
		name  string
	}{
		{9, h.Field(9).Component(1).Empty(), "message type"},
		{10, h.Field(10).Empty(), "message control ID"},
		{11, h.Field(11).Empty(), "processing ID"},
		{12, h.Field(12).Empty(), "version ID"},
	}
	for _, c := range check {
		if c.empty {
			return &ParseError{
				Segment: "MSH", SegmentIndex: 1, Sequence: 1, Field: c.field, Offset: h.fieldOffset(c.field),
				Code: CodeRequiredFieldMissing, Reason: "MSH-" + strconv.Itoa(c.field) + " (" + c.name + ") is empty",
			}
		}
	}
	return nil
}

// Segment is one segment of a message: a three-character ID and fields.
type Segment struct {
	msg    *Message
	name   string
	raw    string
	seps   []int32 // offsets in raw of the field separators; part i lies between seps[i-1] and seps[i]
	offset int
	index  int // 1-based
	header bool
}

// Name returns the segment ID, e.g. "PID".
func (s *Segment) Name() string {
	if s == nil {
		return ""
	}
	return s.name
}

// Index returns the 1-based position of the segment in its message.
func (s *Segment) Index() int {
	if s == nil {
		return 0
	}
	return s.index
}

// Sequence returns the 1-based occurrence of this segment ID in the message
// (the "segment sequence" of an ERR-2 error location).
func (s *Segment) Sequence() int {
	if s == nil {
		return 0
	}
	n := 0
	for i := 0; i < s.index; i++ {
		if s.msg.segs[i].name == s.name {
			n++
		}
	}
	return n
}

// Offset returns the byte offset of the segment in the parsed input.
func (s *Segment) Offset() int {
	if s == nil {
		return 0
	}
	return s.offset
}

// Raw returns the segment's text as received, without its terminator.
func (s *Segment) Raw() string {
	if s == nil {
		return ""
	}
	return s.raw
}

// String describes the segment without its content (see Message.String).
func (s *Segment) String() string {
	if s == nil {
		return "hl7.Segment(nil)"
	}
	return "hl7.Segment{" + s.name + " #" + strconv.Itoa(s.index) + ", " + strconv.Itoa(s.NumFields()) + " fields}"
}

// GoString is String, so that %#v does not print content either.
func (s *Segment) GoString() string { return s.String() }

// NumFields returns the number of the last field present. Fields after it
// are empty.
func (s *Segment) NumFields() int {
	if s == nil {
		return 0
	}
	if s.header {
		return len(s.seps) + 1
	}
	return len(s.seps)
}

// part returns the i-th fs-separated part of the segment (0 is the ID), or
// "" if there are fewer parts.
func (s *Segment) part(i int) string {
	if i > len(s.seps) {
		return ""
	}
	start, end := 0, len(s.raw)
	if i > 0 {
		start = int(s.seps[i-1]) + 1
	}
	if i < len(s.seps) {
		end = int(s.seps[i])
	}
	return s.raw[start:end]
}

// Field returns field n, numbered from 1 as in the HL7 standard. In MSH
// field 1 is the field separator itself and field 2 the encoding
// characters; both are returned literally, without
// unescaping or splitting. Fields beyond NumFields are empty.
func (s *Segment) Field(n int) Field {
	if s == nil || n < 1 {
		return Field{}
	}
	if s.header {
		switch n {
		case 1:
			return Field{s.raw[3:4], s.msg, true}
		case 2:
			return Field{s.part(1), s.msg, true}
		}
		n--
	}
	return Field{s.part(n), s.msg, false}
}

// Fields returns fields 1 to NumFields.
func (s *Segment) Fields() []Field {
	n := s.NumFields()
	out := make([]Field, n)
	for i := range out {
		out[i] = s.Field(i + 1)
	}
	return out
}

// fieldOffset returns the byte offset of field n in the input, or the
// segment's offset if the field is absent.
func (s *Segment) fieldOffset(n int) int {
	if s == nil {
		return 0
	}
	if s.header {
		if n == 1 {
			return s.offset + 3
		}
		n--
	}
	if n < 1 || n > len(s.seps) {
		return s.offset
	}
	return s.offset + int(s.seps[n-1]) + 1
}

// Field is one field of a segment, possibly repeated.
type Field struct {
	raw string
	msg *Message
	lit bool // MSH-1 / MSH-2: not split, not unescaped
}

// Raw returns the field as received, escapes and delimiters included.
func (f Field) Raw() string { return f.raw }

// String returns the unescaped, UTF-8 text of the field; "" for the explicit
// null "". Repetition, component and subcomponent separators are kept as
// they are; use Rep, Component and Sub for unambiguous access.
func (f Field) String() string { return text(f.raw, f.msg, f.lit) }

// IsNull reports whether the field is the explicit HL7 null "" (meaning
// "delete the value"), as opposed to empty (meaning "not sent").
func (f Field) IsNull() bool { return f.raw == `""` }

// Empty reports whether the field is absent or empty.
func (f Field) Empty() bool { return f.raw == "" }

// Rep returns repetition n (from 1); empty if there is no such repetition.
func (f Field) Rep(n int) Repetition {
	if f.lit {
		if n == 1 {
			return Repetition(f)
		}
		return Repetition{"", f.msg, false}
	}
	return Repetition{nth(f.raw, delims(f.msg).Repetition, n), f.msg, false}
}

// AllReps yields the repetitions (none for an empty field) with their
// 0-based index, in one pass over the field and without building a slice:
// a field of a million repetitions costs no memory to visit. Use it, not
// Rep in a loop, to visit every repetition: Rep(n) scans from the field's
// start.
func (f Field) AllReps() iter.Seq2[int, Repetition] {
	return func(yield func(int, Repetition) bool) {
		if f.lit {
			yield(0, Repetition(f))
			return
		}
		for i, p := range parts(f.raw, delims(f.msg).Repetition) {
			if !yield(i, Repetition{p, f.msg, false}) {
				return
			}
		}
	}
}

// Component returns component n of the first repetition: a shortcut for
// f.Rep(1).Component(n).
func (f Field) Component(n int) Component { return f.Rep(1).Component(n) }

// Repetition is one occurrence of a repeating field.
type Repetition struct {
	raw string
	msg *Message
	lit bool
}

// Raw returns the repetition as received.
func (r Repetition) Raw() string { return r.raw }

// String returns the unescaped text; see Field.String.
func (r Repetition) String() string { return text(r.raw, r.msg, r.lit) }

// IsNull reports whether the value is the explicit null "".
func (r Repetition) IsNull() bool { return r.raw == `""` }

// Empty reports whether the value is absent or empty.
func (r Repetition) Empty() bool { return r.raw == "" }

// Component returns component n (from 1); empty if absent.
func (r Repetition) Component(n int) Component {
	if r.lit {
		if n == 1 {
			return Component(r)
		}
		return Component{"", r.msg, false}
	}
	return Component{nth(r.raw, delims(r.msg).Component, n), r.msg, false}
}

// Component is one component of a field repetition.
type Component struct {
	raw string
	msg *Message
	lit bool
}

// Raw returns the component as received.
func (c Component) Raw() string { return c.raw }

// String returns the unescaped text; see Field.String.
func (c Component) String() string { return text(c.raw, c.msg, c.lit) }

// IsNull reports whether the value is the explicit null "".
func (c Component) IsNull() bool { return c.raw == `""` }

// Empty reports whether the value is absent or empty.
func (c Component) Empty() bool { return c.raw == "" }

// Sub returns subcomponent n (from 1); empty if absent.
func (c Component) Sub(n int) Subcomponent {
	if c.lit {
		if n == 1 {
			return Subcomponent(c)
		}
		return Subcomponent{"", c.msg, false}
	}
	return Subcomponent{nth(c.raw, delims(c.msg).Subcomponent, n), c.msg, false}
}

// AllSubs yields the subcomponents with their 0-based index, in one pass
// and without building a slice (see Field.AllReps).
func (c Component) AllSubs() iter.Seq2[int, Subcomponent] {
	return func(yield func(int, Subcomponent) bool) {
		if c.lit {
			yield(0, Subcomponent(c))
			return
		}
		for i, p := range parts(c.raw, delims(c.msg).Subcomponent) {
			if !yield(i, Subcomponent{p, c.msg, false}) {
				return
			}
		}
	}
}

// Subcomponent is the smallest unit of an HL7 value.
type Subcomponent struct {
	raw string
	msg *Message
	lit bool
}

// Raw returns the subcomponent as received.
func (s Subcomponent) Raw() string { return s.raw }

// String returns the unescaped text; "" for the explicit null "".
func (s Subcomponent) String() string { return text(s.raw, s.msg, s.lit) }

// IsNull reports whether the value is the explicit null "".
func (s Subcomponent) IsNull() bool { return s.raw == `""` }

// Empty reports whether the value is absent or empty.
func (s Subcomponent) Empty() bool { return s.raw == "" }

// Element is a value at any level, as returned by Message.Lookup.
type Element struct {
	raw string
	msg *Message
	lit bool
}

// Raw returns the value as received.
func (e Element) Raw() string { return e.raw }

// String returns the unescaped text; see Field.String.
func (e Element) String() string { return text(e.raw, e.msg, e.lit) }

// IsNull reports whether the value is the explicit null "".
func (e Element) IsNull() bool { return e.raw == `""` }

// Empty reports whether the value is absent or empty.
func (e Element) Empty() bool { return e.raw == "" }

func text(raw string, m *Message, lit bool) string {
	if raw == "" || raw == `""` {
		return ""
	}
	if lit || m == nil {
		return raw
	}
	return unescape(raw, &m.delims, m.charset)
}

func delims(m *Message) *Delimiters {
	if m == nil {
		return &DefaultDelimiters
	}
	return &m.delims
}

// parts yields the sep-separated parts of s (none for "") with their 0-based
// index, in one pass, without allocating.
func parts(s string, sep byte) iter.Seq2[int, string] {
	return func(yield func(int, string) bool) {
		if s == "" {
			return
		}
		for i := 0; ; i++ {
			j := strings.IndexByte(s, sep)
			if j < 0 {
				yield(i, s)
				return
			}
			if !yield(i, s[:j]) {
				return
			}
			s = s[j+1:]
		}
	}
}

// nth returns the n-th (1-based) sep-separated part of s, or "".
func nth(s string, sep byte, n int) string {
	if n < 1 {
		return ""
	}
	for ; n > 1; n-- {
		i := strings.IndexByte(s, sep)
		if i < 0 {
			return ""
		}
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, sep); i >= 0 {
		return s[:i]
	}
	return s
}
