// Package problemhttp answers HTTP requests with RFC 9457 problem
// documents built from carehub errors (package problem). It is apart from
// package problem so that packages that only classify errors, such as
// consent, carry no HTTP transport.
package problemhttp

import (
	"encoding/json"
	"net/http"

	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
)

// Write answers with err as application/problem+json. Only err's public
// text is used; a 503 carries Retry-After.
func Write(w http.ResponseWriter, err error) {
	d := problem.DetailsOf(err)
	w.Header().Set("Content-Type", media.Problem)
	if d.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(d.Status)
	_ = json.NewEncoder(w).Encode(d)
}
