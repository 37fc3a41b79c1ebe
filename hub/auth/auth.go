// Package auth maps API keys to the organisation (ODS code) they belong to.
// Keys are held only as SHA-256 digests and compared in constant time; a key
// never reaches a log or an error.
//
// A key's principal is a source's ODS code (it publishes as that
// organisation), an operator (OperatorPrincipal: the admin API), or a
// recipient (RecipientPrincipal: the recipient's own key, which changes its
// patient list and nothing else). Live holds a set that the hub replaces
// when recipients created through the admin API bring keys of their own.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/carehub/carehub/schemas/problem"
)

// Keys is an immutable set of API keys, each bound to one principal.
type Keys struct {
	entries []entry
}

type entry struct {
	digest    [32]byte
	principal string
}

// OperatorPrefix starts the principal of an operator's key (an ODS code
// never holds a ':'). Admin is the principal of the admin key: the
// operator "admin".
const (
	OperatorPrefix = "operator:"
	Admin          = OperatorPrefix + "admin"
)

// OperatorPrincipal is the principal of the operator id's key.
func OperatorPrincipal(id string) string { return OperatorPrefix + id }

// RecipientPrefix starts the principal of a recipient's own key.
const RecipientPrefix = "recipient:"

// RecipientPrincipal is the principal of the recipient's own key.
func RecipientPrincipal(ods string) string { return RecipientPrefix + ods }

// New builds the set. principals maps each key to an ODS code (a source)
// or an OperatorPrincipal (Admin included).
func New(principals map[string]string) (*Keys, error) {
	k := &Keys{}
	for key, p := range principals {
		if len(key) < 8 {
			return nil, errors.New("auth: API keys must be at least 8 bytes")
		}
		k.entries = append(k.entries, entry{digest: sha256.Sum256([]byte(key)), principal: p})
	}
	return k, nil
}

// Principal returns who the request's bearer key belongs to.
func (k *Keys) Principal(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if h == "" {
		return "", problem.New(problem.Unauthenticated, "an API key is required: Authorization: Bearer <key>")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return "", problem.New(problem.Unauthenticated, "the Authorization header must be: Bearer <key>")
	}
	d := sha256.Sum256([]byte(strings.TrimSpace(key)))
	found := ""
	for _, e := range k.entries { // no early exit: time does not depend on which key matched
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			found = e.principal
		}
	}
	if found == "" {
		return "", problem.New(problem.Unauthenticated, "the API key is not known")
	}
	return found, nil
}

// Organisation implements connector.Authenticator: the admin key cannot publish.
func (k *Keys) Organisation(r *http.Request) (string, error) {
	p, err := k.Principal(r)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(p, OperatorPrefix) {
		return "", problem.New(problem.Forbidden, "the admin key cannot publish events")
	}
	if strings.HasPrefix(p, RecipientPrefix) {
		return "", problem.New(problem.Forbidden, "a recipient's own key cannot publish events: publish with the organisation's source key")
	}
	return p, nil
}

// Lookup returns the principal key belongs to, if any: to check that a new
// key is not already someone else's.
func (k *Keys) Lookup(key string) (string, bool) {
	d := sha256.Sum256([]byte(key))
	found := ""
	for _, e := range k.entries {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			found = e.principal
		}
	}
	return found, found != ""
}

// Live is a set of keys that can be replaced while requests use it. It
// answers as the Keys last stored.
type Live struct {
	p atomic.Pointer[Keys]
}

// NewLive returns a Live set holding k.
func NewLive(k *Keys) *Live {
	l := &Live{}
	l.Store(k)
	return l
}

// Store replaces the set.
func (l *Live) Store(k *Keys) { l.p.Store(k) }

// Keys returns the set in force.
func (l *Live) Keys() *Keys { return l.p.Load() }

// Principal is Keys.Principal of the set in force.
func (l *Live) Principal(r *http.Request) (string, error) { return l.Keys().Principal(r) }

// Organisation is Keys.Organisation of the set in force.
func (l *Live) Organisation(r *http.Request) (string, error) { return l.Keys().Organisation(r) }

// Operator is Keys.Operator of the set in force.
func (l *Live) Operator(r *http.Request) (string, error) { return l.Keys().Operator(r) }

// Operator returns the id of the operator whose key the request carries,
// or an error if it carries none.
func (k *Keys) Operator(r *http.Request) (string, error) {
	p, err := k.Principal(r)
	if err != nil {
		return "", err
	}
	id, ok := strings.CutPrefix(p, OperatorPrefix)
	if !ok {
		return "", problem.New(problem.Forbidden, "this operation needs the admin key or an operator's key")
	}
	return id, nil
}
