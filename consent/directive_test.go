package consent_test

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
)

func violationsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var pe *problem.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *problem.Error", err)
	}
	var out []string
	for _, v := range pe.Violations {
		out = append(out, v.Pointer+" "+v.Rule)
	}
	return out
}

func TestDirectiveValidate(t *testing.T) {
	base := func(k consent.Kind) consent.Directive {
		return consent.Directive{ID: "d-1.a", Kind: k, Recorded: t0, RecordedBy: "admin@X26"}
	}
	with := func(d consent.Directive, f func(*consent.Directive)) consent.Directive { f(&d); return d }
	tests := []struct {
		name string
		d    consent.Directive
		want []string // "pointer rule"; nil: valid
	}{
		{"deny-organisation", with(base(consent.KindDenyOrganisation), func(d *consent.Directive) { d.Organisation = "RRK" }), nil},
		{"deny-role", with(base(consent.KindDenyRole), func(d *consent.Directive) { d.Role = socR }), nil},
		{"notification-only for an organisation", with(base(consent.KindNotificationOnly), func(d *consent.Directive) { d.Organisation = "RRK" }), nil},
		{"notification-only for a role", with(base(consent.KindNotificationOnly), func(d *consent.Directive) { d.Role = hosR }), nil},
		{"permit-organisation", with(base(consent.KindPermitOrganisation), func(d *consent.Directive) { d.Organisation = "RRK" }), nil},
		{"permit-organisation with categories", with(base(consent.KindPermitOrganisation), func(d *consent.Directive) {
			d.Organisation = "RRK"
			d.Categories = []string{mh, "hiv"}
		}), nil},
		{"confidential with a period of one instant", with(base(consent.KindConfidential), func(d *consent.Directive) {
			d.Period = consent.Period{Start: tp(t0), End: tp(t0)}
		}), nil},

		{"empty", consent.Directive{}, []string{"/id required", "/recorded required", "/recordedBy required", "/kind required"}},
		{"unknown kind", with(base("deny-everyone"), func(*consent.Directive) {}), []string{"/kind directive-kind"}},
		{"id with a space", with(base(consent.KindConfidential), func(d *consent.Directive) { d.ID = "a b" }), []string{"/id directive-id-format"}},
		{"id too long", with(base(consent.KindConfidential), func(d *consent.Directive) { d.ID = strings.Repeat("a", 65) }), []string{"/id directive-id-format"}},
		{"id shaped like an NHS number", with(base(consent.KindConfidential), func(d *consent.Directive) { d.ID = "9434765919" }), []string{"/id looks-like-nhs-number"}},
		{"recordedBy shaped like an NHS number", with(base(consent.KindConfidential), func(d *consent.Directive) { d.RecordedBy = "9434765919" }), []string{"/recordedBy looks-like-nhs-number"}},
		{"recordedBy with a slash", with(base(consent.KindConfidential), func(d *consent.Directive) { d.RecordedBy = "a/b" }), []string{"/recordedBy recorded-by-format"}},
		{"deny-organisation without organisation", base(consent.KindDenyOrganisation), []string{"/organisation required"}},
		{"deny-organisation lower case", with(base(consent.KindDenyOrganisation), func(d *consent.Directive) { d.Organisation = "rrk" }), []string{"/organisation ods-code"}},
		{"deny-organisation with a role and categories", with(base(consent.KindDenyOrganisation), func(d *consent.Directive) {
			d.Organisation = "RRK"
			d.Role = hosR
			d.Categories = []string{mh}
		}), []string{"/role not-allowed-for-kind", "/categories not-allowed-for-kind"}},
		{"deny-role without role", base(consent.KindDenyRole), []string{"/role required"}},
		{"deny-role unknown role", with(base(consent.KindDenyRole), func(d *consent.Directive) { d.Role = "pharmacy" }), []string{"/role role"}},
		{"deny-role with an organisation", with(base(consent.KindDenyRole), func(d *consent.Directive) { d.Role = hosR; d.Organisation = "RRK" }), []string{"/organisation not-allowed-for-kind"}},
		{"notification-only naming nothing", base(consent.KindNotificationOnly), []string{"/organisation organisation-or-role"}},
		{"notification-only naming both", with(base(consent.KindNotificationOnly), func(d *consent.Directive) { d.Role = hosR; d.Organisation = "RRK" }), []string{"/role organisation-or-role"}},
		{"notification-only with categories", with(base(consent.KindNotificationOnly), func(d *consent.Directive) { d.Role = hosR; d.Categories = []string{mh} }), []string{"/categories not-allowed-for-kind"}},
		{"permit-organisation with bad and repeated categories", with(base(consent.KindPermitOrganisation), func(d *consent.Directive) {
			d.Organisation = "RRK"
			d.Categories = []string{mh, "Mental Health", mh, "a--b", "-a", ""}
		}), []string{"/categories/1 category-code", "/categories/2 duplicate", "/categories/3 category-code", "/categories/4 category-code", "/categories/5 category-code"}},
		{"permit-organisation with a role", with(base(consent.KindPermitOrganisation), func(d *consent.Directive) { d.Organisation = "RRK"; d.Role = hosR }), []string{"/role not-allowed-for-kind"}},
		{"confidential naming things", with(base(consent.KindConfidential), func(d *consent.Directive) {
			d.Organisation = "RRK"
			d.Role = hosR
		}), []string{"/organisation not-allowed-for-kind", "/role not-allowed-for-kind"}},
		{"period backwards", with(base(consent.KindConfidential), func(d *consent.Directive) {
			d.Period = consent.Period{Start: tp(t0), End: tp(t0.Add(-time.Nanosecond))}
		}), []string{"/period/end period-order"}},
		{"period bounds present but zero", with(base(consent.KindConfidential), func(d *consent.Directive) {
			d.Period = consent.Period{Start: &time.Time{}, End: &time.Time{}}
		}), []string{"/period/start period-bound-zero", "/period/end period-bound-zero"}},
	}
	for _, tt := range tests {
		got := violationsOf(t, tt.d.Validate())
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s: Validate():\n\tgot  %q\n\twant %q", tt.name, got, tt.want)
		}
		// The fast check used on every decision agrees with Validate.
		r := req(ev(), hosp, hosR, consent.BasisPatientList, tt.d)
		p := consent.DefaultPolicy()
		_, err := p.Evaluate(r)
		if (err == nil) != (tt.want == nil) {
			t.Errorf("%s: Evaluate error %v, but Validate says %q", tt.name, err, got)
		}
	}
}

