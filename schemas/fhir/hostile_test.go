package fhir_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/problem"
)

// The FHIR source reads documents up to the hub's body limit
// (http.maxBodyBytes, 1 MiB by default). These are the shapes a hostile or
// broken sender can fill that megabyte with, each built from one of
// carehub's own golden messages so that the mapping walks as far as it
// can: the work must grow with the size, not faster (issue 14: the review
// of the HL7 v2 parser, applied to the JSON path).

const hostileSize = 1 << 20

// hostileShape builds a document with n repetitions of its hostile part.
type hostileShape struct {
	name  string
	build func(t testing.TB, n int) []byte
}

// golden message, decoded, for the shapes to edit.
func goldenMessage(t testing.TB, name string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(read(t, "testdata/out/"+name+".message.golden.json"), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func entryOf(m map[string]any, rt string) map[string]any {
	for _, e := range m["entry"].([]any) {
		if r := e.(map[string]any)["resource"].(map[string]any); r["resourceType"] == rt {
			return r
		}
	}
	return nil
}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var hostileShapes = []hostileShape{
	{"many entries", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "discharge")
		es := m["entry"].([]any)
		for i := range n {
			id := fmt.Sprintf("b%d", i)
			es = append(es, map[string]any{"fullUrl": "urn:uuid:" + id, "resource": map[string]any{"resourceType": "Basic", "id": id}})
		}
		m["entry"] = es
		return marshal(t, m)
	}},
	{"many locations, each a contained Location", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "transfer")
		enc := entryOf(m, "Encounter")
		var locs, contained []any
		for i := range n {
			id := fmt.Sprintf("l%d", i)
			status := "completed"
			if i == n-1 {
				status = "active"
			}
			contained = append(contained, map[string]any{"resourceType": "Location", "id": id, "name": id})
			locs = append(locs, map[string]any{"status": status, "location": map[string]any{"reference": "#" + id}})
		}
		enc["contained"], enc["location"] = contained, locs
		return marshal(t, m)
	}},
	{"many cancelled-transfer extensions, each a contained Location", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "transfer-cancelled")
		enc := entryOf(m, "Encounter")
		contained := enc["contained"].([]any)
		var exts []any
		for i := range n {
			id := fmt.Sprintf("x%d", i)
			contained = append(contained, map[string]any{"resourceType": "Location", "id": id})
			exts = append(exts, map[string]any{"url": fhir.ExtCancelledTransfer, "extension": []any{
				map[string]any{"url": "location", "valueReference": map[string]any{"reference": "#" + id}}}})
		}
		enc["contained"], enc["extension"] = contained, exts
		return marshal(t, m)
	}},
	{"many identifiers, NHS numbers that fail their check", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "admission")
		p := entryOf(m, "Patient")
		ids := p["identifier"].([]any)
		for i := range n {
			v := "9990500003" // fails the modulus 11 check
			if i%2 == 1 {
				v = fmt.Sprintf("MRN%07d", i)
				ids = append(ids, map[string]any{"system": "https://rx1.example/mrn", "value": v})
				continue
			}
			ids = append(ids, map[string]any{"system": fhir.SystemNHSNumber, "value": v})
		}
		p["identifier"] = ids
		return marshal(t, m)
	}},
	{"many focus references that resolve to nothing", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "admission")
		h := entryOf(m, "MessageHeader")
		var focus []any
		for i := range n {
			focus = append(focus, map[string]any{"reference": fmt.Sprintf("Encounter/nowhere-%d", i)})
		}
		h["focus"] = focus
		return marshal(t, m)
	}},
	{"long strings of escapes", func(t testing.TB, n int) []byte {
		m := goldenMessage(t, "admission")
		p := entryOf(m, "Patient")
		s := strings.Repeat("\u00e9\"\\\n\u2028\x01", n)
		p["name"] = []any{map[string]any{"use": "official", "text": s, "family": s, "given": []any{s}}}
		return marshal(t, m)
	}},
	{"deep nesting", func(t testing.TB, n int) []byte {
		// Extensions carehub does not read, each nested 1000 deep: within
		// encoding/json's depth limit (10000), so the document decodes.
		m := goldenMessage(t, "admission")
		var nested any = "x"
		for range 1000 {
			nested = []any{nested}
		}
		var exts []any
		for range n {
			exts = append(exts, map[string]any{"url": "https://x.example/nest", "valueString": nested})
		}
		entryOf(m, "Patient")["extension"] = exts
		return marshal(t, m)
	}},
	{"nesting past the decoder's limit", func(t testing.TB, n int) []byte {
		return []byte(`{"resourceType":"Bundle","type":"message","entry":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}},
}

// sized returns the shape's n whose document is about size bytes, and the
// document.
func sized(t testing.TB, s hostileShape, size int) (int, []byte) {
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

// readHostile reads doc as a message and as a lone Encounter: either gives
// an event or refuses with a *problem.Error, echoing no NHS number.
func readHostile(t testing.TB, doc []byte) {
	for _, fn := range []func() (*fhir.Inbound, error){
		func() (*fhir.Inbound, error) { return fhir.FromMessage(doc, "RX1") },
		func() (*fhir.Inbound, error) { return fhir.FromEncounter(doc, "RX1", time.Unix(0, 0)) },
	} {
		in, err := fn()
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) {
				t.Fatalf("not a *problem.Error: %T", err)
			}
			if oo := problem.OperationOutcome(err); strings.Contains(string(oo), canary) || strings.Contains(err.Error(), canary) {
				t.Fatalf("the refusal echoes the NHS number")
			}
			continue
		}
		if !json.Valid(in.Event) {
			t.Fatalf("the event is not JSON")
		}
	}
}

// TestHostileFHIRIsLinear pins a quadratic read it found: the Encounter's
// contained resources were rescanned (and their pointers rebuilt) for
// every location and every cancelled-transfer extension, so a 1 MiB
// transfer message made 184 million allocations (about ten seconds of a
// core) and twice the size four times as many. Each hostile shape, at
// 1 MiB, must be read to an event or a refusal, allocating at most about
// twice what half the size does: the work is linear in the document.
// Allocations count the work without timing it.
func TestHostileFHIRIsLinear(t *testing.T) {
	for _, s := range hostileShapes {
		t.Run(s.name, func(t *testing.T) {
			n, full := sized(t, s, hostileSize)
			half := s.build(t, n/2)
			if len(full) < hostileSize*9/10 || len(full) > hostileSize*11/10 {
				t.Fatalf("the document is %d bytes, want about 1 MiB", len(full))
			}
			readHostile(t, full)
			a := testing.AllocsPerRun(2, func() { readHostile(t, half) })
			b := testing.AllocsPerRun(2, func() { readHostile(t, full) })
			t.Logf("%d bytes: %.0f allocations; %d bytes: %.0f", len(half), a, len(full), b)
			if b > 2.5*a+1000 {
				t.Errorf("twice the size (%d to %d bytes) allocates %.1f times as much (%.0f to %.0f): the work grows faster than the document", len(half), len(full), b/a, a, b)
			}
		})
	}
}

// BenchmarkFromMessageHostile reads each hostile shape at 1 MiB (as a
// message and as a lone Encounter). README "Sending FHIR" states the bound.
func BenchmarkFromMessageHostile(b *testing.B) {
	for _, s := range hostileShapes {
		b.Run(s.name, func(b *testing.B) {
			_, doc := sized(b, s, hostileSize)
			b.SetBytes(int64(len(doc)))
			b.ReportAllocs()
			for b.Loop() {
				readHostile(b, doc)
			}
		})
	}
}
