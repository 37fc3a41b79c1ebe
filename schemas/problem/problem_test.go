package problem_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"github.com/google/go-cmp/cmp"
)

// canary is a synthetic NHS number from the 999 test range. It stands for
// patient data and must never reach an error string or a response body.
const canary = "9991234567"

// kindTable is the whole mapping, one row per kind. TestKindTableCoversEveryKind
// fails when a kind is appended without a row here.
var kindTable = []struct {
	kind Kind
	name string
	http int
	hl7  string
	fhir string
}{
	{problem.Other, "other", 500, "AR", "exception"},
	{problem.Invalid, "invalid", 422, "AE", "invalid"},
	{problem.Unsupported, "unsupported", 422, "AR", "not-supported"},
	{problem.Unauthenticated, "unauthenticated", 401, "AR", "login"},
	{problem.Forbidden, "forbidden", 403, "AR", "forbidden"},
	{problem.TooLarge, "too-large", 413, "AE", "too-costly"},
	{problem.NotFound, "not-found", 404, "AR", "not-found"},
	{problem.Conflict, "conflict", 409, "AR", "conflict"},
	{problem.Unavailable, "unavailable", 503, "AR", "transient"},
	{problem.Internal, "internal", 500, "AR", "exception"},
	{problem.Malformed, "malformed", 400, "AE", "structure"},
	{problem.MediaType, "media-type", 415, "AR", "not-supported"},
	{problem.Gone, "gone", 410, "AR", "not-found"},
	{problem.Precondition, "precondition-failed", 412, "AR", "conflict"},
	{problem.PreconditionRequired, "precondition-required", 428, "AR", "conflict"},
}

// Kind is a local alias so the table reads compactly.
type Kind = problem.Kind

func TestKindTable(t *testing.T) {
	for _, tt := range kindTable {
		if got := tt.kind.String(); got != tt.name {
			t.Errorf("Kind(%d).String():\n\tgot  %q\n\twant %q", int(tt.kind), got, tt.name)
		}
		if got := tt.kind.HTTPStatus(); got != tt.http {
			t.Errorf("Kind(%q).HTTPStatus():\n\tgot  %v\n\twant %v", tt.name, got, tt.http)
		}
		if got := tt.kind.HL7Ack(); got != tt.hl7 {
			t.Errorf("Kind(%q).HL7Ack():\n\tgot  %v\n\twant %v", tt.name, got, tt.hl7)
		}
		if got := tt.kind.FHIRIssueCode(); got != tt.fhir {
			t.Errorf("Kind(%q).FHIRIssueCode():\n\tgot  %v\n\twant %v", tt.name, got, tt.fhir)
		}
	}
}

// TestKindTableCoversEveryKind counts the kinds the package knows (every kind
// after Other has its own name) and checks the table above has each one, so
// a kind appended to the package cannot go untested.
func TestKindTableCoversEveryKind(t *testing.T) {
	n := 1
	for problem.Kind(n).String() != "other" {
		n++
		if n > 1000 {
			t.Fatal("Kind.String never returns \"other\" for an unknown kind")
		}
	}
	if len(kindTable) != n {
		t.Errorf("kinds in the table:\n\tgot  %d\n\twant %d (the package has kinds 0..%d)", len(kindTable), n, n-1)
	}
	seen := map[string]bool{}
	for k := problem.Kind(1); int(k) < n; k++ {
		if seen[k.String()] {
			t.Errorf("Kind(%d).String() = %q: name used twice", int(k), k.String())
		}
		seen[k.String()] = true
	}
}

func TestUnknownKindIsInternal(t *testing.T) {
	for _, k := range []problem.Kind{-1, 99} {
		if got, want := k.String(), "other"; got != want {
			t.Errorf("Kind(%d).String():\n\tgot  %q\n\twant %q", int(k), got, want)
		}
		if got, want := k.HTTPStatus(), 500; got != want {
			t.Errorf("Kind(%d).HTTPStatus():\n\tgot  %v\n\twant %v", int(k), got, want)
		}
		if got, want := k.HL7Ack(), "AR"; got != want {
			t.Errorf("Kind(%d).HL7Ack():\n\tgot  %v\n\twant %v", int(k), got, want)
		}
		if got, want := k.FHIRIssueCode(), "exception"; got != want {
			t.Errorf("Kind(%d).FHIRIssueCode():\n\tgot  %v\n\twant %v", int(k), got, want)
		}
	}
}

