package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/nhs"

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
//	GET    /v1/held               the held messages, newest first, a page at a time (open ones by default)
//	GET    /v1/held/counts        how many are open, by reason and by source; how many were closed
//	POST   /v1/held/{id}/release  read the original again, as if received now, and take it in through ingest
//	DELETE /v1/held/{id}          close it without sharing, with the operator's reason
//
// Listings hold metadata only (id, source, trigger, reason, the patient's
// pseudonym, times, size) unless include=message asks for the original
// messages (each patient on the page is then audited as looked at).
// Nothing of a message is logged. A release or a resolution is audited
// with the operator before it is answered.
func (a *API) registerHeld(mux *http.ServeMux) error {
	if a.Held == nil || a.Ingest == nil {
		return errors.New("admin: the Held and Ingest fields are required")
	}
	mux.HandleFunc("GET /v1/held", a.admin(a.listHeld))
	mux.HandleFunc("GET /v1/held/counts", a.admin(a.countHeld))
	mux.HandleFunc("POST /v1/held/{id}/release", a.admin(a.releaseHeld))
	mux.HandleFunc("DELETE /v1/held/{id}", a.admin(a.resolveHeld))
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
		case "source", "reason", "limit", "cursor", "include", "state":
		default:
			vs = append(vs, problem.Violation{Pointer: "/query/" + safeParam(k), Rule: "unknown-parameter",
				Detail: "the parameters are source, reason, state, limit, cursor and include"})
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
	switch s := v.Get("state"); s {
	case "", held.StateOpen, held.Released, held.Resolved, held.StateAll:
		q.State = s
	default:
		vs = append(vs, problem.Violation{Pointer: "/query/state", Rule: "state", Detail: "state is open (the default), released, resolved or all"})
	}
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
	if q.WithMessage {
		// The originals are patient data: each patient on the page is
		// audited as looked at, before the answer.
		seen := map[string]bool{}
		for _, it := range page.Items {
			if !seen[it.Patient] {
				seen[it.Patient] = true
				if err := a.access(r, it.Patient, audit.ActionHeldRead, it.ID); err != nil {
					a.fail(w, r, err)
					return
				}
			}
		}
	}
	a.Log.Info("held messages listed", zap.Int("items", len(page.Items)), zap.Bool("with_messages", q.WithMessage))
	writeJSON(w, http.StatusOK, page)
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
	writeJSON(w, http.StatusOK, c)
}

// findHeld finds the open held message the path names (source= tells two
// sources' messages with one id apart).
func (a *API) findHeld(r *http.Request) (held.Located, error) {
	recs, err := a.Held.All(r.Context())
	if err != nil {
		return held.Located{}, problem.Wrap(problem.Unavailable, "the held messages could not be read; retry", err)
	}
	src := r.URL.Query().Get("source")
	if src != "" && !ods.Valid(src) {
		return held.Located{}, problem.Violated("/query/source", "ods-code", "source is an ODS code")
	}
	loc, state, closed, err := held.Find(recs, src, r.PathValue("id"))
	switch {
	case errors.Is(err, held.ErrNotFound):
		return held.Located{}, problem.New(problem.NotFound, "no held message with that id")
	case errors.Is(err, held.ErrAmbiguous):
		return held.Located{}, problem.Violated("/query/source", "held-id-ambiguous", "two sources sent a message with that id: add ?source=ODS")
	case err != nil:
		return held.Located{}, err
	case state != held.StateOpen:
		return held.Located{}, problem.New(problem.Conflict, "the held message was already "+state+" by "+closed.Actor+" at "+
			closed.Time.Format(time.RFC3339))
	}
	return loc, nil
}

// releaseAnswer is the answer to a release.
type releaseAnswer struct {
	ID     string               `json:"id"`
	Source string               `json:"source"`
	State  string               `json:"state"`
	Events []connector.Accepted `json:"events"`
}

