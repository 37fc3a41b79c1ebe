package event

import (
	"encoding/json"

	"github.com/carehub/carehub/schemas/problem"
)

// ParseBatch splits an application/cloudevents-batch+json body (a JSON array
// of events) into its events, without validating them: parse each with
// Validator.Parse. Not a JSON array is Malformed; an empty array is Invalid
// (rule batch-empty).
func ParseBatch(raw []byte) ([]json.RawMessage, error) {
	if firstByte(raw) != '[' {
		return nil, problem.New(problem.Malformed, "batch is not a JSON array")
	}
	var events []json.RawMessage
	if err := json.Unmarshal(raw, &events); err != nil {
		return nil, problem.New(problem.Malformed, "batch is not a valid JSON array")
	}
	if len(events) == 0 {
		return nil, problem.Violated("", RuleBatchEmpty, "a batch must hold at least one event")
	}
	return events, nil
}
