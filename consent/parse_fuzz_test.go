package consent_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/problem"
)

var digitRun = regexp.MustCompile(`[0-9]{6,}`)

// FuzzParsePatientConsent: the admin API's consent body, whatever it holds,
// is either a valid PatientConsent that survives a round trip, or a
// problem of a documented kind whose texts (the error, the public message
// and the FHIR OperationOutcome) repeat no long run of digits from the
// input (an NHS number in a body must not come back in an answer or a log).
func FuzzParsePatientConsent(f *testing.F) {
	for _, s := range []string{
		`{"version":3,"updated":"2026-03-01T10:00:00Z","directives":[{"id":"d1","kind":"deny-organisation","organisation":"RRK","recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"}]}`,
		`{"directives":[{"id":"d2","kind":"permit-organisation","organisation":"VN4K1","categories":["mental-health"],"period":{"start":"2026-01-01T00:00:00Z","end":"2026-12-31T23:59:59Z"},"recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"}]}`,
		`{"directives":[{"id":"9990500002","kind":"confidential","recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"}]}`,
		`{"directives":[{"categories":"9990500002"}]}`,
		`{"version":1,"9990500002":1,"directives":[]}`,
		`{"directives":[]} {}`,
		`[[[[[[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := consent.ParsePatientConsent(raw)
		if err != nil {
			switch k := problem.KindOf(err); k {
			case problem.Malformed, problem.Invalid, problem.TooLarge:
			default:
				t.Fatalf("kind %v: %v", k, err)
			}
			texts := err.Error() + problem.Public(err) + string(problem.OperationOutcome(err))
			for _, run := range digitRun.FindAllString(string(raw), -1) {
				if strings.Contains(texts, run) {
					t.Fatalf("the error repeats %q from the input: %s", run, texts)
				}
			}
			return
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := consent.ParsePatientConsent(b)
		if err != nil {
			t.Fatalf("a parsed consent does not parse again: %v\n%s", err, b)
		}
		again, _ := json.Marshal(back)
		if string(again) != string(b) {
			t.Fatalf("round trip:\n\t%s\n\t%s", b, again)
		}
	})
}
