package adt

import "github.com/carehub/carehub/connectors/mllp/hl7"

// Parse parses an ADT message. It is hl7.Parse; it stays as the mapping's
// entry point so that UK-specific leniencies have one home.
func Parse(payload []byte) (*hl7.Message, error) {
	return hl7.Parse(payload)
}
