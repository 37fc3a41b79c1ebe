package hl7

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// samplesDir holds copies of public HL7 v2 samples (testdata/samples/SOURCES.md
// says where each came from). Packages adt and frame read it too.
const samplesDir = "testdata/samples"

// sampleFiles returns every HL7 sample under testdata/samples, keyed by
// slash-separated path relative to it. Documentation (.md), vector tables
// (.tsv, tested on their own) and MLLP streams (.mllp, tested in package
// frame) are left out.
func sampleFiles(t testing.TB) map[string][]byte {
	root := samplesDir
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(p) {
		case ".md", ".tsv", ".mllp":
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 40 {
		t.Fatalf("found only %d sample files under %s", len(files), root)
	}
	return files
}

// outcome is what a sample file must give. The zero value means: Parse
// succeeds.
type outcome struct {
	parseErr string // errSummary of Parse's error: batch files are refused
	why      string
}

var sampleOutcomes = map[string]outcome{
	"batch/python-hl7-sample_batch.hl7": {
		parseErr: `code=100 seg="BHS" idx=1 seq=1 field=0 off=0`},
	"batch/python-hl7-sample_batch1.hl7": {
		parseErr: `code=100 seg="BHS" idx=1 seq=1 field=0 off=0`},
	"batch/python-hl7-sample_batch2.hl7": {
		parseErr: `code=100 seg="MSH" idx=7 seq=2 field=0 off=280`,
		why:      "two messages without envelope: Parse sees a second MSH"},
	"batch/python-hl7-sample_file1.hl7": {
		parseErr: `code=100 seg="FHS" idx=1 seq=1 field=0 off=0`},
	"generic/npm-hl7-standard/batch.hl7": {
		parseErr: `code=100 seg="FHS" idx=1 seq=1 field=0 off=0`},
	"malformed/python-hl7-sample_bad_batch.hl7": {
		parseErr: `code=100 seg="BHS" idx=1 seq=1 field=0 off=0`,
		why:      "BHS followed by EVN"},
	"malformed/python-hl7-sample_bad_batch1.hl7": {
		parseErr: `code=100 seg="BHS" idx=1 seq=1 field=0 off=0`,
		why:      "second BHS inside an open batch"},
	"malformed/python-hl7-sample_bad_file.hl7": {
		parseErr: `code=100 seg="FHS" idx=1 seq=1 field=0 off=0`,
		why:      "FHS, BHS, then EVN"},
	"malformed/python-hl7-sample_bad_file2.hl7": {
		parseErr: `code=100 seg="FHS" idx=1 seq=1 field=0 off=0`,
		why:      "FHS nested inside a message"},
	"malformed/python-hl7-sample_bad_file3.hl7": {
		parseErr: `code=100 seg="FHS" idx=1 seq=1 field=0 off=0`,
		why:      "FHS then EVN"},
}

// normalise is what Encode(Parse(x)) must equal: no byte order mark, no
// leading or blank lines, every segment terminated by CR.
func normalise(b []byte) []byte {
	b = bytes.TrimPrefix(b, []byte(utf8BOM))
	var out []byte
	for _, line := range strings.FieldsFunc(string(b), func(r rune) bool { return r == '\r' || r == '\n' }) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		out = append(out, line...)
		out = append(out, '\r')
	}
	return out
}

// walkValues reads every value of m at every level, checking that text is
// valid UTF-8. It returns the number of values read.
func walkValues(t testing.TB, m *Message) int {
	n := 0
	check := func(s string) {
		n++
		if !utf8.ValidString(s) {
			t.Errorf("value %q is not valid UTF-8", s)
		}
	}
	for _, s := range m.AllSegments() {
		for _, f := range s.Fields() {
			check(f.String())
			for _, r := range f.Repetitions() {
				check(r.String())
				for _, c := range r.Components() {
					check(c.String())
					for _, sc := range c.Subs() {
						check(sc.String())
					}
				}
			}
		}
	}
	return n
}