func TestErrorNeverContainsCause(t *testing.T) {
	cause := fmt.Errorf("looking up patient %s: not registered", canary)
	err := problem.Wrap(problem.Invalid, "the patient is not registered here", cause)

	for _, s := range []string{
		err.Error(),
		fmt.Sprint(err),
		fmt.Sprintf("%v", err),
		fmt.Sprintf("%+v", err),
		fmt.Sprintf("%s", err),
		fmt.Errorf("accepting event: %w", err).Error(),
		problem.Public(err),
	} {
		if strings.Contains(s, canary) {
			t.Errorf("error text holds the cause's NHS number: %q", s)
		}
	}
	if got, want := err.Error(), "the patient is not registered here"; got != want {
		t.Errorf("Error():\n\tgot  %q\n\twant %q", got, want)
	}
	// The cause stays reachable for operators.
	if !errors.Is(err, cause) {
		t.Errorf("errors.Is(err, cause) = false: the private cause is lost")
	}
	if got := errors.Unwrap(err); got != cause {
		t.Errorf("Unwrap():\n\tgot  %v\n\twant %v", got, cause)
	}
}

func TestErrorWithViolations(t *testing.T) {
	v := func(p, r string) problem.Violation { return problem.Violation{Pointer: p, Rule: r, Detail: "d"} }
	tests := []struct {
		name string
		err  *problem.Error
		want string
	}{
		{"none", &problem.Error{Kind: problem.Invalid, Message: "bad"}, "bad"},
		{"one", problem.Violated("/data/patient/nhsNumber", "nhs-number-check-digit", "NHS number fails the modulus 11 check"),
			"NHS number fails the modulus 11 check; /data/patient/nhsNumber (nhs-number-check-digit)"},
		{"no rule", &problem.Error{Message: "bad", Violations: []problem.Violation{{Pointer: "/a"}}}, "bad; /a"},
		{"three", &problem.Error{Message: "bad", Violations: []problem.Violation{v("/a", "r1"), v("/b", "r2"), v("/c", "r3")}},
			"bad; /a (r1); /b (r2); /c (r3)"},
		{"four is cut", &problem.Error{Message: "bad", Violations: []problem.Violation{v("/a", "r1"), v("/b", "r2"), v("/c", "r3"), v("/d", "r4")}},
			"bad; /a (r1); /b (r2); /c (r3); ..."},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() [%s]:\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
	}
}

