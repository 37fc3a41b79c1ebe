package adt

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/problem"
)

// msg builds a message from segments, joined with CR.
func msg(segs ...string) []byte { return []byte(strings.Join(segs, "\r") + "\r") }

const (
	testMSH = `MSH|^~\&|PAS|RX1|CAREHUB|CAREHUB|20250314093500||ADT^%s|CTRL-1|P|2.4`
	testPID = `PID|1||9991000003^^^NHS^NH||TESTPATIENT^ALEX|||||||||||||||||||||||||||01` // PID-32 01: verified
)

func mustMap(t *testing.T, mp *Mapper, payload []byte) (*Result, error) {
	t.Helper()
	m, err := Parse(payload)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return mp.Map(m)
}

func TestNewMapperValidates(t *testing.T) {
	for _, o := range []Options{{}, {Source: "rx1"}, {Source: "RX1", DestinationFields: []string{"PV1"}}} {
		if _, err := NewMapper(o); err == nil {
			t.Errorf("NewMapper(%+v): no error", o)
		}
	}
	if _, err := NewMapper(Options{Source: "RX1", DestinationFields: []string{"ZU9-2.1", "PV1-37.1"}}); err != nil {
		t.Errorf("NewMapper with Z-segment paths: %v", err)
	}
}

// TestErrorsHoldNoPatientData pins that every mapping error carries one of
// the fixed reasons and that its text repeats nothing from the message.
func TestErrorsHoldNoPatientData(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.hl7")
	mp := newTestMapper(t)
	for _, f := range files {
		payload, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = mustMap(t, mp, payload)
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%s: error %v is not an *adt.Error", f, err)
			continue
		}
		if !slices.Contains(reasons, e.Reason) {
			t.Errorf("%s: reason %q is not one of the fixed reasons", f, e.Reason)
		}
		for _, leak := range []string{"9991000", "TESTPATIENT", "ALEX", "ENC-0001", "RX1-01", "SMITH", "FREDRICA"} {
			if strings.Contains(e.Error(), leak) || strings.Contains(e.Detail().Diagnostic, leak) {
				t.Errorf("%s: error text %q holds message data", f, e.Error())
			}
		}
		if got, want := problem.KindOf(err).HL7Ack(), string(e.Ack); got != want {
			t.Errorf("%s: problem.KindOf(err).HL7Ack() = %s, want %s", f, got, want)
		}
	}
}

func TestErrorString(t *testing.T) {
	e := invalid(hl7.CodeDataType, "PID", 3, 2, 1, reasonNHSCheck)
	want := "adt: PID^1^3^2^1: NHS number fails the modulus 11 check digit test [HL7 0357 102 Data type error; AE]"
	if got := e.Error(); got != want {
		t.Errorf("Error():\n\tgot  %s\n\twant %s", got, want)
	}
	d := e.Detail()
	if d.Segment != "PID" || d.Sequence != 1 || d.Field != 3 || d.Repetition != 2 || d.Component != 1 || d.Code != "102" {
		t.Errorf("Detail() = %+v", d)
	}
	ack := hl7.NewACK(nil, hl7.AckAE, "A1", time.Unix(0, 0).UTC(), d)
	if !strings.Contains(string(ack), "ERR||PID^1^3^2^1|102^Data type error^HL70357|E") {
		t.Errorf("ACK ERR segment: %q", ack)
	}
}

