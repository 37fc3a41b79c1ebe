package event

import (
	"encoding/json"

	"github.com/carehub/carehub/schemas/problem"
)

// ParseBatch splits an application/cloudevents-batch+json body (a JSON array
// of events) into its events, without validating them: parse each with
// Validator.Parse. A body that is not a JSON array breaks rule batch-array,
// an empty array rule batch-not-empty (both Invalid).
func ParseBatch(raw []byte) ([]json.RawMessage, error) {
	var events []json.RawMessage
	if firstByte(raw) != '[' || json.Unmarshal(raw, &events) != nil {
		return nil, problem.Violated("", RuleBatchArray, "a batch must be a JSON array of CloudEvents")
	}
	if len(events) == 0 {
		return nil, problem.Violated("", RuleBatchNotEmpty, "a batch must hold at least one event")
	}
	return events, nil
}
