package fhir_test

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/carehub/carehub/schemas/fhir"
	"github.com/santhosh-tekuri/jsonschema/v5"
)

var (
	r4Once    sync.Once
	r4Schemas map[string]*jsonschema.Schema
	r4Err     error
)

// r4Schema compiles a definition of the official FHIR R4 JSON Schema
// (testdata/schema/SOURCES.md) once.
func r4Schema(t *testing.T, definition string) *jsonschema.Schema {
	t.Helper()
	r4Once.Do(func() {
		zr, err := gzip.NewReader(bytes.NewReader(read(t, "testdata/schema/fhir.schema.json.gz")))
		if err != nil {
			r4Err = err
			return
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			r4Err = err
			return
		}
		if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d" {
			r4Err = io.ErrUnexpectedEOF
			return
		}
		// The schema picks a resource's definition with oneOf over all 146
		// (its discriminator is not JSON Schema): about a second a bundle.
		// Every definition requires its own resourceType constant, so at
		// most one can match: choosing by resourceType (draft-07 if/then)
		// accepts and refuses the same documents, in milliseconds.
		var doc map[string]any
		if r4Err = json.Unmarshal(raw, &doc); r4Err != nil {
			return
		}
		defs := doc["definitions"].(map[string]any)
		list := defs["ResourceList"].(map[string]any)["oneOf"].([]any)
		var names []any
		var choose []any
		for _, o := range list {
			ref := o.(map[string]any)["$ref"].(string)
			name := strings.TrimPrefix(ref, "#/definitions/")
			names = append(names, name)
			choose = append(choose, map[string]any{
				"if":   map[string]any{"properties": map[string]any{"resourceType": map[string]any{"const": name}}},
				"then": map[string]any{"$ref": ref},
			})
		}
		defs["ResourceList"] = map[string]any{"type": "object", "required": []any{"resourceType"},
			"properties": map[string]any{"resourceType": map[string]any{"enum": names}}, "allOf": choose}
		doc["$schema"] = "http://json-schema.org/draft-07/schema#"
		if raw, r4Err = json.Marshal(doc); r4Err != nil {
			return
		}
		c := jsonschema.NewCompiler()
		if r4Err = c.AddResource("fhir.schema.json", bytes.NewReader(raw)); r4Err != nil {
			return
		}
		r4Schemas = map[string]*jsonschema.Schema{}
		for _, d := range []string{"Bundle", "OperationOutcome"} {
			s, err := c.Compile("fhir.schema.json#/definitions/" + d)
			if err != nil {
				r4Err = err
				return
			}
			r4Schemas[d] = s
		}
	})
	if r4Err != nil {
		t.Fatalf("compiling the FHIR R4 JSON Schema: %v", r4Err)
	}
	return r4Schemas[definition]
}

func r4Validate(t *testing.T, definition string, doc []byte) error {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	return r4Schema(t, definition).Validate(v)
}

// TestGoldenR4Schema: every FHIR document the golden files pin (messages,
// transactions, the feed's notification bundle, OperationOutcomes) is valid
// against the official FHIR R4 JSON Schema, which checks what
// @medplum/core's validator (e2e/fhir_test.go) does not: the codes of
// required bindings, such as Encounter.location.status.
func TestGoldenR4Schema(t *testing.T) {
	files, _ := filepath.Glob("testdata/out/*.golden.json")
	files = append(files, "testdata/notification.golden.json")
	outcomes, _ := filepath.Glob("testdata/in/*.outcome.golden.json")
	if len(files) < 2*len(everyEvent(t)) {
		t.Fatalf("found %d golden bundles, want a message and a transaction per event", len(files))
	}
	for _, f := range append(files, outcomes...) {
		def := "Bundle"
		if strings.HasSuffix(f, ".outcome.golden.json") {
			def = "OperationOutcome"
		}
		if err := r4Validate(t, def, read(t, f)); err != nil {
			t.Errorf("%s is not valid FHIR R4: %v", f, err)
		}
	}
	// The OperationOutcome that comes with a 202 (Medplum's validator does
	// not check required code lists such as severity; the R4 schema does).
	if err := r4Validate(t, "OperationOutcome", fhir.Informational("accepted")); err != nil {
		t.Errorf("Informational is not valid FHIR R4: %v", err)
	}
}

// TestR4SchemaRefuses: the schema check can fail: R4 has no
// entered-in-error status for an Encounter's location (a cancelled
// transfer removes the location instead), and classHistory needs a period.
func TestR4SchemaRefuses(t *testing.T) {
	msg := read(t, "testdata/out/transfer-cancelled.message.golden.json")
	for _, tc := range []struct{ name, from, to string }{
		{"location entered-in-error", `"status": "active"`, `"status": "entered-in-error"`},
		{"unknown element", `"resourceType": "Encounter"`, `"resourceType": "Encounter", "locationHistory": []`},
		{"unknown resource", `"resourceType": "Encounter"`, `"resourceType": "EncounterX"`},
	} {
		bad := bytes.Replace(msg, []byte(tc.from), []byte(tc.to), 1)
		if bytes.Equal(bad, msg) {
			t.Fatalf("%s: nothing replaced", tc.name)
		}
		if err := r4Validate(t, "Bundle", bad); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	cc := read(t, "testdata/out/patient-class-changed.message.golden.json")
	bad := bytes.Replace(cc, []byte(`"period": {
              "end"`), []byte(`"periodX": {
              "end"`), 1)
	if bytes.Equal(bad, cc) {
		t.Fatal("classHistory period: nothing replaced")
	}
	if err := r4Validate(t, "Bundle", bad); err == nil {
		t.Error("a classHistory entry without its period: accepted")
	}
}
