package admin

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/deadletter"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// registerDLQ adds the routes about dead letters:
//
//	GET    /v1/dlq                       dead letters, oldest first, a page at a time (recipient, publisher, since, until, reason, state)
//	POST   /v1/dlq/{id}/replay           decide the copy again as of now; if still permitted, back to the outbox
//	POST   /v1/dlq/replay?recipient=ODS  the same for every open dead letter of one recipient, in order
//	DELETE /v1/dlq/{id}                  resolve without delivery, with the operator's reason
//
// The routes of issue 11 under /v1/deadletters answer 410 with the new
// path: one implementation, one documented path.
func (a *API) registerDLQ(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/dlq", a.admin(a.listDLQ))
	mux.HandleFunc("POST /v1/dlq/{id}/replay", a.admin(a.replayOne))
	mux.HandleFunc("POST /v1/dlq/replay", a.admin(a.replayRecipient))
	mux.HandleFunc("DELETE /v1/dlq/{id}", a.admin(a.resolveDLQ))
	gone := a.admin(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, problem.New(problem.Gone, "dead letters moved to /v1/dlq: GET /v1/dlq, POST /v1/dlq/{id}/replay, DELETE /v1/dlq/{id} (see the README, Operating carehub)"))
	})
	mux.HandleFunc("/v1/deadletters", gone)
	mux.HandleFunc("/v1/deadletters/", gone)
}

// MaxReasonLength bounds an operator's reason.
const MaxReasonLength = 500

// dlqQuery reads and checks a listing's parameters, reporting every
// problem at once.
func dlqQuery(r *http.Request) (deadletter.Query, error) {
	q := deadletter.Query{Limit: deadletter.DefaultLimit}
	var vs []problem.Violation
	v := r.URL.Query()
	for k := range v {
		switch k {
		case "recipient", "publisher", "reason", "since", "until", "state", "limit", "cursor":
		default:
			vs = append(vs, problem.Violation{Pointer: "/query/" + safeParam(k), Rule: "unknown-parameter",
				Detail: "the parameters are recipient, publisher, reason, since, until, state, limit and cursor"})
		}
	}
	for _, name := range []string{"recipient", "publisher"} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		if !ods.Valid(s) {
			vs = append(vs, problem.Violation{Pointer: "/query/" + name, Rule: "ods-code", Detail: name + " is an ODS code"})
		}
		if name == "recipient" {
			q.Recipient = s
		} else {
			q.Publisher = s
		}
	}
	q.Reason = v.Get("reason")
	if len(q.Reason) > 200 {
		vs = append(vs, problem.Violation{Pointer: "/query/reason", Rule: "reason-length", Detail: "reason is at most 200 characters"})
	}
	for _, name := range []string{"since", "until"} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		t, err := parseWhen(s)
		if err != nil {
			vs = append(vs, problem.Violation{Pointer: "/query/" + name, Rule: "time",
				Detail: name + " is a date (2026-11-01) or an RFC 3339 time (2026-11-01T09:00:00Z)"})
		}
		if name == "since" {
			q.Since = t
		} else {
			q.Until = t
		}
	}
	switch s := v.Get("state"); s {
	case "", deadletter.StateOpen, deadletter.StateResolved, deadletter.StateAll:
		q.State = s
	default:
		vs = append(vs, problem.Violation{Pointer: "/query/state", Rule: "state", Detail: "state is open (the default), resolved or all"})
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > deadletter.MaxLimit {
			vs = append(vs, problem.Violation{Pointer: "/query/limit", Rule: "limit-range",
				Detail: "limit is a whole number from 1 to " + strconv.Itoa(deadletter.MaxLimit)})
		}
		q.Limit = n
	}
	q.After = v.Get("cursor")
	if len(vs) > 0 {
		return q, &problem.Error{Kind: problem.Invalid, Message: "the query is not one this endpoint answers", Violations: vs}
	}
	return q, nil
}

// parseWhen reads a date (midnight UTC) or an RFC 3339 time.
func parseWhen(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t.UTC(), err
}

func (a *API) readLetters(r *http.Request) ([]deadletter.Entry, error) {
	entries, err := deadletter.Read(r.Context(), a.DeadLetters.Brokers, topic.DLQ)
	if err != nil {
		return nil, problem.Wrap(problem.Unavailable, "the dead letters could not be read; retry", err)
	}
	return entries, nil
}

func (a *API) listDLQ(w http.ResponseWriter, r *http.Request) {
	q, err := dlqQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	entries, err := a.readLetters(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page, err := deadletter.List(entries, q)
	if err != nil {
		a.fail(w, r, problem.Violated("/query/cursor", "cursor", "the cursor is not one this listing returned"))
		return
	}
	// A listing names patients (by pseudonym) and their events: each
	// patient on the page is audited as looked at, before the answer.
	seen := map[string]bool{}
	for _, l := range page.Items {
		if l.Patient != "" && !seen[l.Patient] {
			seen[l.Patient] = true
			if err := a.accessEvent(r, l.Patient, audit.ActionDeadLetterList, l.Publisher, l.EventID); err != nil {
				a.fail(w, r, err)
				return
			}
		}
	}
	writeJSON(w, http.StatusOK, page)
}

// accessEvent audits a look at a patient's record about one event, named
// by its publisher and id together (two publishers may use one id; the
// publisher is "" where the look is not about one publisher's event),
// before it is answered.
func (a *API) accessEvent(r *http.Request, patient, action, publisher, eventID string) error {
	rec := audit.Record{Time: a.now().UTC(), Kind: audit.KindAccess, Patient: patient, Actor: operator(r), Action: action,
		Publisher: publisher, EventID: eventID}
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, patient)
	m.Metadata.Set(topic.MetaEventID, eventID)
	if err := a.Publisher.Publish(topic.Audit, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the access could not be audited, so it is not answered; retry", err)
	}
	return nil
}

