// Package admin serves the hub's operator API: patients' consent
// directives, decision explanations and disclosure reports. Every route
// needs the admin key.
//
//	PUT    /v1/patients/{nhsNumber}/consent       record the patient's directives (replaces the set)
//	GET    /v1/patients/{nhsNumber}/consent       read them
//	DELETE /v1/patients/{nhsNumber}/consent       withdraw them all
//	POST   /v1/decisions/explain                  decide an event for every candidate, publish nothing
//	GET    /v1/patients/{nhsNumber}/disclosures   who received what about the patient, and what was withheld
//	GET    /v1/held                               messages acknowledged but not shared (held.go)
//	GET    /v1/held/counts                        how many, by reason and by source
//
// Consent bodies are FHIR R4 Consent resources (Content-Type
// application/fhir+json) or the simple JSON form (application/json, a
// consent.PatientConsent). GET answers in the form the Accept header asks
// for, simple JSON by default. Errors about FHIR requests, or requests that
// accept FHIR, are OperationOutcome resources; the others are RFC 9457
// problem documents.
//
// The NHS number appears in the path because that is how an operator names
// a patient; it is pseudonymised at once and never logged.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"

	"github.com/carehub/carehub/consent"
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
	Put(ctx context.Context, patient string, pc consent.PatientConsent) (consent.PatientConsent, error)
	Delete(ctx context.Context, patient string) error
}

// Disclosures lists the audit records about one patient.
type Disclosures interface {
	For(ctx context.Context, patient string) ([]Disclosure, error)
}

// Authorizer checks the admin key.
type Authorizer interface {
	RequireAdmin(r *http.Request) error
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
	Log         *zap.Logger
	MaxBody     int64
}

// Register adds the routes to mux.
func (a *API) Register(mux *http.ServeMux) error {
	if a.Auth == nil || a.Store == nil || a.Pseudo == nil || a.Validator == nil || a.Router == nil || a.Disclosures == nil || a.Log == nil {
		return errors.New("admin: every API field is required")
	}
	if a.MaxBody == 0 {
		a.MaxBody = 1 << 20
	}
	mux.HandleFunc("PUT /v1/patients/{nhsNumber}/consent", a.admin(a.putConsent))
	mux.HandleFunc("GET /v1/patients/{nhsNumber}/consent", a.admin(a.getConsent))
	mux.HandleFunc("DELETE /v1/patients/{nhsNumber}/consent", a.admin(a.deleteConsent))
	mux.HandleFunc("POST /v1/decisions/explain", a.admin(a.explain))
	mux.HandleFunc("GET /v1/patients/{nhsNumber}/disclosures", a.admin(a.disclosures))
	return a.registerHeld(mux)
}

func (a *API) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.Auth.RequireAdmin(r); err != nil {
			a.fail(w, r, err)
			return
		}
		h(w, r)
	}
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
	_, _ = w.Write(consent.OperationOutcome(err))
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

func (a *API) body(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return problemhttp.ReadBody(w, r, a.MaxBody)
}

func (a *API) putConsent(w http.ResponseWriter, r *http.Request) {
	n, key, err := a.patient(r)
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
	default:
		a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.FHIR+" or "+media.JSON))
		return
	}
	stored, err := a.Store.Put(r.Context(), key, pc)
	if err != nil {
		if problem.KindOf(err) == problem.Other {
			err = problem.Wrap(problem.Unavailable, "the directives could not be made durable; retry", err)
		}
		a.fail(w, r, err)
		return
	}
	a.Log.Info("consent recorded", zap.Int("directives", len(stored.Directives)), zap.Int64("version", stored.Version))
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
	if pc.Directives == nil {
		pc.Directives = []consent.Directive{}
	}
	a.writeConsent(w, r, n, pc)
}

func (a *API) writeConsent(w http.ResponseWriter, r *http.Request, n nhs.Number, pc consent.PatientConsent) {
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
	w.Header().Set("Content-Type", media.JSON)
	_ = json.NewEncoder(w).Encode(pc)
}

func (a *API) deleteConsent(w http.ResponseWriter, r *http.Request) {
	_, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.Store.Delete(r.Context(), key); err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the withdrawal could not be made durable; retry", err))
		return
	}
	a.Log.Info("consent withdrawn")
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
	verdicts, err := a.Router.Decide(r.Context(), ev, a.Pseudo.Pseudonym(ev.Patient.NHSNumber))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := struct {
		EventID    string        `json:"eventId"`
		EventType  string        `json:"eventType"`
		Candidates []Explanation `json:"candidates"`
	}{EventID: ev.ID, EventType: ev.Type, Candidates: []Explanation{}}
	for _, v := range verdicts {
		e := Explanation{
			Recipient: v.Subscription.Recipient.ODS, Role: string(v.Subscription.Recipient.Role),
			Subscription: v.Subscription.ID, Basis: string(v.Subscription.Basis),
			Effect: string(v.Decision.Effect), Rule: v.Decision.Rule, Directive: v.Decision.DirectiveID,
			Delivered: v.Copy,
		}
		for _, o := range v.Decision.Obligations {
			e.Obligations = append(e.Obligations, string(o))
		}
		out.Candidates = append(out.Candidates, e)
	}
	w.Header().Set("Content-Type", media.JSON)
	_ = json.NewEncoder(w).Encode(out)
}

func (a *API) disclosures(w http.ResponseWriter, r *http.Request) {
	_, key, err := a.patient(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ds, err := a.Disclosures.For(r.Context(), key)
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the audit trail could not be read; retry", err))
		return
	}
	if ds == nil {
		ds = []Disclosure{}
	}
	w.Header().Set("Content-Type", media.JSON)
	_ = json.NewEncoder(w).Encode(struct {
		Disclosures []Disclosure `json:"disclosures"`
	}{ds})
}
