package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/directory"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Recipients is what the admin API needs to manage recipients: the
// recipient directory, the keys (to know a recipient's own key from
// another's), and each recipient's state in this process.
type Recipients struct {
	Directory *directory.Directory
	// Keys are the hub's API keys: sources', operators' and recipients'
	// own (auth.RecipientPrincipal).
	Keys *auth.Live
	// Readers are pull recipients' reader keys, each bound to its
	// recipient: a pull recipient changes its list with it too.
	Readers *auth.Live
	// Status tells whether this process delivers to the recipient now,
	// and measures its backlog.
	Status func(ctx context.Context, ods string) RecipientStatus
	// Settle, when set, returns once this process runs what the directory
	// holds (a recipient created is delivering, one paused has stopped):
	// called after each change, before the answer. Other processes follow
	// as soon as they read the change.
	Settle func(ctx context.Context)
}

func (rs *Recipients) settle(ctx context.Context) {
	if rs.Settle != nil {
		rs.Settle(ctx)
	}
}

// RecipientStatus is a recipient's state as this process sees it.
type RecipientStatus struct {
	// Delivering: this process runs the recipient's deliverer now.
	Delivering    bool   `json:"delivering"`
	NotDelivering string `json:"notDelivering,omitempty"`
	// Backlog is what waits in its outbox, for every process.
	Backlog      *directory.Backlog `json:"backlog,omitempty"`
	BacklogError string             `json:"backlogError,omitempty"`
}

// registerRecipients adds the routes about recipients, subscriptions and
// patient lists (admin role, but a patient list also by its recipient's
// own key):
//
//	GET    /v1/recipients                     every recipient: version, pause, entry
//	POST   /v1/recipients                     create one from its configuration entry as JSON (201, ETag)
//	GET    /v1/recipients/{ods}               its entry as JSON (secrets hidden), ETag "v<version>"
//	PUT    /v1/recipients/{ods}               replace its entry (If-Match)
//	DELETE /v1/recipients/{ods}               delete it, its pause and its list (If-Match)
//	GET    /v1/recipients/{ods}/status        version, pause, whether this process delivers, backlog
//	POST   /v1/recipients/{ods}/pause         stop its deliveries; {"reason": "..."} optional
//	POST   /v1/recipients/{ods}/resume        start them again
//	GET    /v1/recipients/{ods}/patients      its patient list: pseudonyms, when and by whom added
//	PUT    /v1/recipients/{ods}/patients      replace it: text/plain, the list file's format
//	POST   /v1/recipients/{ods}/patients      change it: {"add": [nhs, ...], "remove": [nhs, ...]}
//	GET    /v1/subscriptions                  every subscription, with its recipient
//	POST   /v1/subscriptions                  add one to a recipient (201)
//	GET    /v1/subscriptions/{id}             one, ETag: its recipient's version
//	PUT    /v1/subscriptions/{id}             replace it (If-Match)
//	DELETE /v1/subscriptions/{id}             delete it (If-Match)
func (a *API) registerRecipients(mux *http.ServeMux) error {
	rs := a.Recipients
	if rs == nil {
		return nil
	}
	if rs.Directory == nil || rs.Keys == nil || rs.Readers == nil || rs.Status == nil {
		return errors.New("admin: Recipients needs its directory, keys, readers and status")
	}
	mux.HandleFunc("GET /v1/recipients", a.admin(a.listRecipients))
	mux.HandleFunc("POST /v1/recipients", a.admin(a.createRecipient))
	mux.HandleFunc("GET /v1/recipients/{ods}", a.admin(a.getRecipient))
	mux.HandleFunc("PUT /v1/recipients/{ods}", a.admin(a.putRecipient))
	mux.HandleFunc("DELETE /v1/recipients/{ods}", a.admin(a.deleteRecipient))
	mux.HandleFunc("GET /v1/recipients/{ods}/status", a.admin(a.recipientStatus))
	mux.HandleFunc("POST /v1/recipients/{ods}/pause", a.admin(a.pauseRecipient(true)))
	mux.HandleFunc("POST /v1/recipients/{ods}/resume", a.admin(a.pauseRecipient(false)))
	mux.HandleFunc("GET /v1/recipients/{ods}/patients", a.listOwner(a.getPatients))
	mux.HandleFunc("PUT /v1/recipients/{ods}/patients", a.listOwner(a.putPatients))
	mux.HandleFunc("POST /v1/recipients/{ods}/patients", a.listOwner(a.postPatients))
	mux.HandleFunc("GET /v1/subscriptions", a.admin(a.listSubscriptions))
	mux.HandleFunc("POST /v1/subscriptions", a.admin(a.putSubscription))
	mux.HandleFunc("GET /v1/subscriptions/{id}", a.admin(a.getSubscription))
	mux.HandleFunc("PUT /v1/subscriptions/{id}", a.admin(a.putSubscription))
	mux.HandleFunc("DELETE /v1/subscriptions/{id}", a.admin(a.deleteSubscription))
	return nil
}

