package hl7

// Delimiters are the message's encoding characters, declared by MSH-1 (the
// field separator) and MSH-2 (component, repetition, escape and subcomponent
// characters, plus the optional v2.7 truncation character).
type Delimiters struct {
	Field        byte // MSH-1, usually '|'
	Component    byte // MSH-2[0], usually '^'
	Repetition   byte // MSH-2[1], usually '~'
	Escape       byte // MSH-2[2], usually '\\'
	Subcomponent byte // MSH-2[3], usually '&'
	Truncation   byte // MSH-2[4] (v2.7+), usually '#'; 0 when not declared
}

// DefaultDelimiters are the HL7 recommended delimiters "|^~\&" without a
// truncation character.
var DefaultDelimiters = Delimiters{Field: '|', Component: '^', Repetition: '~', Escape: '\\', Subcomponent: '&'}

// EncodingCharacters returns the MSH-2 value for d: "^~\&", or "^~\&#" when a
// truncation character is declared.
func (d Delimiters) EncodingCharacters() string {
	b := []byte{d.Component, d.Repetition, d.Escape, d.Subcomponent}
	if d.Truncation != 0 {
		b = append(b, d.Truncation)
	}
	return string(b)
}

// isDelimiter reports whether c is one of the structural separators (not the
// escape or truncation character).
func (d *Delimiters) isDelimiter(c byte) bool {
	return c == d.Field || c == d.Component || c == d.Repetition || c == d.Subcomponent
}

// validDelimiterChar reports whether c may be used as a delimiter in a
// parsed message: printable ASCII punctuation. Letters and digits would make
// segment IDs ambiguous; whitespace and control characters would collide
// with segment terminators and padding.
func validDelimiterChar(c byte) bool {
	return c > ' ' && c < 0x7F && !isAlnum(c)
}
