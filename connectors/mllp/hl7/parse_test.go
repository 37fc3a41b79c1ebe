package hl7

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

const adtCR = "MSH|^~\\&|PAS|RX1|HUB|CAREHUB|20240102120000||ADT^A01^ADT_A01|MSG0001|P|2.4\r" +
	"EVN|A01|20240102120000\r" +
	"PID|1||9990500002^^^NHS^NH~D123^^^RX1^MR||SMITH^JOHN^^^MR||19580119|M\r" +
	"PV1|1|I|WARD1^BED2\r"

// errSummary renders the parts of a ParseError that tests compare.
func errSummary(err error) string {
	if err == nil {
		return "<nil>"
	}
	var pe *ParseError
	if !errors.As(err, &pe) {
		return "not a *ParseError: " + err.Error()
	}
	return fmt.Sprintf("code=%s seg=%q idx=%d seq=%d field=%d off=%d", pe.Code, pe.Segment, pe.SegmentIndex, pe.Sequence, pe.Field, pe.Offset)
}

func TestParseLineEndings(t *testing.T) {
	want := adtCR
	variants := map[string]string{
		"CR":                    adtCR,
		"LF":                    strings.ReplaceAll(adtCR, "\r", "\n"),
		"CRLF":                  strings.ReplaceAll(adtCR, "\r", "\r\n"),
		"no final terminator":   strings.TrimSuffix(adtCR, "\r"),
		"trailing blank lines":  adtCR + "\r\n\r\n  \n\t\n",
		"leading blank lines":   "\r\n\n" + adtCR,
		"blank lines inside":    strings.Replace(adtCR, "EVN", "\n\r\nEVN", 1),
		"byte order mark":       utf8BOM + strings.ReplaceAll(adtCR, "\r", "\n"),
		"mixed":                 strings.Replace(strings.Replace(adtCR, "\rEVN", "\r\nEVN", 1), "\rPID", "\nPID", 1),
		"LF before CR (\\n\\r)": strings.ReplaceAll(adtCR, "\r", "\n\r"),
	}
	for name, in := range variants {
		m, err := Parse([]byte(in))
		if err != nil {
			t.Errorf("%s: Parse(%q): %v", name, in, err)
			continue
		}
		if got := string(m.Encode()); got != want {
			t.Errorf("%s: Encode(Parse(%q)):\n\tgot  %q\n\twant %q", name, in, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	ok := "<nil>"
	tests := []struct {
		in   string
		want string
	}{
		{"", "code=100 seg=\"\" idx=0 seq=0 field=0 off=0"},
		{"\r\n \r", "code=100 seg=\"\" idx=0 seq=0 field=0 off=4"},
		{"M", "code=100 seg=\"\" idx=1 seq=1 field=0 off=0"},
		{"abc", "code=100 seg=\"\" idx=1 seq=1 field=0 off=0"},
		{"MSQ|||", "code=100 seg=\"MSQ\" idx=1 seq=1 field=0 off=0"},
		{"PID|1||123", "code=100 seg=\"PID\" idx=1 seq=1 field=0 off=0"},
		{"BHS|^~\\&|", "code=100 seg=\"BHS\" idx=1 seq=1 field=0 off=0"},
		{"\nEVN|A01", "code=100 seg=\"EVN\" idx=1 seq=1 field=0 off=1"},
		{"MSH", "code=101 seg=\"MSH\" idx=1 seq=1 field=1 off=3"},
		{"MSH\rPID|1", "code=101 seg=\"MSH\" idx=1 seq=1 field=1 off=3"},
		{"MSH|||", "code=101 seg=\"MSH\" idx=1 seq=1 field=2 off=4"},
		{"MSH|", "code=101 seg=\"MSH\" idx=1 seq=1 field=2 off=4"},
		{"MSH|^~^#|", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=6"},
		{"MSH|^~\\|", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=4"},
		{"MSH|^~\\&#!|", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=4"},
		{"MSH|^~|&|", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=4"},
		{"MSHA^~\\&|", "code=102 seg=\"MSH\" idx=1 seq=1 field=1 off=3"},
		{"MSH ^~\\&|", "code=102 seg=\"MSH\" idx=1 seq=1 field=1 off=3"},
		{"MSH|^~\\a|", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=7"},
		{"MSH|^~\\&||||", ok},
		{"MSH|^~\\&", ok},
		{"MSH|^~\\&#|", ok},
		{"MSH|^~#&|NES|NINTENDO|", ok}, // HL7 only recommends '\' as escape character
		{"MSH#^~\\&#A", ok},
		{"MSH|^~\\&|\rPID", ok},
		{"MSH|^~\\&|\rZPD|1", ok},
		{"MSH|^~\\&|\rpid|1", "code=100 seg=\"\" idx=2 seq=0 field=0 off=10"},
		{"MSH|^~\\&|\rPIDX|1", "code=100 seg=\"\" idx=2 seq=0 field=0 off=10"},
		{"MSH|^~\\&|\rPID^1", "code=100 seg=\"\" idx=2 seq=0 field=0 off=10"},
		{"MSH|^~\\&|\rPI", "code=100 seg=\"\" idx=2 seq=0 field=0 off=10"},
		{"MSH|^~\\&|\r PID|1", "code=100 seg=\"\" idx=2 seq=0 field=0 off=10"},
		{"MSH|^~\\&|\rPID|1\rMSH|^~\\&|", "code=100 seg=\"MSH\" idx=3 seq=2 field=0 off=16"},
		{"MSH|^~\\&|\rBTS|1", "code=100 seg=\"BTS\" idx=2 seq=1 field=0 off=10"},
		{"MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|8859/2", "code=103 seg=\"MSH\" idx=1 seq=1 field=18 off=39"},
		{"MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|8859/1", ok},
		{"MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|unicode utf-8~8859/2", ok},
		// Regression (found by FuzzParse): a LF that does not end the
		// segment was kept in MSH-2 with the bytes after it.
		{"MSH!\"#$%\n0\xfd000", "code=102 seg=\"MSH\" idx=1 seq=1 field=2 off=8"},
		{"MSH|^~\\&\nPID|1", ok},
	}
	for _, tt := range tests {
		m, err := Parse([]byte(tt.in))
		if got := errSummary(err); got != tt.want {
			t.Errorf("Parse(%q):\n\tgot  %v\n\twant %v\n\t(error: %v)", tt.in, got, tt.want, err)
		}
		if (err == nil) != (m != nil) {
			t.Errorf("Parse(%q) returned message %v and error %v", tt.in, m, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "hl7: ") {
			t.Errorf("Parse(%q): error %q lacks the package prefix", tt.in, err)
		}
	}
}

func TestUnsupportedCharsetError(t *testing.T) {
	_, err := Parse([]byte("MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|ISO IR87"))
	if !errors.Is(err, ErrUnsupportedCharset) {
		t.Fatalf("got %v, want an error wrapping ErrUnsupportedCharset", err)
	}
	var ce *CharsetError
	if !errors.As(err, &ce) || ce.Charset != "ISO IR87" {
		t.Fatalf("errors.As(*CharsetError) = %v, want charset \"ISO IR87\"", ce)
	}
	if !strings.Contains(err.Error(), `"ISO IR87"`) {
		t.Errorf("error %q does not name the character set", err)
	}
	// A value that does not look like a charset code is not echoed.
	_, err = Parse([]byte("MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|SMITH JOHN"))
	if !errors.As(err, &ce) || strings.Contains(err.Error(), "SMITH") {
		t.Fatalf("got %v, want an unsupported charset error that does not quote the value", err)
	}
}

func TestLookupCharset(t *testing.T) {
	tests := []struct {
		in   string
		want Charset
		err  bool
	}{
		{"", CharsetUnspecified, false},
		{"  ", CharsetUnspecified, false},
		{"ASCII", CharsetASCII, false},
		{"ISO IR6", CharsetASCII, false},
		{"8859/1", CharsetLatin1, false},
		{" 8859/1 ", CharsetLatin1, false},
		{"ISO IR100", CharsetLatin1, false},
		{"8859/15", CharsetLatin9, false},
		{"UNICODE UTF-8", CharsetUTF8, false},
		{"unicode utf-8", CharsetUTF8, false},
		{"UTF-8", CharsetUTF8, false},
		{"8859/2", "", true},
		{"UNICODE UTF-16", "", true},
		{"UNICODE", CharsetUTF8, false}, // NHS ITK v2.4 declares it and means UTF-8
		{"ISO IR87", "", true},
	}
	for _, tt := range tests {
		got, err := LookupCharset(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("LookupCharset(%q):\n\tgot  %q, %v\n\twant %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestFieldNumbering(t *testing.T) {
	m, err := Parse([]byte(adtCR))
	if err != nil {
		t.Fatal(err)
	}
	msh := m.Segment("MSH")
	tests := []struct {
		n    int
		want string
	}{
		{0, ""}, {-1, ""}, {1, "|"}, {2, `^~\&`}, {3, "PAS"}, {4, "RX1"}, {7, "20240102120000"},
		{8, ""}, {9, "ADT^A01^ADT_A01"}, {10, "MSG0001"}, {12, "2.4"}, {13, ""}, {99, ""},
	}
	for _, tt := range tests {
		if got := msh.Field(tt.n).String(); got != tt.want {
			t.Errorf("MSH-%d:\n\tgot  %q\n\twant %q", tt.n, got, tt.want)
		}
	}
	if got := msh.NumFields(); got != 12 {
		t.Errorf("MSH NumFields() = %d, want 12", got)
	}
	pid := m.Segment("PID")
	if got, want := pid.Field(1).String(), "1"; got != want {
		t.Errorf("PID-1 = %q, want %q", got, want)
	}
	if got, want := pid.NumFields(), 8; got != want {
		t.Errorf("PID NumFields() = %d, want %d", got, want)
	}
	// MSH-2 is literal: not split on its own delimiters.
	f := msh.Field(2)
	if f.NumReps() != 1 || f.Rep(1).NumComponents() != 1 || f.Component(1).Sub(1).String() != `^~\&` || f.Rep(2).Raw() != "" || f.Component(2).Raw() != "" {
		t.Errorf("MSH-2 should be one literal value, got reps=%d comps=%d", f.NumReps(), f.Rep(1).NumComponents())
	}
	if got := m.Segment("EVN").Field(1).Raw(); got != "A01" {
		t.Errorf("EVN-1 = %q", got)
	}
}

func TestNonStandardDelimiters(t *testing.T) {
	in := "MSH#$%*@#APP#FAC$X@Y%REP2#\rPID#1##ID1$$$AUTH@SUB%ID2##A*F*B*S*C"
	m, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Delimiters{Field: '#', Component: '$', Repetition: '%', Escape: '*', Subcomponent: '@'}
	if m.Delimiters() != want {
		t.Errorf("Delimiters() = %+v, want %+v", m.Delimiters(), want)
	}
	checks := map[string]string{
		"MSH-1":        "#",
		"MSH-2":        "$%*@",
		"MSH-3":        "APP",
		"MSH-4.2.2":    "Y",
		"MSH-4(2)":     "REP2",
		"PID-3(1).4.2": "SUB",
		"PID-3(2)":     "ID2",
		"PID-5":        "A#B$C",
	}
	for p, w := range checks {
		if got, err := m.Value(p); err != nil || got != w {
			t.Errorf("Value(%q) = %q, %v; want %q", p, got, err, w)
		}
	}
	if got := string(m.Encode()); got != in+"\r" {
		t.Errorf("Encode:\n\tgot  %q\n\twant %q", got, in+"\r")
	}
}

func TestTree(t *testing.T) {
	in := "MSH|^~\\&|A\rPID|1||ID1^^^NHS&2.16.840&ISO^NH~ID2^^^RX1||\"\"|^^^|a\\T\\b&c^d~~e\\E\\\r"
	m, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	pid := m.Segment("PID")
	f3 := pid.Field(3)
	if f3.NumReps() != 2 {
		t.Fatalf("PID-3 NumReps = %d, want 2", f3.NumReps())
	}
	r1 := f3.Rep(1)
	if got := r1.NumComponents(); got != 5 {
		t.Errorf("PID-3(1) NumComponents = %d, want 5", got)
	}
	c4 := r1.Component(4)
	if got := c4.NumSubs(); got != 3 {
		t.Errorf("PID-3(1).4 NumSubs = %d, want 3", got)
	}
	var subs []string
	for _, s := range c4.Subs() {
		subs = append(subs, s.String())
	}
	if got := strings.Join(subs, ","); got != "NHS,2.16.840,ISO" {
		t.Errorf("PID-3(1).4 subs = %q", got)
	}
	if got := c4.Sub(4); !got.Empty() || got.IsNull() {
		t.Errorf("PID-3(1).4.4 should be empty")
	}
	var comps []string
	for _, c := range f3.Rep(2).Components() {
		comps = append(comps, c.String())
	}
	if got := strings.Join(comps, ","); got != "ID2,,,RX1" {
		t.Errorf("PID-3(2) components = %q", got)
	}
	// PID-5 is the explicit null.
	f5 := pid.Field(5)
	if !f5.IsNull() || f5.Empty() || f5.String() != "" || f5.Raw() != `""` || !f5.Rep(1).IsNull() || !f5.Component(1).IsNull() || !f5.Component(1).Sub(1).IsNull() {
		t.Errorf("PID-5: IsNull=%v Empty=%v String=%q Raw=%q", f5.IsNull(), f5.Empty(), f5.String(), f5.Raw())
	}
	// PID-4 is empty and not null.
	if f := pid.Field(4); !f.Empty() || f.IsNull() || f.NumReps() != 0 || len(f.Repetitions()) != 0 {
		t.Errorf("PID-4 should be empty")
	}
	// PID-6 is present with empty components.
	if f := pid.Field(6); f.Empty() || f.Rep(1).NumComponents() != 4 || !f.Component(2).Empty() {
		t.Errorf("PID-6 = %q: want 4 empty components", f.Raw())
	}
	// PID-7: escapes decoded per level; separators kept in composite String().
	f7 := pid.Field(7)
	if got, want := f7.String(), `a&b&c^d~~e\`; got != want {
		t.Errorf("PID-7 String = %q, want %q", got, want)
	}
	if got, want := f7.Rep(1).Component(1).Sub(1).String(), "a&b"; got != want {
		t.Errorf("PID-7.1.1 = %q, want %q", got, want)
	}
	if got := f7.NumReps(); got != 3 {
		t.Errorf("PID-7 NumReps = %d, want 3", got)
	}
	if !f7.Rep(2).Empty() || f7.Rep(3).String() != `e\` || !f7.Rep(4).Empty() {
		t.Errorf("PID-7 repetitions wrong: %q %q", f7.Rep(2).Raw(), f7.Rep(3).Raw())
	}
	if got := f7.Rep(0).Raw(); got != "" {
		t.Errorf("Rep(0) = %q, want empty", got)
	}
	if got := len(pid.Fields()); got != 7 {
		t.Errorf("len(Fields()) = %d, want 7", got)
	}
}

func TestSegmentsAccess(t *testing.T) {
	in := "MSH|^~\\&|A\rPID|1\rIN1|1|P1\rIN2|x\rIN1|2|P2\rZXY|z\r"
	m, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if m.NumSegments() != 6 {
		t.Fatalf("NumSegments = %d", m.NumSegments())
	}
	var names []string
	for _, s := range m.AllSegments() {
		names = append(names, fmt.Sprintf("%s@%d/%d", s.Name(), s.Index(), s.Sequence()))
	}
	if got, want := strings.Join(names, " "), "MSH@1/1 PID@2/1 IN1@3/1 IN2@4/1 IN1@5/2 ZXY@6/1"; got != want {
		t.Errorf("segments:\n\tgot  %s\n\twant %s", got, want)
	}
	if in1 := m.Segments("IN1"); len(in1) != 2 || in1[1].Field(2).String() != "P2" {
		t.Errorf("Segments(IN1) wrong")
	}
	if m.SegmentN("IN1", 2).Offset() != strings.Index(in, "IN1|2") {
		t.Errorf("offset of IN1(2) wrong")
	}
	if m.SegmentN("IN1", 3) != nil || m.Segment("NK1") != nil || m.SegmentAt(0) != nil || m.SegmentAt(7) != nil {
		t.Errorf("missing segments should be nil")
	}
	if m.SegmentAt(6).Name() != "ZXY" || m.Segment("ZXY").Raw() != "ZXY|z" {
		t.Errorf("Z segment not kept")
	}
	var nilSeg *Segment
	if nilSeg.Field(3).String() != "" || nilSeg.NumFields() != 0 || nilSeg.Name() != "" || nilSeg.Raw() != "" ||
		nilSeg.Index() != 0 || nilSeg.Sequence() != 0 || nilSeg.Offset() != 0 || nilSeg.String() != "hl7.Segment(nil)" {
		t.Errorf("nil *Segment methods should return zero values")
	}
	// Structural String() never shows content.
	if got := m.String(); got != "hl7.Message{, 6 segments}" {
		t.Errorf("Message.String() = %q", got)
	}
	if got := m.Segment("IN1").String(); got != "hl7.Segment{IN1 #3, 2 fields}" {
		t.Errorf("Segment.String() = %q", got)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{m, m.Segment("IN1")} {
			if got := fmt.Sprintf(f, v); strings.Contains(got, "P1") {
				t.Errorf("Sprintf(%q) prints content: %s", f, got)
			}
		}
	}
}

func TestLFInsideValue(t *testing.T) {
	in := "MSH|^~\\&|A\nOBX|1|TX|||line one\nline two\n  indented\nNTE|1\nZZZ\n"
	m, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.NumSegments(), 4; got != want {
		t.Fatalf("NumSegments = %d, want %d", got, want)
	}
	if got, want := m.Segment("OBX").Field(5).String(), "line one\nline two\n  indented"; got != want {
		t.Errorf("OBX-5:\n\tgot  %q\n\twant %q", got, want)
	}
	enc := m.Encode()
	m2, err := Parse(enc)
	if err != nil || string(m2.Encode()) != string(enc) {
		t.Errorf("re-parse not stable: %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	in := "MSH|^~\\&|PAS|RX1|HUB|CH|20240102||ADT^A01|C1|P|2.4||||||ISO IR87\rPID|1\rthis is not a segment\r"
	if _, err := Parse([]byte(in)); err == nil {
		t.Fatal("Parse should fail")
	}
	h, err := ParseHeader([]byte(in))
	if err != nil {
		t.Fatalf("ParseHeader: %v", err)
	}
	if h.NumSegments() != 1 || h.ControlID() != "C1" || h.Charset() != CharsetUnspecified || h.Type().String() != "ADT^A01" {
		t.Errorf("ParseHeader: segments=%d id=%q charset=%q type=%q", h.NumSegments(), h.ControlID(), h.Charset(), h.Type())
	}
	if _, err := ParseHeader([]byte("MSH|^~^&|")); err == nil {
		t.Errorf("ParseHeader should reject bad delimiters")
	}
	if _, err := ParseHeader([]byte("EVN|x")); err == nil {
		t.Errorf("ParseHeader should reject a missing MSH")
	}
}

func TestValidateHeader(t *testing.T) {
	tests := []struct{ in, want string }{
		{adtCR, "<nil>"},
		{"MSH|^~\\&|A|B|C|D|T||^A01|ID|P|2.5", "code=101 seg=\"MSH\" idx=1 seq=1 field=9 off=20"},
		{"MSH|^~\\&|A|B|C|D|T||ADT^A01||P|2.5", "code=101 seg=\"MSH\" idx=1 seq=1 field=10 off=28"},
		{"MSH|^~\\&|A|B|C|D|T||ADT^A01|ID||2.5", "code=101 seg=\"MSH\" idx=1 seq=1 field=11 off=31"},
		{"MSH|^~\\&|A|B|C|D|T||ADT^A01|ID|P", "code=101 seg=\"MSH\" idx=1 seq=1 field=12 off=0"},
	}
	for _, tt := range tests {
		m, err := Parse([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		if got := errSummary(m.ValidateHeader()); got != tt.want {
			t.Errorf("ValidateHeader(%q):\n\tgot  %v\n\twant %v", tt.in, got, tt.want)
		}
	}
}

func TestMessageHeaderAccessors(t *testing.T) {
	m, err := Parse([]byte(adtCR))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Type(); got != (MessageType{"ADT", "A01", "ADT_A01"}) || got.String() != "ADT^A01^ADT_A01" {
		t.Errorf("Type() = %+v", got)
	}
	if m.ControlID() != "MSG0001" || m.Version() != "2.4" || m.Charset() != CharsetUnspecified {
		t.Errorf("ControlID=%q Version=%q Charset=%q", m.ControlID(), m.Version(), m.Charset())
	}
	for _, tt := range []struct {
		t    MessageType
		want string
	}{{MessageType{"ACK", "", ""}, "ACK"}, {MessageType{"ACK", "A01", ""}, "ACK^A01"}, {MessageType{"ACK", "", "ACK"}, "ACK^^ACK"}} {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.t, got, tt.want)
		}
	}
}

func TestPaths(t *testing.T) {
	tests := []struct {
		in   string
		want string // canonical String(), or "error"
	}{
		{"PID-3", "PID-3"},
		{"PID-3(2)", "PID-3(2)"},
		{"PID-3(2).4.1", "PID-3(2).4.1"},
		{"PID-3-4-1", "PID-3.4.1"},
		{"PID-3.4-1", "PID-3.4.1"},
		{"IN1(2)-4", "IN1(2)-4"},
		{"IN1(1)-4", "IN1-4"},
		{"ZP1-1", "ZP1-1"},
		{"MSH-9.2", "MSH-9.2"},
		{"PID", "error"},
		{"PID-", "error"},
		{"PID-0", "error"},
		{"PID-3(0)", "error"},
		{"PID-3()", "error"},
		{"PID-3(2", "error"},
		{"PID-3.0", "error"},
		{"PID-3.1.2.3", "error"},
		{"PID-3x", "error"},
		{"pid-3", "error"},
		{"PID(2-3", "error"},
		{"PID.3", "error"},
		{"PI-3", "error"},
		{"PID-9999999", "error"},
		{"", "error"},
	}
	for _, tt := range tests {
		p, err := ParsePath(tt.in)
		got := p.String()
		if err != nil {
			got = "error"
			var pe *PathError
			if !errors.As(err, &pe) || pe.Path != tt.in {
				t.Errorf("ParsePath(%q): error %v is not a *PathError for the path", tt.in, err)
			}
		}
		if got != tt.want {
			t.Errorf("ParsePath(%q):\n\tgot  %v\n\twant %v", tt.in, got, tt.want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("MustParsePath did not panic on a bad path")
		}
	}()
	MustParsePath("bad")
}

func TestValue(t *testing.T) {
	m, err := Parse([]byte(adtCR + "IN1|1|P1\rIN1|2|P2^X\r"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{"MSH-1", "|"},
		{"MSH-2", `^~\&`},
		{"MSH-9", "ADT^A01^ADT_A01"},
		{"MSH-9.1", "ADT"},
		{"MSH-9-2", "A01"},
		{"PID-3", "9990500002^^^NHS^NH~D123^^^RX1^MR"},
		{"PID-3(1)", "9990500002^^^NHS^NH"},
		{"PID-3.1", "9990500002"},
		{"PID-3(2).1", "D123"},
		{"PID-3(2).4.1", "RX1"},
		{"PID-3(3).1", ""},
		{"PID-5.2", "JOHN"},
		{"PID(2)-5", ""},
		{"IN1(2)-2.2", "X"},
		{"IN1(2)-2", "P2^X"},
		{"NK1-2", ""},
		{"PV1-3.2", "BED2"},
		{"PV1-300", ""},
	}
	for _, tt := range tests {
		got, err := m.Value(tt.path)
		if err != nil || got != tt.want {
			t.Errorf("Value(%q):\n\tgot  %q, %v\n\twant %q", tt.path, got, err, tt.want)
		}
	}
	if _, err := m.Value("PID.5"); err == nil {
		t.Errorf("Value with a bad path should fail")
	}
	if e := m.Lookup(MustParsePath("PID-5.1")); e.Raw() != "SMITH" || e.Empty() || e.IsNull() || e.String() != "SMITH" {
		t.Errorf("Lookup(PID-5.1) = %q", e.Raw())
	}
}

func TestCharsetDecoding(t *testing.T) {
	hdr := func(cs string) string { return "MSH|^~\\&|A|B|C|D|T||ADT^A01|1|P|2.5||||||" + cs + "\rPID|1||" }
	tests := []struct {
		charset, value, want string
	}{
		{"", "Zo\xc3\xab", "Zoë"},              // UTF-8 passthrough
		{"", "Zo\xeb", "Zoë"},                  // undeclared: invalid UTF-8 read as ISO-8859-1
		{"", "Zo\\Xeb\\", "Zoë"},               // hex byte, not UTF-8: ISO-8859-1
		{"", "Zo\\Xc3ab\\", "Zoë"},             // hex bytes forming UTF-8
		{"ASCII", "Zo\xeb", "Zoë"},             // mislabelled 8-bit text degrades gracefully
		{"8859/1", "Zo\xeb", "Zoë"},            // ISO-8859-1
		{"8859/1", "Zo\\XEB\\", "Zoë"},         // hex under ISO-8859-1
		{"8859/1", "Zo\\Xc3ab\\", "ZoÃ«"},      // each byte is a character
		{"8859/1", "\xa4", "¤"},                // currency sign
		{"8859/15", "\xa4 \xbd", "€ œ"},        // Latin-9 differences
		{"UNICODE UTF-8", "Zo\xc3\xab", "Zoë"}, // declared UTF-8
		// Declared UTF-8 with invalid bytes is refused: TestDeclaredUTF8MustBeUTF8.
		{"UNICODE UTF-8", "\\Xe282ac\\", "€"},             // hex UTF-8
		{"UTF-8", "\\Xeb\\", "ë"},                         // Escape()'s output decodes in UTF-8 messages too
		{"8859/1~UNICODE UTF-8", "Zo\xeb", "Zoë"},         // first repetition is the default
		{"8859/1", "SMITH\\S\\JONES\xe9", "SMITH^JONESé"}, // escapes and decoding together
	}
	for _, tt := range tests {
		in := hdr(tt.charset) + tt.value
		m, err := Parse([]byte(in))
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		f := m.Segment("PID").Field(3)
		if got := f.String(); got != tt.want {
			t.Errorf("charset %q value %q:\n\tgot  %q\n\twant %q", tt.charset, tt.value, got, tt.want)
		}
		if f.Raw() != tt.value {
			t.Errorf("charset %q: Raw() = %q, want the bytes as received %q", tt.charset, f.Raw(), tt.value)
		}
		if got := string(m.Encode()); got != in+"\r" {
			t.Errorf("charset %q: Encode changed the bytes", tt.charset)
		}
	}
}

// Errors must locate problems without quoting message content.
func TestErrorsHaveNoPatientData(t *testing.T) {
	const secret = "SECRETPATIENT"
	inputs := []string{
		secret + "|^~\\&|",
		"MSH|^~\\&|" + secret + "\r" + secret + "|x",
		"MSH|^~\\&|" + secret + "\rPID|1\r " + secret,
		"MSH|^~\\&|" + secret + "\rPID|1\rMSH|^~\\&|" + secret,
		"MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|" + secret,
		"MSH|^~\\&|A|B|C|D|E|F|G|H|I|J|K|L|M|N|O|ISO " + secret + "/x",
		"MSH|" + secret,
		"BHS|^~\\&|" + secret + "\rEVN|" + secret,
		"FHS|^~\\&|\rBHS|^~\\&|\rMSH|^~\\&|A\rPID|" + secret + "\rBTS|" + secret + "\rFTS|1",
		"BHS|^~\\&|\rMSH|^~\\&|A\rBTS|7\r",
	}
	for _, in := range inputs {
		_, err := Parse([]byte(in))
		if err == nil {
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error for %q leaks content: %v", in, err)
		}
		var pe *ParseError
		if errors.As(err, &pe) && strings.Contains(pe.Detail().Diagnostic, "SECRET") {
			t.Errorf("ERR detail for %q leaks content", in)
		}
	}
}

func TestParseErrorString(t *testing.T) {
	tests := []struct {
		e    ParseError
		want string
	}{
		{ParseError{Code: "100", Reason: "message is empty"}, "hl7: (offset 0): message is empty [HL7 0357 100 Segment sequence error]"},
		{ParseError{Segment: "MSH", SegmentIndex: 1, Field: 2, Offset: 4, Code: "102", Reason: "r"}, "hl7: MSH^^2 (segment 1, offset 4): r [HL7 0357 102 Data type error]"},
		{ParseError{SegmentIndex: 3, Field: 2, Offset: 9, Reason: "r"}, "hl7: segment 3 field 2 (offset 9): r"},
		{ParseError{Segment: "PID", SegmentIndex: 3, Code: "999", Reason: "r"}, "hl7: PID (segment 3, offset 0): r [HL7 0357 999]"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error():\n\tgot  %q\n\twant %q", got, tt.want)
		}
	}
}

func TestAppendSeparators(t *testing.T) {
	naive := func(s string, c byte) []int32 {
		var out []int32
		for i := 0; i < len(s); i++ {
			if s[i] == c {
				out = append(out, int32(i))
			}
		}
		return out
	}
	// Every byte value next to the separator, at every alignment, catches
	// borrow and high-bit mistakes in the word arithmetic.
	for _, c := range []byte{'|', '#', 0x00, 0x01, 0x7F, 0x80, 0xFF} {
		for b := 0; b < 256; b++ {
			for pad := 0; pad < 9; pad++ {
				s := strings.Repeat("x", pad) + string([]byte{byte(b), c, byte(b), byte(b), c, c}) + strings.Repeat(string([]byte{byte(b)}), 9)
				got, want := appendSeparators(nil, s, c), naive(s, c)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("appendSeparators(%q, %q) = %v, want %v", s, c, got, want)
				}
			}
		}
	}
}

// TestDeclaredUTF8MustBeUTF8 pins part of issue 14's fifth defect: invalid
// UTF-8 was accepted and passed on altered (replaced by U+FFFD). A message
// that declares UTF-8 in MSH-18 and holds invalid bytes is refused (102) at
// the field that holds them; without a declaration, 8-bit text is still read
// as ISO-8859-1.
func TestDeclaredUTF8MustBeUTF8(t *testing.T) {
	const head = "MSH|^~\\&|PAS|RX1|CAREHUB|CAREHUB|20261124100000||ADT^A08|C1|P|2.4||||||"
	tests := []struct {
		name, msg, want string
	}{
		{"declared, valid", head + "UNICODE UTF-8\rPID|1||9990000018^^^NHS^NH||ZO\xc3\x8b^ALEX\r", ""},
		{"declared, invalid in PID-5", head + "UNICODE UTF-8\rPID|1||9990000018^^^NHS^NH||\xff\xfeSMITH^ALEX\r",
			`code=102 seg="PID" idx=2 seq=1 field=5`},
		{"declared as UNICODE (ITK), invalid", head + "UNICODE\rPID|1||9990000018^^^NHS^NH||SMITH^\xc3\r",
			`code=102 seg="PID" idx=2 seq=1 field=5`},
		{"not declared, 8-bit", head + "\rPID|1||9990000018^^^NHS^NH||\xc9MILE^ALEX\r", ""},
	}
	for _, tt := range tests {
		m, err := Parse([]byte(tt.msg))
		got := ""
		if err != nil {
			got = errSummary(err)
		}
		if tt.want == "" && err != nil || tt.want != "" && !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s:\n\tgot  %s\n\twant %s", tt.name, got, tt.want)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\xff\xfe\xc3") {
			t.Errorf("%s: the error echoes the bytes: %q", tt.name, err.Error())
		}
		if err == nil && !utf8.ValidString(m.Segment("PID").Field(5).String()) {
			t.Errorf("%s: PID-5 is not UTF-8 text", tt.name)
		}
	}
}
