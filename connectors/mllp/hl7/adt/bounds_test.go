package adt

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

// worstCaseSize is the size of each worst-case message: the listener's
// largest frame by default (1 MiB).
const worstCaseSize = 1 << 20

// worstCase is a 1 MiB admission whose bulk is one value built to make the
// mapping do the most work per byte.
type worstCase struct {
	name string
	// seg and field name the value filled; fill builds it from n units.
	seg   string
	field int
	fill  func(n int) string
	unit  int // bytes per unit
	want  string
}

// worstCaseBase is an admission with a verified NHS number; %s fields are
// replaced by the worst cases.
var worstCaseBase = map[string][]string{
	"MSH": strings.Split(`MSH|^~\&|PAS|RX1|CAREHUB|CAREHUB|20250314093500||ADT^A01|W1|P|2.4`, "|"),
	"EVN": strings.Split("EVN|A01|20250314093500", "|"),
	"PID": strings.Split("PID|1||9991000003^^^NHS^NH||TESTPATIENT^ALEX||19380601|F"+strings.Repeat("|", 24)+"01", "|"),
	"PD1": strings.Split("PD1|||TEST SURGERY^^A81001", "|"),
	"PV1": strings.Split("PV1|1|I|AMU^^12^RX1AB"+strings.Repeat("|", 16)+"ENC-0001", "|"),
}

func worstCases() []worstCase {
	rep := func(unit, tail string) func(int) string {
		return func(n int) string { return strings.Repeat(unit, n) + tail }
	}
	return []worstCase{
		// The NHS number is in the last repetition: the mapping must visit
		// every one to find it.
		{"PID-3 repetitions", "PID", 3, rep("~", "9991000003^^^NHS^NH"), 1, "event"},
		{"PID-3 empty identifiers", "PID", 3, rep("^^^^MR~", "9991000003^^^NHS^NH"), 7, "event"},
		{"PID-3 components", "PID", 3, func(n int) string { return "9991000003^^^NHS^NH" + strings.Repeat("^", n) }, 1, "event"},
		{"PID-3 subcomponents", "PID", 3, func(n int) string { return "9991000003^^^NHS" + strings.Repeat("&", n) + "^NH" }, 1, "event"},
		{"PID-3 escapes", "PID", 3, func(n int) string { return strings.Repeat(`\X41\`, n) + "~9991000003^^^NHS^NH" }, 5, "event"},
		{"PID-5 repetitions", "PID", 5, rep("~", "TESTPATIENT^ALEX"), 1, "event"},
		{"PID-5 escapes", "PID", 5, rep(`\X41\`, "^ALEX"), 5, "error 104 at PID^1^5^1^1"},
		{"PID-11 street subcomponents", "PID", 11, rep("&", "^^LEEDS^^LS1 4AP"), 1, "event"},
		{"PID-13 repetitions", "PID", 13, rep("~", "^PRN^PH^^^^^^^^^0113 000 0000"), 1, "event"},
		{"PID-32 repetitions", "PID", 32, rep("~", "01"), 1, "event"},
		{"PV1-3 components", "PV1", 3, func(n int) string { return "AMU^^12^RX1AB" + strings.Repeat("^", n) }, 1, "event"},
		{"Z-segments", "PD1", 4, rep("\rZXX|1", ""), 6, "event"},
	}
}

// build returns the case's message, as close to worstCaseSize as whole
// units make it.
func (c worstCase) build() []byte {
	render := func(fill string) []byte {
		var segs []string
		for _, name := range []string{"MSH", "EVN", "PID", "PD1", "PV1"} {
			fields := append([]string(nil), worstCaseBase[name]...)
			if name == c.seg {
				for len(fields) <= c.field {
					fields = append(fields, "")
				}
				fields[c.field] = fill
			}
			segs = append(segs, strings.Join(fields, "|"))
		}
		return []byte(strings.Join(segs, "\r") + "\r")
	}
	rest := len(render(c.fill(0)))
	return render(c.fill((worstCaseSize - rest) / c.unit))
}

// outcomeOf summarises what Map made of a message.
func outcomeOf(res *Result, err error) string {
	var e *Error
	switch {
	case errors.As(err, &e):
		return "error " + e.Code + " at " + e.Detail().Location()
	case err != nil:
		return "error " + err.Error()
	case res.Held != nil:
		return "held " + res.Held.Reason
	case len(res.Events) == 1 && strings.Contains(string(res.Events[0].JSON), `"nhsNumber":"9991000003"`):
		return "event"
	default:
		return "unexpected result"
	}
}

// TestWorstCaseMessagesMapInLinearTime maps 1 MiB messages built for the
// most work per byte (issue 14: "linear-time parsing and mapping, with
// bounds"; an A01 with 32k repetitions in PID-3 once took 6.9 s) and
// counts the work: each case's outcome shows the value was visited to its
// end (the NHS number in PID-3's last repetition is found), and the bytes
// the mapping allocates stay within a small multiple of the message (a
// step that copied or rescanned a value per repetition would allocate its
// square). Its speed is measured by BenchmarkMapWorstCase.
func TestWorstCaseMessagesMapInLinearTime(t *testing.T) {
	mp := newTestMapper(t)
	for _, c := range worstCases() {
		t.Run(c.name, func(t *testing.T) {
			payload := c.build()
			if len(payload) > worstCaseSize || len(payload) < worstCaseSize-64 {
				t.Fatalf("the message is %d bytes, want about %d", len(payload), worstCaseSize)
			}
			m, err := Parse(payload)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			res, err := mp.Map(m)
			runtime.ReadMemStats(&after)
			if got := outcomeOf(res, err); got != c.want {
				t.Errorf("got %s, want %s", got, c.want)
			}
			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes allocated for a %d-byte message (%.1f per byte)", allocated, len(payload), float64(allocated)/float64(len(payload)))
			if limit := uint64(maxAllocPerByte * len(payload)); allocated > limit {
				t.Errorf("mapping allocated %d bytes for a %d-byte message, want at most %d", allocated, len(payload), limit)
			}
		})
	}
}

// maxAllocPerByte bounds what mapping a worst case allocates, per byte of
// the message.
const maxAllocPerByte = 4

// BenchmarkMapWorstCase maps each 1 MiB worst case (the parse excluded).
// The bound the README states: each maps in tens of milliseconds on the
// 2-core development machine, linear in the message.
func BenchmarkMapWorstCase(b *testing.B) {
	mp := newTestMapper(b)
	for _, c := range worstCases() {
		b.Run(strings.ReplaceAll(c.name, " ", "_"), func(b *testing.B) {
			payload := c.build()
			m, err := Parse(payload)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := mp.Map(m); err != nil && c.want == "event" {
					b.Fatal(err)
				}
			}
		})
	}
}
