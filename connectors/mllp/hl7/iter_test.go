package hl7

import (
	"fmt"
	"testing"
)

// TestAllRepsAndAllSubsYieldWhatTheSlicesHold checks the iterators against
// Repetitions and Subs, on every field of a message with empty, repeated,
// escaped and literal (MSH-1, MSH-2) values, and that a range can stop.
func TestAllRepsAndAllSubsYieldWhatTheSlicesHold(t *testing.T) {
	m, err := Parse([]byte("MSH|^~\\&|PAS|RX1|CAREHUB|CAREHUB|20261124100000||ADT^A01|C1|P|2.4\r" +
		"PID|1||A~~B^^^NHS&x&&y^NH~||\\T\\~\\R\\X^Y&Z||~\r"))
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range m.AllSegments() {
		for n, f := range seg.Fields() {
			var got, want []string
			for i, r := range f.AllReps() {
				got = append(got, fmt.Sprintf("%d:%q", i, r.Raw()))
				for j, s := range r.Component(4).AllSubs() {
					got = append(got, fmt.Sprintf("%d.%d:%q", i, j, s.String()))
				}
			}
			for i, r := range f.Repetitions() {
				want = append(want, fmt.Sprintf("%d:%q", i, r.Raw()))
				for j, s := range r.Component(4).Subs() {
					want = append(want, fmt.Sprintf("%d.%d:%q", i, j, s.String()))
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s-%d: AllReps/AllSubs gave %v, Repetitions/Subs %v", seg.Name(), n+1, got, want)
			}
		}
	}
	seen := 0
	for range m.Segment("PID").Field(3).AllReps() {
		seen++
		break
	}
	if seen != 1 {
		t.Errorf("a range over AllReps that breaks saw %d repetitions, want 1", seen)
	}
}

// BenchmarkAllReps visits the 1 MiB field of repetitions without building
// a slice (compare BenchmarkRepetitions).
func BenchmarkAllReps(b *testing.B) {
	m, err := Parse(worstCases()["repetitions"])
	if err != nil {
		b.Fatal(err)
	}
	f := m.Segment("PID").Field(3)
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for range f.AllReps() {
			n++
		}
	}
}

// BenchmarkRepetitions visits the same field through the slice.
func BenchmarkRepetitions(b *testing.B) {
	m, err := Parse(worstCases()["repetitions"])
	if err != nil {
		b.Fatal(err)
	}
	f := m.Segment("PID").Field(3)
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for range f.Repetitions() {
			n++
		}
	}
}
