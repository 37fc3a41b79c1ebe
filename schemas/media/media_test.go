package media_test

import (
	"testing"

	"github.com/carehub/carehub/schemas/media"
)

func TestIs(t *testing.T) {
	tests := []struct {
		header string
		types  []string
		want   bool
	}{
		{"application/cloudevents+json", []string{media.CloudEvent}, true},
		{"application/cloudevents+json; charset=utf-8", []string{media.CloudEvent}, true},
		{"Application/FHIR+JSON", []string{media.JSON, media.FHIR}, true},
		{"application/json", []string{media.CloudEvent, media.CloudEventBatch}, false},
		{"", []string{media.JSON}, false},
		{"not a type", []string{media.JSON}, false},
		{"application/json; =x", []string{media.JSON}, false}, // a malformed parameter does not parse
	}
	for _, tt := range tests {
		if got := media.Is(tt.header, tt.types...); got != tt.want {
			t.Errorf("Is(%q, %q):\n\tgot  %v\n\twant %v", tt.header, tt.types, got, tt.want)
		}
	}
}
