package consent_test

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

type ruleCase struct {
	row    int // the row of the rule table in doc.go this case is about
	name   string
	policy *consent.Policy // nil: DefaultPolicy
	req    consent.Request
	want   consent.Decision
}

const (
	gpP  = consent.RoleGPPractice
	hosR = consent.RoleHospital
	socR = consent.RoleSocialCare
	comR = consent.RoleCommunity

	regGP = consent.BasisRegisteredGP
	dest  = consent.BasisDischargeDestination
	list  = consent.BasisPatientList
	care  = consent.BasisCareRelationship

	mh  = consent.CategoryMentalHealth
	sh  = consent.CategorySexualHealth
	sg  = consent.CategorySafeguarding
	gid = consent.CategoryGenderIdentity
)

var no = consent.NotificationOnly

func ruleCases() []ruleCase {
	zero := &consent.Policy{}
	destOK := &consent.Policy{ConfidentialAllow: []consent.Basis{dest}}
	hiv := &consent.Policy{ExtraSensitiveCategories: []string{"hiv"}, ConfidentialAllow: []consent.Basis{regGP}}
	noGP := ev()
	noGP.GPPractice = ""
	noDest := ev()
	noDest.DischargeDestination = ""
	confEv := ev()
	confEv.Confidential = true
	confMH := ev(mh)
	confMH.Confidential = true
	return []ruleCase{
		// Row 1.
		{row: 1, name: "unknown basis", req: req(ev(), hosp, hosR, "friend-of-a-friend"),
			want: deny(consent.RuleUnknownBasis, "")},
		{row: 1, name: "empty basis, even with a permit", req: req(ev(), hosp, hosR, "", permitOrg("p1", hosp)),
			want: deny(consent.RuleUnknownBasis, "")},

		// Row 2.
		{row: 2, name: "registered-gp basis for a practice the event does not name", req: req(ev(), gp2, gpP, regGP),
			want: deny(consent.RuleRelationshipUnconfirmed, "")},
		{row: 2, name: "registered-gp basis, event names no GP", req: req(noGP, gp1, gpP, regGP),
			want: deny(consent.RuleRelationshipUnconfirmed, "")},
		{row: 2, name: "discharge-destination basis, event names another", req: req(ev(), hosp, hosR, dest, permitOrg("p1", hosp)),
			want: deny(consent.RuleRelationshipUnconfirmed, "")},
		{row: 2, name: "discharge-destination basis, event names none", req: req(noDest, home, socR, dest),
			want: deny(consent.RuleRelationshipUnconfirmed, "")},

		// Row 3.
		{row: 3, name: "deny-organisation", req: req(ev(), home, socR, dest, denyOrg("d1", home)),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "deny-organisation beats a later permit-organisation",
			req:  req(ev(), home, socR, dest, denyOrg("d1", home), recorded(permitOrg("p1", home), at(-1))),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "deny-organisation of the registered GP of a confidential patient",
			req:  req(ev(), gp1, gpP, regGP, confidential("c1"), denyOrg("d1", gp1)),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "deny-organisation on the first instant of its period",
			req:  req(ev(), home, socR, dest, period(denyOrg("d1", home), tp(t0), nil)),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "deny-organisation on the last instant of its period",
			req:  req(ev(), home, socR, dest, period(denyOrg("d1", home), tp(at(-5)), tp(t0))),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "deny-organisation recorded after the event, with no start",
			req:  req(ev(), home, socR, dest, recorded(denyOrg("d1", home), at(2))),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "a statement of two periods recorded together",
			req: req(ev(), home, socR, dest,
				period(denyOrg("d2", home), tp(at(-20)), tp(at(-10))),
				period(denyOrg("d1", home), tp(at(-1)), tp(at(1)))),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 3, name: "of several in force, the lowest id of the latest statement is named",
			req:  req(ev(), home, socR, dest, denyOrg("d2", home), denyOrg("d1", home)),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 11, name: "deny-organisation for another organisation", req: req(ev(), home, socR, dest, denyOrg("d1", hosp)),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "deny-organisation one nanosecond before its start",
			req:  req(ev(), home, socR, dest, period(denyOrg("d1", home), tp(t0.Add(1)), nil)),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "deny-organisation ended before the event",
			req:  req(ev(), home, socR, dest, period(denyOrg("d1", home), nil, tp(t0.Add(-1)))),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "deny-organisation superseded by a later one for another period",
			req: req(ev(), home, socR, dest, denyOrg("d1", home),
				recorded(period(denyOrg("d2", home), tp(at(10)), nil), at(-1))),
			want: permit(consent.RuleRelationshipConfirmed, "")},

		// Row 4.
		{row: 4, name: "confidential, care relationship", req: req(ev(), comm, comR, care, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 4, name: "confidential, discharge destination, default policy", req: req(ev(), home, socR, dest, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 4, name: "confidential is not lifted by a permit-organisation",
			req:  req(ev(), home, socR, dest, confidential("c1"), recorded(permitOrg("p1", home), at(-1))),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 4, name: "confidential, registered GP, zero policy allows nothing", policy: zero,
			req:  req(ev(), gp1, gpP, regGP, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 4, name: "confidential beats the sensitive-category rule in naming", req: req(ev(mh), hosp, hosR, list, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 10, name: "confidential, a policy allowing discharge destinations, held through the event", policy: destOK,
			req:  req(ev(), home, socR, list, confidential("c1")),
			want: permit(consent.RuleConfidentialAllowed, "c1")},
		{row: 11, name: "confidential, superseded by a later one that has ended",
			req: req(ev(), home, socR, dest, confidential("c1"),
				recorded(period(confidential("c2"), nil, tp(at(-2))), at(-3))),
			want: permit(consent.RuleRelationshipConfirmed, "")},

		{row: 4, name: "confidential, registered-gp basis but the recipient is no GP practice",
			req:  req(ev(), gp1, hosR, regGP, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},

		// Row 5.
		{row: 5, name: "mental health to a hospital on a patient list", req: req(ev(mh), hosp, hosR, list),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "each built-in category", req: req(ev("maternity", sh), home, socR, dest),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "safeguarding", req: req(ev(sg), home, socR, dest), want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "gender identity", req: req(ev(gid), home, socR, dest), want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a category the deployment added", policy: hiv, req: req(ev("hiv"), home, socR, dest),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a permit-organisation without categories does not unlock a sensitive category",
			req:  req(ev(mh), home, socR, dest, permitOrg("p1", home)),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a permit-organisation for one of two sensitive categories",
			req:  req(ev(mh, sh), home, socR, dest, permitOrg("p1", home, mh)),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a permit-organisation listing the category, for another organisation",
			req:  req(ev(mh), home, socR, dest, permitOrg("p1", hosp, mh)),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a permit-organisation for the category, superseded by a later one that has ended",
			req: req(ev(mh), home, socR, dest, permitOrg("p1", home, mh),
				recorded(period(permitOrg("p2", home, mh), nil, tp(at(-2))), at(-3))),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "sensitive beats deny-role in naming", req: req(ev(mh), home, socR, dest, denyRole("r1", socR)),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 5, name: "a sensitive category on the registered-gp basis to an organisation that is no GP practice",
			req:  req(ev(mh), gp1, socR, regGP),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 11, name: "a sensitive category to the registered GP", req: req(ev(mh, sh, sg, gid), gp1, gpP, regGP),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "a sensitive category to the registered GP asked on a patient list", req: req(ev(mh), gp1, gpP, list),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "a code the deployment did not add is not sensitive", req: req(ev("hiv", "maternity"), home, socR, dest),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 9, name: "a permit-organisation listing the category", req: req(ev(mh), home, socR, dest, permitOrg("p1", home, mh)),
			want: permit(consent.RulePermitOrganisation, "p1")},
		{row: 9, name: "two permit-organisations of different scopes for two categories",
			req:  req(ev(mh, sh), home, socR, dest, permitOrg("p1", home, mh), permitOrg("p2", home, sh)),
			want: permit(consent.RulePermitOrganisation, "p1")},

		// Row 6.
		{row: 6, name: "deny-role", req: req(ev(), home, socR, dest, denyRole("r1", socR)),
			want: deny(consent.RuleDenyRole, "r1")},
		{row: 6, name: "deny-role, a permit for another organisation", req: req(ev(), home, socR, dest, denyRole("r1", socR), permitOrg("p1", hosp)),
			want: deny(consent.RuleDenyRole, "r1")},
		{row: 6, name: "deny-role, a permit restricted to a category the event does not carry",
			req:  req(ev(), home, socR, dest, denyRole("r1", socR), permitOrg("p1", home, mh)),
			want: deny(consent.RuleDenyRole, "r1")},
		{row: 6, name: "deny-role, a permit not yet in force",
			req:  req(ev(), home, socR, dest, denyRole("r1", socR), period(permitOrg("p1", home), tp(at(1)), nil)),
			want: deny(consent.RuleDenyRole, "r1")},
		{row: 6, name: "deny-role of the registered GP's role", req: req(ev(), gp1, gpP, regGP, denyRole("r1", gpP)),
			want: deny(consent.RuleDenyRole, "r1")},
		{row: 11, name: "deny-role for another role", req: req(ev(), home, socR, dest, denyRole("r1", hosR)),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 9, name: "deny-role lifted by a permit-organisation", req: req(ev(), home, socR, dest, denyRole("r1", socR), permitOrg("p1", home)),
			want: permit(consent.RulePermitOrganisation, "p1")},
		{row: 9, name: "deny-role lifted by a permit restricted to a category the event carries",
			req:  req(ev(mh), home, socR, dest, denyRole("r1", socR), permitOrg("p1", home, mh)),
			want: permit(consent.RulePermitOrganisation, "p1")},
		{row: 9, name: "deny-role lifted by a permit recorded before it (kinds do not supersede)",
			req:  req(ev(), home, socR, dest, recorded(denyRole("r1", socR), at(-1)), permitOrg("p1", home)),
			want: permit(consent.RulePermitOrganisation, "p1")},

		// Row 7.
		{row: 7, name: "notification-only for the organisation", req: req(ev(), home, socR, dest, notifyOrg("n1", home)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 7, name: "notification-only for the organisation is not lifted by a permit",
			req:  req(ev(), home, socR, dest, notifyOrg("n1", home), permitOrg("p1", home)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 7, name: "notification-only for the organisation, event without a document",
			req:  req(consent.Event{ID: "e", Type: "t", Publisher: "RXX", Time: t0, DischargeDestination: home}, home, socR, dest, notifyOrg("n1", home)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 7, name: "notification-only for the registered GP of a confidential patient",
			req:  req(ev(), gp1, gpP, regGP, confidential("c1"), notifyOrg("n1", gp1)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 7, name: "organisation notification-only named before a role one",
			req:  req(ev(), home, socR, dest, notifyRole("n2", socR), notifyOrg("n1", home)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},

		// Row 8.
		{row: 8, name: "notification-only for the role", req: req(ev(), comm, comR, care, notifyRole("n1", comR)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 8, name: "notification-only for the role, a permit restricted to an absent category",
			req:  req(ev(), comm, comR, care, notifyRole("n1", comR), permitOrg("p1", comm, sh)),
			want: permit(consent.RuleNotificationOnly, "n1", no)},
		{row: 9, name: "notification-only for the role lifted by a permit", req: req(ev(), comm, comR, care, notifyRole("n1", comR), permitOrg("p1", comm)),
			want: permit(consent.RulePermitOrganisation, "p1")},
		{row: 11, name: "notification-only for another role", req: req(ev(), comm, comR, care, notifyRole("n1", hosR)),
			want: permit(consent.RuleRelationshipConfirmed, "")},

		// Row 9.
		{row: 9, name: "permit-organisation alone", req: req(ev(), hosp, hosR, list, permitOrg("p1", hosp)),
			want: permit(consent.RulePermitOrganisation, "p1")},
		{row: 11, name: "permit-organisation restricted to a category the event does not carry", req: req(ev(), hosp, hosR, list, permitOrg("p1", hosp, mh)),
			want: permit(consent.RuleRelationshipConfirmed, "")},

		// Row 10.
		{row: 10, name: "confidential, registered GP, default policy", req: req(ev(), gp1, gpP, regGP, confidential("c1")),
			want: permit(consent.RuleConfidentialAllowed, "c1")},
		{row: 10, name: "confidential, registered GP by the event on a care relationship", req: req(ev(mh), gp1, gpP, care, confidential("c1")),
			want: permit(consent.RuleConfidentialAllowed, "c1")},
		{row: 10, name: "confidential, an added category to the registered GP", policy: hiv, req: req(ev("hiv"), gp1, gpP, regGP, confidential("c1")),
			want: permit(consent.RuleConfidentialAllowed, "c1")},
		{row: 9, name: "confidential, registered GP with a permit", req: req(ev(), gp1, gpP, regGP, confidential("c1"), permitOrg("p1", gp1)),
			want: permit(consent.RulePermitOrganisation, "p1")},

		// A confidential event: rows 4 and 10 without a directive.
		{row: 4, name: "confidential event, discharge destination, default policy", req: req(confEv, home, socR, dest),
			want: deny(consent.RuleConfidentialEvent, "")},
		{row: 4, name: "confidential event is not lifted by a permit-organisation",
			req:  req(confEv, home, socR, dest, permitOrg("p1", home)),
			want: deny(consent.RuleConfidentialEvent, "")},
		{row: 4, name: "confidential event and a confidential directive: the directive is named",
			req:  req(confEv, comm, comR, list, confidential("c1")),
			want: deny(consent.RuleConfidential, "c1")},
		{row: 4, name: "confidential event, registered GP, zero policy allows nothing", policy: zero,
			req:  req(confEv, gp1, gpP, regGP),
			want: deny(consent.RuleConfidentialEvent, "")},
		{row: 3, name: "deny-organisation beats a confidential event", req: req(confEv, gp1, gpP, regGP, denyOrg("d1", gp1)),
			want: deny(consent.RuleDenyOrganisation, "d1")},
		{row: 10, name: "confidential event, registered GP, default policy", req: req(confEv, gp1, gpP, regGP),
			want: permit(consent.RuleConfidentialAllowed, "")},
		{row: 10, name: "confidential event, a policy allowing discharge destinations", policy: destOK,
			req:  req(confEv, home, socR, dest),
			want: permit(consent.RuleConfidentialAllowed, "")},
		{row: 5, name: "confidential sensitive event, destination allowed, still GP only", policy: destOK,
			req:  req(confMH, home, socR, dest),
			want: deny(consent.RuleSensitiveGPOnly, "")},
		{row: 9, name: "confidential event let through, a permit-organisation names itself", policy: destOK,
			req:  req(confEv, home, socR, dest, permitOrg("p1", home)),
			want: permit(consent.RulePermitOrganisation, "p1")},

		// Row 11.
		{row: 11, name: "no directives", req: req(ev(), home, socR, dest), want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "registered GP", req: req(ev(), gp1, gpP, regGP), want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "patient list, a nil policy", policy: nil, req: req(ev(), hosp, hosR, list),
			want: permit(consent.RuleRelationshipConfirmed, "")},
		{row: 11, name: "directives about others only",
			req: req(ev(), hosp, hosR, list, denyOrg("d1", home), denyRole("r1", socR), notifyOrg("n1", gp1),
				notifyRole("n2", comR), permitOrg("p1", home)),
			want: permit(consent.RuleRelationshipConfirmed, "")},
	}
}

func TestRuleTable(t *testing.T) {
	covered := map[int]int{}
	for _, c := range ruleCases() {
		covered[c.row]++
		p := c.policy
		if p == nil {
			d := consent.DefaultPolicy()
			p = &d
		}
		got, err := p.Decide(context.Background(), c.req)
		if err != nil {
			t.Errorf("row %d, %s: Decide error %v", c.row, c.name, err)
			continue
		}
		if diff := cmp.Diff(c.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("row %d, %s:\n\tgot  %+v\n\twant %+v", c.row, c.name, got, c.want)
		}
	}
	rows := docTableRows(t)
	for _, r := range rows {
		if covered[r.n] == 0 {
			t.Errorf("row %d of the rule table (%s) has no case", r.n, r.rule)
		}
	}
	if len(rows) != 11 {
		t.Errorf("the rule table in doc.go has %d rows, this test knows 11", len(rows))
	}
}

type docRow struct {
	n    int
	rule string
}

// docTableRows reads the rule table from doc.go, so that a row added there
// without a case here fails the test.
func docTableRows(t *testing.T) []docRow {
	t.Helper()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^//\t(\d+)\s+.*?\s(deny|permit)\s+(\S+)`)
	var rows []docRow
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		n, _ := strconv.Atoi(m[1])
		rows = append(rows, docRow{n: n, rule: m[3]})
	}
	return rows
}

// docTableAlternatives reads the rule names a row gives on a continuation
// line ("deny    or event:confidential").
func docTableAlternatives(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^//\t\s+.*?\s(deny|permit)\s+or (\S+)`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		out = append(out, m[2])
	}
	return out
}

// TestRuleNamesDocumented: every rule name a decision can carry appears in
// the table, and no rule name can carry data (they are constants of this
// vocabulary).
func TestRuleNamesDocumented(t *testing.T) {
	doc := map[string]bool{}
	for _, r := range docTableRows(t) {
		doc[r.rule] = true
	}
	for _, r := range docTableAlternatives(t) {
		doc[r] = true
	}
	for _, r := range []string{consent.RuleUnknownBasis, consent.RuleRelationshipUnconfirmed,
		consent.RuleDenyOrganisation, consent.RuleConfidential, consent.RuleConfidentialEvent, consent.RuleSensitiveGPOnly,
		consent.RuleDenyRole, consent.RuleNotificationOnly, consent.RulePermitOrganisation,
		consent.RuleConfidentialAllowed, consent.RuleRelationshipConfirmed} {
		if !doc[r] {
			t.Errorf("rule %q is not in the rule table of doc.go", r)
		}
	}
	for _, c := range ruleCases() {
		if !doc[c.want.Rule] {
			t.Errorf("case %q expects rule %q, which is not in the rule table", c.name, c.want.Rule)
		}
	}
}

// TestRulesListsEveryRule: Rules is the vocabulary metrics bound their rule
// label by (a rule missing from it is counted as "other"): every rule of
// the rule table, of its cases and of FollowUp is in it, once.
func TestRulesListsEveryRule(t *testing.T) {
	listed := map[string]bool{}
	for _, r := range consent.Rules() {
		if listed[r] {
			t.Errorf("Rules lists %q twice", r)
		}
		listed[r] = true
	}
	want := []string{consent.RuleOriginalNotReceived, consent.RuleOriginalWithheld}
	for _, r := range docTableRows(t) {
		want = append(want, r.rule)
	}
	want = append(want, docTableAlternatives(t)...)
	for _, c := range ruleCases() {
		want = append(want, c.want.Rule)
	}
	for _, r := range want {
		if !listed[r] {
			t.Errorf("rule %q is not in Rules()", r)
		}
	}
}

func TestEvaluateErrors(t *testing.T) {
	p := consent.DefaultPolicy()
	good := func() consent.Request {
		return req(ev(mh), home, socR, dest, denyOrg("d1", hosp), permitOrg("p1", home, mh))
	}
	tests := []struct {
		name     string
		mutate   func(*consent.Request)
		pointers []string
	}{
		{"zero event time", func(r *consent.Request) { r.Event.Time = consent.Event{}.Time }, []string{"/event/time"}},
		{"label not a code", func(r *consent.Request) { r.Event.Labels = []string{"Mental-Health"} }, []string{"/event/labels/0"}},
		{"recipient ODS lower case", func(r *consent.Request) { r.Recipient.ODS = "vn4k1" }, []string{"/recipient/ods"}},
		{"recipient role unknown", func(r *consent.Request) { r.Recipient.Role = "pharmacy" }, []string{"/recipient/role"}},
		{"directive without id", func(r *consent.Request) { r.Directives[0].ID = "" }, []string{"/directives/0/id"}},
		{"directive with a lower-case ODS code", func(r *consent.Request) { r.Directives[0].Organisation = "rrk" }, []string{"/directives/0/organisation"}},
		{"duplicate ids", func(r *consent.Request) { r.Directives[1].ID = "d1" }, []string{"/directives/1/id"}},
		{"unknown kind", func(r *consent.Request) { r.Directives[1].Kind = "permit-everyone" }, []string{"/directives/1/kind"}},
		{"period backwards", func(r *consent.Request) {
			r.Directives[0].Period = consent.Period{Start: tp(at(2)), End: tp(at(1))}
		}, []string{"/directives/0/period/end"}},
		{"too many directives", func(r *consent.Request) {
			for i := 0; i <= consent.MaxDirectives; i++ {
				r.Directives = append(r.Directives, denyOrg("x"+strconv.Itoa(i), hosp))
			}
		}, []string{"/directives"}},
		{"several at once", func(r *consent.Request) {
			r.Event.Time = consent.Event{}.Time
			r.Directives[1].Categories = []string{mh, mh}
		}, []string{"/event/time", "/directives/1/categories/1"}},
		{"invalid directives and an unconfirmed relationship: still an error", func(r *consent.Request) {
			r.Basis = regGP
			r.Directives[0].RecordedBy = ""
		}, []string{"/directives/0/recordedBy"}},
	}
	for _, tt := range tests {
		r := good()
		tt.mutate(&r)
		d, err := p.Evaluate(r)
		if err == nil {
			t.Errorf("%s: got %+v, want an error", tt.name, d)
			continue
		}
		if !cmp.Equal(d, consent.Decision{}) {
			t.Errorf("%s: got decision %+v with the error, want none", tt.name, d)
		}
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Kind != problem.Invalid {
			t.Errorf("%s: error %v is not a problem.Invalid", tt.name, err)
			continue
		}
		var got []string
		for _, v := range pe.Violations {
			got = append(got, v.Pointer)
		}
		if diff := cmp.Diff(tt.pointers, got); diff != "" {
			t.Errorf("%s: violation pointers (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := consent.Policy{ExtraSensitiveCategories: []string{"hiv", "HIV", "hiv"}, ConfidentialAllow: []consent.Basis{"neighbour", regGP, regGP}}
	err := bad.Validate()
	var pe *problem.Error
	if !errors.As(err, &pe) {
		t.Fatalf("Validate() = %v, want a *problem.Error", err)
	}
	var got []string
	for _, v := range pe.Violations {
		got = append(got, v.Pointer+" "+v.Rule)
	}
	want := []string{
		"/extraSensitiveCategories/1 category-code",
		"/extraSensitiveCategories/2 duplicate",
		"/confidentialAllow/0 basis",
		"/confidentialAllow/2 duplicate",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("violations (-want +got):\n%s", diff)
	}
	// Deciding with an invalid policy fails closed, as an internal error.
	d, err := bad.Evaluate(req(ev(), gp1, gpP, regGP))
	if err == nil || problem.KindOf(err) != problem.Internal || d.Effect != "" {
		t.Errorf("Evaluate with an invalid policy = %+v, %v; want no decision and an Internal error", d, err)
	}
	for _, p := range []consent.Policy{{}, consent.DefaultPolicy()} {
		if err := p.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", p, err)
		}
	}
}

func TestBuiltInSensitiveCategories(t *testing.T) {
	zero, extra := consent.Policy{}, consent.Policy{ExtraSensitiveCategories: []string{"hiv"}}
	tests := []struct {
		category string
		zero     bool // sensitive under the zero Policy
		extra    bool // sensitive under a policy adding "hiv"
	}{
		{consent.CategorySexualHealth, true, true},
		{consent.CategoryMentalHealth, true, true},
		{consent.CategorySafeguarding, true, true},
		{consent.CategoryGenderIdentity, true, true},
		{"sexual-health", true, true},
		{"mental-health", true, true},
		{"safeguarding", true, true},
		{"gender-identity", true, true},
		{"hiv", false, true},
		{"maternity", false, false},
		{"Sexual-Health", false, false},
		{"", false, false},
	}
	for _, tt := range tests {
		if got := zero.Sensitive(tt.category); got != tt.zero {
			t.Errorf("Policy{}.Sensitive(%q) = %v, want %v", tt.category, got, tt.zero)
		}
		if got := extra.Sensitive(tt.category); got != tt.extra {
			t.Errorf("Policy{extra hiv}.Sensitive(%q) = %v, want %v", tt.category, got, tt.extra)
		}
	}
}

// TestEvaluateDoesNotMutate: a decision must leave the request as it found
// it (the router shares one directive slice across every candidate).
func TestEvaluateDoesNotMutate(t *testing.T) {
	p := consent.DefaultPolicy()
	for _, c := range ruleCases() {
		before := cloneRequest(c.req)
		_, _ = p.Evaluate(c.req)
		if diff := cmp.Diff(before, c.req); diff != "" {
			t.Errorf("%s: request changed:\n%s", c.name, diff)
		}
	}
}

func cloneRequest(r consent.Request) consent.Request {
	r.Event.Labels = append([]string(nil), r.Event.Labels...)
	ds := make([]consent.Directive, len(r.Directives))
	for i, d := range r.Directives {
		d.Categories = append([]string(nil), d.Categories...)
		ds[i] = d
	}
	if r.Directives != nil {
		r.Directives = ds
	}
	return r
}
