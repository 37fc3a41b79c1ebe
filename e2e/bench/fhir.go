package bench

import (
	"fmt"
	"time"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
)

// FHIR returns event seq as the FHIR R4 message a FHIR-speaking EPR would
// send to POST /fhir/r4/$process-message: the same synthetic discharge as
// Event (same id, patient, GP practice, destination and inline summary),
// mapped by schemas/fhir's MessageBundle, the hub's own mapping. The
// Bundle's identifier (system fhir.SystemEventID) carries the event's id,
// so the hub accepts it under that id and deliveries can be matched.
// endpoint is MessageHeader.destination.endpoint: the hub's route.
func (p *Population) FHIR(prefix string, seq uint64, now time.Time, endpoint string) ([]byte, error) {
	ev, err := event.Unmarshal(p.Event(nil, prefix, seq, now))
	if err != nil {
		return nil, fmt.Errorf("bench: decoding synthetic event %d: %w", seq, err)
	}
	return fhir.MessageBundle(ev, "", endpoint)
}