func TestSamples(t *testing.T) {
	files := sampleFiles(t)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for name := range sampleOutcomes {
		if _, ok := files[name]; !ok {
			t.Errorf("%s: listed in sampleOutcomes but not found", name)
		}
	}
	parsed := 0
	for _, name := range names {
		data := files[name]
		want, listed := sampleOutcomes[name]
		if strings.HasPrefix(name, "malformed/") && !listed {
			t.Errorf("%s: malformed sample without an expected outcome in sampleOutcomes", name)
			continue
		}
		m, err := Parse(data)
		if want.parseErr != "" {
			if got := errSummary(err); got != want.parseErr {
				t.Errorf("Parse(%s) (%s):\n\tgot  %v\n\twant %v\n\t(%v)", name, want.why, got, want.parseErr, err)
			}
		} else {
			if err != nil {
				t.Errorf("Parse(%s): %v", name, err)
				continue
			}
			parsed++
			if got, w := m.Encode(), normalise(data); !bytes.Equal(got, w) {
				t.Errorf("Encode(Parse(%s)) differs from the normalised input:\n\tgot  %q\n\twant %q", name, got, w)
			}
			if err := m.ValidateHeader(); err != nil {
				t.Errorf("%s: ValidateHeader: %v", name, err)
			}
			walkValues(t, m)
			// Parsing the encoded form gives the same bytes again.
			m2, err := Parse(m.Encode())
			if err != nil || !bytes.Equal(m2.Encode(), m.Encode()) {
				t.Errorf("%s: Parse(Encode(m)) is not stable: %v", name, err)
			}
		}
	}
	if parsed < 35 {
		t.Errorf("only %d samples parsed as single messages", parsed)
	}
}

// CR-separated input must round-trip byte for byte.
func TestSamplesRoundTripCR(t *testing.T) {
	for name, data := range sampleFiles(t) {
		if _, special := sampleOutcomes[name]; special {
			continue
		}
		cr := normalise(data)
		m, err := Parse(cr)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := m.Encode(); !bytes.Equal(got, cr) {
			t.Errorf("%s: Encode(Parse(x)) != x for CR-separated x", name)
		}
	}
}

// The FHIR-Converter bad-MSH vectors. FHIR-Converter rejects a non-backslash
// escape character; HL7 only recommends '\', so Parse accepts it.
func TestFHIRConverterBadMSHVectors(t *testing.T) {
	path := filepath.Join(samplesDir, "malformed", "fhir-converter-bad-msh-vectors.tsv")
	header, rows := readVectors(t, path)
	if !strings.HasPrefix(strings.Join(header, ","), "input,expected_error") {
		t.Fatalf("unexpected header %q", header)
	}
	want := map[string]string{
		"M":                      `code=100 seg="" idx=1 seq=1 field=0 off=0`,
		"abc":                    `code=100 seg="" idx=1 seq=1 field=0 off=0`,
		"MSQ|||":                 `code=100 seg="MSQ" idx=1 seq=1 field=0 off=0`,
		"MSH|||":                 `code=101 seg="MSH" idx=1 seq=1 field=2 off=4`,
		"MSH|^~^#|":              `code=102 seg="MSH" idx=1 seq=1 field=2 off=6`,
		"MSH|^~#&|NES|NINTENDO|": `<nil>`,
	}
	for _, r := range rows {
		w, ok := want[r[0]]
		if !ok {
			t.Errorf("vector %q has no expected outcome here", r[0])
			continue
		}
		_, err := Parse([]byte(r[0]))
		if got := errSummary(err); got != w {
			t.Errorf("Parse(%q) (FHIR-Converter: %s):\n\tgot  %v\n\twant %v\n\t(%v)", r[0], r[1], got, w, err)
		}
	}
	if len(rows) != len(want) {
		t.Errorf("%d vectors, %d expectations", len(rows), len(want))
	}
}

// dump renders the structure of a message for golden files.
func dump(w *strings.Builder, m *Message) {
	fmt.Fprintf(w, "message type=%q control=%q version=%q charset=%q delimiters=%q segments=%d\n",
		m.Type().String(), m.ControlID(), m.Version(), m.Charset(),
		string(m.Delimiters().Field)+m.Delimiters().EncodingCharacters(), m.NumSegments())
	for _, s := range m.AllSegments() {
		fmt.Fprintf(w, "%s #%d seq=%d offset=%d fields=%d\n", s.Name(), s.Index(), s.Sequence(), s.Offset(), s.NumFields())
		for i, f := range s.Fields() {
			n := i + 1
			if f.Empty() {
				continue
			}
			fmt.Fprintf(w, "  %s-%d %s\n", s.Name(), n, describe(f.Raw(), f.String(), f.IsNull()))
			reps := f.Repetitions()
			for ri, r := range reps {
				comps := r.Components()
				if len(reps) > 1 {
					fmt.Fprintf(w, "    %s-%d(%d) %s\n", s.Name(), n, ri+1, describe(r.Raw(), r.String(), r.IsNull()))
				}
				for ci, c := range comps {
					subs := c.Subs()
					if len(comps) > 1 && !c.Empty() {
						fmt.Fprintf(w, "      %s-%d(%d).%d %s\n", s.Name(), n, ri+1, ci+1, describe(c.Raw(), c.String(), c.IsNull()))
					}
					for si, sc := range subs {
						if len(subs) > 1 && !sc.Empty() {
							fmt.Fprintf(w, "        %s-%d(%d).%d.%d %s\n", s.Name(), n, ri+1, ci+1, si+1, describe(sc.Raw(), sc.String(), sc.IsNull()))
						}
					}
				}
			}
		}
	}
}

