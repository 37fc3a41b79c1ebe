package event

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/carehub/carehub/schemas/problem"
)

// FuzzParseBatch: whatever a client POSTs as a batch, ParseBatch either
// returns the array's elements (at least one, each a JSON value) or an
// Invalid problem under one of its two rules, with no text from the body.
func FuzzParseBatch(f *testing.F) {
	one, _ := os.ReadFile(filepath.Join(examplesDir, "discharge.json"))
	f.Add([]byte("[" + string(one) + "," + string(one) + "]"))
	f.Add([]byte(`[]`))
	f.Add([]byte(` [ {} ] `))
	f.Add([]byte(`{"specversion":"1.0"}`))
	f.Add([]byte(`[1,"a",null,[]]`))
	f.Add([]byte(`[{"id":"9990500002"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		events, err := ParseBatch(raw)
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Kind != problem.Invalid || len(pe.Violations) != 1 {
				t.Fatalf("error %v: want one Invalid violation", err)
			}
			if r := pe.Violations[0].Rule; r != RuleBatchArray && r != RuleBatchNotEmpty {
				t.Fatalf("rule %q", r)
			}
			if longDigitRun.MatchString(err.Error() + pe.Violations[0].Detail) {
				t.Fatalf("the error holds a run of digits: %v", err)
			}
			return
		}
		if len(events) == 0 {
			t.Fatal("an empty batch accepted")
		}
		for i, e := range events {
			if !json.Valid(e) {
				t.Fatalf("element %d is not JSON: %q", i, e)
			}
		}
	})
}
