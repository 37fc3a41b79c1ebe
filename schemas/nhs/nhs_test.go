package nhs

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// ruleOf returns the rule of the single violation in err, or "" for nil.
func ruleOf(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var pe *problem.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error is %T, want *problem.Error", err)
	}
	if pe.Kind != problem.Invalid {
		t.Errorf("kind = %v, want invalid", pe.Kind)
	}
	if len(pe.Violations) != 1 {
		t.Fatalf("got %d violations, want 1", len(pe.Violations))
	}
	return pe.Violations[0].Rule
}

// TestParseCorpus checks Parse against every row of a corpus of NHS numbers
// quoted from public test suites (testdata/nhs-numbers.csv): npm
// nhs-number-validator 1.1.2, GIG-Cymru-NHS-Wales/nhs-number-using-rust,
// Inhealthcare/open-inhealthcare, the NHSDigital PDS sandbox and others; each
// row names its source and the path in it (columns source, source_path).
//
// The corpus's own verdict (column mod11_valid_computed) is the algorithm's,
// and so is ours. Two public suites disagree with it: the NHS Wales Rust
// crate asserts 9991234560 (and its spaced form) valid, and Inhealthcare's
// Java tests use 9999345201 as VALID_NHSNUMBER. Both are wrong: for
// 999123456 the weighted sum is 263, 11 - 263 mod 11 = 10, so no check digit
// makes 999123456x valid; for 999934520 the check digit must be 4, not 1.
// We trust the algorithm over the suites.
func TestParseCorpus(t *testing.T) {
	f, err := os.Open("testdata/nhs-numbers.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 || rows[0][0] != "value" || rows[0][1] != "mod11_valid_computed" {
		t.Fatalf("unexpected header %q", rows[0])
	}
	for _, row := range rows[1:] {
		in, verdict := row[0], row[1]
		var want string // rule wanted from Parse; "" means valid
		switch {
		case verdict == "yes":
		case strings.Contains(verdict, "not 10 digits"):
			want = RuleFormat
		case strings.HasPrefix(verdict, "no"):
			want = RuleCheckDigit
		default:
			t.Fatalf("row %q: unknown verdict %q", row, verdict)
		}
		if strings.ContainsAny(in, " -") {
			// Only the spaced form; Parse is strict, ParseLoose strips.
			n, err := Parse(in)
			if got := ruleOf(t, err); got != RuleFormat {
				t.Errorf("Parse(%q):\n\tgot  rule %q\n\twant rule %q", in, got, RuleFormat)
			}
			if !n.IsZero() {
				t.Errorf("Parse(%q) returned a non-zero Number with an error", in)
			}
			_, err = ParseLoose(in)
			if got := ruleOf(t, err); got != want {
				t.Errorf("ParseLoose(%q):\n\tgot  rule %q\n\twant rule %q", in, got, want)
			}
			continue
		}
		n, err := Parse(in)
		if got := ruleOf(t, err); got != want {
			t.Errorf("Parse(%q):\n\tgot  rule %q\n\twant rule %q", in, got, want)
			continue
		}
		if want == "" && n.Digits() != in {
			t.Errorf("Parse(%q).Digits():\n\tgot  %q\n\twant %q", in, n.Digits(), in)
		}
		if want != "" && !n.IsZero() {
			t.Errorf("Parse(%q) returned a non-zero Number with an error", in)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want string // rule; "" = valid
	}{
		{"9434765919", ""},
		{"9990500002", ""},
		{"0000000000", ""}, // passes modulus 11; not issued, but not ours to judge
		{"4010232137", ""}, // check digit 7
		{"9990000050", ""}, // 11 - 0 = 11, check digit 0
		{"9991234560", RuleCheckDigit},
		{"9991234561", RuleCheckDigit},
		{"9434765918", RuleCheckDigit},
		{"943476591", RuleFormat},
		{"94347659190", RuleFormat},
		{"", RuleFormat},
		{"943476591a", RuleFormat},
		{"+943476591", RuleFormat},
		{" 943476591", RuleFormat},
		{"943 476 5919", RuleFormat}, // strict: formatted input only through ParseLoose
		{"９４３４７６５９１９", RuleFormat},   // full-width digits are not ASCII digits
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if got := ruleOf(t, err); got != tt.want {
			t.Errorf("Parse(%q):\n\tgot  rule %q\n\twant rule %q", tt.in, got, tt.want)
		}
	}
}

func TestParseLoose(t *testing.T) {
	tests := []struct {
		in   string
		want string // digits; "" = error
	}{
		{"943 476 5919", "9434765919"},
		{"943-476-5919", "9434765919"},
		{" 9434765919\t", "9434765919"},
		{"9434765919", "9434765919"},
		{"943 476 591", ""},
		{"943.476.5919", ""},
		{"9434 7659 1900", ""},
		{"999 123 4560", ""}, // check digit would be 10
		{"---", ""},
	}
	for _, tt := range tests {
		n, err := ParseLoose(tt.in)
		got := n.Digits()
		if (err != nil) != (tt.want == "") || got != tt.want {
			t.Errorf("ParseLoose(%q):\n\tgot  %q, %v\n\twant %q", tt.in, got, err, tt.want)
		}
	}
}

// TestErrorsHoldNoDigits: an error text must never carry any part of the
// input, so the texts hold no digit at all.
func TestErrorsHoldNoDigits(t *testing.T) {
	for _, in := range []string{"9434765918", "943476591", "9991234560", "99912345601"} {
		_, err := Parse(in)
		if err == nil {
			t.Fatalf("Parse(%q) = nil error", in)
		}
		if s := err.Error(); strings.ContainsAny(s, "0123456789") {
			t.Errorf("Parse(%q) error %q holds a digit", in, s)
		}
		var n Number
		err = json.Unmarshal([]byte(`"`+in+`"`), &n)
		if err == nil || strings.ContainsAny(err.Error(), "0123456789") {
			t.Errorf("UnmarshalJSON(%q) error = %v; want an error without digits", in, err)
		}
	}
}

const canary = "9990500002" // valid, test range

// TestRedaction: no output path that does not ask for the digits shows them.
func TestRedaction(t *testing.T) {
	n := MustParse(canary)
	type holder struct {
		Exported   Number
		unexported Number
	}
	h := holder{n, n}
	formats := []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x", "%X", "%o", "%10.3v", "%T"}
	for _, f := range formats {
		for _, v := range []any{n, &n, h, &h, []Number{n}, map[Number]Number{n: n}} {
			if s := fmt.Sprintf(f, v); strings.Contains(s, canary) {
				t.Errorf("Sprintf(%q, %T) = %q: shows the digits", f, v, s)
			}
		}
	}
	if got, want := fmt.Sprint(n), "NHS(redacted)"; got != want {
		t.Errorf("Sprint:\n\tgot  %q\n\twant %q", got, want)
	}
	if got, want := fmt.Sprintf("%#v", n), "nhs.Number(redacted)"; got != want {
		t.Errorf("%%#v:\n\tgot  %q\n\twant %q", got, want)
	}
	if got, want := fmt.Sprintf("%q", n), `"NHS(redacted)"`; got != want {
		t.Errorf("%%q:\n\tgot  %q\n\twant %q", got, want)
	}
	if got, want := (Number{}).String(), "NHS(none)"; got != want {
		t.Errorf("zero String:\n\tgot  %q\n\twant %q", got, want)
	}
}

func TestRedactionZap(t *testing.T) {
	n := MustParse(canary)
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	log.Info("msg", zap.Any("any", n), zap.Stringer("stringer", n), zap.Any("ptr", &n))
	log.Sugar().Infow("sugar", "nhs", n)
	log.Sugar().Infof("formatted %v %s %d", n, n, n)

	// Observer keeps fields unencoded; run them through the JSON encoder too,
	// which is what production uses.
	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	jlog := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
	jlog.Info("msg", zap.Any("any", n), zap.Stringer("stringer", n))
	jlog.Sugar().Infow("sugar", "nhs", n)

	if logs.Len() != 3 {
		t.Fatalf("observed %d entries, want 3", logs.Len())
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message, canary) {
			t.Errorf("message %q shows the digits", e.Message)
		}
		for k, v := range e.ContextMap() {
			if s := fmt.Sprint(v); strings.Contains(s, canary) || s != "NHS(redacted)" {
				t.Errorf("field %s = %q, want NHS(redacted)", k, s)
			}
		}
	}
	if strings.Contains(buf.String(), canary) || !strings.Contains(buf.String(), "NHS(redacted)") {
		t.Errorf("JSON log output %q: want redacted", buf.String())
	}
}

