package adt

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzMap feeds the mapping every sample (ours and the public ones in
// ../testdata/samples) and mutations of them. Whatever the input, Map must
// not panic, must fail only with an *Error that carries a fixed reason, must
// be deterministic, and every event it returns must pass the hub's own
// validation (schema and NHS number rules): a message the hub acknowledges
// with AA must never be one it then cannot publish.
func FuzzMap(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{"testdata/*.hl7", "testdata/invalid/*.hl7", "testdata/corpus/*.hl7"} {
		m, _ := filepath.Glob(pattern)
		seeds = append(seeds, m...)
	}
	err := filepath.WalkDir(publicSamplesDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".hl7") || strings.HasSuffix(p, ".adm")) {
			seeds = append(seeds, p)
		}
		return err
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	mp, err := NewMapper(Options{Source: "RX1", DestinationFields: []string{"ZU9-2", "PV1-37.1"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := Parse(payload)
		if err != nil {
			return // the parser's own fuzz target covers parse errors
		}
		res, err := mp.Map(m)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Map error %T is not *adt.Error: %v", err, err)
			}
			if !slices.Contains(reasons, e.Reason) {
				t.Fatalf("reason %q is not a fixed reason", e.Reason)
			}
			return
		}
		again, err := mp.Map(m)
		if err != nil || again.ID != res.ID || len(again.Events) != len(res.Events) || (again.Held == nil) != (res.Held == nil) {
			t.Fatalf("Map is not deterministic")
		}
		if res.Held != nil {
			if len(res.Events) != 0 || res.Held.Reason == "" || res.Held.Detail == "" {
				t.Fatalf("held with events, or without a reason: %+v", res)
			}
			return
		}
		if len(res.Events) == 0 {
			t.Fatalf("no event and no reason to hold")
		}
		for i, out := range res.Events {
			if !bytes.Equal(again.Events[i].JSON, out.JSON) {
				t.Fatalf("Map is not deterministic")
			}
			ev, err := validator.Parse(out.JSON)
			if err != nil {
				t.Fatalf("the canonical event fails validation: %v\n%s", err, out.JSON)
			}
			if ev.ID != out.ID || ev.Type != out.Type || ev.Publisher != "RX1" || (i == 0 && out.ID != res.ID) {
				t.Fatalf("envelope: id %s type %s publisher %s; result %s %s", ev.ID, ev.Type, ev.Publisher, out.ID, out.Type)
			}
		}
	})
}
