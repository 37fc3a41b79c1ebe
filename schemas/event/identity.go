package event

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/google/uuid"
)

// An event is identified by its source and its id together, as CloudEvents
// says ("Producers MUST ensure that source + id is unique for each distinct
// event"): two publishers may use the same id for two different events. Every
// place that tells events apart uses the pair: the duplicate memory of the
// ingest, the webhook-id of each delivery, the joins of the audit trail.

// deliveryNamespace is the UUID namespace of DeliveryID (a random UUID fixed
// for carehub; changing it changes every webhook-id).
var deliveryNamespace = uuid.MustParse("5b0e9c2a-3f6d-4d8e-9a51-7c2b14e8f0a3")

// DeliveryID returns the identifier of the event (source, id) that
// deliveries carry (the Standard Webhooks webhook-id, and Idempotency-Key):
// the name-based UUID, version 5 (RFC 9562), of source, a line feed and id,
// in the namespace 5b0e9c2a-3f6d-4d8e-9a51-7c2b14e8f0a3. The same event always
// gets the same value, so a recipient drops a redelivery by it; two events
// with the same id from two sources get two values. It is printable ASCII
// whatever the id holds, and carries no part of the id in clear.
func DeliveryID(source, id string) string {
	return uuid.NewSHA1(deliveryNamespace, []byte(source+"\n"+id)).String()
}

// Identity returns a fixed-size digest of (source, id), a key for the event
// that holds neither in clear: SHA-256 of source, a line feed and id, in hex.
func Identity(source, id string) string {
	sum := sha256.Sum256([]byte(source + "\n" + id))
	return hex.EncodeToString(sum[:])
}
