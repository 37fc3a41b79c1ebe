package hl7

import (
	"strings"
	"testing"
)

// worstCases are 1 MiB messages built to make a parser or an accessor do
// the most work per byte: a field of nothing but repetition separators,
// one of component separators, one of subcomponent separators, and one of
// escape sequences.
func worstCases() map[string][]byte {
	const size = 1 << 20
	head := "MSH|^~\\&|PAS|RX1|CAREHUB|CAREHUB|20261124100000||ADT^A01|W1|P|2.4\rPID|1||"
	fill := func(unit string) []byte {
		return []byte(head + strings.Repeat(unit, (size-len(head))/len(unit)) + "\r")
	}
	return map[string][]byte{
		"repetitions":   fill("~"),
		"components":    fill("^"),
		"subcomponents": fill("&"),
		"escapes":       fill(`\X41\`),
		"mixed":         fill(`9^^^NHS&x^NH~`),
	}
}

// walk visits every value of the message through the public accessors, as
// a mapping would, unescaping each, and returns how many values (fields,
// repetitions, components, subcomponents) and text bytes it saw.
func walk(m *Message) (values, text int) {
	for _, seg := range m.AllSegments() {
		for _, f := range seg.Fields() {
			values++
			for _, r := range f.Repetitions() {
				values++
				for _, c := range r.Components() {
					values++
					for _, s := range c.Subs() {
						values++
						text += len(s.String())
					}
				}
			}
		}
	}
	return values, text
}

// TestWorstCaseMessagesWalkInLinearTime pins issue 14's first defect:
// Field.Repetitions called Rep(i), which rescanned the field from its
// start, so walking a field of 500,000 repetitions took minutes (an A01
// with 32k repetitions in PID-3 took 6.9 s to map) and held a core while
// the sender waited. Every accessor now splits a value once. The test
// walks each 1 MiB worst case completely; with the old code it ran for
// minutes (BenchmarkWorstCase gives the figures).
func TestWorstCaseMessagesWalkInLinearTime(t *testing.T) {
	for name, msg := range worstCases() {
		m, err := Parse(msg)
		if err != nil {
			t.Fatalf("%s: Parse: %v", name, err)
		}
		values, text := walk(m)
		if values < 200_000 && text < 200_000 {
			t.Errorf("%s: walked %d values and %d bytes of text, want the hundreds of thousands the message holds", name, values, text)
		}
	}
}

// BenchmarkWorstCase parses and walks each 1 MiB worst case. The bound
// that matters: a whole 1 MiB frame, parsed and every value visited, in
// milliseconds (tens of milliseconds at worst on the 2-core development
// machine), so one message can never hold a core.
func BenchmarkWorstCase(b *testing.B) {
	for name, msg := range worstCases() {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				m, err := Parse(msg)
				if err != nil {
					b.Fatal(err)
				}
				walk(m)
			}
		})
	}
}
