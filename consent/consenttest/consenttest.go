// Package consenttest is the conformance suite for consent.Decider
// implementations, in the manner of testing/fstest.TestFS: any Decider (the
// consent.Policy itself, a caching wrapper, a remote decider, a future
// policy engine) runs it in a few lines:
//
//	func TestConformance(t *testing.T) {
//		consenttest.Run(t, consenttest.Features{Directives: true, RuleNames: true},
//			func(p consent.Policy) consent.Decider { return &p })
//	}
//
// # What every Decider must do
//
// These hold whatever the Features:
//
//   - decides every valid request in the suite's corpus without error (a
//     Decider that refuses everything is safe but useless, and fails);
//   - never returns Permit with an error (an error is "no decision");
//   - denies a candidate whose relationship the event does not confirm, and
//     one whose Basis is unknown, whatever the directives say;
//   - answers with Effect Permit or Deny, a non-empty Rule shaped like a rule
//     name, obligations only on a Permit and only known ones;
//   - puts no value from the request into Rule (no ODS code, event id,
//     directive id or recorder), and into DirectiveID only the id of one of
//     the request's directives;
//   - decides the same request the same way every time, from many goroutines
//     at once (run the suite with -race), and leaves the request unchanged;
//   - does not panic.
//
// # Features
//
// A Decider that claims Features.Directives applies the patient's
// directives and the deployment's consent.Policy by the rule table of the
// consent package: the suite checks the effect and obligations it gives for
// at least one case of every row of that table, and that it refuses (with
// an error, and no decision) requests that consent.Policy refuses as
// invalid. Features.RuleNames further claims the table's rule names and
// DirectiveID choice.
package consenttest

import (
	"context"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
)

// Features says which guarantees a Decider claims beyond the contract every
// Decider keeps.
type Features struct {
	// Directives: the Decider applies the patient's directives and the
	// policy by consent's rule table (effects and obligations).
	Directives bool
	// RuleNames: the Decider also names rules (Decision.Rule) and directives
	// (Decision.DirectiveID) as consent.Policy does. Implies Directives.
	RuleNames bool
}

// NewDecider returns the Decider under test, configured with policy. A
// Decider that has no policy (consent.Relationship) ignores it.
type NewDecider func(policy consent.Policy) consent.Decider

// Run runs the suite, one subtest per check.
func Run(t *testing.T, f Features, newDecider NewDecider) {
	t.Helper()
	for _, c := range checks(f) {
		t.Run(c.name, func(t *testing.T) { c.run(t, f, newDecider) })
	}
}

type check struct {
	name string
	run  func(t testing.TB, f Features, nd NewDecider)
}

// checks lists the checks that apply to f, in order.
func checks(f Features) []check {
	cs := []check{
		{"decides-valid-requests", checkDecidesValid},
		{"no-permit-with-error", checkNoPermitWithError},
		{"denies-unconfirmed-relationship", checkDeniesUnconfirmed},
		{"decision-shape", checkShape},
		{"no-request-data-in-rule", checkNoRequestData},
		{"deterministic", checkDeterministic},
		{"concurrent", checkConcurrent},
		{"does-not-mutate-request", checkNoMutation},
	}
	if f.Directives || f.RuleNames {
		cs = append(cs,
			check{"rule-table", checkRuleTable},
			check{"refuses-invalid-requests", checkRefusesInvalid},
			check{"follow-ups-merges-rechecks", checkComposed},
		)
	}
	return cs
}

// decide calls d, turning a panic into an error the checks report.
func decide(d consent.Decider, ctx context.Context, r consent.Request) (dec consent.Decision, err error, panicked any) {
	defer func() {
		if p := recover(); p != nil {
			panicked = p
		}
	}()
	dec, err = d.Decide(ctx, r)
	return dec, err, nil
}

func mustDecide(t testing.TB, d consent.Decider, name string, r consent.Request) (consent.Decision, error, bool) {
	t.Helper()
	dec, err, p := decide(d, context.Background(), r)
	if p != nil {
		t.Errorf("%s: Decide panicked: %v", name, p)
		return dec, err, false
	}
	return dec, err, true
}

func checkDecidesValid(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range allValid() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if ok && err != nil {
			t.Errorf("%s: a valid request got an error and no decision: %v", c.name, err)
		} else if ok && dec.Effect != consent.Permit && dec.Effect != consent.Deny {
			t.Errorf("%s: effect %q", c.name, dec.Effect)
		}
	}
}