var uuid5RE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestEventID(t *testing.T) {
	mp := newTestMapper(t)
	other, _ := NewMapper(Options{Source: "RX2"})
	base := msg(strings.Replace(testMSH, "%s", "A08", 1), `EVN|A08|20250314093500`, testPID)
	id := func(mp *Mapper, payload []byte) string {
		t.Helper()
		res, err := mustMap(t, mp, payload)
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	a := id(mp, base)
	if !uuid5RE.MatchString(a) {
		t.Errorf("id %q is not a version 5 UUID", a)
	}
	// A resend (same control ID, even with a new MSH-7) has the same id.
	resend := []byte(strings.Replace(string(base), "20250314093500||", "20250314100000||", 1))
	if b := id(mp, resend); b != a {
		t.Errorf("resend: id %s, want %s", b, a)
	}
	for name, p := range map[string][]byte{
		"another control ID":  []byte(strings.Replace(string(base), "CTRL-1", "CTRL-2", 1)),
		"another application": []byte(strings.Replace(string(base), "|PAS|", "|EDS|", 1)),
		"another facility":    []byte(strings.Replace(string(base), "|PAS|RX1|", "|PAS|RX1AB|", 1)),
	} {
		if b := id(mp, p); b == a {
			t.Errorf("%s: same id %s", name, b)
		}
	}
	if b := id(other, base); b == a {
		t.Errorf("another source: same id %s", b)
	}
}

func TestParseTS(t *testing.T) {
	london, _ := time.LoadLocation("Europe/London")
	tests := []struct {
		in   string
		want string // RFC 3339 in UTC; "" means invalid
	}{
		{"20250314093000", "2025-03-14T09:30:00Z"}, // GMT
		{"20250701093000", "2025-07-01T08:30:00Z"}, // BST
		{"202507010930", "2025-07-01T08:30:00Z"},   // minutes
		{"2025070109", "2025-07-01T08:00:00Z"},     // hours
		{"20250701", "2025-06-30T23:00:00Z"},       // date only: local midnight
		{"20250701093000+0000", "2025-07-01T09:30:00Z"},
		{"20250701093000-0500", "2025-07-01T14:30:00Z"},
		{"20250701093000.1234", "2025-07-01T08:30:00.1234Z"},
		{"20250701093000.5+0100", "2025-07-01T08:30:00.5Z"},
		{"202507", ""},               // too short for an event time
		{"20251301", ""},             // month 13
		{"20250230", ""},             // 30 February
		{"20250701246000", ""},       // hour 24
		{"2025070109300", ""},        // odd length
		{"20250701093000+01", ""},    // short offset
		{"20250701093000+1500", ""},  // offset out of range
		{"202507010930.5", ""},       // fraction without seconds
		{"20250701093000.", ""},      // empty fraction
		{"20250701093000 ", ""},      // trailing junk
		{"2025-07-01T09:30:00Z", ""}, // not HL7
		{"", ""},
	}
	for _, tc := range tests {
		got, ok := parseTS(tc.in, london, 8)
		s := ""
		if ok {
			s = got.UTC().Format(time.RFC3339Nano)
		}
		if s != tc.want {
			t.Errorf("parseTS(%q):\n\tgot  %q\n\twant %q", tc.in, s, tc.want)
		}
	}
}

func TestParseDate(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"19380601", "1938-06-01", true},
		{"193806011230", "1938-06-01", true},
		{"19380601000000-0500", "1938-06-01", true}, // the offset does not move the day
		{"1938", "", true},                          // year only: valid HL7, no date
		{"193806", "", true},
		{"19380631", "", false},
		{"1938x", "", false},
		{"19380", "", false},
	}
	for _, tc := range tests {
		got, ok := parseDate(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseDate(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestDestination pins where the discharge destination comes from.
func TestDestination(t *testing.T) {
	pv1 := func(f36, f37 string) string {
		f := make([]string, 38)
		f[0], f[19], f[36], f[37] = "PV1", "ENC-1", f36, f37
		return strings.Join(f, "|")
	}
	tests := []struct {
		name     string
		pv1      string
		pv2      string
		fields   []string
		want     destination
		expected bool // an expected destination (A01, A16), not the actual one (A03)
	}{
		{"nothing", pv1("", ""), "", nil, destination{Type: "other"}, false},
		{"ITK: PV1-37 destination code home", pv1("3", "19"), "", nil, destination{Type: "home", Code: "19"}, false},
		{"code in PV1-36, ODS in PV1-37", pv1("85", "VM123"), "", nil, destination{Type: "care-home", Code: "85", ODS: "VM123"}, false},
		{"hospice", pv1("88", "VM999"), "", nil, destination{Type: "hospice", Code: "88", ODS: "VM999"}, false},
		{"ODS without a code", pv1("", "VM123"), "", nil, destination{Type: "other", ODS: "VM123"}, false},
		{"discharge method in PV1-36 is not a destination", pv1("1", ""), "", nil, destination{Type: "other"}, false},
		{"US table 0112 code is not an NHS code", pv1("01", ""), "", nil, destination{Type: "other"}, false},
		{"lower-case is not an ODS code", pv1("85", "vm123"), "", nil, destination{Type: "care-home", Code: "85"}, false},
		{"PV1-37 as CWE with the code first", pv1("", "54&NHS run care home&NHSDD"), "", nil, destination{Type: "care-home", Code: "54"}, false},
		{"expected disposition in PV2-27", pv1("", "VM123"), "PV2" + strings.Repeat("|", 27) + "85", nil, destination{Type: "care-home", Code: "85", ODS: "VM123"}, false},
		{"ODS from a configured Z-segment", pv1("85", ""), "ZU9||VM777", []string{"ZU9-2", "PV1-37.1"}, destination{Type: "care-home", Code: "85", ODS: "VM777"}, false},
		{"configured paths replace the default", pv1("85", "VM123"), "", []string{"ZU9-2"}, destination{Type: "care-home", Code: "85"}, false},
		// Regression: PV1-36 19 (usual place of residence) beside PV1-37.1
		// VM123 gave type home with an organisation; the kind of place must
		// never contradict the organisation named.
		{"home code beside an organisation", pv1("19", "VM123"), "", nil, destination{Type: "other", Code: "19", ODS: "VM123", Name: "usual place of residence"}, false},
		// Regression (issue 10 audit): a code-only care home became type
		// other named "non-NHS care home" in words, which no receiving
		// system can read; the kind is a type and the code is kept.
		{"ITK code-only care home", pv1("3", "85"), "", nil, destination{Type: "care-home", Code: "85"}, false},
		{"code-only NHS run care home", pv1("", "54"), "", nil, destination{Type: "care-home", Code: "54"}, false},
		{"code-only local authority residential accommodation", pv1("", "65"), "", nil, destination{Type: "care-home", Code: "65"}, false},
		{"code-only nursing home (retired 86)", pv1("", "86"), "", nil, destination{Type: "nursing-home", Code: "86"}, false},
		{"code-only NHS hospital general ward", pv1("", "51"), "", nil, destination{Type: "hospital", Code: "51"}, false},
		{"code-only non-NHS hospital", pv1("87", ""), "", nil, destination{Type: "hospital", Code: "87"}, false},
		{"code-only hospice", pv1("", "88"), "", nil, destination{Type: "hospice", Code: "88"}, false},
		{"code-only court", pv1("", "37"), "", nil, destination{Type: "other", Code: "37", Name: "court"}, false},
		{"code-only not known", pv1("99", ""), "", nil, destination{Type: "other", Code: "99", Name: "not known"}, false},
		{"ITK code-only care home, organisation in a Z-segment", pv1("3", "85"), "ZU9||VM777", []string{"ZU9-2", "PV1-37.1"}, destination{Type: "care-home", Code: "85", ODS: "VM777"}, false},
		{"ITK code-only hospice, organisation in a Z-segment", pv1("3", "88"), "ZU9||VM999", []string{"ZU9-2", "PV1-37.1"}, destination{Type: "hospice", Code: "88", ODS: "VM999"}, false},
		{"ITK code-only hospital, organisation in a Z-segment", pv1("3", "51"), "ZU9||RX101", []string{"ZU9-2", "PV1-37.1"}, destination{Type: "hospital", Code: "51", ODS: "RX101"}, false},
		{"temporary residence beside an organisation", pv1("29", "VM123"), "", nil, destination{Type: "other", Code: "29", ODS: "VM123", Name: "temporary place of residence"}, false},
		{"discharge: PV1-36 wins over the expected PV2-27", pv1("88", "VM999"), "PV2" + strings.Repeat("|", 27) + "85", nil, destination{Type: "hospice", Code: "88", ODS: "VM999"}, false},
		// Regression: on an admission or a pending discharge, PV2-27 (the
		// expected disposition) lost to a PV1-36 left over from a past stay.
		{"expected: PV2-27 wins over PV1-36", pv1("19", "VM123"), "PV2" + strings.Repeat("|", 27) + "85", nil, destination{Type: "care-home", Code: "85", ODS: "VM123"}, true},
		{"expected: code-only nursing home in PV2-27", pv1("", ""), "PV2" + strings.Repeat("|", 27) + "86", nil, destination{Type: "nursing-home", Code: "86"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mp, err := NewMapper(Options{Source: "RX1", DestinationFields: tc.fields})
			if err != nil {
				t.Fatal(err)
			}
			segs := []string{strings.Replace(testMSH, "%s", "A03", 1), "EVN|A03|20250318140000", testPID, tc.pv1}
			if tc.pv2 != "" {
				segs = append(segs, tc.pv2)
			}
			m, err := Parse(msg(segs...))
			if err != nil {
				t.Fatal(err)
			}
			x := &mapping{mp: mp, m: m, trigger: "A03"}
			got, err := x.destination(tc.expected)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				got = &destination{Type: "other"}
			}
			if *got != tc.want {
				t.Errorf("got  %+v\n\twant %+v", *got, tc.want)
			}
			// The whole message maps to an event the schema accepts, with
			// this destination (an expected one on an admission).
			trigger := "A03"
			if tc.expected {
				trigger = "A16"
			}
			segs[0], segs[1] = strings.Replace(testMSH, "%s", trigger, 1), "EVN|"+trigger+"|20250318140000"
			res, err := mustMap(t, mp, msg(segs...))
			if err != nil || len(res.Events) != 1 {
				t.Fatalf("Map: %+v, %v", res, err)
			}
			ev, err := validator.Parse(res.Events[0].JSON)
			if err != nil {
				t.Fatalf("the canonical event fails validation: %v", err)
			}
			var d struct {
				Discharge struct{ Destination *destination } `json:"discharge"`
			}
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatal(err)
			}
			if d.Discharge.Destination == nil {
				d.Discharge.Destination = &destination{Type: "other"}
			}
			if *d.Discharge.Destination != tc.want {
				t.Errorf("event data: got  %+v\n\twant %+v", *d.Discharge.Destination, tc.want)
			}
			if ev.DischargeDestination != tc.want.ODS {
				t.Errorf("DischargeDestination = %q, want %q", ev.DischargeDestination, tc.want.ODS)
			}
		})
	}
}

func TestParseUNICODE(t *testing.T) {
	for _, tc := range []struct {
		name, msh string
		ok        bool
	}{
		{"ITK UNICODE", `MSH|^~\&|PAS|RX1|||20250101||ADT^A08|1|P|2.4|||||GBR|UNICODE|EN`, true},
		{"lower case, with a second repetition", `MSH|^~\&|PAS|RX1|||20250101||ADT^A08|1|P|2.4|||||GBR| unicode ~8859/1|EN`, true},
		{"after a BOM and a blank line", "\xEF\xBB\xBF\r\n" + `MSH|^~\&|PAS|RX1|||20250101||ADT^A08|1|P|2.4|||||GBR|UNICODE`, true},
		{"UTF-16 is still refused", `MSH|^~\&|PAS|RX1|||20250101||ADT^A08|1|P|2.4|||||GBR|UNICODE UTF-16|EN`, false},
		{"no MSH-18", `MSH|^~\&|PAS|RX1|||20250101||ADT^A08|1|P|2.4`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse(msg(tc.msh, "PID|1||9991000003^^^NHS^NH||ZO\xc3\xab"))
			if (err == nil) != tc.ok {
				t.Fatalf("Parse: %v, want ok=%v", err, tc.ok)
			}
			if err == nil {
				if got := m.Segment("PID").Field(5).String(); got != "ZOë" {
					t.Errorf("PID-5 = %q", got)
				}
				if !errors.Is(err, hl7.ErrUnsupportedCharset) && m.Type().Trigger != "A08" {
					t.Errorf("message not parsed whole")
				}
			} else if !errors.Is(err, hl7.ErrUnsupportedCharset) {
				t.Errorf("error %v does not wrap ErrUnsupportedCharset", err)
			}
		})
	}
}