// replayAnswer is the answer to a replay.
type replayAnswer struct {
	Requeued int                  `json:"requeued"`
	Withheld int                  `json:"withheld"`
	Items    []deadletter.Outcome `json:"items"`
}

func (a *API) replay(w http.ResponseWriter, r *http.Request, ls []deadletter.Letter) {
	for _, l := range ls {
		if !a.Router.HasRecipient(l.Recipient) {
			a.fail(w, r, problem.New(problem.Conflict, "the hub no longer routes to "+l.Recipient+": nothing would deliver the copy; resolve the dead letter instead"))
			return
		}
	}
	out, err := deadletter.Replay(r.Context(), a.Publisher, a.Router, ls, operator(r), a.now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ans := replayAnswer{Items: out}
	for _, o := range out {
		if o.Outcome == deadletter.Requeued {
			ans.Requeued++
		} else {
			ans.Withheld++
		}
		a.Log.Info("dead letter replayed", zap.String("id", o.ID), zap.String("recipient", o.Recipient),
			zap.String("publisher", o.Publisher), zap.String("event_id", o.EventID), zap.String("outcome", o.Outcome), zap.String("rule", o.Rule),
			zap.String("operator", operator(r)))
	}
	writeJSON(w, http.StatusOK, ans)
}

func (a *API) replayOne(w http.ResponseWriter, r *http.Request) {
	if err := bodyType(r, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	a.dlqMu.Lock()
	defer a.dlqMu.Unlock()
	l, err := a.letterAt(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.replay(w, r, []deadletter.Letter{l})
}

// replayRecipient replays every open dead letter of one recipient, in the
// order they were dead-lettered.
func (a *API) replayRecipient(w http.ResponseWriter, r *http.Request) {
	if err := bodyType(r, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	v := r.URL.Query()
	rcpt := v.Get("recipient")
	var vs []problem.Violation
	for k := range v {
		if k != "recipient" {
			vs = append(vs, problem.Violation{Pointer: "/query/" + safeParam(k), Rule: "unknown-parameter", Detail: "the one parameter is recipient"})
		}
	}
	if !ods.Valid(rcpt) {
		vs = append(vs, problem.Violation{Pointer: "/query/recipient", Rule: "ods-code", Detail: "recipient, an ODS code, is required"})
	}
	if len(vs) > 0 {
		a.fail(w, r, &problem.Error{Kind: problem.Invalid, Message: "say whose dead letters to replay", Violations: vs})
		return
	}
	a.dlqMu.Lock()
	defer a.dlqMu.Unlock()
	entries, err := a.readLetters(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var open []deadletter.Letter
	for _, l := range deadletter.Letters(entries, rcpt) { // topic order: the order dead-lettered
		if l.Resolution == nil {
			open = append(open, l)
		}
	}
	if len(open) == 0 {
		writeJSON(w, http.StatusOK, replayAnswer{Items: []deadletter.Outcome{}})
		return
	}
	a.replay(w, r, open)
}

// letterAt reads the dead letter the path's {id} names. a.dlqMu must be
// held.
func (a *API) letterAt(r *http.Request) (deadletter.Letter, error) {
	entries, err := a.readLetters(r)
	if err != nil {
		return deadletter.Letter{}, err
	}
	return deadletter.Find(entries, r.PathValue("id"))
}

func (a *API) resolveDLQ(w http.ResponseWriter, r *http.Request) {
	reason, err := a.reason(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.dlqMu.Lock()
	defer a.dlqMu.Unlock()
	l, err := a.letterAt(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := deadletter.Resolve(r.Context(), a.Publisher, a.Router, l, operator(r), reason, a.now()); err != nil {
		a.fail(w, r, err)
		return
	}
	a.Log.Info("dead letter resolved", zap.String("id", l.ID), zap.String("recipient", l.Recipient),
		zap.String("publisher", l.Publisher), zap.String("event_id", l.EventID), zap.String("operator", operator(r)))
	w.WriteHeader(http.StatusNoContent)
}

// reason reads the body {"reason": "..."} an operator resolves with: 1 to
// MaxReasonLength characters. It is kept with the resolution and in the
// audit; it is the operator's own text, so it is never logged.
func (a *API) reason(w http.ResponseWriter, r *http.Request) (string, error) {
	b, err := a.body(w, r)
	if err != nil {
		return "", err
	}
	var body struct {
		Reason string `json:"reason"`
	}
	bad := problem.Violated("/reason", "reason", "the body is {\"reason\": \"...\"}: why it is resolved, 1 to "+
		strconv.Itoa(MaxReasonLength)+" characters")
	if !media.Is(r.Header.Get("Content-Type"), media.JSON) {
		return "", problem.New(problem.MediaType, "Content-Type must be "+media.JSON)
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return "", bad
	}
	body.Reason = strings.TrimSpace(body.Reason)
	if body.Reason == "" || utf8.RuneCountInString(body.Reason) > MaxReasonLength {
		return "", bad
	}
	return body.Reason, nil
}