// releaseHeld reads a held original again as the source that held it
// reads a message received now (its current settings; the NHS number the
// operator traced, when the body gives one), and takes what it becomes in
// through ingest as the organisation that sent it: validated,
// deduplicated by (source, id) and routed like any input. A message that
// would still be held is answered 409 with the reason, and stays open.
func (a *API) releaseHeld(w http.ResponseWriter, r *http.Request) {
	if err := bodyType(r, media.JSON); err != nil {
		a.fail(w, r, err)
		return
	}
	b, err := a.body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var body struct {
		NHSNumber string `json:"nhsNumber"`
	}
	if len(strings.TrimSpace(string(b))) > 0 {
		if !media.Is(r.Header.Get("Content-Type"), media.JSON) {
			a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.JSON))
			return
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			a.fail(w, r, problem.Violated("/", "release-body", "the body is empty, or {\"nhsNumber\": \"...\"}: the patient's NHS number, traced and verified"))
			return
		}
	}
	var n nhs.Number
	if body.NHSNumber != "" {
		if n, err = nhs.Parse(body.NHSNumber); err != nil {
			a.fail(w, r, problem.Violated("/nhsNumber", "nhs-number", "nhsNumber is not a valid NHS number"))
			return
		}
	}
	a.heldMu.Lock()
	defer a.heldMu.Unlock()
	loc, err := a.findHeld(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	hm := connector.HeldMessage{Org: loc.Source, ContentType: loc.ContentType, Original: loc.Original, NHSNumber: n}
	var rr connector.Reread
	found := false
	for _, rl := range a.Releasers {
		rr, err = rl.Reread(r.Context(), hm)
		if errors.Is(err, connector.ErrNotMine) {
			continue
		}
		if err != nil {
			a.fail(w, r, err)
			return
		}
		found = true
		break
	}
	if !found {
		a.fail(w, r, problem.New(problem.Conflict, "no input of this hub reads "+loc.ContentType+" from "+loc.Source+
			" now: configure it again, or resolve the message"))
		return
	}
	if rr.Held != nil {
		a.fail(w, r, &problem.Error{Kind: problem.Conflict, Message: "the message would still be held: " + rr.Held.Detail,
			Violations: []problem.Violation{{Pointer: "/", Rule: rr.Held.Reason, Detail: rr.Held.Detail}}})
		return
	}
	results := a.Ingest.AcceptBatch(r.Context(), loc.Source, rr.Events)
	ans := releaseAnswer{ID: loc.ID, Source: loc.Source, State: held.Released}
	var ids []string
	for _, res := range results {
		if res.Err != nil {
			a.fail(w, r, res.Err)
			return
		}
		ans.Events = append(ans.Events, res.Accepted)
		ids = append(ids, res.ID)
	}
	patient := loc.Patient
	if !n.IsZero() {
		patient = a.Pseudo.Pseudonym(n)
	}
	first := ""
	if len(ids) > 0 {
		first = ids[0]
	}
	if err := a.access(r, patient, audit.ActionHeldRelease, first); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.closeHeld(loc, held.Resolution{Action: held.Released, Actor: operator(r), Events: ids, NHSNumberGiven: !n.IsZero()}); err != nil {
		a.fail(w, r, err)
		return
	}
	a.Log.Info("held message released", zap.String("held_id", loc.ID), zap.String("source", loc.Source),
		zap.Int("events", len(ids)), zap.Bool("nhs_number_given", !n.IsZero()), zap.String("operator", operator(r)))
	writeJSON(w, http.StatusOK, ans)
}

// resolveHeld closes a held message without sharing it, with the
// operator's reason.
func (a *API) resolveHeld(w http.ResponseWriter, r *http.Request) {
	reason, err := a.reason(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.heldMu.Lock()
	defer a.heldMu.Unlock()
	loc, err := a.findHeld(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rec := audit.Record{Time: a.now().UTC(), Kind: audit.KindAccess, Patient: loc.Patient, Actor: operator(r), Action: audit.ActionHeldResolve,
		EventID: loc.ID, Reason: reason}
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, loc.Patient)
	m.Metadata.Set(topic.MetaEventID, loc.ID)
	if err := a.Publisher.Publish(topic.Audit, m); err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the resolution could not be audited; retry", err))
		return
	}
	if err := a.closeHeld(loc, held.Resolution{Action: held.Resolved, Actor: operator(r), Reason: reason}); err != nil {
		a.fail(w, r, err)
		return
	}
	a.Log.Info("held message resolved", zap.String("held_id", loc.ID), zap.String("source", loc.Source), zap.String("operator", operator(r)))
	w.WriteHeader(http.StatusNoContent)
}

// closeHeld appends the resolution record, keyed as the held message.
func (a *API) closeHeld(loc held.Located, res held.Resolution) error {
	rec := held.Closing(loc.Record, res, a.now())
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, loc.Patient)
	m.Metadata.Set(topic.MetaHeldID, loc.ID)
	m.Metadata.Set(topic.MetaReason, loc.Reason)
	m.Metadata.Set("content-type", media.JSON)
	if err := a.Publisher.Publish(topic.Held, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the held message could not be closed; retry", err)
	}
	return nil
}
