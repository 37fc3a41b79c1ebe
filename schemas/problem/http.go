package problem

import "errors"

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
		Title:      statusText[k.HTTPStatus()],
		Status:     k.HTTPStatus(),
		Detail:     e.Message,
		Violations: e.Violations,
	}
}

// statusText holds the HTTP reason phrases of the statuses kinds map to,
// so that this package needs no transport (net/http) of its own.
var statusText = map[int]string{
	400: "Bad Request",
	401: "Unauthorized",
	403: "Forbidden",
	404: "Not Found",
	409: "Conflict",
	410: "Gone",
	412: "Precondition Failed",
	413: "Request Entity Too Large",
	415: "Unsupported Media Type",
	422: "Unprocessable Entity",
	428: "Precondition Required",
	500: "Internal Server Error",
	503: "Service Unavailable",
}