func checkNoPermitWithError(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range everything() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if ok && err != nil && dec.Permitted() {
			t.Errorf("%s: Permit returned with an error (%v): an error must mean no decision", c.name, err)
		}
	}
	// A cancelled context changes nothing about that.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range everything() {
		dec, err, p := decide(nd(c.policy), ctx, c.req)
		if p == nil && err != nil && dec.Permitted() {
			t.Errorf("%s, cancelled context: Permit returned with an error (%v)", c.name, err)
		}
	}
}

func checkDeniesUnconfirmed(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range unconfirmed() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if !ok {
			continue
		}
		if err != nil {
			t.Errorf("%s: error %v; want a deny (the request is valid)", c.name, err)
			continue
		}
		if dec.Effect != consent.Deny {
			t.Errorf("%s: got %s by %q; the event does not confirm the relationship, want deny", c.name, dec.Effect, dec.Rule)
		}
	}
}

var (
	ruleShape = regexp.MustCompile(`^[a-z][a-z0-9]*([:.-][a-z0-9]+)*$`)
	tenDigits = regexp.MustCompile(`[0-9]{10}`)
)

func checkShape(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range everything() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if !ok || err != nil {
			continue
		}
		if dec.Effect != consent.Permit && dec.Effect != consent.Deny {
			t.Errorf("%s: effect %q, want permit or deny", c.name, dec.Effect)
		}
		if dec.Rule == "" {
			t.Errorf("%s: %s with no rule: every decision must say which rule decided", c.name, dec.Effect)
		} else if !ruleShape.MatchString(dec.Rule) || tenDigits.MatchString(dec.Rule) {
			t.Errorf("%s: rule %q is not shaped like a rule name (lower-case words joined by ':', '.' or '-')", c.name, dec.Rule)
		}
		if dec.Effect == consent.Deny && len(dec.Obligations) > 0 {
			t.Errorf("%s: a deny carries obligations %v: obligations belong to a permit", c.name, dec.Obligations)
		}
		for _, o := range dec.Obligations {
			if o != consent.NotificationOnly {
				t.Errorf("%s: unknown obligation %q: a delivery cannot honour what it does not know", c.name, o)
			}
		}
	}
}

// requestValues lists the values of a request a rule name must not carry.
func requestValues(r consent.Request) []string {
	vs := []string{r.Recipient.ODS, r.Event.ID, r.Event.Publisher, r.Event.GPPractice, r.Event.DischargeDestination}
	for _, d := range r.Directives {
		vs = append(vs, d.ID, d.Organisation, d.RecordedBy)
	}
	var out []string
	for _, v := range vs {
		if len(v) >= 3 {
			out = append(out, strings.ToLower(v))
		}
	}
	return out
}

func checkNoRequestData(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range everything() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if !ok || err != nil {
			continue
		}
		rule := strings.ToLower(dec.Rule)
		for _, v := range requestValues(c.req) {
			if strings.Contains(rule, v) {
				t.Errorf("%s: rule %q carries the request value %q: a rule is a name from a fixed vocabulary", c.name, dec.Rule, v)
			}
		}
		if dec.DirectiveID != "" {
			found := false
			for _, d := range c.req.Directives {
				found = found || d.ID == dec.DirectiveID
			}
			if !found {
				t.Errorf("%s: DirectiveID %q is not the id of a directive in the request", c.name, dec.DirectiveID)
			}
		}
	}
}

func checkDeterministic(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range everything() {
		d := nd(c.policy)
		first, err1, ok := mustDecide(t, d, c.name, c.req)
		if !ok {
			continue
		}
		for i := 0; i < 3; i++ {
			again, err2, ok := mustDecide(t, d, c.name, c.req)
			if !ok {
				break
			}
			if !reflect.DeepEqual(first, again) || (err1 == nil) != (err2 == nil) {
				t.Errorf("%s: decided %+v (error %v), then %+v (error %v)", c.name, first, err1, again, err2)
				break
			}
		}
	}
}

