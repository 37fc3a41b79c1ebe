package seal_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/carehub/carehub/hub/seal"
)

func TestSealOpens(t *testing.T) {
	key := []byte("seal-test-pseudonym-key-0123456789")
	a, err := seal.New(key, "carehub test v1")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := seal.New(key, "carehub other use v1")
	otherKey, _ := seal.New([]byte("another-hub-pseudonym-key-987654"), "carehub test v1")
	plain := []byte(`{"categories":["sexual-health"]}`)
	text, err := a.Seal(plain, []byte("recipient/VM123\x001"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text, "sexual") {
		t.Fatal("the sealed text shows the plain text")
	}
	again, _ := a.Seal(plain, []byte("recipient/VM123\x001"))
	if again == text {
		t.Error("two seals of the same text are equal: the nonce is not fresh")
	}
	if got, err := a.Open(text, []byte("recipient/VM123\x001")); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open: %q, %v", got, err)
	}
	tampered := []byte(text)
	tampered[len(tampered)/2] ^= 1
	for _, tt := range []struct {
		name string
		box  *seal.Box
		text string
		ad   string
	}{
		{"other additional data", a, text, "recipient/VM124\x001"},
		{"other purpose", other, text, "recipient/VM123\x001"},
		{"other hub's key", otherKey, text, "recipient/VM123\x001"},
		{"damaged", a, string(tampered), "recipient/VM123\x001"},
		{"not base64", a, "%%%", "recipient/VM123\x001"},
		{"too short", a, "AAAA", "recipient/VM123\x001"},
	} {
		if _, err := tt.box.Open(tt.text, []byte(tt.ad)); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s: got %v, want ErrOpen", tt.name, err)
		}
	}
	if _, err := seal.New([]byte("short"), "x"); err == nil {
		t.Error("a short key was accepted")
	}
}
