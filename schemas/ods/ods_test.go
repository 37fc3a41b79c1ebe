package ods_test

import (
	"regexp"
	"testing"

	"github.com/carehub/carehub/schemas/ods"
)

var cases = []struct {
	code string
	want bool
}{
	{"RX1", true}, {"A81001", true}, {"VM123", true}, {"RX1AB", true}, {"ABCDEFGHI", true},
	// Regression (issue 9): config accepted 10 characters while the event
	// schema refused them, so a source RX1AB12345 started and had every
	// event refused. Ten is not an ODS code anywhere now.
	{"ABCDEFGHIJ", false}, {"RX1AB12345", false}, {"K810030011", false},
	{"R1", false}, {"rx1", false}, {"RX-1", false}, {"", false}, {"RX1\n", false}, {"RX1 ", false}, {"ÅX1", false},
}

func TestValid(t *testing.T) {
	for _, tt := range cases {
		if got := ods.Valid(tt.code); got != tt.want {
			t.Errorf("Valid(%q):\n\tgot  %v\n\twant %v", tt.code, got, tt.want)
		}
	}
}

// TestPatternAgrees: the regular expression the JSON Schema uses says what
// Valid says.
func TestPatternAgrees(t *testing.T) {
	re := regexp.MustCompile(ods.Pattern)
	for _, tt := range cases {
		if got := re.MatchString(tt.code); got != tt.want {
			t.Errorf("Pattern %s on %q:\n\tgot  %v\n\twant %v", ods.Pattern, tt.code, got, tt.want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, tt := range cases {
		f.Add(tt.code)
	}
	re := regexp.MustCompile(ods.Pattern)
	f.Fuzz(func(t *testing.T, s string) {
		if ods.Valid(s) != re.MatchString(s) {
			t.Errorf("Valid(%q) = %v, Pattern says %v", s, ods.Valid(s), re.MatchString(s))
		}
	})
}