// TestTriggerFromEVN: some senders leave MSH-9.2 empty and name the event
// in EVN-1 only.
func TestTriggerFromEVN(t *testing.T) {
	res, err := mustMap(t, newTestMapper(t), msg(strings.Replace(testMSH, "%s", "", 1), "EVN|A28|20250101", testPID))
	if err != nil || res.Trigger != "A28" || len(res.Events) != 1 || res.Events[0].Type != "org.carehub.patient-updated.v1" {
		t.Fatalf("got %+v, %v", res, err)
	}
}

// TestSameNHSNumberMergeIsHeld: a merge of two local records of one
// patient retires no NHS number, so nothing is published: it is held.
func TestSameNHSNumberMergeIsHeld(t *testing.T) {
	res, err := mustMap(t, newTestMapper(t), msg(strings.Replace(testMSH, "%s", "A40", 1), "EVN|A40|20250101", testPID,
		"MRG|9991000003^^^NHS^NH~OLD-1^^^RX1^MR"))
	if err != nil || len(res.Events) != 0 || res.Held == nil || res.Held.Reason != HeldLocalMerge {
		t.Fatalf("got %+v, %v", res, err)
	}
}

func TestTooLongValues(t *testing.T) {
	long := strings.Repeat("x", 101)
	for _, tc := range []struct{ seg, loc string }{
		{"PID|1||9991000003^^^NHS^NH||" + long, "PID^1^5^1^1"},
		{"PID|1||9991000003^^^NHS^NH~" + long + "^^^RX1^MR", "PID^1^3^2^1"},
		{"PID|1||9991000003^^^NHS^NH||||||||" + long, "PID^1^11^1^1"},
	} {
		_, err := mustMap(t, newTestMapper(t), msg(strings.Replace(testMSH, "%s", "A08", 1), "EVN|A08|20250101", tc.seg))
		var e *Error
		if !errors.As(err, &e) || e.Code != hl7.CodeValueTooLong || e.Detail().Location() != tc.loc || !strings.Contains(err.Error(), tc.loc) {
			t.Errorf("%s: got %v, want code 104 at %s", tc.loc, err, tc.loc)
		}
	}
}

