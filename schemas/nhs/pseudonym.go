package nhs

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"sync"
)

// MinKeySize is the shortest secret key NewPseudonymiser accepts, in bytes.
const MinKeySize = 16

// PseudonymPrefix starts every pseudonym and names the scheme's version
// (HMAC-SHA256 over the ten digits, first 128 bits, lower-case hex). A new
// scheme or key gets a new prefix, so that old and new pseudonyms can never
// be mistaken for one another while topics are re-keyed.
const PseudonymPrefix = "p1_"

// PseudonymLen is the length of every pseudonym: the prefix and 32 hex digits.
const PseudonymLen = len(PseudonymPrefix) + 32

// Pseudonymiser turns NHS numbers into keyed pseudonyms: stable for a given
// key, unlinkable to the number without the key. The pseudonym is the Kafka
// key of every event about the patient (so all of a patient's events share a
// partition and stay in order) and the only patient reference allowed in
// logs, metrics and headers.
//
// A keyless hash would not do: there are fewer than ten billion NHS numbers,
// so an unkeyed digest is reversed by trying them all.
//
// A Pseudonymiser is safe for concurrent use. It does not hold its key in a
// field, so printing one (even through reflection) cannot show the key.
type Pseudonymiser struct {
	pool sync.Pool // of *macState, each an HMAC keyed with the secret
}

type macState struct {
	h   hash.Hash
	in  [10]byte // the digits; here rather than on the stack, where passing them to h would make them escape
	sum [sha256.Size]byte
}

// NewPseudonymiser returns a Pseudonymiser keyed with a copy of key, which
// must hold at least MinKeySize bytes (use 32 random bytes).
func NewPseudonymiser(key []byte) (*Pseudonymiser, error) {
	if len(key) < MinKeySize {
		return nil, errors.New("nhs: pseudonymisation key too short: need at least 16 bytes")
	}
	k := append([]byte(nil), key...)
	p := &Pseudonymiser{}
	p.pool.New = func() any { return &macState{h: hmac.New(sha256.New, k)} }
	return p, nil
}

// Pseudonym returns "p1_" followed by the first 32 lower-case hex digits of
// HMAC-SHA256(key, the ten ASCII digits of n). It returns "" for the zero
// Number, which has no pseudonym: callers must not key anything by it.
func (p *Pseudonymiser) Pseudonym(n Number) string {
	if n.IsZero() {
		return ""
	}
	m := p.pool.Get().(*macState)
	n.put(&m.in)
	m.h.Reset()
	m.h.Write(m.in[:])
	m.h.Sum(m.sum[:0])
	var out [PseudonymLen]byte
	copy(out[:], PseudonymPrefix)
	hex.Encode(out[len(PseudonymPrefix):], m.sum[:16])
	m.in = [10]byte{}
	p.pool.Put(m)
	return string(out[:])
}

// LocalPseudonymPrefix starts every pseudonym of a local identifier (see
// LocalPseudonym). Its prefix differs from PseudonymPrefix, so the two
// kinds can never be mistaken for one another.
const LocalPseudonymPrefix = "l1_"

// LocalPseudonym returns a keyed pseudonym of a local identifier (a
// hospital number) within the organisation org: "l1_" followed by the first
// 32 lower-case hex digits of HMAC-SHA256(key, "local", org, id), the parts
// separated by NUL bytes. It keys records about a patient known only by a
// local identifier (a message held because it carries no NHS number), so
// that one patient's records share a partition and no identifier reaches a
// Kafka key. It returns "" when id is empty.
func (p *Pseudonymiser) LocalPseudonym(org, id string) string {
	if id == "" {
		return ""
	}
	m := p.pool.Get().(*macState)
	m.h.Reset()
	m.h.Write([]byte("local\x00"))
	m.h.Write([]byte(org))
	m.h.Write([]byte{0})
	m.h.Write([]byte(id))
	m.h.Sum(m.sum[:0])
	var out [PseudonymLen]byte
	copy(out[:], LocalPseudonymPrefix)
	hex.Encode(out[len(LocalPseudonymPrefix):], m.sum[:16])
	p.pool.Put(m)
	return string(out[:])
}
