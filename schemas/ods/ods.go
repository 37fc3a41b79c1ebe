// Package ods holds the one check of an Organisation Data Service (ODS)
// code that every part of carehub uses: configuration (sources,
// recipients, listeners), the canonical event's JSON Schema, the HL7 v2
// mapping and consent directives.
//
// An ODS code is 3 to 9 upper-case ASCII letters and digits. The bounds
// come from the NHS code formats a care record names: a trust or other
// organisation has 3 characters (RX1) or 5 (8HA03), a GP practice 6
// (A81001), a care home or other site 5 (VM123, RX1AB), and the longest
// site codes 9 (the NHS Data Dictionary's SITE CODE OF TREATMENT is
// min an5, max an9). Ten characters would also admit local identifiers that
// PAS systems put in organisation fields (such as K810030011), which are
// not ODS codes and must not route events.
//
// The JSON Schema's odsCode pattern (schemas/common.v1.json) says the
// same; a test keeps the two in step.
package ods

// MinLen and MaxLen bound an ODS code's length.
const (
	MinLen = 3
	MaxLen = 9
)

// Pattern is the check as a regular expression, for JSON Schema.
const Pattern = "^[A-Z0-9]{3,9}$"

// Valid reports whether s has the shape of an ODS code.
func Valid(s string) bool {
	if len(s) < MinLen || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
