package adt

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// outcome renders what Map made of a message: the canonical event, the
// reason nothing was published, or the error, as indented JSON.
func outcome(t testing.TB, mp *Mapper, payload []byte) []byte {
	t.Helper()
	m, err := Parse(payload)
	if err != nil {
		var pe *hl7.ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("Parse error %T is not *hl7.ParseError", err)
		}
		return indent(t, map[string]any{"parseError": map[string]any{"code": pe.Code, "reason": pe.Reason}})
	}
	res, err := mp.Map(m)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("Map error %T is not *adt.Error", err)
		}
		d := e.Detail()
		return indent(t, map[string]any{"error": map[string]any{
			"ack": e.Ack, "code": e.Code, "location": d.Location(), "reason": e.Reason}})
	}
	if res.Held != nil {
		keyedBy := "message"
		switch {
		case !res.Held.NHSNumber.IsZero():
			keyedBy = "nhs-number"
		case res.Held.LocalID != "":
			keyedBy = "local-id"
		}
		return indent(t, map[string]any{"trigger": res.Trigger, "id": res.ID,
			"held": map[string]any{"reason": res.Held.Reason, "detail": res.Held.Detail, "keyedBy": keyedBy}})
	}
	if len(res.Events) == 0 {
		t.Fatalf("Map returned neither events nor a held record")
	}
	var b bytes.Buffer
	if len(res.Events) > 1 {
		b.WriteString("[\n")
	}
	for i, ev := range res.Events {
		if i > 0 {
			b.WriteString(",\n")
		}
		if err := json.Indent(&b, ev.JSON, "", "  "); err != nil {
			t.Fatalf("event is not JSON: %v", err)
		}
	}
	if len(res.Events) > 1 {
		b.WriteString("\n]")
	}
	b.WriteByte('\n')
	return b.Bytes()
}

func indent(t testing.TB, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func newTestMapper(t testing.TB) *Mapper {
	t.Helper()
	mp, err := NewMapper(Options{Source: "RX1"})
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

var validator = func() *event.Validator {
	v, err := event.NewValidator()
	if err != nil {
		panic(err)
	}
	return v
}()

// checkGolden compares got with the golden file, or rewrites it with -update.
func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run with -update and review the diff):\n\tgot  %s\n\twant %s", golden, got, want)
	}
}

// TestGolden maps every message in testdata (one per trigger event, and
// the invalid ones) and compares the result with its .golden.json file.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.hl7")
	bad, _ := filepath.Glob("testdata/invalid/*.hl7")
	files = append(files, bad...)
	if len(files) < 30 {
		t.Fatalf("found only %d test messages", len(files))
	}
	mp := newTestMapper(t)
	for _, f := range files {
		t.Run(strings.TrimSuffix(strings.TrimPrefix(f, "testdata/"), ".hl7"), func(t *testing.T) {
			payload, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got := outcome(t, mp, payload)
			checkGolden(t, strings.TrimSuffix(f, ".hl7")+".golden.json", got)
			if m, err := Parse(payload); err == nil {
				if res, err := mp.Map(m); err == nil {
					for _, ev := range res.Events {
						if _, err := validator.Parse(ev.JSON); err != nil {
							t.Errorf("the canonical event fails validation: %v", err)
						}
					}
				}
			}
		})
	}
}

// exampleSensitivity reads the sensitivity rules of the example
// deployment's MLLP listener (deploy/examples/carehub.yaml), so that the
// corpus is mapped as the example deployment maps it.
func exampleSensitivity(t testing.TB) []SensitivityRule {
	t.Helper()
	b, err := os.ReadFile("../../../../deploy/examples/carehub.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Inputs []map[string]yaml.Node `yaml:"inputs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, in := range cfg.Inputs {
		if n, ok := in["mllp"]; ok {
			var m struct {
				Sensitivity []SensitivityRule `yaml:"sensitivity"`
			}
			if err := n.Decode(&m); err != nil {
				t.Fatal(err)
			}
			if len(m.Sensitivity) == 0 {
				t.Fatal("the example deployment's MLLP listener has no sensitivity rules")
			}
			return m.Sensitivity
		}
	}
	t.Fatal("the example deployment has no MLLP listener")
	return nil
}

// corpusMapper maps the corpus as the example deployment does.
func corpusMapper(t testing.TB) *Mapper {
	t.Helper()
	mp, err := NewMapper(Options{Source: "RX1", Sensitivity: exampleSensitivity(t)})
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

// CorpusEntry is one line of testdata/corpus/corpus.tsv: a message, the
// acknowledgement the README's table says it gets, and what it becomes.
type corpusEntry struct {
	File    string
	Ack     string // AA, CA, AE, AR
	Outcome string // event types joined by "+", "held:<reason>" or "error:<HL7 error code>"
}

func readCorpus(t testing.TB) []corpusEntry {
	t.Helper()
	b, err := os.ReadFile("testdata/corpus/corpus.tsv")
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusEntry
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) < 3 {
			t.Fatalf("corpus.tsv: %q has fewer than 3 columns", line)
		}
		out = append(out, corpusEntry{File: f[0], Ack: f[1], Outcome: f[2]})
	}
	return out
}

