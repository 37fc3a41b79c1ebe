// Package schemas holds carehub's JSON Schemas, embedded in the binary: one
// schema (draft 2020-12) for the data of each event type, and the shared
// definitions they reference.
//
// # Files
//
//	admission.v1.json            data of org.carehub.admission.v1
//	transfer.v1.json             data of org.carehub.transfer.v1
//	discharge.v1.json            data of org.carehub.discharge.v1
//	careplan.v1.json             data of org.carehub.careplan.v1
//	admission-cancelled.v1.json  data of org.carehub.admission-cancelled.v1
//	discharge-cancelled.v1.json  data of org.carehub.discharge-cancelled.v1
//	patient-updated.v1.json      data of org.carehub.patient-updated.v1
//	patient-merged.v1.json       data of org.carehub.patient-merged.v1
//	discharge-pending.v1.json    data of org.carehub.discharge-pending.v1
//	discharge-pending-cancelled.v1.json
//	                             data of org.carehub.discharge-pending-cancelled.v1
//	transfer-cancelled.v1.json   data of org.carehub.transfer-cancelled.v1
//	patient-class-changed.v1.json
//	                             data of org.carehub.patient-class-changed.v1
//	notification.v1.json         data of a notification-only copy (any type; carehubform notification)
//	withheld-notice.v1.json      data of org.carehub.withheld-notice.v1 (issued by the hub)
//	registration-ended.v1.json   data of org.carehub.registration-ended.v1 (issued by the hub)
//	patient.v1.json              the patient (shared)
//	common.v1.json               $defs: nhsNumber, odsCode, period, organisation,
//	                             location, encounter, attachment, documentReference,
//	                             sensitivity, fullRecord, ...
//
// Each file's $id is URL(name), e.g. https://carehub.dev/schemas/patient.v1.json,
// and files reference one another by relative URI ("patient.v1.json",
// "common.v1.json#/$defs/encounter"), so they resolve against one another
// without any network access.
//
// A few field names are a contract that outside parties test against and
// must not change within version 1: data.patient.nhsNumber,
// data.patient.gpPractice, data.encounter.id and
// data.discharge.destination.ods. Everything else follows FHIR R4 naming
// where FHIR has a name for the thing.
//
// # Usage
//
//	c, err := schemas.NewCompiler()
//	...
//	s, err := c.Compile(schemas.URL("discharge.v1.json"))
//
// Package event compiles every schema once and validates events with them;
// most code should use event.Validator rather than this package.
//
// # What the schemas cannot say
//
// Some rules live in code (package event): the NHS number's modulus 11 check
// digit, the CloudEvents envelope, and that a merge names two different
// patients.
//
// # Changing a schema
//
// A change that could reject an event a sender sends today is a new version
// (a new file, a new event type ending .v2), never an edit of a v1 file.
package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"sort"

	"github.com/santhosh-tekuri/jsonschema/v5"
)

// FS holds the schema files, at its root.
//
//go:embed *.json
var FS embed.FS

// BaseURI is the common prefix of every schema's $id.
const BaseURI = "https://carehub.dev/schemas/"

// URL returns the $id of the embedded schema file name.
func URL(name string) string { return BaseURI + name }

// Files returns the names of the embedded schema files, sorted.
func Files() []string {
	ents, err := fs.ReadDir(FS, ".")
	if err != nil {
		panic(err) // embedded: cannot fail
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// NewCompiler returns a compiler that holds every embedded schema under its
// $id. It asserts "format" (date, date-time, uri) and "contentEncoding"
// (base64), which draft 2020-12 leaves as annotations by default, and it
// refuses to load any schema that is not embedded, so compiling never
// touches the network or the file system.
//
// It returns an error if a file is not JSON or its $id is not URL(name).
func NewCompiler() (*jsonschema.Compiler, error) {
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	c.AssertFormat = true
	c.AssertContent = true
	c.LoadURL = func(s string) (io.ReadCloser, error) {
		return nil, fmt.Errorf("schemas: refusing to load %s: only embedded schemas may be referenced", s)
	}
	for _, name := range Files() {
		b, err := FS.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading schema %s: %w", name, err)
		}
		var head struct {
			ID string `json:"$id"`
		}
		if err := json.Unmarshal(b, &head); err != nil {
			return nil, fmt.Errorf("decoding schema %s: %w", name, err)
		}
		if head.ID != URL(name) {
			return nil, fmt.Errorf("schema %s: $id is %q, want %q", name, head.ID, URL(name))
		}
		if err := c.AddResource(head.ID, bytes.NewReader(b)); err != nil {
			return nil, fmt.Errorf("adding schema %s: %w", name, err)
		}
	}
	return c, nil
}
