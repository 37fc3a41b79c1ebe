package problem

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

// FHIRViolationSystem is the code system of the rule an OperationOutcome
// issue names (issue.details).
const FHIRViolationSystem = "https://carehub.dev/fhir/CodeSystem/violation-rule"

// FHIRRooted is implemented by an error whose violations point into a FHIR
// resource (their pointers are relative to it): FHIRRoot names the resource
// type, so that OperationOutcome can locate each violation by FHIRPath.
type FHIRRooted interface {
	FHIRRoot() string
}

type outcomeCoding struct {
	System string `json:"system"`
	Code   string `json:"code"`
}

type outcomeIssue struct {
	Severity string `json:"severity"`
	Code     string `json:"code"`
	Details  *struct {
		Coding []outcomeCoding `json:"coding"`
	} `json:"details,omitempty"`
	Diagnostics string   `json:"diagnostics,omitempty"`
	Expression  []string `json:"expression,omitempty"`
}

// OperationOutcome renders err as a FHIR R4 OperationOutcome (JSON), the
// answer of every FHIR endpoint: one issue per violation of the *Error in
// err's chain, with severity error, the code of its Kind (FHIRIssueCode),
// the violated rule as details (FHIRViolationSystem), its public detail as
// diagnostics (else the error's message) and, when an error in the chain is
// FHIRRooted, a FHIRPath expression locating the element
// ("Consent.provision.provision[1].actor[0]"; relative without a root).
// Only public text is used: an error that is not an *Error becomes
// "internal error". A nil err renders one informational issue.
func OperationOutcome(err error) []byte {
	out := struct {
		ResourceType string         `json:"resourceType"`
		Issue        []outcomeIssue `json:"issue"`
	}{ResourceType: "OperationOutcome"}
	var pe *Error
	switch {
	case err == nil:
		out.Issue = []outcomeIssue{{Severity: "information", Code: "informational", Diagnostics: "no problem found"}}
	case !errors.As(err, &pe):
		out.Issue = []outcomeIssue{{Severity: "error", Code: Internal.FHIRIssueCode(), Diagnostics: "internal error"}}
	default:
		root := ""
		var rooted FHIRRooted
		if errors.As(err, &rooted) {
			root = rooted.FHIRRoot()
		}
		code := pe.Kind.FHIRIssueCode()
		if pe.Kind == Other {
			code = Internal.FHIRIssueCode()
		}
		for _, v := range pe.Violations {
			is := outcomeIssue{Severity: "error", Code: code, Diagnostics: v.Detail}
			if is.Diagnostics == "" {
				is.Diagnostics = pe.Message
			}
			if v.Rule != "" {
				is.Details = &struct {
					Coding []outcomeCoding `json:"coding"`
				}{Coding: []outcomeCoding{{System: FHIRViolationSystem, Code: v.Rule}}}
			}
			if x := FHIRPath(root, v.Pointer); x != "" {
				is.Expression = []string{x}
			}
			out.Issue = append(out.Issue, is)
		}
		if len(out.Issue) == 0 {
			out.Issue = []outcomeIssue{{Severity: "error", Code: code, Diagnostics: pe.Message}}
		}
	}
	b, merr := json.Marshal(out)
	if merr != nil { // cannot happen: every field is a string
		return []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception"}]}`)
	}
	return b
}

// FHIRPath turns a JSON pointer into a FHIRPath expression rooted at the
// resource type root: "/entry/1/resource/identifier/0" becomes
// "Bundle.entry[1].resource.identifier[0]". With no root the path is
// relative ("directives[2].kind").
func FHIRPath(root, ptr string) string {
	var b strings.Builder
	b.WriteString(root)
	if ptr == "" {
		return b.String()
	}
	for _, seg := range strings.Split(ptr[1:], "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		if _, err := strconv.Atoi(seg); err == nil && seg != "" {
			b.WriteString("[" + seg + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(seg)
	}
	return b.String()
}