// TestCorpus maps the UK corpus (testdata/corpus, messages written here
// after the HL7 UK / NHS ITK v2.4 ADT specifications: every trigger the
// README's table shares and a few it holds (TestEveryTriggerNotSharedIsHeld
// maps every held one), code-only destinations, hospital-number-only PID-3,
// NHS number statuses, PD1-12, sensitive specialties, Z-segments) with the
// example deployment's settings: each matches its golden file and the
// outcome corpus.tsv gives it. The listener-level refusals (another
// trust's MSH-4, a training message) map fine here: the e2e test sends the
// whole corpus over MLLP and checks every acknowledgement.
func TestCorpus(t *testing.T) {
	entries := readCorpus(t)
	files, _ := filepath.Glob("testdata/corpus/*.hl7")
	if len(files) != len(entries) {
		t.Errorf("%d messages in testdata/corpus, %d lines in corpus.tsv", len(files), len(entries))
	}
	mp := corpusMapper(t)
	seen := map[string]bool{}
	for _, e := range entries {
		t.Run(strings.TrimSuffix(e.File, ".hl7"), func(t *testing.T) {
			p := filepath.Join("testdata", "corpus", e.File)
			payload, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, strings.TrimSuffix(p, ".hl7")+".golden.json", outcome(t, mp, payload))
			m, err := Parse(payload)
			if err != nil {
				t.Fatal(err)
			}
			res, err := mp.Map(m)
			var got string
			switch {
			case err != nil:
				var ae *Error
				if !errors.As(err, &ae) {
					t.Fatalf("error %v is not an *adt.Error", err)
				}
				got = "error:" + ae.Code
			case res.Held != nil:
				got = "held:" + res.Held.Reason
			default:
				var types []string
				for _, ev := range res.Events {
					types = append(types, ev.Type)
					if _, err := validator.Parse(ev.JSON); err != nil {
						t.Errorf("the canonical event fails validation: %v", err)
					}
				}
				got = strings.Join(types, "+")
				seen[res.Trigger] = true
			}
			listener := e.Outcome == "error:103" || e.Outcome == "error:202" // decided by the listener, not the mapping
			if got != e.Outcome && !listener {
				t.Errorf("outcome %s, corpus.tsv says %s", got, e.Outcome)
			}
			if strings.HasPrefix(e.Outcome, "held:") != (e.Ack == "AA" && got != "" && strings.HasPrefix(got, "held:")) {
				t.Errorf("ack %s for outcome %s: a held message is acknowledged AA", e.Ack, e.Outcome)
			}
		})
	}
	for _, tr := range Triggers() {
		if !seen[tr] {
			t.Errorf("the corpus shares no %s", tr)
		}
	}
}

// publicSamplesDir holds the public HL7 v2 samples kept by package hl7
// (SOURCES.md there says where each came from).
const publicSamplesDir = "../testdata/samples"

// TestSharedSamples maps the public ADT samples in ../testdata/samples.
// Most of them are American and carry no NHS number: their golden files
// pin the error each one gets.
func TestSharedSamples(t *testing.T) {
	dir := publicSamplesDir
	var names []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".hl7") || strings.HasSuffix(p, ".adm")) &&
			!strings.Contains(p, "batch") && !strings.Contains(p, "malformed") {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	if len(names) < 20 {
		t.Fatalf("found only %d samples under %s", len(names), dir)
	}
	mp := newTestMapper(t)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		t.Run(rel, func(t *testing.T) {
			payload, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "shared", strings.NewReplacer("/", "_", ".hl7", "", ".adm", "").Replace(rel)+".golden.json")
			checkGolden(t, golden, outcome(t, mp, payload))
		})
	}
}

// TestREADMENamesEveryTrigger: the README's mapping table has a row for
// every trigger the mapping shares and every one it holds by decision, and
// names every held reason.
func TestREADMENamesEveryTrigger(t *testing.T) {
	b, err := os.ReadFile("../../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "### What each message becomes")
	end := strings.Index(s, "### Field by field")
	if start < 0 || end < start {
		t.Fatal("the README has no mapping table")
	}
	table := s[start:end]
	var rows []string
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "| A") {
			rows = append(rows, strings.SplitN(line[1:], "|", 2)[0])
		}
	}
	all := Triggers()
	for tr := range NotShared() {
		all = append(all, tr)
	}
	for _, tr := range all {
		found := false
		for _, r := range rows {
			found = found || strings.Contains(r, tr)
		}
		if !found {
			t.Errorf("the README's mapping table has no row for %s", tr)
		}
	}
	for _, reason := range []string{HeldTriggerNotShared, HeldNoNHSNumber, HeldNHSNumberUnverified, HeldNHSNumberStatusMissing, HeldLocalMerge} {
		if !strings.Contains(s, "`"+reason+"`") {
			t.Errorf("the README does not name the held reason %s", reason)
		}
	}
}
