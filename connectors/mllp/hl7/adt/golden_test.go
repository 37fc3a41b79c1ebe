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
	if res.Event == nil {
		return indent(t, map[string]any{"trigger": res.Trigger, "id": res.ID, "skipped": res.Skipped})
	}
	var b bytes.Buffer
	if err := json.Indent(&b, res.Event, "", "  "); err != nil {
		t.Fatalf("event is not JSON: %v", err)
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
	seen := map[string]bool{}
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
					seen[res.Trigger] = true
					if res.Event != nil {
						if _, err := validator.Parse(res.Event); err != nil {
							t.Errorf("the canonical event fails validation: %v", err)
						}
					}
				}
			}
		})
	}
	for _, tr := range Triggers() {
		if !seen[tr] {
			t.Errorf("no golden test maps trigger %s", tr)
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
