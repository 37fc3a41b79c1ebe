package route

import (
	"encoding/json"
	"fmt"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/seal"
	"github.com/carehub/carehub/schemas/problem"
)

// Sealed is the routing decision of one copy: what the re-check at the
// moment of delivery needs to decide the same request again with the
// patient's directives as they are then. It travels with the copy, in the
// outbox record's carehub_decision header, sealed (AES-256-GCM under a key
// derived from the pseudonym key): it holds the event's sensitivity
// categories, which must not sit in a header in clear, and no party
// without the hub's key can read or forge it.
type Sealed struct {
	// Request is the request the router decided, without directives.
	Request consent.Request `json:"request"`
	// Relation and Original are the follow-up context it was decided in.
	Relation consent.Relation `json:"relation,omitempty"`
	Original consent.Original `json:"original"`
	// Decision is the routing decision.
	Decision consent.Decision `json:"decision"`
	// Form is the form of the copy (event.Form).
	Form string `json:"form"`
	// Ref is the event's encounter or care plan (event.Event.Ref), for
	// Settle; "" if it has none.
	Ref string `json:"ref,omitempty"`
}

// Sealer seals and opens routing decisions. It is safe for concurrent use.
type Sealer struct {
	box *seal.Box
}

// NewSealer derives the sealing key from the pseudonym key.
func NewSealer(pseudonymKey []byte) (*Sealer, error) {
	box, err := seal.New(pseudonymKey, "carehub routing decision v1")
	if err != nil {
		return nil, fmt.Errorf("route: %w", err)
	}
	return &Sealer{box: box}, nil
}

// Seal returns s sealed, as base64 text for a header. The request's
// directives are never sealed.
func (x *Sealer) Seal(s Sealed) (string, error) {
	s.Request.Directives = nil
	b, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	return x.box.Seal(b, nil)
}

// Open returns the decision sealed in text. A text that was not sealed by
// this key (forged, damaged, or from a hub with another key) is an error.
func (x *Sealer) Open(text string) (Sealed, error) {
	plain, err := x.box.Open(text, nil)
	if err != nil {
		return Sealed{}, problem.New(problem.Internal, "a sealed routing decision does not open with this hub's key")
	}
	var s Sealed
	if err := json.Unmarshal(plain, &s); err != nil {
		return Sealed{}, problem.New(problem.Internal, "a sealed routing decision is not readable")
	}
	return s, nil
}
