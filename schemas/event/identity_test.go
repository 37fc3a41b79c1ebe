package event_test

import (
	"regexp"
	"testing"

	"github.com/carehub/carehub/schemas/event"
)

// TestDeliveryID pins the webhook-id of a few events: recipients store them
// to drop redeliveries, so they must never change. The wanted values were
// computed independently, with Python's uuid.uuid5(UUID(namespace),
// source + "\n" + id).
func TestDeliveryID(t *testing.T) {
	tests := []struct {
		source, id string
		want       string
	}{
		{"urn:ods:RX1", "0001", "b946356f-968d-5a68-9250-21be479861d5"},
		// The same id from another publisher is another event.
		{"urn:ods:VM123", "0001", "75dfb5b4-98b6-59f6-b775-9726587f8f1f"},
		{"urn:ods:RX1", "ids with spaces é", "e70110ad-52ed-5eab-b1ff-53b6a895c48b"},
	}
	for _, tt := range tests {
		if got := event.DeliveryID(tt.source, tt.id); got != tt.want {
			t.Errorf("DeliveryID(%q, %q):\n\tgot  %s\n\twant %s", tt.source, tt.id, got, tt.want)
		}
	}
	// The separator keeps (source, id) pairs apart that concatenate alike.
	if event.DeliveryID("urn:ods:RX1", "0001") == event.DeliveryID("urn:ods:RX10", "001") {
		t.Error("DeliveryID: two pairs with the same concatenation share an id")
	}
}

func TestIdentity(t *testing.T) {
	a, b := event.Identity("urn:ods:RX1", "0001"), event.Identity("urn:ods:VM123", "0001")
	if a == b {
		t.Errorf("Identity: the same id from two sources gives one key %s", a)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(a) {
		t.Errorf("Identity(urn:ods:RX1, 0001) = %q, want 64 hex digits", a)
	}
	if event.Identity("urn:ods:RX1", "0001") != a {
		t.Error("Identity is not stable")
	}
}