func TestRedactionSlog(t *testing.T) {
	n := MustParse(canary)
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		l := slog.New(h)
		l.Info("msg", "nhs", n, slog.Any("any", n), slog.Any("ptr", &n))
		l.Info("fmt " + fmt.Sprint(n))
	}
	if s := buf.String(); strings.Contains(s, canary) || !strings.Contains(s, "NHS(redacted)") {
		t.Errorf("slog output %q: want redacted", s)
	}
}

func TestJSON(t *testing.T) {
	type payload struct {
		NHSNumber Number `json:"nhsNumber"`
		Other     Number `json:"other,omitzero"`
	}
	in := payload{NHSNumber: MustParse(canary)}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"nhsNumber":"`+canary+`"}`; got != want {
		t.Errorf("Marshal:\n\tgot  %s\n\twant %s", got, want)
	}
	var out payload
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Errorf("round trip: got %#v, want %#v", out, in)
	}
	if b, _ := json.Marshal(Number{}); string(b) != "null" {
		t.Errorf("zero Marshal = %s, want null", b)
	}
	for _, bad := range []string{`9990500002`, `"999050000"`, `"9990500003"`, `"\u0039990500002"`, `""`, `{}`} {
		var n Number
		if err := json.Unmarshal([]byte(bad), &n); err == nil {
			t.Errorf("Unmarshal(%s) = nil error", bad)
		}
	}
	var n Number
	if err := json.Unmarshal([]byte(`null`), &n); err != nil || !n.IsZero() {
		t.Errorf("Unmarshal(null) = %v, %v; want zero, nil", n, err)
	}
}

func TestZeroNumber(t *testing.T) {
	var n Number
	if !n.IsZero() || n.Digits() != "" {
		t.Errorf("zero Number: IsZero=%v Digits=%q", n.IsZero(), n.Digits())
	}
	if MustParse("0000000000").IsZero() {
		t.Error("0000000000 parsed as the zero Number")
	}
	if MustParse("9434765919") != MustParse("9434765919") {
		t.Error("equal numbers compare unequal")
	}
	if MustParse("9434765919") == MustParse("9990500002") {
		t.Error("different numbers compare equal")
	}
}

func TestPseudonym(t *testing.T) {
	// Vectors computed independently:
	//   printf 9434765919 | openssl dgst -sha256 -hmac carehub-test-key-0123456789
	// and the first 32 hex digits prefixed with p1_.
	p, err := NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewPseudonymiser([]byte("another-key-abcdefghij"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		p    *Pseudonymiser
		in   string
		want string
	}{
		{p, "9434765919", "p1_45a773fc24fcc6fe391ae2397ee14365"},
		{p, "9000000009", "p1_e8d74cbc03fb143c33865c278918ce83"},
		{q, "9434765919", "p1_631d22c6430e9ea562d031b65f4ff05b"},
	}
	for _, tt := range tests {
		for i := 0; i < 2; i++ { // deterministic: same answer twice (pooled state reused)
			if got := tt.p.Pseudonym(MustParse(tt.in)); got != tt.want {
				t.Errorf("Pseudonym(%s):\n\tgot  %s\n\twant %s", tt.in, got, tt.want)
			}
		}
	}
	if got := p.Pseudonym(Number{}); got != "" {
		t.Errorf("Pseudonym(zero) = %q, want empty", got)
	}
	if len(tests[0].want) != PseudonymLen {
		t.Errorf("PseudonymLen = %d, vectors are %d long", PseudonymLen, len(tests[0].want))
	}
}

func TestPseudonymiserKey(t *testing.T) {
	for _, k := range [][]byte{nil, []byte("short"), make([]byte, MinKeySize-1)} {
		if _, err := NewPseudonymiser(k); err == nil {
			t.Errorf("NewPseudonymiser(%d bytes) = nil error", len(k))
		}
	}
	key := []byte("carehub-test-key-0123456789")
	p, err := NewPseudonymiser(key)
	if err != nil {
		t.Fatal(err)
	}
	key[0] = 'X' // the Pseudonymiser must hold its own copy
	if got := p.Pseudonym(MustParse("9434765919")); got != "p1_45a773fc24fcc6fe391ae2397ee14365" {
		t.Errorf("pseudonym changed after caller mutated its key: %s", got)
	}
	if s := fmt.Sprintf("%+v %#v", p, p); strings.Contains(s, "carehub-test-key") {
		t.Errorf("printing a Pseudonymiser shows the key: %s", s)
	}
}

// TestPseudonymConcurrent is meant for -race: one Pseudonymiser, many
// goroutines, every answer the same.
func TestPseudonymConcurrent(t *testing.T) {
	p, _ := NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	n := MustParse("9434765919")
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				if got := p.Pseudonym(n); got != "p1_45a773fc24fcc6fe391ae2397ee14365" {
					t.Errorf("concurrent Pseudonym = %s", got)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"9434765919", "9991234560", "943 476 5919", "", "0000000000", "99999999999", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			if !n.IsZero() {
				t.Fatal("non-zero Number with an error")
			}
			if strings.ContainsAny(err.Error(), "0123456789") {
				t.Fatalf("error text holds a digit: %q", err.Error())
			}
		} else {
			if n.Digits() != s {
				t.Fatalf("Digits() = %q, want %q", n.Digits(), s)
			}
			b, _ := json.Marshal(n)
			var back Number
			if err := json.Unmarshal(b, &back); err != nil || back != n {
				t.Fatalf("JSON round trip: %v", err)
			}
			if strings.ContainsAny(fmt.Sprintf("%v%s%d%x%q%#v", n, n, n, n, n, n), "0123456789") {
				t.Fatal("formatting shows a digit")
			}
		}
		l, lerr := ParseLoose(s)
		if err == nil && (lerr != nil || l != n) {
			t.Fatalf("ParseLoose disagrees with Parse on a strict input")
		}
	})
}

func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("9434765919"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPseudonym(b *testing.B) {
	p, _ := NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	n := MustParse("9434765919")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = p.Pseudonym(n)
		}
	})
}

func BenchmarkPseudonymSerial(b *testing.B) {
	p, _ := NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	n := MustParse("9434765919")
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Pseudonym(n)
	}
}

func TestSynthetic(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		n := Synthetic(i)
		d := n.Digits()
		if d[:3] != "999" {
			t.Fatalf("Synthetic(%d):\n\tgot  %s\n\twant the 999 test range", i, d)
		}
		if _, err := Parse(d); err != nil {
			t.Fatalf("Synthetic(%d) is not valid: %v", i, err)
		}
		seen[d] = true
	}
	if len(seen) < 1800 {
		t.Errorf("Synthetic gave only %d distinct numbers for 2000 seeds", len(seen))
	}
}

func TestLocalPseudonym(t *testing.T) {
	// Vectors computed independently:
	//   printf 'local\0RX1\0RX1-0001' | openssl dgst -sha256 -hmac carehub-test-key-0123456789
	// and the first 32 hex digits prefixed with l1_.
	p, err := NewPseudonymiser([]byte("carehub-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ org, id, want string }{
		{"RX1", "RX1-0001", "l1_0e53da76e65eee0675fbdc778c0008c3"},
		{"RX2", "RX1-0001", "l1_520acaebb378c0b34f193d8166ef437c"},
		{"RX1", "", ""},
	}
	for _, tt := range tests {
		if got := p.LocalPseudonym(tt.org, tt.id); got != tt.want {
			t.Errorf("LocalPseudonym(%s, %s):\n\tgot  %s\n\twant %s", tt.org, tt.id, got, tt.want)
		}
	}
	// A local identifier made of an NHS number's digits never gets the
	// NHS number's pseudonym.
	if p.LocalPseudonym("RX1", "9434765919") == p.Pseudonym(MustParse("9434765919")) {
		t.Error("a local pseudonym equals an NHS number's")
	}
}