// TestSharedSamplesWithNHSNumber gives each public ADT sample an NHS
// number, so that the rest of the mapping runs on messages nobody here
// wrote, and pins what each becomes.
func TestSharedSamplesWithNHSNumber(t *testing.T) {
	dir := publicSamplesDir
	names, _ := filepath.Glob(filepath.Join(dir, "generic", "*", "*"))
	// The samples give no NHS number status (PID-32): take the numbers
	// added here as verified, so that the rest of the mapping runs.
	mp, err := NewMapper(Options{Source: "RX1", AssumeVerifiedWithoutStatus: true})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range names {
		payload, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Parse(payload)
		if err != nil || m.Type().Code != "ADT" || m.Segment("PID") == nil {
			continue
		}
		n++
		// Prepend an NHS number to the first PID's PID-3.
		lines := strings.FieldsFunc(string(payload), func(r rune) bool { return r == '\r' || r == '\n' })
		for i, l := range lines {
			if strings.HasPrefix(l, "PID|") {
				f := strings.Split(l, "|")
				for len(f) < 4 {
					f = append(f, "")
				}
				f[3] = "9991000003^^^NHS^NH~" + f[3]
				lines[i] = strings.Join(f, "|")
				break
			}
		}
		rel, _ := filepath.Rel(dir, p)
		t.Run(rel, func(t *testing.T) {
			got := outcome(t, mp, []byte(strings.Join(lines, "\r")))
			golden := filepath.Join("testdata", "shared-with-nhs-number", strings.NewReplacer("/", "_", ".hl7", "", ".adm", "").Replace(rel)+".golden.json")
			checkGolden(t, golden, got)
			if res, err := mustMap(t, mp, []byte(strings.Join(lines, "\r"))); err == nil {
				for _, ev := range res.Events {
					if _, err := validator.Parse(ev.JSON); err != nil {
						t.Errorf("the canonical event fails validation: %v", err)
					}
				}
			}
		})
	}
	if n < 10 {
		t.Fatalf("only %d ADT samples found", n)
	}
}
