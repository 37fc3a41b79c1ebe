package problem_test

import (
	"errors"
	"testing"

	"github.com/carehub/carehub/schemas/problem"
)

type rooted struct{ error }

func (rooted) FHIRRoot() string { return "Bundle" }
func (r rooted) Unwrap() error  { return r.error }

func TestOperationOutcome(t *testing.T) {
	invalid := &problem.Error{Kind: problem.Invalid, Message: "the bundle breaks 2 rules", Violations: []problem.Violation{
		{Pointer: "/entry/1/resource/identifier/0", Rule: "nhs-number-check-digit", Detail: "the NHS number's check digit is wrong"},
		{Pointer: "/type", Rule: "required"},
	}}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, `{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"no problem found"}]}`},
		{"a plain error hides its text", errors.New("dial tcp 10.0.0.1: patient 9990500002"),
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"internal error"}]}`},
		{"no violations", problem.New(problem.Unavailable, "retry later"),
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"retry later"}]}`},
		{"violations, relative paths", invalid,
			`{"resourceType":"OperationOutcome","issue":[` +
				`{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"nhs-number-check-digit"}]},"diagnostics":"the NHS number's check digit is wrong","expression":["entry[1].resource.identifier[0]"]},` +
				`{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"required"}]},"diagnostics":"the bundle breaks 2 rules","expression":["type"]}]}`},
		{"violations in a resource", rooted{invalid},
			`{"resourceType":"OperationOutcome","issue":[` +
				`{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"nhs-number-check-digit"}]},"diagnostics":"the NHS number's check digit is wrong","expression":["Bundle.entry[1].resource.identifier[0]"]},` +
				`{"severity":"error","code":"invalid","details":{"coding":[{"system":"https://carehub.dev/fhir/CodeSystem/violation-rule","code":"required"}]},"diagnostics":"the bundle breaks 2 rules","expression":["Bundle.type"]}]}`},
	}
	for _, tt := range tests {
		if got := string(problem.OperationOutcome(tt.err)); got != tt.want {
			t.Errorf("%s:\n\tgot  %s\n\twant %s", tt.name, got, tt.want)
		}
	}
}