// checkConcurrent shares one Decider (with the default policy) across
// goroutines and compares each answer with that Decider's answer alone.
func checkConcurrent(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	cases := everything()
	d := nd(consent.DefaultPolicy())
	want := make([]consent.Decision, len(cases))
	wantErr := make([]bool, len(cases))
	for i, c := range cases {
		var ok bool
		var err error
		if want[i], err, ok = mustDecide(t, d, c.name, c.req); !ok {
			return
		}
		wantErr[i] = err != nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var problems []string
	for g := 0; g < 8; g++ {
		wg.Add(1)
		// Each goroutine has its own copy of the requests: this check is
		// about the Decider's own state; does-not-mutate-request is about
		// what it does to a request.
		mine := make([]consent.Request, len(cases))
		for i, c := range cases {
			mine[i] = deepCopy(c.req)
		}
		go func(g int) {
			defer wg.Done()
			for k := range cases {
				i := (k + g*7) % len(cases)
				got, err, p := decide(d, context.Background(), mine[i])
				if p != nil || !reflect.DeepEqual(got, want[i]) || (err != nil) != wantErr[i] {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%s: concurrently decided %+v (error %v, panic %v), alone %+v",
						cases[i].name, got, err, p, want[i]))
					mu.Unlock()
					return
				}
			}
		}(g)
	}
	wg.Wait()
	for _, p := range problems {
		t.Errorf("%s", p)
	}
}

func checkNoMutation(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range everything() {
		before := deepCopy(c.req)
		if _, _, ok := mustDecide(t, nd(c.policy), c.name, c.req); !ok {
			continue
		}
		if !reflect.DeepEqual(before, c.req) {
			t.Errorf("%s: Decide changed the request: the router shares one directive slice across every candidate", c.name)
		}
	}
}

func deepCopy(r consent.Request) consent.Request {
	if r.Event.Labels != nil {
		r.Event.Labels = append([]string{}, r.Event.Labels...)
	}
	if r.Directives != nil {
		ds := make([]consent.Directive, len(r.Directives))
		for i, d := range r.Directives {
			if d.Categories != nil {
				d.Categories = append([]string{}, d.Categories...)
			}
			if d.Period.Start != nil {
				s := *d.Period.Start
				d.Period.Start = &s
			}
			if d.Period.End != nil {
				e := *d.Period.End
				d.Period.End = &e
			}
			ds[i] = d
		}
		r.Directives = ds
	}
	return r
}

func checkRuleTable(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range rows() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if !ok {
			continue
		}
		if err != nil {
			t.Errorf("row %d, %s: error %v", c.row, c.name, err)
			continue
		}
		if dec.Effect != c.want.Effect || !reflect.DeepEqual(normal(dec.Obligations), normal(c.want.Obligations)) {
			t.Errorf("row %d, %s:\n\tgot  %s %v by %q\n\twant %s %v", c.row, c.name, dec.Effect, dec.Obligations, dec.Rule, c.want.Effect, c.want.Obligations)
			continue
		}
		if f.RuleNames && (dec.Rule != c.want.Rule || dec.DirectiveID != c.want.DirectiveID) {
			t.Errorf("row %d, %s:\n\tgot  rule %q directive %q\n\twant rule %q directive %q", c.row, c.name, dec.Rule, dec.DirectiveID, c.want.Rule, c.want.DirectiveID)
		}
	}
}

func normal(os []consent.Obligation) []consent.Obligation {
	if len(os) == 0 {
		return nil
	}
	return os
}

func checkRefusesInvalid(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range invalid() {
		dec, err, ok := mustDecide(t, nd(c.policy), c.name, c.req)
		if !ok {
			continue
		}
		if err == nil {
			t.Errorf("%s: decided %s by %q; want an error and no decision (fail closed)", c.name, dec.Effect, dec.Rule)
		}
	}
}

func checkComposed(t testing.TB, f Features, nd NewDecider) {
	t.Helper()
	for _, c := range composed() {
		d := nd(c.policy)
		var dec consent.Decision
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}()
			dec, err = consent.FollowUp(context.Background(), consent.Merged{Decider: d, Others: c.others}, c.req, c.rel, c.orig)
			if err == nil && c.later != nil {
				q := c.req
				q.Directives = c.later
				var now consent.Decision
				now, err = consent.FollowUp(context.Background(), consent.Merged{Decider: d, Others: c.others}, q, c.rel, c.orig)
				dec = consent.Recheck(dec, now)
			}
		}()
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if dec.Effect != c.want.Effect || !reflect.DeepEqual(normal(dec.Obligations), normal(c.want.Obligations)) {
			t.Errorf("%s:\n\tgot  %s %v by %q\n\twant %s %v", c.name, dec.Effect, dec.Obligations, dec.Rule, c.want.Effect, c.want.Obligations)
			continue
		}
		if f.RuleNames && (dec.Rule != c.want.Rule || dec.DirectiveID != c.want.DirectiveID) {
			t.Errorf("%s:\n\tgot  rule %q directive %q\n\twant rule %q directive %q", c.name, dec.Rule, dec.DirectiveID, c.want.Rule, c.want.DirectiveID)
		}
	}
}

