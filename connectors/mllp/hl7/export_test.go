package hl7

import "strings"

// Test-only views of a parsed message: production walks values with Rep,
// Component and Sub, or the All* iterators; the tests use these slices and
// counts (built with strings.Split, not the iterators' code) to check them.

// Delimiters returns the delimiters declared in MSH-1 and MSH-2.
func (m *Message) Delimiters() Delimiters { return m.delims }

// NumReps returns the number of repetitions; 0 for an empty field.
func (f Field) NumReps() int {
	if f.lit {
		return 1
	}
	return count(f.raw, delims(f.msg).Repetition)
}

// Repetitions returns all repetitions (none for an empty field), in one
// pass over the field. Use it or AllReps (which builds no slice), not Rep
// in a loop, to visit every repetition: Rep(n) scans from the field's start.
func (f Field) Repetitions() []Repetition {
	if f.lit {
		return []Repetition{Repetition(f)}
	}
	parts := split(f.raw, delims(f.msg).Repetition)
	out := make([]Repetition, len(parts))
	for i, p := range parts {
		out[i] = Repetition{p, f.msg, false}
	}
	return out
}

// NumComponents returns the number of components; 0 if empty.
func (r Repetition) NumComponents() int {
	if r.lit {
		return 1
	}
	return count(r.raw, delims(r.msg).Component)
}

// Components returns all components, in one pass (see Repetitions).
func (r Repetition) Components() []Component {
	if r.lit {
		return []Component{Component(r)}
	}
	parts := split(r.raw, delims(r.msg).Component)
	out := make([]Component, len(parts))
	for i, p := range parts {
		out[i] = Component{p, r.msg, false}
	}
	return out
}

// NumSubs returns the number of subcomponents; 0 if empty.
func (c Component) NumSubs() int {
	if c.lit {
		return 1
	}
	return count(c.raw, delims(c.msg).Subcomponent)
}

// Subs returns all subcomponents, in one pass (see Repetitions).
func (c Component) Subs() []Subcomponent {
	if c.lit {
		return []Subcomponent{Subcomponent(c)}
	}
	parts := split(c.raw, delims(c.msg).Subcomponent)
	out := make([]Subcomponent, len(parts))
	for i, p := range parts {
		out[i] = Subcomponent{p, c.msg, false}
	}
	return out
}

// count returns the number of sep-separated parts of s; 0 if s is empty.
func count(s string, sep byte) int {
	if s == "" {
		return 0
	}
	return strings.Count(s, string(sep)) + 1
}

// split returns the sep-separated parts of s (none for ""), in one pass.
func split(s string, sep byte) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, string(sep))
}
