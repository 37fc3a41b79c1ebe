// Package admin serves the hub's operator API: patients' consent
// directives, decision explanations, disclosure reports, dead letters, held
// messages, backfills, and recipients with their subscriptions, pauses and
// patient lists.
// Every route needs the admin key or an operator's key (admin.operators),
// and every look at a patient's record and every change is audited with
// the operator's id (audit.KindAccess, audit.KindConsentChange) before it
// is answered: a read that cannot be audited is not answered.
//
//	PUT    /v1/patients/{nhsNumber}/consent       record the patient's directives (replaces the set; If-Match)
//	GET    /v1/patients/{nhsNumber}/consent       read them (ETag)
//	DELETE /v1/patients/{nhsNumber}/consent       withdraw them all (If-Match)
//	POST   /v1/decisions/explain                  decide an event for every candidate, publish nothing
//	GET    /v1/patients/{nhsNumber}/disclosures   who received what about the patient (every merged number), what was
//	                                              withheld and why, consent changes, and who looked
//	GET    /v1/dlq                                dead letters, filtered and paged, without their copies (dlq.go)
//	POST   /v1/dlq/{id}/replay                    decide again as of now; if permitted, back to the outbox
//	POST   /v1/dlq/replay?recipient=ODS           the same for all of one recipient's, in order
//	DELETE /v1/dlq/{id}                           resolve without delivery, with a reason
//	GET    /v1/held                               messages acknowledged but not shared (held.go)
//	GET    /v1/held/counts                        how many, by reason and by source
//	POST   /v1/held/{id}/release                  take the original in again, as if received now
//	DELETE /v1/held/{id}                          resolve without sharing, with a reason
//	POST   /v1/backfills                          a backfill of one recipient since a date (backfill.go)
//	GET    /v1/backfills[/{id}]                   backfills and how far each got
//	POST   /v1/backfills/{id}/run                 run (or resume) it, streaming progress
//	/v1/recipients, /v1/subscriptions            recipients, subscriptions, pauses and patient lists (recipients.go)
//
// Consent bodies are FHIR R4 Consent resources (Content-Type
// application/fhir+json) or the simple JSON form (application/json, a
// consent.PatientConsent). GET answers in the form the Accept header asks
// for, simple JSON by default, with the ETag "v<version>"; a PUT or DELETE
// of a patient who has directives must send it back in If-Match (or the
// version in the simple form's body): a stale one gets 412, none 428.
// Errors about FHIR requests, or requests that accept FHIR, are
// OperationOutcome resources; the others are RFC 9457 problem documents.
//
// The NHS number appears in the path because that is how an operator names
// a patient; it is pseudonymised at once and never logged.
package admin

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/consentstore"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"go.uber.org/zap"
)

// Store is the consent directive store the API writes and reads.
type Store interface {
	Get(ctx context.Context, patient string) (consent.PatientConsent, bool, error)
	Put(ctx context.Context, patient string, ch consentstore.Change) (consent.PatientConsent, error)
}

// Disclosures returns the audit records about the given numbers.
type Disclosures interface {
	For(ctx context.Context, patients ...string) ([]audit.Record, error)
}

// Family finds a patient's merged numbers (patientindex.Index).
type Family interface {
	Sync(ctx context.Context) error
	Family(key string) []string
}

// Authorizer says which operator a request comes from.
type Authorizer interface {
	Operator(r *http.Request) (string, error)
}

// DeadLetters reads the dead-letter topic.
type DeadLetters struct {
	Brokers []string
}

// API is the admin API.
type API struct {
	Auth        Authorizer
	Store       Store
	Pseudo      *nhs.Pseudonymiser
	Validator   *event.Validator
	Router      *route.Router
	Disclosures Disclosures
	Held        HeldRecords
	// Ingest takes released held messages in; Releasers are the sources
	// that can read a held original again (connector.Releaser).
	Ingest    connector.Ingest
	Releasers []connector.Releaser
	// Backfills, when set, serves /v1/backfills (backfill.go).
	Backfills   Backfills
	Family      Family
	DeadLetters *DeadLetters
	// Recipients, when set, serves recipients, subscriptions and patient
	// lists (recipients.go).
	Recipients *Recipients
	// Publisher writes audit records, replays and resolutions.
	Publisher message.Publisher
	Log       *zap.Logger
	MaxBody   int64
	now       func() time.Time

	// dlqMu serialises this process's changes to dead letters (a replay
	// and a resolution of the same one); heldMu those to held messages.
	dlqMu, heldMu sync.Mutex
}

