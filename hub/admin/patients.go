package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/directory"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// A recipient's patient list (a care home's residents, a community team's
// caseload) is changed by the recipient itself, with its own key (its
// source key, its recipients[].apiKey, or a pull recipient's reader key),
// or by an operator. NHS numbers travel in bodies only, never in a path or
// a query, and are pseudonymised at once: the directory, its answers, its
// logs and its audit hold pseudonyms.

// listOwner authorises a request about a recipient's list: an operator, or
// the recipient itself. The actor the audit names is the operator's id or
// the recipient's ODS code.
func (a *API) listOwner(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		o, err := pathODS(r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		actor, err := a.owner(r, o)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, actor)))
	}
}

func (a *API) owner(r *http.Request, o string) (string, error) {
	p, err := a.Recipients.Keys.Principal(r)
	if err != nil {
		// Not one of the hub's keys: perhaps a pull recipient's.
		reader, rerr := a.Recipients.Readers.Organisation(r)
		if rerr != nil {
			return "", err
		}
		p = reader
	}
	switch {
	case strings.HasPrefix(p, auth.OperatorPrefix):
		return strings.TrimPrefix(p, auth.OperatorPrefix), nil
	case p == o || p == auth.RecipientPrincipal(o):
		return o, nil
	}
	return "", problem.New(problem.Forbidden, "a recipient's key changes that recipient's patient list only")
}

func (a *API) getPatients(w http.ResponseWriter, r *http.Request) {
	o := r.PathValue("ods")
	d := a.Recipients.Directory
	if _, ok, err := d.Get(r.Context(), o); err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
		return
	} else if !ok {
		a.fail(w, r, problem.New(problem.NotFound, "there is no recipient "+o))
		return
	}
	ms, err := d.Members(r.Context(), o)
	if err != nil {
		a.fail(w, r, problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err))
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Recipient string             `json:"recipient"`
		Count     int                `json:"count"`
		Patients  []directory.Member `json:"patients"`
	}{o, len(ms), ms})
}

// putPatients replaces the list with a body in the list file's format
// (text/plain: one NHS number per line, as people write them; blank lines
// and # comments ignored).
func (a *API) putPatients(w http.ResponseWriter, r *http.Request) {
	if !media.Is(r.Header.Get("Content-Type"), media.Text) {
		a.fail(w, r, problem.New(problem.MediaType, "Content-Type must be "+media.Text+": the patient list file's format, one NHS number per line"))
		return
	}
	b, err := a.body(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ns, err := patientlist.Parse(bytes.NewReader(b))
	if err != nil {
		var le *patientlist.LineError
		if !errors.As(err, &le) {
			a.fail(w, r, problem.New(problem.Malformed, "the list could not be read"))
			return
		}
		pe := &problem.Error{Kind: problem.Invalid, Message: le.Error()}
		for _, l := range le.Lines {
			pe.Violations = append(pe.Violations, problem.Violation{Pointer: fmt.Sprintf("/line/%d", l), Rule: "nhs-number", Detail: "not a valid NHS number"})
		}
		a.fail(w, r, pe)
		return
	}
	res, err := a.Recipients.Directory.ReplaceList(r.Context(), r.PathValue("ods"), ns, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// postPatients adds and removes patients: {"add": [...], "remove": [...]}.
func (a *API) postPatients(w http.ResponseWriter, r *http.Request) {
	b, err := a.jsonBody(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var body struct {
		Add    []json.RawMessage `json:"add"`
		Remove []json.RawMessage `json:"remove"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		a.fail(w, r, problem.Violated("", "patient-list-change", `the body is {"add": ["NHS number", ...], "remove": ["NHS number", ...]}`))
		return
	}
	var vs []problem.Violation
	numbers := func(member string, raw []json.RawMessage) []nhs.Number {
		out := make([]nhs.Number, 0, len(raw))
		for i, x := range raw {
			var s string
			if err := json.Unmarshal(x, &s); err != nil {
				vs = append(vs, problem.Violation{Pointer: fmt.Sprintf("/%s/%d", member, i), Rule: "nhs-number", Detail: "an NHS number is a string of ten digits"})
				continue
			}
			n, err := nhs.ParseLoose(s)
			if err != nil {
				rule, detail := "nhs-number", "not ten digits"
				var pe *problem.Error
				if errors.As(err, &pe) && len(pe.Violations) == 1 && pe.Violations[0].Rule == nhs.RuleCheckDigit {
					rule, detail = nhs.RuleCheckDigit, "the check digit is wrong"
				}
				vs = append(vs, problem.Violation{Pointer: fmt.Sprintf("/%s/%d", member, i), Rule: rule, Detail: detail})
				continue
			}
			out = append(out, n)
		}
		return out
	}
	add, remove := numbers("add", body.Add), numbers("remove", body.Remove)
	if len(vs) > 0 {
		a.fail(w, r, &problem.Error{Kind: problem.Invalid, Message: "not every NHS number is valid: nothing was changed", Violations: vs})
		return
	}
	if len(add)+len(remove) == 0 {
		a.fail(w, r, problem.Violated("", "patient-list-change", "add or remove at least one NHS number"))
		return
	}
	res, err := a.Recipients.Directory.ChangeList(r.Context(), r.PathValue("ods"), add, remove, operator(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
