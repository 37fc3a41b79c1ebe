package event

import (
	"encoding/json"

	"github.com/carehub/carehub/schemas/problem"
)

// documentFields lists, per data member, the members that carry a clinical
// document (inline or by reference).
var documentFields = []struct {
	parent string
	fields []string
}{
	{"discharge", []string{"summary", "summaryReference"}},
	{"carePlan", []string{"document", "documentReference"}},
}

// NotificationOnly returns the canonical envelope of the event in raw (as
// Marshal writes it) with every clinical document removed from its data:
// the discharge summary and summary reference, the care plan document and
// document reference. When it removed anything it also sets the extension
// attribute carehubredacted to "documents", so the recipient knows a
// document exists and was withheld. An event without documents comes back
// unchanged apart from canonical encoding.
//
// It serves the consent obligation "notification-only". It decodes raw
// with Unmarshal and fails (closed) with the same errors.
func NotificationOnly(raw []byte) ([]byte, error) {
	e, err := Unmarshal(raw)
	if err != nil {
		return nil, err
	}
	return e.NotificationOnly()
}

// NotificationOnly is the package function NotificationOnly for an event
// already decoded: it returns the encoded envelope without clinical
// documents and leaves e unchanged.
func (e *Event) NotificationOnly() ([]byte, error) {
	c := *e
	e = &c
	var data map[string]json.RawMessage
	if err := json.Unmarshal(e.Data, &data); err != nil {
		return nil, problem.Violated("/data", RuleDataShape, "data does not have the shape of a carehub event")
	}
	removed := false
	for _, d := range documentFields {
		raw, ok := data[d.parent]
		if !ok {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, problem.Violated("/data/"+d.parent, RuleDataShape, "data does not have the shape of a carehub event")
		}
		changed := false
		for _, f := range d.fields {
			if _, ok := obj[f]; ok {
				delete(obj, f)
				changed = true
			}
		}
		if !changed {
			continue
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, problem.Wrap(problem.Internal, "re-encoding event data", err)
		}
		data[d.parent] = b
		removed = true
	}
	if removed {
		b, err := json.Marshal(data)
		if err != nil {
			return nil, problem.Wrap(problem.Internal, "re-encoding event data", err)
		}
		e.Data = b
		ext := make(map[string]json.RawMessage, len(e.Extensions)+1)
		for k, v := range e.Extensions {
			ext[k] = v
		}
		e.Extensions = ext
		e.Extensions[RedactedExtension] = json.RawMessage(`"` + RedactedDocuments + `"`)
	}
	return e.Marshal()
}