// Register adds the routes to mux.
func (a *API) Register(mux *http.ServeMux) error {
	if a.Auth == nil || a.Store == nil || a.Pseudo == nil || a.Validator == nil || a.Router == nil || a.Disclosures == nil ||
		a.Family == nil || a.DeadLetters == nil || a.Publisher == nil || a.Log == nil {
		return errors.New("admin: every API field is required")
	}
	if a.MaxBody == 0 {
		a.MaxBody = 1 << 20
	}
	if a.now == nil {
		a.now = time.Now
	}
	mux.HandleFunc("PUT /v1/patients/{nhsNumber}/consent", a.admin(a.putConsent))
	mux.HandleFunc("GET /v1/patients/{nhsNumber}/consent", a.admin(a.getConsent))
	mux.HandleFunc("DELETE /v1/patients/{nhsNumber}/consent", a.admin(a.deleteConsent))
	mux.HandleFunc("POST /v1/decisions/explain", a.admin(a.explain))
	mux.HandleFunc("GET /v1/patients/{nhsNumber}/disclosures", a.admin(a.disclosures))
	a.registerDLQ(mux)
	a.registerBackfills(mux)
	if err := a.registerRecipients(mux); err != nil {
		return err
	}
	return a.registerHeld(mux)
}

// operatorKey is the context key of the request's operator id.
type operatorKey struct{}

func operator(r *http.Request) string { s, _ := r.Context().Value(operatorKey{}).(string); return s }

func (a *API) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		op, err := a.Auth.Operator(r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, op)))
	}
}

// access audits a look at a patient's record, before it is answered.
func (a *API) access(r *http.Request, patient, action, eventID string) error {
	return a.accessEvent(r, patient, action, "", eventID)
}

// ETag is the entity tag of a patient's directives at version v.
func ETag(v int64) string { return `"v` + strconv.FormatInt(v, 10) + `"` }

// ifMatch reads If-Match: "*", or one entity tag "v<version>" (weak or
// strong). ok is false when the header is absent.
func ifMatch(r *http.Request) (version *int64, any, ok bool, err error) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" {
		return nil, false, false, nil
	}
	if h == "*" {
		return nil, true, true, nil
	}
	tag := strings.TrimPrefix(h, "W/")
	if n, e := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(tag, `"v`), `"`), 10, 64); e == nil && strings.HasPrefix(tag, `"v`) && strings.HasSuffix(tag, `"`) && n >= 0 {
		return &n, false, true, nil
	}
	// A tag this hub never issued matches no version.
	return nil, false, true, problem.New(problem.Precondition, "If-Match names no version of the patient's directives (send the ETag a GET answered)")
}

func wantsFHIR(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == media.FHIR || strings.Contains(r.Header.Get("Accept"), media.FHIR)
}

// fail answers with an OperationOutcome or a problem document.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	if problem.KindOf(err) == problem.Other || problem.KindOf(err) == problem.Internal {
		a.Log.Error("admin request failed", zap.String("route", r.Pattern), logging.Err(err))
	}
	if !wantsFHIR(r) {
		problemhttp.Write(w, err)
		return
	}
	status := problem.DetailsOf(err).Status
	w.Header().Set("Content-Type", media.FHIR)
	w.WriteHeader(status)
	_, _ = w.Write(problem.OperationOutcome(err))
}

func (a *API) patient(r *http.Request) (nhs.Number, string, error) {
	n, err := nhs.Parse(r.PathValue("nhsNumber"))
	if err != nil {
		var pe *problem.Error
		if errors.As(err, &pe) {
			// Point at the path segment, not a body member.
			out := *pe
			out.Violations = nil
			for _, v := range pe.Violations {
				v.Pointer = "/path/nhsNumber"
				out.Violations = append(out.Violations, v)
			}
			return nhs.Number{}, "", &out
		}
		return nhs.Number{}, "", problem.Violated("/path/nhsNumber", "nhs-number", "the path does not hold a valid NHS number")
	}
	return n, a.Pseudo.Pseudonym(n), nil
}