// pathODS reads the recipient's ODS code from the path.
func pathODS(r *http.Request) (string, error) {
	o := r.PathValue("ods")
	if !ods.Valid(o) {
		return "", problem.Violated("/path/ods", "ods-code", "the path names a recipient by its ODS code")
	}
	return o, nil
}

// precondition reads If-Match as the version of a recipient.
func precondition(r *http.Request) (directory.Precondition, error) {
	v, any, _, err := ifMatch(r)
	if err != nil {
		return directory.Precondition{}, problem.New(problem.Precondition, "If-Match names no version of the recipient (send the ETag a GET answered)")
	}
	return directory.Precondition{Version: v, Any: any}, nil
}

// jsonBody reads a JSON body, refusing other media types.
func (a *API) jsonBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if !media.Is(r.Header.Get("Content-Type"), media.JSON) {
		return nil, problem.New(problem.MediaType, "Content-Type must be "+media.JSON)
	}
	return a.body(w, r)
}

// writeJSON answers with v as JSON. Admin answers speak of patients and
// recipients: no cache keeps them.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", media.JSON)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// recipientSummary is one recipient in the list.
type recipientSummary struct {
	ODS       string           `json:"ods"`
	Version   int64            `json:"version"`
	Updated   time.Time        `json:"updated"`
	UpdatedBy string           `json:"updatedBy"`
	Paused    *directory.Pause `json:"paused,omitempty"`
	Error     string           `json:"error,omitempty"` // why this process cannot use its entry
	Recipient json.RawMessage  `json:"recipient,omitempty"`
}

func summary(r directory.Recipient) recipientSummary {
	s := recipientSummary{ODS: r.ODS, Version: r.Version, Updated: r.Updated, UpdatedBy: r.Actor, Paused: r.Paused, Recipient: r.Entry()}
	if r.Err != nil {
		s.Error = problem.Public(problem.Wrap(problem.Internal, r.Err.Error(), r.Err))
	}
	return s
}

func (a *API) listRecipients(w http.ResponseWriter, r *http.Request) {
	d := a.Recipients.Directory
	if err := d.Sync(r.Context()); err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
		return
	}
	out := []recipientSummary{}
	for _, rc := range d.Recipients() {
		out = append(out, summary(rc))
	}
	writeJSON(w, http.StatusOK, struct {
		Recipients []recipientSummary `json:"recipients"`
	}{out})
}

