package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/carehub/carehub/schemas/problem"
)

// The ingest reads CloudEvents up to the hub's body limit
// (http.maxBodyBytes, 1 MiB by default). These are the shapes a hostile or
// broken publisher can fill that megabyte with, each built on the example
// discharge so that parsing and validation go as far as they can: the work
// must grow with the size, not faster (issue 14: the review of the HL7 v2
// parser, applied to the JSON path).

const hostileSize = 1 << 20

type hostileShape struct {
	name  string
	build func(t testing.TB, n int) []byte
}

func discharge(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(readExample(t, "discharge.json"), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func hostileJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var hostileShapes = []hostileShape{
	{"many extension attributes", func(t testing.TB, n int) []byte {
		m := discharge(t)
		for i := range n {
			m[fmt.Sprintf("x%d", i)] = "value"
		}
		return hostileJSON(t, m)
	}},
	{"many patient identifiers", func(t testing.TB, n int) []byte {
		m := discharge(t)
		var ids []any
		for i := range n {
			ids = append(ids, map[string]any{"system": "https://rx1.example/mrn", "value": fmt.Sprintf("MRN%07d", i)})
		}
		m["data"].(map[string]any)["patient"].(map[string]any)["identifier"] = ids
		return hostileJSON(t, m)
	}},
	{"many unknown members in data", func(t testing.TB, n int) []byte {
		m := discharge(t)
		d := m["data"].(map[string]any)
		for i := range n {
			d[fmt.Sprintf("m%d", i)] = i
		}
		return hostileJSON(t, m)
	}},
	{"one key repeated", func(t testing.TB, n int) []byte {
		b := readExample(t, "discharge.json")
		rep := strings.Repeat(`"subject":"s",`, n)
		return []byte(strings.Replace(string(b), `"specversion"`, rep+`"specversion"`, 1))
	}},
	{"long strings of escapes", func(t testing.TB, n int) []byte {
		m := discharge(t)
		s := strings.Repeat("\u00e9\"\\\n\u2028\x01", n)
		m["data"].(map[string]any)["discharge"].(map[string]any)["summary"].(map[string]any)["text"] = s
		m["subject"] = s
		return hostileJSON(t, m)
	}},
	{"deep nesting in data", func(t testing.TB, n int) []byte {
		m := discharge(t)
		var nested any = "x"
		for range 1000 {
			nested = []any{nested}
		}
		var list []any
		for range n {
			list = append(list, nested)
		}
		m["data"].(map[string]any)["nested"] = list
		return hostileJSON(t, m)
	}},
	{"nesting past the decoder's limit", func(t testing.TB, n int) []byte {
		return []byte(`{"specversion":"1.0","data":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}},
}

func sizedHostile(t testing.TB, s hostileShape, size int) (int, []byte) {
	t.Helper()
	base, probe := len(s.build(t, 0)), len(s.build(t, 1000))
	per := max((probe-base)/1000, 1)
	n := max((size-base)/per, 1)
	doc := s.build(t, n)
	for range 3 { // parts may grow with n (their numbers get longer)
		n = max(int(float64(n)*float64(size-base)/float64(len(doc)-base)), 1)
		doc = s.build(t, n)
	}
	return n, doc
}

// parseHostile parses doc as the ingest does (Parse: envelope, schema,
// facts) and as a record is read back (Unmarshal): each accepts it or
// refuses it with a *problem.Error that echoes no NHS number.
func parseHostile(t testing.TB, v *Validator, doc []byte) {
	for _, fn := range []func() error{
		func() error { _, err := v.Parse(doc); return err },
		func() error { _, err := Unmarshal(doc); return err },
	} {
		err := fn()
		if err == nil {
			continue
		}
		var pe *problem.Error
		if !errors.As(err, &pe) {
			t.Fatalf("not a *problem.Error: %T", err)
		}
		if strings.Contains(err.Error(), canary) {
			t.Fatalf("the refusal echoes the NHS number")
		}
	}
}

// TestParseHostileIsLinear: each hostile shape, at 1 MiB, is parsed to an
// event or a refusal, allocating at most about twice what half the size
// does: the work is linear in the document. Allocations count the work
// without timing it.
func TestParseHostileIsLinear(t *testing.T) {
	v := newValidator(t)
	for _, s := range hostileShapes {
		t.Run(s.name, func(t *testing.T) {
			n, full := sizedHostile(t, s, hostileSize)
			half := s.build(t, n/2)
			if len(full) < hostileSize*9/10 || len(full) > hostileSize*11/10 {
				t.Fatalf("the document is %d bytes, want about 1 MiB", len(full))
			}
			parseHostile(t, v, full)
			a := testing.AllocsPerRun(2, func() { parseHostile(t, v, half) })
			b := testing.AllocsPerRun(2, func() { parseHostile(t, v, full) })
			t.Logf("%d bytes: %.0f allocations; %d bytes: %.0f", len(half), a, len(full), b)
			if b > 2.5*a+1000 {
				t.Errorf("twice the size (%d to %d bytes) allocates %.1f times as much (%.0f to %.0f): the work grows faster than the document", len(half), len(full), b/a, a, b)
			}
		})
	}
}

// BenchmarkParseHostile parses each hostile shape at 1 MiB (Parse and
// Unmarshal). README "Publishing" states the bound.
func BenchmarkParseHostile(b *testing.B) {
	v := newValidator(b)
	for _, s := range hostileShapes {
		b.Run(s.name, func(b *testing.B) {
			_, doc := sizedHostile(b, s, hostileSize)
			b.SetBytes(int64(len(doc)))
			b.ReportAllocs()
			for b.Loop() {
				parseHostile(b, v, doc)
			}
		})
	}
}