// bodyType refuses, before a handler looks at anything else, a body its
// route does not take: problem.MediaType (415 with a problem document).
// takes is the media type the route's optional body must have, or "" for a
// route that takes no body (its parameters are in its path and query). An
// empty body passes.
func bodyType(r *http.Request, takes string) error {
	if r.ContentLength == 0 {
		return nil
	}
	if takes == "" {
		return problem.New(problem.MediaType, "this endpoint takes no body: its parameters are in the path and the query")
	}
	if !media.Is(r.Header.Get("Content-Type"), takes) {
		return problem.New(problem.MediaType, "Content-Type must be "+takes)
	}
	return nil
}

func (a *API) body(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return problemhttp.ReadBody(w, r, a.MaxBody)
}

func (a *API) putConsent(w http.ResponseWriter, r *http.Request) {
	n, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ver, anyVer, given, err := ifMatch(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	b, err := a.body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var pc consent.PatientConsent
	switch mt {
	case media.FHIR:
		ds, err := consent.ConsentFromFHIR(b, n)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		pc.Directives = ds
	case media.JSON:
		if pc, err = consent.ParsePatientConsent(b); err != nil {
			a.fail(w, r, err)
			return
		}
		// The version in the body is the version the change was made
		// against, when If-Match does not say.
		if !given && pc.Version > 0 {
			v := pc.Version
			ver = &v
		}
	default:
		a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.FHIR+" or "+media.JSON))
		return
	}
	stored, err := a.Store.Put(r.Context(), key, consentstore.Change{Directives: pc.Directives, IfVersion: ver, IfExists: anyVer,
		Actor: operator(r), Action: audit.ActionConsentChange})
	if err != nil {
		if problem.KindOf(err) == problem.Other {
			err = problem.Wrap(problem.Unavailable, "the directives could not be made durable; retry", err)
		}
		a.fail(w, r, err)
		return
	}
	a.Log.Info("consent recorded", zap.Int("directives", len(stored.Directives)), zap.Int64("version", stored.Version),
		zap.String("operator", operator(r)))
	a.writeConsent(w, r, n, stored)
}

func (a *API) getConsent(w http.ResponseWriter, r *http.Request) {
	n, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pc, _, err := a.Store.Get(r.Context(), key)
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the directives could not be read; retry", err))
		return
	}
	if err := a.access(r, key, audit.ActionConsentRead, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	if pc.Directives == nil {
		pc.Directives = []consent.Directive{}
	}
	a.writeConsent(w, r, n, pc)
}

func (a *API) writeConsent(w http.ResponseWriter, r *http.Request, n nhs.Number, pc consent.PatientConsent) {
	w.Header().Set("ETag", ETag(pc.Version))
	if strings.Contains(r.Header.Get("Accept"), media.FHIR) {
		b, err := consent.ToFHIR(pc.Directives, n)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		w.Header().Set("Content-Type", media.FHIR)
		_, _ = w.Write(b)
		return
	}
	writeJSON(w, http.StatusOK, pc)
}

