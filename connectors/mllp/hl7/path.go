package hl7

import "strconv"

// Path addresses a value in a message, in HL7 "terse path" notation:
//
//	SEG[(occurrence)]-field[(repetition)][.component[.subcomponent]]
//
// All numbers count from 1. Examples:
//
//	PID-5            the whole field (all repetitions, components as sent)
//	PID-3(2)         the second repetition of PID-3
//	PID-3(2).4.1     its component 4, subcomponent 1
//	PID-5.1          component 1 of the first repetition
//	IN1(2)-4         field 4 of the second IN1 segment
//	MSH-9.2          the trigger event
//
// A '-' may be used instead of '.' before the component and subcomponent
// ("PID-3-1"), as HAPI's terser does. Field numbering follows the standard,
// so MSH-1 is the field separator and MSH-2 the encoding characters.
type Path struct {
	Segment      string // segment ID
	Occurrence   int    // 1-based occurrence of the segment; 0 means 1
	Field        int    // 1-based field number
	Repetition   int    // 1-based repetition; 0 means the whole field, or the first repetition if Component is set
	Component    int    // 1-based component; 0 means the whole repetition
	Subcomponent int    // 1-based subcomponent; 0 means the whole component
}

// ParsePath parses a terse path; errors are *PathError.
func ParsePath(s string) (Path, error) {
	var p Path
	fail := func(reason string) (Path, error) { return Path{}, &PathError{Path: s, Reason: reason} }
	if len(s) < 3 || !isSegmentID(s[:3]) {
		return fail("must start with a segment ID such as PID")
	}
	p.Segment = s[:3]
	rest := s[3:]
	num := func(what string) (int, bool) {
		i := 0
		for i < len(rest) && isDigit(rest[i]) {
			i++
		}
		if i == 0 || i > 6 {
			return 0, false
		}
		n, _ := strconv.Atoi(rest[:i])
		rest = rest[i:]
		return n, n > 0
	}
	paren := func() (int, bool, bool) { // value, present, ok
		if rest == "" || rest[0] != '(' {
			return 0, false, true
		}
		rest = rest[1:]
		n, ok := num("")
		if !ok || rest == "" || rest[0] != ')' {
			return 0, true, false
		}
		rest = rest[1:]
		return n, true, true
	}
	var ok bool
	if p.Occurrence, _, ok = paren(); !ok {
		return fail("segment occurrence must be a positive number in parentheses")
	}
	if rest == "" || rest[0] != '-' {
		return fail("expected '-' and a field number after the segment")
	}
	rest = rest[1:]
	if p.Field, ok = num(""); !ok {
		return fail("field number must be a positive number")
	}
	if p.Repetition, _, ok = paren(); !ok {
		return fail("repetition must be a positive number in parentheses")
	}
	for level := 0; rest != ""; level++ {
		if level == 2 || (rest[0] != '.' && rest[0] != '-') {
			return fail("unexpected text after the path")
		}
		rest = rest[1:]
		n, ok := num("")
		if !ok {
			return fail("component and subcomponent numbers must be positive numbers")
		}
		if level == 0 {
			p.Component = n
		} else {
			p.Subcomponent = n
		}
	}
	return p, nil
}

// MustParsePath is like ParsePath but panics on error; for paths written in
// the program, such as package-level variables.
func MustParsePath(s string) Path {
	p, err := ParsePath(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the path in canonical terse form.
func (p Path) String() string {
	b := []byte(p.Segment)
	if p.Occurrence > 1 {
		b = append(b, '(')
		b = strconv.AppendInt(b, int64(p.Occurrence), 10)
		b = append(b, ')')
	}
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(p.Field), 10)
	if p.Repetition > 0 {
		b = append(b, '(')
		b = strconv.AppendInt(b, int64(p.Repetition), 10)
		b = append(b, ')')
	}
	if p.Component > 0 {
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(p.Component), 10)
		if p.Subcomponent > 0 {
			b = append(b, '.')
			b = strconv.AppendInt(b, int64(p.Subcomponent), 10)
		}
	}
	return string(b)
}

// Lookup returns the value p addresses. A value that is not present - the
// segment, field, repetition or component is missing - is an empty Element.
func (m *Message) Lookup(p Path) Element {
	occ := p.Occurrence
	if occ < 1 {
		occ = 1
	}
	seg := m.SegmentN(p.Segment, occ)
	if seg == nil {
		return Element{}
	}
	f := seg.Field(p.Field)
	if p.Repetition == 0 && p.Component == 0 {
		return Element(f)
	}
	rep := f.Rep(max(p.Repetition, 1))
	if p.Component == 0 {
		return Element(rep)
	}
	c := rep.Component(p.Component)
	if p.Subcomponent == 0 {
		return Element(c)
	}
	return Element(c.Sub(p.Subcomponent))
}

// Value returns the unescaped text at a terse path such as "PID-3(2).4.1"
// (see Path). A value that is not present yields "" and no error; the
// error, a *PathError, reports a malformed path only. To tell an absent
// segment from an empty value use Segment; to see the explicit null "" use
// Lookup(p).IsNull().
func (m *Message) Value(path string) (string, error) {
	p, err := ParsePath(path)
	if err != nil {
		return "", err
	}
	return m.Lookup(p).String(), nil
}
