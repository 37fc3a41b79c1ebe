// Package seal keeps what the hub writes to Kafka for itself unreadable and
// unforgeable to anyone without its key: AES-256-GCM under a key derived
// (HKDF-SHA256) from the pseudonym key, which every hub process has and a
// reader of the topics does not. Each use derives its own key from its
// purpose, so a text sealed for one use never opens for another.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
)

// ErrOpen is the error of a text that does not open: sealed under another
// key or for another purpose or additional data, damaged, or forged.
var ErrOpen = errors.New("seal: the text does not open with this hub's key")

// Box seals and opens texts for one purpose. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

// New derives the key of purpose (e.g. "carehub routing decision v1") from
// the pseudonym key, which must hold at least 16 bytes.
func New(pseudonymKey []byte, purpose string) (*Box, error) {
	if len(pseudonymKey) < 16 {
		return nil, errors.New("seal: the pseudonym key is too short to derive a sealing key")
	}
	k, err := hkdf.Key(sha256.New, pseudonymKey, nil, purpose, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead}, nil
}

// Seal returns plain sealed with a fresh random nonce, as unpadded base64
// text (fit for a header). additional, which may be nil, is bound to the
// text: Open must be given the same.
func (b *Box) Seal(plain, additional []byte) (string, error) {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(plain)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawStdEncoding.EncodeToString(b.aead.Seal(nonce, nonce, plain, additional)), nil
}

// Open returns what text seals, or ErrOpen.
func (b *Box) Open(text string, additional []byte) ([]byte, error) {
	raw, err := base64.RawStdEncoding.DecodeString(text)
	if err != nil || len(raw) < b.aead.NonceSize() {
		return nil, ErrOpen
	}
	plain, err := b.aead.Open(nil, raw[:b.aead.NonceSize()], raw[b.aead.NonceSize():], additional)
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}
