// Package auth maps API keys to the organisation (ODS code) they belong to.
// Keys are held only as SHA-256 digests and compared in constant time; a key
// never reaches a log or an error.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

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
	return p, nil
}

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

// RequireAdmin reports an error unless the request carries the admin key
// or an operator's key.
func (k *Keys) RequireAdmin(r *http.Request) error {
	_, err := k.Operator(r)
	return err
}