func describe(raw, text string, null bool) string {
	switch {
	case null:
		return "NULL"
	case raw == text:
		return fmt.Sprintf("%q", text)
	default:
		return fmt.Sprintf("%q (raw %q)", text, raw)
	}
}

func TestGolden(t *testing.T) {
	golden := []struct{ sample, file string }{
		{"uk/inhealthcare-smsp/A28.hl7", "uk-a28.golden"},
		{"generic/ms-fhir-converter/ADT-A01-01.hl7", "fhir-converter-adt-a01.golden"},
		{"generic/ms-fhir-converter/ADT01-23.hl7", "fhir-converter-adt01-23-bom.golden"},
		{"generic/python-hl7/sample_msh_adt_a01.hl7", "python-hl7-adt-a01-nulls.golden"},
		{"generic/python-hl7/rep_sample_hl7.hl7", "python-hl7-repetitions.golden"},
		{"generic/npm-hl7-standard/message2.hl7", "npm-ack-with-err.golden"},
		{"generic/simple-hl7/adt.hl7", "simple-hl7-adt-a04.golden"},
	}
	files := sampleFiles(t)
	for _, g := range golden {
		data, ok := files[g.sample]
		if !ok {
			t.Errorf("sample %s not found", g.sample)
			continue
		}
		m, err := Parse(data)
		if err != nil {
			t.Errorf("%s: %v", g.sample, err)
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "# Structure of %s/%s (go test -run TestGolden -update rewrites this file)\n", samplesDir, g.sample)
		dump(&b, m)
		path := filepath.Join("testdata", g.file)
		if *update {
			if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (run go test -run TestGolden -update)", err)
			continue
		}
		if got := b.String(); got != string(want) {
			t.Errorf("%s: structure differs from %s (run with -update and review the diff):\n%s", g.sample, path, firstDiff(got, string(want)))
		}
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n\tgot  %s\n\twant %s", i+1, gl, wl)
		}
	}
	return ""
}

func FuzzParse(f *testing.F) {
	for _, data := range sampleFiles(f) {
		f.Add(data)
	}
	for _, s := range []string{"", "M", "MSH|||", "MSH|^~^#|", "MSH|^~\\&|\rPID|\\X41\\|\\.sp5\\\nline\n", "BHS|^~\\&\rBTS|0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, herr := ParseHeader(data)
		m, err := Parse(data)
		if err != nil {
			pe, ok := err.(*ParseError)
			if !ok || pe.Code == "" || pe.Reason == "" {
				t.Fatalf("Parse error %#v lacks a code or reason", err)
			}
			ack := NewACK(h, AckAR, "X", fixedTime, pe.Detail())
			if _, err := Parse(ack); err != nil {
				t.Fatalf("NewACK for a rejected message does not parse: %v\n%q", err, ack)
			}
			return
		}
		if herr != nil {
			t.Fatalf("Parse succeeded but ParseHeader failed: %v", herr)
		}
		walkValues(t, m)
		enc := m.Encode()
		m2, err := Parse(enc)
		if err != nil {
			t.Fatalf("re-parse of encoded message failed: %v\n%q", err, enc)
		}
		if enc2 := m2.Encode(); !bytes.Equal(enc, enc2) {
			t.Fatalf("parse-encode-parse not stable:\n%q\n%q", enc, enc2)
		}
		if m2.NumSegments() != m.NumSegments() {
			t.Fatalf("segment count changed: %d -> %d", m.NumSegments(), m2.NumSegments())
		}
		ack := NewACK(m, AckAE, "X", fixedTime, ErrDetail{Segment: "PID", Sequence: 1, Field: 3, Code: "204", Diagnostic: "d"})
		a, err := Parse(ack)
		if err != nil {
			t.Fatalf("NewACK output does not parse: %v\n%q", err, ack)
		}
		if got, want := a.Segment("MSA").Field(2).Raw(), wireSafe(m.Segment("MSH").Field(10).Raw()); got != want {
			t.Fatalf("MSA-2 = %q, want %q", got, want)
		}
	})
}
