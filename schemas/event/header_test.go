package event_test

import (
	"testing"
	"unicode/utf8"

	"github.com/carehub/carehub/schemas/event"
)

func TestHeaderValue(t *testing.T) {
	tests := []struct {
		value   string
		encoded string
	}{
		{"urn:ods:RX1", "urn:ods:RX1"},
		// The HTTP binding's own example (section 3.1.3.2).
		{"Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"},
		{`say "100%"`, "say%20%22100%25%22"},
	}
	for _, tt := range tests {
		if got := event.EncodeHeaderValue(tt.value); got != tt.encoded {
			t.Errorf("EncodeHeaderValue(%q):\n\tgot  %q\n\twant %q", tt.value, got, tt.encoded)
		}
		if got, ok := event.DecodeHeaderValue(tt.encoded); !ok || got != tt.value {
			t.Errorf("DecodeHeaderValue(%q):\n\tgot  %q, %v\n\twant %q", tt.encoded, got, ok, tt.value)
		}
	}
	for _, bad := range []string{"%C0%A0", "%FF", "a%0Ab", "%7F"} {
		if got, ok := event.DecodeHeaderValue(bad); ok {
			t.Errorf("DecodeHeaderValue(%q) = %q, want it refused", bad, got)
		}
	}
}

// FuzzHeaderValue: decoding never panics, and what it accepts is valid UTF-8
// that encodes and decodes back to itself.
func FuzzHeaderValue(f *testing.F) {
	for _, s := range []string{"", "plain", "Euro%20%E2%82%AC", `"quoted \" value"`, "100%", "%", "%4", "%C0%A0", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := event.DecodeHeaderValue(s)
		if !ok {
			return
		}
		if !utf8.ValidString(v) {
			t.Fatalf("DecodeHeaderValue(%q) = %q: not UTF-8", s, v)
		}
		enc := event.EncodeHeaderValue(v)
		for i := 0; i < len(enc); i++ {
			if enc[i] <= ' ' || enc[i] >= 0x7f || enc[i] == '"' {
				t.Fatalf("EncodeHeaderValue(%q) = %q: not printable ASCII without space and quote", v, enc)
			}
		}
		if back, ok := event.DecodeHeaderValue(enc); !ok || back != v {
			t.Fatalf("round trip of %q: got %q, %v", v, back, ok)
		}
	})
}