func (a *API) writeRecipient(w http.ResponseWriter, status int, rc directory.Recipient) {
	w.Header().Set("ETag", ETag(rc.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", "/v1/recipients/"+rc.ODS)
	}
	entry := rc.Entry()
	if entry == nil {
		entry = json.RawMessage(`{}`)
	}
	writeJSON(w, status, entry)
}

func (a *API) createRecipient(w http.ResponseWriter, r *http.Request) {
	b, err := a.jsonBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rc, err := a.Recipients.Directory.Create(r.Context(), b, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Recipients.settle(r.Context())
	a.writeRecipient(w, http.StatusCreated, rc)
}

func (a *API) getRecipient(w http.ResponseWriter, r *http.Request) {
	o, err := pathODS(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rc, ok, err := a.Recipients.Directory.Get(r.Context(), o)
	switch {
	case err != nil:
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
	case !ok:
		a.fail(w, r, problem.New(problem.NotFound, "there is no recipient "+o))
	case rc.Config == nil:
		a.fail(w, r, problem.Wrap(problem.Conflict, "this hub cannot read the recipient's entry: "+rc.Err.Error(), rc.Err))
	default:
		a.writeRecipient(w, http.StatusOK, rc)
	}
}

func (a *API) putRecipient(w http.ResponseWriter, r *http.Request) {
	o, err := pathODS(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pre, err := precondition(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	b, err := a.jsonBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rc, err := a.Recipients.Directory.Replace(r.Context(), o, b, pre, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Recipients.settle(r.Context())
	a.writeRecipient(w, http.StatusOK, rc)
}

func (a *API) deleteRecipient(w http.ResponseWriter, r *http.Request) {
	o, err := pathODS(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pre, err := precondition(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.Recipients.Directory.Delete(r.Context(), o, pre, operator(r)); err != nil {
		a.fail(w, r, err)
		return
	}
	a.Recipients.settle(r.Context())
	w.WriteHeader(http.StatusNoContent)
}

// status is a recipient's status document.
type status struct {
	ODS       string           `json:"ods"`
	Version   int64            `json:"version"`
	Updated   time.Time        `json:"updated"`
	UpdatedBy string           `json:"updatedBy"`
	Paused    *directory.Pause `json:"paused"`
	Error     string           `json:"error,omitempty"`
	RecipientStatus
}

func (a *API) writeStatus(w http.ResponseWriter, r *http.Request, rc directory.Recipient) {
	s := status{ODS: rc.ODS, Version: rc.Version, Updated: rc.Updated, UpdatedBy: rc.Actor, Paused: rc.Paused,
		RecipientStatus: a.Recipients.Status(r.Context(), rc.ODS)}
	if rc.Err != nil {
		s.Error = summary(rc).Error
	}
	w.Header().Set("ETag", ETag(rc.Version))
	writeJSON(w, http.StatusOK, s)
}

func (a *API) recipientStatus(w http.ResponseWriter, r *http.Request) {
	o, err := pathODS(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rc, ok, err := a.Recipients.Directory.Get(r.Context(), o)
	switch {
	case err != nil:
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
	case !ok:
		a.fail(w, r, problem.New(problem.NotFound, "there is no recipient "+o))
	default:
		a.writeStatus(w, r, rc)
	}
}

// pauseRecipient serves pause, whose optional body is {"reason": "..."}
// (application/json), and resume, which takes no body.
func (a *API) pauseRecipient(pause bool) http.HandlerFunc {
	takes := ""
	if pause {
		takes = media.JSON
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if err := bodyType(r, takes); err != nil {
			a.fail(w, r, err)
			return
		}
		o, err := pathODS(r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		var body struct {
			Reason string `json:"reason"`
		}
		b, err := a.body(w, r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if pause && len(strings.TrimSpace(string(b))) > 0 {
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil || len(body.Reason) > 200 {
				a.fail(w, r, problem.Violated("/reason", "pause-reason", `the body is {"reason": "..."}, at most 200 characters`))
				return
			}
		}
		d := a.Recipients.Directory
		var rc directory.Recipient
		if pause {
			rc, err = d.Pause(r.Context(), o, operator(r), body.Reason)
		} else {
			rc, err = d.Resume(r.Context(), o, operator(r))
		}
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.Recipients.settle(r.Context())
		a.Log.Info(map[bool]string{true: "recipient paused", false: "recipient resumed"}[pause], zap.String("recipient", o),
			zap.String("operator", operator(r)))
		a.writeStatus(w, r, rc)
	}
}

// subscriptionDoc is a subscription as the API shows it.
type subscriptionDoc struct {
	Recipient   string   `json:"recipient"`
	ID          string   `json:"id"`
	Basis       string   `json:"basis"`
	Types       []string `json:"types"`
	PatientList string   `json:"patientList,omitempty"`
}

func docOf(s directory.Subscription) subscriptionDoc {
	return subscriptionDoc{Recipient: s.Recipient, ID: s.ID, Basis: s.Basis, Types: s.Types, PatientList: s.PatientList}
}

func (a *API) listSubscriptions(w http.ResponseWriter, r *http.Request) {
	all, err := a.Recipients.Directory.AllSubscriptions(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]subscriptionDoc, len(all))
	for i, s := range all {
		out[i] = docOf(s)
	}
	writeJSON(w, http.StatusOK, struct {
		Subscriptions []subscriptionDoc `json:"subscriptions"`
	}{out})
}

func (a *API) getSubscription(w http.ResponseWriter, r *http.Request) {
	s, ok, err := a.Recipients.Directory.FindSubscription(r.Context(), r.PathValue("id"))
	switch {
	case err != nil:
		a.fail(w, r, err)
	case !ok:
		a.fail(w, r, problem.New(problem.NotFound, "there is no subscription "+r.PathValue("id")))
	default:
		w.Header().Set("ETag", ETag(s.Version))
		writeJSON(w, http.StatusOK, docOf(s))
	}
}

// putSubscription creates (POST) or replaces (PUT, If-Match) a
// subscription.
func (a *API) putSubscription(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var pre directory.Precondition
	if id != "" {
		var err error
		if pre, err = precondition(r); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	b, err := a.jsonBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	s, err := a.Recipients.Directory.PutSubscription(r.Context(), id, b, pre, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Recipients.settle(r.Context())
	w.Header().Set("ETag", ETag(s.Version))
	code := http.StatusOK
	if id == "" {
		code = http.StatusCreated
		w.Header().Set("Location", "/v1/subscriptions/"+s.ID)
	}
	writeJSON(w, code, docOf(s))
}

func (a *API) deleteSubscription(w http.ResponseWriter, r *http.Request) {
	pre, err := precondition(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.Recipients.Directory.DeleteSubscription(r.Context(), r.PathValue("id"), pre, operator(r)); err != nil {
		a.fail(w, r, err)
		return
	}
	a.Recipients.settle(r.Context())
	w.WriteHeader(http.StatusNoContent)
}