// composedCase is a decision the hub composes from several: a follow-up
// (rel, orig), of a merged patient (others), re-checked at delivery with
// the directives then (later; nil: not re-checked).
type composedCase struct {
	name   string
	policy consent.Policy
	req    consent.Request
	rel    consent.Relation
	orig   consent.Original
	others [][]consent.Directive
	later  []consent.Directive
	want   consent.Decision
}

// composed holds cases of the findings these compositions answer.
func composed() []composedCase {
	def := consent.DefaultPolicy()
	denyHome := directive("dir-h", consent.KindDenyOrganisation, home, "")
	yesHome := directive("dir-i", consent.KindPermitOrganisation, home, "")
	noSocial := directive("dir-j", consent.KindDenyRole, "", socR)
	thinHome := directive("dir-k", consent.KindNotificationOnly, home, "")
	received := consent.Original{Received: true, Basis: dest}
	cancel := event()
	cancel.DischargeDestination = "" // a cancellation names no destination
	return []composedCase{
		{name: "a correction to a recipient that never received the original", policy: def,
			req: request(cancel, home, socR, dest), rel: consent.Corrects, orig: consent.Original{Withheld: true},
			want: deny(consent.RuleOriginalNotReceived, "")},
		{name: "a correction to the recipient of the original, named by it only", policy: def,
			req: request(cancel, home, socR, dest), rel: consent.Corrects, orig: received,
			want: permit(consent.RuleRelationshipConfirmed, "", nil)},
		{name: "a correction carries the original's sensitivity", policy: def,
			req: request(cancel, home, socR, dest), rel: consent.Corrects, orig: consent.Original{Received: true, Basis: dest, Labels: []string{mh}},
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{name: "a correction is still decided by today's directives", policy: def,
			req: request(cancel, home, socR, dest, denyHome), rel: consent.Corrects, orig: received,
			want: deny(consent.RuleDenyOrganisation, "dir-h")},
		{name: "an update to a recipient withheld the original", policy: def,
			req: request(event(), home, socR, dest), rel: consent.Updates, orig: consent.Original{Withheld: true},
			want: deny(consent.RuleOriginalWithheld, "")},
		{name: "a continuation carries the earlier sensitivity", policy: def,
			req: request(event(), home, socR, dest, yesHome), rel: consent.Continues, orig: consent.Original{Labels: []string{mh}},
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{name: "the retired number's deny applies after a merge", policy: def,
			req: request(event(), home, socR, dest, yesHome), others: [][]consent.Directive{{denyHome}},
			want: deny(consent.RuleDenyOrganisation, "dir-h")},
		{name: "a permit under one number does not lift a deny-role under the other", policy: def,
			req: request(event(), home, socR, dest, yesHome), others: [][]consent.Directive{{noSocial}},
			want: deny(consent.RuleDenyRole, "dir-j")},
		{name: "notification-only under the retired number", policy: def,
			req: request(event(), home, socR, dest), others: [][]consent.Directive{{thinHome}},
			want: permit(consent.RuleNotificationOnly, "dir-k", no)},
		{name: "a deny recorded after routing withholds the queued copy", policy: def,
			req: request(event(), home, socR, dest), later: []consent.Directive{denyHome},
			want: deny(consent.RuleDenyOrganisation, "dir-h")},
		{name: "a thin copy stays thin when the directive is withdrawn", policy: def,
			req: request(event(), home, socR, dest, thinHome), later: []consent.Directive{},
			want: permit(consent.RuleRelationshipConfirmed, "", no)},
		{name: "a queued copy made thin by a directive recorded since", policy: def,
			req: request(event(), home, socR, dest), later: []consent.Directive{thinHome},
			want: permit(consent.RuleNotificationOnly, "dir-k", no)},
	}
}

// ---------------------------------------------------------------------------
// The corpus.
// ---------------------------------------------------------------------------

type tcase struct {
	name   string
	row    int // rule table row, for rows()
	policy consent.Policy
	req    consent.Request
	want   consent.Decision
}

// Organisations of the corpus. Their codes are canaries: none may appear
// in a rule name.
const (
	gp    = "CNRY1"
	gpTwo = "CNRY2"
	home  = "CNRY3"
	hosp  = "CNRY4"
	comm  = "CNRY5"
	pub   = "CNRY6"
)

var (
	evTime  = time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	recTime = time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
)

func event(labels ...string) consent.Event {
	return consent.Event{ID: "evt-canary-7f3a", Type: "uk.carehub.discharge.v1", Publisher: pub, Time: evTime,
		Labels: labels, HasDocument: true, GPPractice: gp, DischargeDestination: home}
}

func request(ev consent.Event, ods string, role consent.Role, b consent.Basis, ds ...consent.Directive) consent.Request {
	return consent.Request{Event: ev, Recipient: consent.Recipient{ODS: ods, Role: role}, Basis: b, Directives: ds}
}

func directive(id string, k consent.Kind, org string, role consent.Role, cats ...string) consent.Directive {
	return consent.Directive{ID: id, Kind: k, Organisation: org, Role: role, Categories: cats, Recorded: recTime, RecordedBy: "rec-canary-5d1"}
}

var (
	gpR   = consent.RoleGPPractice
	hosR  = consent.RoleHospital
	socR  = consent.RoleSocialCare
	comR  = consent.RoleCommunity
	regGP = consent.BasisRegisteredGP
	dest  = consent.BasisDischargeDestination
	list  = consent.BasisPatientList
	care  = consent.BasisCareRelationship
	mh    = consent.CategoryMentalHealth
	no    = []consent.Obligation{consent.NotificationOnly}
)

func permit(rule, id string, obl []consent.Obligation) consent.Decision {
	return consent.Decision{Effect: consent.Permit, Rule: rule, DirectiveID: id, Obligations: obl}
}
func deny(rule, id string) consent.Decision {
	return consent.Decision{Effect: consent.Deny, Rule: rule, DirectiveID: id}
}

// rows holds at least one case per row of consent's rule table.
func rows() []tcase {
	def := consent.DefaultPolicy()
	strict := consent.Policy{}
	extra := consent.Policy{ExtraSensitiveCategories: []string{"hiv"}, ConfidentialAllow: []consent.Basis{regGP}}
	denyHome := directive("dir-a", consent.KindDenyOrganisation, home, "")
	noSocial := directive("dir-b", consent.KindDenyRole, "", socR)
	thinHome := directive("dir-c", consent.KindNotificationOnly, home, "")
	thinComm := directive("dir-d", consent.KindNotificationOnly, "", comR)
	yesHome := directive("dir-e", consent.KindPermitOrganisation, home, "")
	yesHomeMH := directive("dir-f", consent.KindPermitOrganisation, home, "", mh)
	conf := directive("dir-g", consent.KindConfidential, "", "")
	later := func(d consent.Directive) consent.Directive { d.Recorded = recTime.Add(time.Hour); return d }
	ended := func(d consent.Directive) consent.Directive {
		e := evTime.Add(-time.Second)
		d.Period.End = &e
		return d
	}
	return []tcase{
		{name: "unknown basis", row: 1, policy: def, req: request(event(), hosp, hosR, "next-of-kin", yesHome),
			want: deny(consent.RuleUnknownBasis, "")},
		{name: "registered-gp basis for another practice", row: 2, policy: def, req: request(event(), gpTwo, gpR, regGP),
			want: deny(consent.RuleRelationshipUnconfirmed, "")},
		{name: "deny-organisation", row: 3, policy: def, req: request(event(), home, socR, dest, denyHome, later(yesHome)),
			want: deny(consent.RuleDenyOrganisation, "dir-a")},
		{name: "confidential, not the registered GP", row: 4, policy: def, req: request(event(), home, socR, dest, conf, yesHome),
			want: deny(consent.RuleConfidential, "dir-g")},
		{name: "confidential, the registered GP under the strict policy", row: 4, policy: strict, req: request(event(), gp, gpR, regGP, conf),
			want: deny(consent.RuleConfidential, "dir-g")},
		{name: "sensitive category to a care home", row: 5, policy: def, req: request(event(mh), home, socR, dest, yesHome),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{name: "a deployment's sensitive category", row: 5, policy: extra, req: request(event("hiv"), hosp, hosR, list),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{name: "a permit for the category, since ended", row: 5, policy: def, req: request(event(mh), home, socR, dest, ended(yesHomeMH)),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{name: "deny-role", row: 6, policy: def, req: request(event(), home, socR, dest, noSocial),
			want: deny(consent.RuleDenyRole, "dir-b")},
		{name: "notification-only for the organisation, even with a permit", row: 7, policy: def, req: request(event(), home, socR, dest, thinHome, yesHome),
			want: permit(consent.RuleNotificationOnly, "dir-c", no)},
		{name: "notification-only for the role", row: 8, policy: def, req: request(event(), comm, comR, care, thinComm),
			want: permit(consent.RuleNotificationOnly, "dir-d", no)},
		{name: "a permit lifts deny-role", row: 9, policy: def, req: request(event(), home, socR, dest, noSocial, yesHome),
			want: permit(consent.RulePermitOrganisation, "dir-e", nil)},
		{name: "a permit for the category", row: 9, policy: def, req: request(event(mh), home, socR, dest, noSocial, yesHomeMH),
			want: permit(consent.RulePermitOrganisation, "dir-f", nil)},
		{name: "confidential, the registered GP", row: 10, policy: def, req: request(event(mh), gp, gpR, regGP, conf),
			want: permit(consent.RuleConfidentialAllowed, "dir-g", nil)},
		{name: "no directives", row: 11, policy: def, req: request(event(), hosp, hosR, list),
			want: permit(consent.RuleRelationshipConfirmed, "", nil)},
		{name: "directives about others", row: 11, policy: def, req: request(event(), comm, comR, care, denyHome, noSocial, thinHome),
			want: permit(consent.RuleRelationshipConfirmed, "", nil)},
	}
}

// unconfirmed are valid requests whose relationship the event does not confirm.
func unconfirmed() []tcase {
	def := consent.DefaultPolicy()
	yes := directive("dir-p", consent.KindPermitOrganisation, gpTwo, "")
	yesHosp := directive("dir-q", consent.KindPermitOrganisation, hosp, "")
	noGP := event()
	noGP.GPPractice = ""
	noDest := event()
	noDest.DischargeDestination = ""
	return []tcase{
		{name: "registered-gp basis, another practice", policy: def, req: request(event(), gpTwo, gpR, regGP)},
		{name: "registered-gp basis, another practice, with a permit for it", policy: def, req: request(event(), gpTwo, gpR, regGP, yes)},
		{name: "registered-gp basis, event names no practice", policy: def, req: request(noGP, gp, gpR, regGP)},
		{name: "discharge-destination basis, another organisation", policy: def, req: request(event(), hosp, hosR, dest, yesHosp)},
		{name: "discharge-destination basis, event names none", policy: def, req: request(noDest, home, socR, dest)},
		{name: "unknown basis", policy: def, req: request(event(), hosp, hosR, "emergency-contact", yesHosp)},
		{name: "empty basis", policy: def, req: request(event(), hosp, hosR, "")},
	}
}

// invalid are requests consent.Policy refuses.
func invalid() []tcase {
	def := consent.DefaultPolicy()
	ok := directive("dir-v", consent.KindDenyOrganisation, hosp, "")
	noID := ok
	noID.ID = ""
	lower := directive("dir-w", consent.KindDenyOrganisation, strings.ToLower(home), "")
	backwards := directive("dir-x", consent.KindConfidential, "", "")
	s, e := evTime, evTime.Add(-time.Hour)
	backwards.Period = consent.Period{Start: &s, End: &e}
	unknown := directive("dir-y", "permit-everyone", "", "")
	noTime := event()
	noTime.Time = time.Time{}
	return []tcase{
		{name: "a directive without an id", policy: def, req: request(event(), home, socR, dest, noID)},
		{name: "a lower-case ODS code in a deny", policy: def, req: request(event(), home, socR, dest, lower)},
		{name: "a period that ends before it starts", policy: def, req: request(event(), gp, gpR, regGP, backwards)},
		{name: "an unknown kind", policy: def, req: request(event(), gp, gpR, regGP, unknown)},
		{name: "two directives with one id", policy: def, req: request(event(), gp, gpR, regGP, ok, ok)},
		{name: "an event without a time", policy: def, req: request(noTime, home, socR, dest, ok)},
		{name: "an unknown recipient role", policy: def, req: request(event(), home, "pharmacy", dest)},
		{name: "a label that is not a code", policy: def, req: request(event("Mental Health"), gp, gpR, regGP)},
	}
}

func allValid() []tcase { return append(rows(), unconfirmed()...) }

func everything() []tcase { return append(allValid(), invalid()...) }