func (a *API) deleteConsent(w http.ResponseWriter, r *http.Request) {
	_, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ver, anyVer, _, err := ifMatch(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := a.Store.Put(r.Context(), key, consentstore.Change{Directives: []consent.Directive{}, IfVersion: ver, IfExists: anyVer,
		Actor: operator(r), Action: audit.ActionConsentWithdraw}); err != nil {
		if problem.KindOf(err) == problem.Other {
			err = problem.Wrap(problem.Unavailable, "the withdrawal could not be made durable; retry", err)
		}
		a.fail(w, r, err)
		return
	}
	a.Log.Info("consent withdrawn", zap.String("operator", operator(r)))
	w.WriteHeader(http.StatusNoContent)
}

// Explanation is one candidate's decision.
type Explanation struct {
	Recipient    string   `json:"recipient"`
	Role         string   `json:"role"`
	Subscription string   `json:"subscription"`
	Basis        string   `json:"basis"`
	Effect       string   `json:"effect"`
	Rule         string   `json:"rule"`
	Directive    string   `json:"directive,omitempty"`
	Obligations  []string `json:"obligations,omitempty"`
	Delivered    bool     `json:"wouldDeliver"`
	// Form is the form of the copy that would be delivered.
	Form string `json:"form,omitempty"`
	// FollowUp: the candidate received an earlier event on the encounter.
	FollowUp bool `json:"earlierRecipient,omitempty"`
	// Notice is the kind of notice the hub would issue instead of a copy.
	Notice string `json:"notice,omitempty"`
}

func (a *API) explain(w http.ResponseWriter, r *http.Request) {
	// The body is an event, as published: structured mode. Regression
	// (issue 14): explain ignored Content-Type.
	if !media.Is(r.Header.Get("Content-Type"), media.CloudEvent) {
		a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.CloudEvent))
		return
	}
	b, err := a.body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ev, err := a.Validator.Parse(b)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	key := a.Pseudo.Pseudonym(ev.Patient.NHSNumber)
	dec, err := a.Router.Decide(r.Context(), ev, key)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.access(r, key, audit.ActionExplain, ev.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	out := struct {
		EventID           string                   `json:"eventId"`
		EventType         string                   `json:"eventType"`
		DirectiveVersions []audit.DirectiveVersion `json:"directiveVersions,omitempty"`
		Candidates        []Explanation            `json:"candidates"`
	}{EventID: ev.ID, EventType: ev.Type, DirectiveVersions: dec.Versions, Candidates: []Explanation{}}
	for _, v := range dec.Verdicts {
		e := Explanation{
			Recipient: v.Subscription.Recipient.ODS, Role: string(v.Subscription.Recipient.Role),
			Subscription: v.Subscription.ID, Basis: string(v.Subscription.Basis),
			Effect: string(v.Decision.Effect), Rule: v.Decision.Rule, Directive: v.Decision.DirectiveID,
			Delivered: v.Copy, FollowUp: v.FollowUp, Notice: v.Notice,
		}
		if v.Copy {
			e.Form = string(v.Form)
		}
		for _, o := range v.Decision.Obligations {
			e.Obligations = append(e.Obligations, string(o))
		}
		out.Candidates = append(out.Candidates, e)
	}
	writeJSON(w, http.StatusOK, out)
}

// disclosures answers everything the audit holds about the patient: every
// number merged with the patient's included.
func (a *API) disclosures(w http.ResponseWriter, r *http.Request) {
	_, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.Family.Sync(r.Context()); err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the patient index could not be read; retry", err))
		return
	}
	family := a.Family.Family(key)
	if err := a.access(r, key, audit.ActionDisclosuresRead, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	recs, err := a.Disclosures.For(r.Context(), family...)
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the audit trail could not be read; retry", err))
		return
	}
	h := Histories(recs)
	// A consent-change record whose change never took effect (written
	// before the change, which then failed) is marked, not shown as a
	// change in force (consentstore.Applied).
	var getErr error
	applied := consentstore.Applied(recs, func(p string) (consent.PatientConsent, bool) {
		pc, ok, err := a.Store.Get(r.Context(), p)
		if err != nil && getErr == nil {
			getErr = err
		}
		return pc, ok
	})
	if getErr != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the consent store could not be read; retry", getErr))
		return
	}
	// So is a list-change record whose change never took effect.
	if a.Recipients != nil && a.Recipients.Directory != nil {
		listed, err := a.Recipients.Directory.Applied(r.Context(), recs)
		if err != nil {
			a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
			return
		}
		for i := range applied {
			applied[i] = applied[i] && listed[i]
		}
	}
	markNotApplied(&h, recs, applied)
	writeJSON(w, http.StatusOK, struct {
		// Numbers are the pseudonyms of the patient's numbers: the one
		// asked about (or the one it was merged into) first.
		Numbers []string `json:"numbers"`
		History
	}{family, h})
}
