package webhook

import (
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzDecodeSecret: a secret is accepted only in the Standard Webhooks
// form (whsec_ and strict base64 of at least MinSecretBytes bytes, line
// breaks ignored), and a
// refusal never repeats the secret.
func FuzzDecodeSecret(f *testing.F) {
	for _, s := range []string{"whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=", "whsec_", "whsec_c2hvcnQ=", "Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=",
		"whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE", "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=\n", "demo-gp-secret"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := DecodeSecret(s)
		if err != nil {
			if rest := strings.TrimPrefix(s, SecretPrefix); len(rest) >= 8 && strings.Contains(err.Error(), rest) {
				t.Fatalf("the refusal repeats the secret: %v", err)
			}
			return
		}
		// base64 skips line breaks (a secret read from a file ends with one).
		bare := strings.NewReplacer("\r", "", "\n", "").Replace(s)
		if len(key) < MinSecretBytes || SecretPrefix+base64.StdEncoding.EncodeToString(key) != bare {
			t.Fatalf("%q accepted as %d bytes that do not encode back to it", s, len(key))
		}
	})
}
