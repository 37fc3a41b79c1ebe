package problem_test

import (
	"errors"
	"fmt"
	"net/http/httptest"

	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
)

// One error, three protocols: the kind decides the HTTP status, the HL7 ACK
// code and the FHIR issue code, and Error() shows only the public text.
func Example() {
	cause := errors.New("NHS number 9991234567 fails the check") // private: never shown
	err := fmt.Errorf("accepting event: %w",
		&problem.Error{
			Kind:       problem.Invalid,
			Message:    "NHS number fails the modulus 11 check",
			Violations: []problem.Violation{{Pointer: "/data/patient/nhsNumber", Rule: "nhs-number-check-digit"}},
			Err:        cause,
		})

	k := problem.KindOf(err)
	fmt.Println(k, k.HTTPStatus(), k.HL7Ack(), k.FHIRIssueCode())
	fmt.Println(problem.Public(err))
	fmt.Println(problem.Public(errors.New("dial tcp: patient 9991234567")))

	rec := httptest.NewRecorder()
	problemhttp.Write(rec, err)
	fmt.Println(rec.Code, rec.Header().Get("Content-Type"))
	fmt.Print(rec.Body.String())
	// Output:
	// invalid 422 AE invalid
	// NHS number fails the modulus 11 check; /data/patient/nhsNumber (nhs-number-check-digit)
	// internal error
	// 422 application/problem+json
	// {"type":"https://carehub.dev/problems/invalid","title":"Unprocessable Entity","status":422,"detail":"NHS number fails the modulus 11 check","violations":[{"pointer":"/data/patient/nhsNumber","rule":"nhs-number-check-digit"}]}
}
