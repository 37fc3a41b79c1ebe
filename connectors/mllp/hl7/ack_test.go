package hl7

import (
	"strings"
	"testing"
	"time"
)

var fixedTime = time.Date(2024, 3, 1, 9, 30, 5, 0, time.FixedZone("BST", 3600))

func TestNewACK(t *testing.T) {
	const v24 = "MSH|^~\\&|PAS|RX1|HUB|CAREHUB|20240301||ADT^A01^ADT_A01|C\\T\\1|P|2.4\rPID|1||9990500002^^^NHS^NH||SECRET^NAME\r"
	tests := []struct {
		name string
		orig string // "" for nil
		code AckCode
		errs []ErrDetail
		want string // segments separated by \n here
	}{
		{"accept v2.4", v24, AckAA, nil,
			"MSH|^~\\&|HUB|CAREHUB|PAS|RX1|20240301093005+0100||ACK^A01^ACK|ACK-1|P|2.4\n" +
				"MSA|AA|C\\T\\1"},
		{"error v2.4 fills ERR-1 and MSA-3", v24, AckAE, []ErrDetail{{Segment: "PID", Sequence: 1, Field: 3, Repetition: 1, Component: 4, Code: CodeUnknownKeyIdentifier}},
			"MSH|^~\\&|HUB|CAREHUB|PAS|RX1|20240301093005+0100||ACK^A01^ACK|ACK-1|P|2.4\n" +
				"MSA|AE|C\\T\\1|Unknown key identifier\n" +
				"ERR|PID^1^3^204&Unknown key identifier&HL70357|PID^1^3^1^4|204^Unknown key identifier^HL70357|E"},
		{"v2.5 two errors, warning, diagnostic escaped",
			"MSH|^~\\&|PAS|RX1|HUB|CAREHUB|20240301||ADT^A08|X1|T|2.5\r", AckAE,
			[]ErrDetail{
				{Segment: "PV1", Sequence: 1, Field: 3, Code: CodeRequiredFieldMissing, Diagnostic: "PV1-3 | missing"},
				{Code: CodeTableValueNotFound, Severity: SeverityWarning},
			},
			"MSH|^~\\&|HUB|CAREHUB|PAS|RX1|20240301093005+0100||ACK^A08^ACK|ACK-1|T|2.5\n" +
				"MSA|AE|X1\n" +
				"ERR||PV1^1^3|101^Required field missing^HL70357|E|||PV1-3 \\F\\ missing\n" +
				"ERR|||103^Table value not found^HL70357|W"},
		{"v2.3 has no message structure component",
			"MSH|^~\\&|A|B|C|D|2005||ADT^A04|599102|P|2.3\r", AckAR, []ErrDetail{{}},
			"MSH|^~\\&|C|D|A|B|20240301093005+0100||ACK^A04|ACK-1|P|2.3\n" +
				"MSA|AR|599102|Application internal error\n" +
				"ERR|^^^207&Application internal error&HL70357||207^Application internal error^HL70357|E"},
		{"v2.3.1 has it",
			"MSH|^~\\&|A|B|C|D|2005||ADT^A01^ADT_A01| TEST-CR-01-10|P|2.3.1\r", AckCA, nil,
			"MSH|^~\\&|C|D|A|B|20240301093005+0100||ACK^A01^ACK|ACK-1|P|2.3.1\n" +
				"MSA|CA| TEST-CR-01-10"},
		{"custom delimiters, truncation char and charset kept",
			"MSH#$%*@!#A$X#B#C#D#T##ADT$A28#Z1#P#2.7######8859/1\r", AckAA, []ErrDetail{{Segment: "PID", Field: 5, Code: "102", Diagnostic: "a#b$c"}},
			"MSH#$%*@!#C#D#A$X#B#20240301093005+0100##ACK$A28$ACK#ACK-1#P#2.7######8859/1\n" +
				"MSA#AA#Z1\n" +
				"ERR##PID$$5#102$Data type error$HL70357#E###a*F*b*S*c"},
		{"version with components",
			"MSH|^~\\&|A|B|C|D|T||ADT^A01|1|P|2.4^GBR^2.1\r", AckAA, nil,
			"MSH|^~\\&|C|D|A|B|20240301093005+0100||ACK^A01^ACK|ACK-1|P|2.4^GBR^2.1\n" +
				"MSA|AA|1"},
		{"no trigger, unknown version",
			"MSH|^~\\&|A|B|C|D|T||ADT|1|P|\r", AckAA, nil,
			"MSH|^~\\&|C|D|A|B|20240301093005+0100||ACK^^ACK|ACK-1|P|2.5\n" +
				"MSA|AA|1"},
		{"unparseable original", "", AckAR, []ErrDetail{{Code: CodeSegmentSequence, Diagnostic: "message must start with an MSH segment"}},
			"MSH|^~\\&|||||20240301093005+0100||ACK^^ACK|ACK-1|P|2.5\n" +
				"MSA|AR|\n" +
				"ERR|||100^Segment sequence error^HL70357|E|||message must start with an MSH segment"},
	}
	for _, tt := range tests {
		var orig *Message
		if tt.orig != "" {
			var err error
			if orig, err = Parse([]byte(tt.orig)); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		}
		ack := NewACK(orig, tt.code, "ACK-1", fixedTime, tt.errs...)
		if got := strings.ReplaceAll(strings.TrimSuffix(string(ack), "\r"), "\r", "\n"); got != tt.want {
			t.Errorf("%s: NewACK:\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
		if strings.Contains(string(ack), "SECRET") || strings.Contains(string(ack), "9990500002") {
			t.Errorf("%s: ACK contains patient data", tt.name)
		}

		// Parse it back.
		a, err := Parse(ack)
		if err != nil {
			t.Errorf("%s: ACK does not parse: %v", tt.name, err)
			continue
		}
		if err := a.ValidateHeader(); err != nil {
			t.Errorf("%s: ACK header invalid: %v", tt.name, err)
		}
		if a.Type().Code != "ACK" || a.ControlID() != "ACK-1" {
			t.Errorf("%s: ACK type %q control ID %q", tt.name, a.Type(), a.ControlID())
		}
		if got := a.Segment("MSA").Field(1).String(); got != string(tt.code) {
			t.Errorf("%s: MSA-1 = %q, want %q", tt.name, got, tt.code)
		}
		if orig != nil {
			if got, want := a.Segment("MSA").Field(2).String(), orig.ControlID(); got != want {
				t.Errorf("%s: MSA-2 = %q, want %q", tt.name, got, want)
			}
			if a.Delimiters() != orig.Delimiters() || a.Version() != orig.Version() && orig.Version() != "" {
				t.Errorf("%s: delimiters or version not kept", tt.name)
			}
			om, am := orig.Segment("MSH"), a.Segment("MSH")
			for _, p := range [][2]int{{3, 5}, {4, 6}, {5, 3}, {6, 4}} {
				if om.Field(p[0]).Raw() != am.Field(p[1]).Raw() {
					t.Errorf("%s: MSH-%d not swapped into MSH-%d", tt.name, p[0], p[1])
				}
			}
			if a.Type().Trigger != orig.Type().Trigger {
				t.Errorf("%s: trigger %q, want %q", tt.name, a.Type().Trigger, orig.Type().Trigger)
			}
		}
		errSegs := a.Segments("ERR")
		if len(errSegs) != len(tt.errs) {
			t.Errorf("%s: %d ERR segments, want %d", tt.name, len(errSegs), len(tt.errs))
			continue
		}
		for i, e := range tt.errs {
			s := errSegs[i]
			code := e.Code
			if code == "" {
				code = CodeApplicationInternalError
			}
			loc := s.Field(2).Rep(1)
			if loc.Component(1).String() != e.Segment || s.Field(3).Component(1).String() != code ||
				s.Field(3).Component(3).String() != "HL70357" || s.Field(7).String() != e.Diagnostic {
				t.Errorf("%s: ERR %d does not read back: %q", tt.name, i+1, s.Raw())
			}
			if e.Field > 0 && loc.Component(3).String() != itoa(e.Field) {
				t.Errorf("%s: ERR-2.3 = %q, want %d", tt.name, loc.Component(3).String(), e.Field)
			}
		}
	}
}

func itoa(n int) string { return num(n) }

func TestNewACKFromParseError(t *testing.T) {
	in := []byte("MSH|^~\\&|PAS|RX1|HUB|CH|20240301||ADT^A01|C9|P|2.5||||||8859/7\rPID|1||X\r")
	_, err := Parse(in)
	pe, ok := err.(*ParseError)
	if !ok {
		t.Fatalf("got %v", err)
	}
	h, err := ParseHeader(in)
	if err != nil {
		t.Fatal(err)
	}
	ack := string(NewACK(h, AckAR, "A9", fixedTime, pe.Detail()))
	want := "MSH|^~\\&|HUB|CH|PAS|RX1|20240301093005+0100||ACK^A01^ACK|A9|P|2.5\r" + // unsupported charset not echoed
		"MSA|AR|C9\r" +
		"ERR||MSH^1^18|103^Table value not found^HL70357|E|||MSH-18 unsupported character set \"8859/7\"\r"
	if ack != want {
		t.Errorf("NewACK:\n\tgot  %q\n\twant %q", ack, want)
	}
}

func TestNewACKStripsControlCharacters(t *testing.T) {
	// A LF kept inside MSH-3 (see Parse) must not break the ACK's segments,
	// and framing bytes must never reach the frame.
	m, err := Parse([]byte("MSH|^~\\&|AP\nx\x0bP|FAC|R|RF|T||ADT^A01|ID\x1c1|P|2.5\r"))
	if err != nil {
		t.Fatal(err)
	}
	ack := string(NewACK(m, AckAA, "c\r\nid", fixedTime))
	if strings.Count(ack, "\r") != 2 || strings.ContainsAny(ack, "\n\x0b\x1c") {
		t.Errorf("ACK contains control characters: %q", ack)
	}
	if !strings.Contains(ack, "|c\\.br\\id|") {
		t.Errorf("control ID not escaped: %q", ack)
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in          string
		known, lt25 bool
	}{
		{"2.5", true, false}, {"2.4", true, true}, {"2.3.1", true, true}, {"2.5.1", true, false},
		{"2.10", true, false}, {"", false, false}, {"x", false, false}, {"2", false, false}, {"2.a", false, false},
	}
	for _, tt := range tests {
		v := parseVersion(tt.in)
		if v.known != tt.known || (v.known && v.less(2, 5, 0) != tt.lt25) {
			t.Errorf("parseVersion(%q) = %+v", tt.in, v)
		}
	}
}

// TestACKTimeWithSignDelimiter pins a bug found by fuzzing the MLLP
// connector: MSH-7's UTC offset sign was written unescaped, so a sender
// whose delimiters include '+' or '-' got an ACK that did not parse.
func TestACKTimeWithSignDelimiter(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.FixedZone("", -5*3600))
	for _, msh := range []string{`MSH|+~\&|APP|RX1|HUB|HUB|20261124||ADT+A01|C1|P|2.5`, `MSH|^-\&|APP|RX1|HUB|HUB|20261124||ADT^A01|C1|P|2.5`} {
		orig, err := Parse([]byte(msh))
		if err != nil {
			t.Fatalf("Parse(%q): %v", msh, err)
		}
		ack, err := Parse(NewACK(orig, AckAA, "A1", now))
		if err != nil {
			t.Fatalf("NewACK for %q does not parse: %v", msh, err)
		}
		if got, _ := ack.Value("MSH-7"); got != "20261124100000-0500" {
			t.Errorf("NewACK(%q) MSH-7:\n\tgot  %q\n\twant %q", msh, got, "20261124100000-0500")
		}
	}
}

// TestACKOfAMessageBreakingItsUTF8DeclarationParses pins a bug FuzzHandle
// found: a message declaring UNICODE UTF-8 whose MSH-12 (or MSH-10) held a
// byte that is not UTF-8 was refused (AE 102) with an acknowledgement that
// echoed the byte under the same declaration, so the sender could not parse
// the refusal. The echoed fields now drop such bytes; a sender's other
// bytes (an ASCII declaration broken by a Latin-1 letter) are echoed as
// sent, so that MSA-2 still matches its MSH-10.
func TestACKOfAMessageBreakingItsUTF8DeclarationParses(t *testing.T) {
	tests := []struct {
		name, msh string
		wantMSA2  string
	}{
		{"UTF-8, bad version", "MSH|^~\\&|PAS|RX1|||20261205||ADT^A03|RX1-0003|P|\xc3.4||||||UNICODE UTF-8\r", "RX1-0003"},
		{"UTF-8, bad control ID", "MSH|^~\\&|PAS|RX1|||20261205||ADT^A03|RX1-\xe8003|P|2.4||||||UNICODE UTF-8\r", "RX1-003"},
		{"ASCII, Latin-1 control ID", "MSH|^~\\&|PAS|RX1|||20261205||ADT^A03|U\xe8C-0040|P|2.4||||||ASCII\r", "U\xe8C-0040"},
	}
	for _, tt := range tests {
		m, err := ParseHeader([]byte(tt.msh))
		if err != nil {
			t.Fatalf("%s: ParseHeader: %v", tt.name, err)
		}
		ack, err := Parse(NewACK(m, AckAE, "ack-1", fixedTime, ErrDetail{Code: CodeDataType}))
		if err != nil {
			t.Errorf("%s: the acknowledgement does not parse: %v", tt.name, err)
			continue
		}
		if got := ack.Segment("MSA").Field(2).Raw(); got != tt.wantMSA2 {
			t.Errorf("%s: MSA-2 %q, want %q", tt.name, got, tt.wantMSA2)
		}
	}
}
