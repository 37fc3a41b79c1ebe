package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// HeldRecords reads the held topic (package held).
type HeldRecords interface {
	All(ctx context.Context) ([]held.Located, error)
}

// registerHeld adds the routes about held messages:
//
//	GET /v1/held          the held messages, newest first, a page at a time
//	GET /v1/held/counts   how many are held, by reason and by source
//
// Listings hold metadata only (id, source, trigger, reason, the patient's
// pseudonym, times, size) unless include=message asks for the original
// messages. Nothing of a message is logged.
func (a *API) registerHeld(mux *http.ServeMux) error {
	if a.Held == nil {
		return errors.New("admin: the Held field is required")
	}
	mux.HandleFunc("GET /v1/held", a.admin(a.listHeld))
	mux.HandleFunc("GET /v1/held/counts", a.admin(a.countHeld))
	return nil
}

// heldQuery reads and checks a listing's query parameters, reporting every
// problem at once.
func heldQuery(r *http.Request) (held.Query, error) {
	q := held.Query{Limit: held.DefaultLimit}
	var vs []problem.Violation
	v := r.URL.Query()
	for k := range v {
		switch k {
		case "source", "reason", "limit", "cursor", "include":
		default:
			vs = append(vs, problem.Violation{Pointer: "/query/" + safeParam(k), Rule: "unknown-parameter",
				Detail: "the parameters are source, reason, limit, cursor and include"})
		}
	}
	if s := v.Get("source"); s != "" {
		if !ods.Valid(s) {
			vs = append(vs, problem.Violation{Pointer: "/query/source", Rule: "ods-code", Detail: "source is an ODS code"})
		}
		q.Source = s
	}
	if s := v.Get("reason"); s != "" {
		if !slices.Contains(connector.HeldReasons(), s) {
			vs = append(vs, problem.Violation{Pointer: "/query/reason", Rule: "held-reason",
				Detail: "reason is one of " + strings.Join(connector.HeldReasons(), ", ")})
		}
		q.Reason = s
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > held.MaxLimit {
			vs = append(vs, problem.Violation{Pointer: "/query/limit", Rule: "limit-range",
				Detail: "limit is a whole number from 1 to " + strconv.Itoa(held.MaxLimit)})
		}
		q.Limit = n
	}
	q.After = v.Get("cursor")
	switch s := v.Get("include"); s {
	case "":
	case "message":
		q.WithMessage = true
	default:
		vs = append(vs, problem.Violation{Pointer: "/query/include", Rule: "include-value", Detail: "include is message, or absent"})
	}
	if len(vs) > 0 {
		return q, &problem.Error{Kind: problem.Invalid, Message: "the query is not one this endpoint answers", Violations: vs}
	}
	return q, nil
}

// safeParam keeps an unknown parameter's name out of an answer unless it
// is short and plain.
func safeParam(k string) string {
	if len(k) > 32 || strings.ContainsFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return "(unknown)"
	}
	return k
}

func (a *API) listHeld(w http.ResponseWriter, r *http.Request) {
	q, err := heldQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	recs, err := a.Held.All(r.Context())
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the held messages could not be read; retry", err))
		return
	}
	page, err := held.List(recs, q)
	if err != nil {
		a.fail(w, r, problem.Violated("/query/cursor", "cursor", "the cursor is not one this listing returned"))
		return
	}
	a.Log.Info("held messages listed", zap.Int("items", len(page.Items)), zap.Bool("with_messages", q.WithMessage))
	w.Header().Set("Content-Type", media.JSON)
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(page)
}

func (a *API) countHeld(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		a.fail(w, r, problem.Violated("/query", "unknown-parameter", "this endpoint takes no parameters"))
		return
	}
	recs, err := a.Held.All(r.Context())
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the held messages could not be read; retry", err))
		return
	}
	c := held.Count(recs)
	for _, reason := range connector.HeldReasons() {
		if _, ok := c.ByReason[reason]; !ok {
			c.ByReason[reason] = 0 // every reason, so dashboards see zeros
		}
	}
	w.Header().Set("Content-Type", media.JSON)
	_ = json.NewEncoder(w).Encode(c)
}