func TestPatientConsentValidate(t *testing.T) {
	c := consent.PatientConsent{Version: -1, Directives: []consent.Directive{denyOrg("d1", "RRK"), denyOrg("d1", "RY4"), confidential("")}}
	got := violationsOf(t, c.Validate())
	want := []string{"/version version", "/directives/1/id directive-id-unique", "/directives/2/id required"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Validate():\n\tgot  %q\n\twant %q", got, want)
	}
}

func TestParsePatientConsent(t *testing.T) {
	good := `{"version":3,"updated":"2026-03-01T10:00:00Z","directives":[
		{"id":"d1","kind":"deny-organisation","organisation":"RRK","recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"},
		{"id":"d2","kind":"permit-organisation","organisation":"VN4K1","categories":["mental-health"],
		 "period":{"start":"2026-01-01T00:00:00Z","end":"2026-12-31T23:59:59Z"},"recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"}]}`
	c, err := consent.ParsePatientConsent([]byte(good))
	if err != nil {
		t.Fatalf("ParsePatientConsent(good) = %v", err)
	}
	if len(c.Directives) != 2 || c.Version != 3 || c.Directives[1].Period.End == nil {
		t.Fatalf("ParsePatientConsent(good) = %+v", c)
	}

	const canary = "9434765919"
	tests := []struct {
		name string
		in   string
		kind problem.Kind
		want []string
	}{
		{"not JSON", `{"version":`, problem.Malformed, nil},
		{"two values", `{"version":1,"directives":[]} {}`, problem.Malformed, nil},
		{"repeated member", `{"version":1,"version":2,"directives":[]}`, problem.Malformed, nil},
		{"repeated member in a directive", `{"directives":[{"kind":"deny-role","kind":"confidential"}]}`, problem.Malformed, nil},
		{"unknown member named by data", `{"version":1,"` + canary + `":1,"directives":[]}`, problem.Malformed, nil},
		{"wrong type", `{"version":"one","directives":[]}`, problem.Malformed, []string{"/version type"}},
		{"wrong type deep", `{"directives":[{"categories":"` + canary + `"}]}`, problem.Malformed, []string{"/directives type"}},
		{"bad time", `{"directives":[{"id":"a","kind":"confidential","recorded":"` + canary + `","recordedBy":"X26"}]}`, problem.Malformed, nil},
		{"too deep", strings.Repeat("[", 40) + strings.Repeat("]", 40), problem.Malformed, nil},
		{"invalid directive", `{"directives":[{"id":"` + canary + `","kind":"deny-organisation","organisation":"` + strings.ToLower(canary) + `x","recorded":"2026-02-01T09:00:00Z","recordedBy":"X26"}]}`,
			problem.Invalid, []string{"/directives/0/id looks-like-nhs-number", "/directives/0/organisation ods-code"}},
		{"too large", `{"directives":[],"x":"` + strings.Repeat("a", 1<<20) + `"}`, problem.TooLarge, nil},
	}
	for _, tt := range tests {
		_, err := consent.ParsePatientConsent([]byte(tt.in))
		if err == nil {
			t.Errorf("%s: no error", tt.name)
			continue
		}
		if k := problem.KindOf(err); k != tt.kind {
			t.Errorf("%s: kind %v (%v), want %v", tt.name, k, err, tt.kind)
		}
		if tt.want != nil {
			if diff := cmp.Diff(tt.want, violationsOf(t, err)); diff != "" {
				t.Errorf("%s: violations (-want +got):\n%s", tt.name, diff)
			}
		}
		if strings.Contains(err.Error(), canary) || strings.Contains(problem.Public(err), canary) || strings.Contains(string(problem.OperationOutcome(err)), canary) {
			t.Errorf("%s: the error text carries a value from the input: %v", tt.name, err)
		}
	}
}

