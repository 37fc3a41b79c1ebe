package problem

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Details is an RFC 9457 problem document, with carehub's extension member
// "violations" listing each broken rule by JSON pointer.
type Details struct {
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Status     int         `json:"status"`
	Detail     string      `json:"detail,omitempty"`
	Instance   string      `json:"instance,omitempty"`
	Violations []Violation `json:"violations,omitempty"`
}

// TypeBase prefixes the problem type URIs; the kind name completes it.
const TypeBase = "https://carehub.dev/problems/"

// DetailsOf renders err as a problem document. Only public text is used.
func DetailsOf(err error) Details {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Kind: Internal, Message: "internal error"}
	}
	k := e.Kind
	if k == Other {
		k = Internal
	}
	return Details{
		Type:       TypeBase + k.String(),
		Title:      http.StatusText(k.HTTPStatus()),
		Status:     k.HTTPStatus(),
		Detail:     e.Message,
		Violations: e.Violations,
	}
}

// Write answers an HTTP request with err as application/problem+json.
func Write(w http.ResponseWriter, err error) {
	d := DetailsOf(err)
	w.Header().Set("Content-Type", "application/problem+json")
	if d.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(d.Status)
	_ = json.NewEncoder(w).Encode(d)
}
