// Package problemhttp answers HTTP requests with RFC 9457 problem
// documents built from carehub errors (package problem). It is apart from
// package problem so that packages that only classify errors, such as
// consent, carry no HTTP transport.
package problemhttp

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

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

// ReadBody reads a request body of at most limit bytes that must be UTF-8
// text (JSON, FHIR JSON): every HTTP endpoint that takes a body reads it
// here. Its errors are problems: TooLarge past the limit, Malformed when the
// body cannot be read or is not valid UTF-8 (naming the byte offset, never
// the bytes; a JSON decoder would replace them quietly, so that what is
// kept differs from what was sent).
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, problem.New(problem.TooLarge, "the body exceeds the limit of this endpoint")
		}
		return nil, problem.New(problem.Malformed, "the body could not be read")
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, size := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			off += size
		}
		return nil, problem.New(problem.Malformed, "the body is not valid UTF-8 (at byte "+strconv.Itoa(off)+")")
	}
	return b, nil
}