func TestPeriodContains(t *testing.T) {
	s, e := t0, t0.Add(time.Hour)
	tests := []struct {
		p    consent.Period
		t    time.Time
		want bool
	}{
		{consent.Period{}, t0, true},
		{consent.Period{Start: &s}, s.Add(-1), false},
		{consent.Period{Start: &s}, s, true},
		{consent.Period{End: &e}, e, true},
		{consent.Period{End: &e}, e.Add(1), false},
		{consent.Period{Start: &s, End: &e}, s.Add(time.Minute), true},
		// The same instant in another zone is the same instant.
		{consent.Period{Start: &s, End: &e}, e.In(time.FixedZone("BST", 3600)), true},
	}
	for _, tt := range tests {
		if got := tt.p.Contains(tt.t); got != tt.want {
			t.Errorf("%v.Contains(%v) = %v, want %v", tt.p, tt.t, got, tt.want)
		}
	}
}

// TestValidateAgreesWithFastCheck: Evaluate checks directives with an
// allocation-free twin of Validate. Random directives, valid and not, must
// get the same verdict from both.
func TestValidateAgreesWithFastCheck(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 8))
	ids := []string{"", "d1", "a b", "9434765919", "943476591", strings.Repeat("x", 64), strings.Repeat("x", 65), "é"}
	kinds := []consent.Kind{"", "nope", consent.KindDenyOrganisation, consent.KindDenyRole, consent.KindNotificationOnly, consent.KindPermitOrganisation, consent.KindConfidential}
	orgs := []string{"", "RRK", "rrk", "AB", "ABCDEFGHIJK", "A81001"}
	roles := []consent.Role{"", consent.RoleHospital, "pharmacy"}
	cats := [][]string{nil, {}, {mh}, {mh, mh}, {"Bad"}, {"a--b"}, {mh, sh}}
	recs := []time.Time{{}, t0}
	bys := []string{"", "X26", "a@b:c_d", "9434765919", "a/b"}
	times := []*time.Time{nil, tp(t0), tp(at(1)), &time.Time{}}
	p := consent.DefaultPolicy()
	for i := 0; i < 200_000; i++ {
		d := consent.Directive{ID: pick(r, ids), Kind: pick(r, kinds), Organisation: pick(r, orgs), Role: pick(r, roles),
			Categories: pick(r, cats), Recorded: pick(r, recs), RecordedBy: pick(r, bys),
			Period: consent.Period{Start: pick(r, times), End: pick(r, times)}}
		slow := d.Validate() == nil
		_, err := p.Evaluate(req(ev(), hosp, hosR, consent.BasisPatientList, d))
		if fast := err == nil; fast != slow {
			t.Fatalf("%s: Validate says valid=%v, Evaluate says valid=%v (%v)", jsonString(d), slow, fast, err)
		}
	}
}