func TestConstructors(t *testing.T) {
	cause := errors.New("cause")
	tests := []struct {
		name string
		got  *problem.Error
		want *problem.Error
	}{
		{"New", problem.New(problem.Conflict, "m"), &problem.Error{Kind: problem.Conflict, Message: "m"}},
		{"Wrap", problem.Wrap(problem.Unavailable, "m", cause), &problem.Error{Kind: problem.Unavailable, Message: "m", Err: cause}},
		{"Violated", problem.Violated("/p", "r", "d"), &problem.Error{Kind: problem.Invalid, Message: "d",
			Violations: []problem.Violation{{Pointer: "/p", Rule: "r", Detail: "d"}}}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(*tt.want, *tt.got, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestKindOf(t *testing.T) {
	base := problem.New(problem.Forbidden, "no")
	tests := []struct {
		name string
		err  error
		want problem.Kind
	}{
		{"nil", nil, problem.Other},
		{"plain", errors.New("x"), problem.Other},
		{"direct", base, problem.Forbidden},
		{"wrapped once", fmt.Errorf("authorising: %w", base), problem.Forbidden},
		{"wrapped twice", fmt.Errorf("serving: %w", fmt.Errorf("authorising: %w", base)), problem.Forbidden},
		{"joined", errors.Join(errors.New("x"), base), problem.Forbidden},
		{"outermost wins", problem.Wrap(problem.Unavailable, "later", problem.New(problem.Invalid, "inner")), problem.Unavailable},
		{"%v does not wrap", fmt.Errorf("authorising: %v", base), problem.Other},
	}
	for _, tt := range tests {
		if got := problem.KindOf(tt.err); got != tt.want {
			t.Errorf("KindOf(%s):\n\tgot  %v\n\twant %v", tt.name, got, tt.want)
		}
	}
}

func TestPublic(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"problem", problem.New(problem.Invalid, "the event type is unknown"), "the event type is unknown"},
		{"wrapped problem", fmt.Errorf("accepting %s: %w", canary, problem.New(problem.Invalid, "bad")), "bad"},
		{"problem with cause", problem.Wrap(problem.Unavailable, "the broker is unavailable", errors.New("dial kafka-1: "+canary)), "the broker is unavailable"},
		{"plain error holding a value", fmt.Errorf("patient %s not found", canary), "internal error"},
		{"url-like", errors.New(`Post "https://gp.example/events?nhs=` + canary + `": EOF`), "internal error"},
	}
	for _, tt := range tests {
		got := problem.Public(tt.err)
		if got != tt.want {
			t.Errorf("Public(%s):\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
		if strings.Contains(got, canary) {
			t.Errorf("Public(%s) = %q holds the canary", tt.name, got)
		}
	}
}

func TestDetailsOf(t *testing.T) {
	viol := []problem.Violation{{Pointer: "/data/patient/nhsNumber", Rule: "nhs-number-check-digit", Detail: "fails modulus 11"}}
	tests := []struct {
		name string
		err  error
		want problem.Details
	}{
		{"invalid with violations", &problem.Error{Kind: problem.Invalid, Message: "fails modulus 11", Violations: viol, Err: errors.New(canary)},
			problem.Details{Type: problem.TypeBase + "invalid", Title: "Unprocessable Entity", Status: 422, Detail: "fails modulus 11", Violations: viol}},
		{"wrapped", fmt.Errorf("ingesting: %w", problem.New(problem.TooLarge, "too big")),
			problem.Details{Type: problem.TypeBase + "too-large", Title: "Request Entity Too Large", Status: 413, Detail: "too big"}},
		{"other is internal", problem.New(problem.Other, "odd"),
			problem.Details{Type: problem.TypeBase + "internal", Title: "Internal Server Error", Status: 500, Detail: "odd"}},
		{"plain error", fmt.Errorf("patient %s exploded", canary),
			problem.Details{Type: problem.TypeBase + "internal", Title: "Internal Server Error", Status: 500, Detail: "internal error"}},
	}
	for _, tt := range tests {
		got := problem.DetailsOf(tt.err)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("DetailsOf(%s) (-want +got):\n%s", tt.name, diff)
		}
	}
}

// TestWriteEveryKind checks the RFC 9457 answer for every kind.
func TestWriteEveryKind(t *testing.T) {
	for _, tt := range kindTable {
		rec := httptest.NewRecorder()
		problemhttp.Write(rec, problem.Wrap(tt.kind, "public text", fmt.Errorf("cause with %s", canary)))
		res := rec.Result()
		body, _ := io.ReadAll(res.Body)

		if got, want := res.StatusCode, tt.http; got != want {
			t.Errorf("Write(%s) status:\n\tgot  %v\n\twant %v", tt.name, got, want)
		}
		if got, want := res.Header.Get("Content-Type"), "application/problem+json"; got != want {
			t.Errorf("Write(%s) Content-Type:\n\tgot  %q\n\twant %q", tt.name, got, want)
		}
		wantRetry := ""
		if tt.http == http.StatusServiceUnavailable {
			wantRetry = "5"
		}
		if got := res.Header.Get("Retry-After"); got != wantRetry {
			t.Errorf("Write(%s) Retry-After:\n\tgot  %q\n\twant %q", tt.name, got, wantRetry)
		}
		if strings.Contains(string(body), canary) {
			t.Errorf("Write(%s) body holds the cause's canary: %s", tt.name, body)
		}

		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("Write(%s) body is not JSON: %v\n%s", tt.name, err, body)
		}
		typeName := tt.name
		if tt.kind == problem.Other {
			typeName = "internal"
		}
		want := map[string]any{
			"type":   problem.TypeBase + typeName,
			"title":  http.StatusText(tt.http),
			"status": float64(tt.http),
			"detail": "public text",
		}
		if diff := cmp.Diff(want, m); diff != "" {
			t.Errorf("Write(%s) body (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestWriteViolations(t *testing.T) {
	rec := httptest.NewRecorder()
	problemhttp.Write(rec, problem.Violated("/data/patient/nhsNumber", "nhs-number-check-digit", "NHS number fails the modulus 11 check"))
	var got problem.Details
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := problem.Details{
		Type:   problem.TypeBase + "invalid",
		Title:  "Unprocessable Entity",
		Status: 422,
		Detail: "NHS number fails the modulus 11 check",
		Violations: []problem.Violation{{Pointer: "/data/patient/nhsNumber", Rule: "nhs-number-check-digit",
			Detail: "NHS number fails the modulus 11 check"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Write(Violated) (-want +got):\n%s", diff)
	}
	// RFC 9457 members only, plus our "violations" extension.
	var m map[string]json.RawMessage
	_ = json.Unmarshal(rec.Body.Bytes(), &m)
	for k := range m {
		switch k {
		case "type", "title", "status", "detail", "violations":
		default:
			t.Errorf("unexpected member %q in %s", k, rec.Body.Bytes())
		}
	}
}
