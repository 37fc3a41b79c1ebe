package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/backfill"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// Backfills creates and runs backfills (backfill.Runner).
type Backfills interface {
	Create(ctx context.Context, recipient string, since time.Time, actor string) (backfill.Job, bool, error)
	Run(ctx context.Context, id, actor string, o backfill.Options) (backfill.Job, error)
	Jobs(ctx context.Context) ([]backfill.Job, error)
	Job(ctx context.Context, id string) (backfill.Job, error)
}

// registerBackfills adds the routes about backfills:
//
//	POST /v1/backfills           {"recipient": ODS, "since": date}: a job (or the unfinished one of that recipient and date)
//	GET  /v1/backfills           every job, newest first (?recipient=ODS)
//	GET  /v1/backfills/{id}      one job and how far it got
//	POST /v1/backfills/{id}/run  run it from its committed position; progress as NDJSON lines while it runs
//
// A run lasts as long as its request: closing the request interrupts it,
// and running it again (from any hub process) resumes it.
func (a *API) registerBackfills(mux *http.ServeMux) {
	if a.Backfills == nil {
		return
	}
	mux.HandleFunc("POST /v1/backfills", a.admin(a.createBackfill))
	mux.HandleFunc("GET /v1/backfills", a.admin(a.listBackfills))
	mux.HandleFunc("GET /v1/backfills/{id}", a.admin(a.getBackfill))
	mux.HandleFunc("POST /v1/backfills/{id}/run", a.admin(a.runBackfill))
}

// auditBackfill records an operator's action on a backfill: no patient.
func (a *API) auditBackfill(r *http.Request, j backfill.Job, what string) error {
	rec := audit.Record{Time: a.now().UTC(), Kind: audit.KindAccess, Actor: operator(r), Action: audit.ActionBackfill,
		Recipient: j.Recipient, Reason: what + " backfill " + j.ID + " of events since " + j.Since.Format(time.RFC3339)}
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, j.Recipient)
	if err := a.Publisher.Publish(topic.Audit, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the backfill could not be audited; retry", err)
	}
	return nil
}

func (a *API) createBackfill(w http.ResponseWriter, r *http.Request) {
	if !media.Is(r.Header.Get("Content-Type"), media.JSON) {
		a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.JSON))
		return
	}
	b, err := a.body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var body struct {
		Recipient string `json:"recipient"`
		Since     string `json:"since"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var vs []problem.Violation
	if err := dec.Decode(&body); err != nil {
		vs = append(vs, problem.Violation{Pointer: "/", Rule: "backfill-body", Detail: `the body is {"recipient": "VM123", "since": "2026-11-01"}`})
	}
	if !ods.Valid(body.Recipient) {
		vs = append(vs, problem.Violation{Pointer: "/recipient", Rule: "ods-code", Detail: "recipient is the ODS code of a recipient"})
	}
	since, err := parseWhen(body.Since)
	if err != nil {
		vs = append(vs, problem.Violation{Pointer: "/since", Rule: "time", Detail: "since is a date (2026-11-01) or an RFC 3339 time"})
	}
	if len(vs) > 0 {
		a.fail(w, r, &problem.Error{Kind: problem.Invalid, Message: "say which recipient and since when", Violations: vs})
		return
	}
	j, created, err := a.Backfills.Create(r.Context(), body.Recipient, since, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if created {
		if err := a.auditBackfill(r, j, "created"); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	w.Header().Set("Location", "/v1/backfills/"+j.ID)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, j)
}

func (a *API) listBackfills(w http.ResponseWriter, r *http.Request) {
	rcpt := r.URL.Query().Get("recipient")
	if rcpt != "" && !ods.Valid(rcpt) {
		a.fail(w, r, problem.Violated("/query/recipient", "ods-code", "recipient is an ODS code"))
		return
	}
	jobs, err := a.Backfills.Jobs(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := []backfill.Job{}
	for _, j := range jobs {
		if rcpt == "" || j.Recipient == rcpt {
			out = append(out, j)
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Items []backfill.Job `json:"items"`
	}{out})
}

func (a *API) getBackfill(w http.ResponseWriter, r *http.Request) {
	j, err := a.Backfills.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// runBackfill runs a job while the request lasts, writing the job as a
// JSON line after every commit of its position and once more when it
// stops (state done or interrupted).
func (a *API) runBackfill(w http.ResponseWriter, r *http.Request) {
	if err := bodyType(r, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	var o backfill.Options
	if s := r.URL.Query().Get("rate"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 || v > 1e6 {
			a.fail(w, r, problem.Violated("/query/rate", "rate", "rate is the most events a second to read, a positive number"))
			return
		}
		o.Rate = v
	}
	j, err := a.Backfills.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.auditBackfill(r, j, "ran"); err != nil {
		a.fail(w, r, err)
		return
	}
	started := false
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	o.Progress = func(j backfill.Job) {
		if !started {
			started = true
			w.Header().Set("Content-Type", media.NDJSON)
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
		}
		_ = enc.Encode(j)
		if flusher != nil {
			flusher.Flush()
		}
	}
	j, err = a.Backfills.Run(r.Context(), j.ID, operator(r), o)
	if err != nil && !started {
		a.fail(w, r, err)
	}
}
