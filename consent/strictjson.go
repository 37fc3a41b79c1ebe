package consent

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"

	"github.com/carehub/carehub/schemas/problem"
)

// maxDocument bounds the JSON documents this package parses (the admin form
// and FHIR Consent). A patient's consent is a few kilobytes.
const maxDocument = 1 << 20

// maxDepth bounds nesting in those documents.
const maxDepth = 32

// strictJSON checks that raw is one JSON value with no duplicate object
// member names, nesting of at most maxDepth and nothing after it, within
// maxDocument bytes.
//
// Duplicate names matter here: encoding/json keeps the last of them, other
// FHIR parsers keep the first, so {"type":"permit","type":"deny"} would mean
// different things to the admin API and to whoever validated the document
// before it. Such a document is refused.
func strictJSON(raw []byte) error {
	if len(raw) > maxDocument {
		return &problem.Error{Kind: problem.TooLarge, Message: "the document is larger than 1 MiB"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := walkJSON(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return problem.Wrap(problem.Malformed, "the document holds more than one JSON value", err)
	}
	return nil
}

var errDepth = errors.New("nesting too deep")

func walkJSON(dec *json.Decoder, depth int) error {
	malformed := func(err error) error {
		if errors.Is(err, errDepth) {
			return problem.Wrap(problem.Malformed, "the document is nested too deeply", err)
		}
		return problem.Wrap(problem.Malformed, "the document is not valid JSON", err)
	}
	if depth > maxDepth {
		return malformed(errDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return malformed(err)
			}
			k, _ := kt.(string)
			if seen[k] {
				return &problem.Error{Kind: problem.Malformed,
					Message: "the document repeats a member name within one object"}
			}
			seen[k] = true
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return malformed(err)
	}
	return nil
}
