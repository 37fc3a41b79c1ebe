package consent_test

import (
	"encoding/json"
	"flag"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
)

var (
	propCases = flag.Int("consent.cases", 300_000, "cases the property test generates")
	propSeed  = flag.Uint64("consent.seed", 0, "seed of the property test (0: from the clock)")
)

// ---------------------------------------------------------------------------
// The oracle: a deliberately plain reading of the rule table in doc.go,
// written apart from policy.go and shaped differently. It first works out
// the facts (which directives count, which bases the request holds, which
// labels are sensitive), each by the definition in the documentation, then
// walks a table of rows, as data, from the top. It has no regard for speed.
// ---------------------------------------------------------------------------

type oracleOutcome struct {
	Err      bool
	Decision consent.Decision
}

type oracleFacts struct {
	req       consent.Request
	policy    consent.Policy
	counting  []consent.Directive // in force: in period and not superseded
	heldBases map[consent.Basis]bool
}

func scopeKey(d consent.Directive) string {
	cats := slices.Clone(d.Categories)
	sort.Strings(cats)
	return string(d.Kind) + "|" + d.Organisation + "|" + string(d.Role) + "|" + strings.Join(cats, ",")
}

func inPeriod(p consent.Period, t time.Time) bool {
	if p.Start != nil && t.Compare(*p.Start) < 0 {
		return false
	}
	if p.End != nil && t.Compare(*p.End) > 0 {
		return false
	}
	return true
}

// about: the directive names the recipient (organisation-level) or its role.
func aboutOrg(d consent.Directive, r consent.Recipient) bool {
	return d.Organisation != "" && d.Organisation == r.ODS
}
func aboutRole(d consent.Directive, r consent.Recipient) bool {
	return d.Organisation == "" && d.Role != "" && d.Role == r.Role
}

// permitsFor lists the permit-organisations that count for the event.
func (f *oracleFacts) permitsFor() []consent.Directive {
	var out []consent.Directive
	for _, d := range f.counting {
		if d.Kind != consent.KindPermitOrganisation || !aboutOrg(d, f.req.Recipient) {
			continue
		}
		if len(d.Categories) == 0 {
			out = append(out, d)
			continue
		}
		for _, l := range f.req.Event.Labels {
			if slices.Contains(d.Categories, l) {
				out = append(out, d)
				break
			}
		}
	}
	return out
}

func (f *oracleFacts) of(kind consent.Kind, about func(consent.Directive, consent.Recipient) bool) []consent.Directive {
	var out []consent.Directive
	for _, d := range f.counting {
		if d.Kind == kind && (about == nil || about(d, f.req.Recipient)) {
			out = append(out, d)
		}
	}
	return out
}

// named picks the directive a row names: recorded last, then lowest id.
func named(ds []consent.Directive) string {
	if len(ds) == 0 {
		return ""
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool {
		if !s[i].Recorded.Equal(s[j].Recorded) {
			return s[i].Recorded.After(s[j].Recorded)
		}
		return s[i].ID < s[j].ID
	})
	return s[0].ID
}

// builtinSensitive are the categories every deployment treats as sensitive,
// written out here so that the oracle does not share the policy's list.
var builtinSensitive = []string{"sexual-health", "mental-health", "safeguarding", "gender-identity"}

func (f *oracleFacts) sensitive(l string) bool {
	return slices.Contains(builtinSensitive, l) || slices.Contains(f.policy.ExtraSensitiveCategories, l)
}

type oracleRow struct {
	effect consent.Effect
	rule   string
	notify bool
	// when returns whether the row holds, and the directives it names.
	when func(f *oracleFacts) (bool, []consent.Directive)
}

var oracleTable = []oracleRow{
	// 1
	{consent.Deny, "unknown-basis", false, func(f *oracleFacts) (bool, []consent.Directive) {
		switch f.req.Basis {
		case "registered-gp", "discharge-destination", "patient-list", "care-relationship":
			return false, nil
		}
		return true, nil
	}},
	// 2
	{consent.Deny, "relationship-unconfirmed", false, func(f *oracleFacts) (bool, []consent.Directive) {
		e, r := f.req.Event, f.req.Recipient
		switch f.req.Basis {
		case "registered-gp":
			return !(e.GPPractice != "" && e.GPPractice == r.ODS), nil
		case "discharge-destination":
			return !(e.DischargeDestination != "" && e.DischargeDestination == r.ODS), nil
		}
		return false, nil
	}},
	// 3
	{consent.Deny, "directive:deny-organisation", false, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindDenyOrganisation, aboutOrg)
		return len(ds) > 0, ds
	}},
	// 4
	{consent.Deny, "directive:confidential", false, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindConfidential, nil)
		if len(ds) == 0 && !f.req.Event.Confidential {
			return false, nil
		}
		for _, b := range f.policy.ConfidentialAllow {
			if f.heldBases[b] {
				return false, nil
			}
		}
		return true, ds
	}},
	// 5
	{consent.Deny, "policy:sensitive-category-gp-only", false, func(f *oracleFacts) (bool, []consent.Directive) {
		if f.heldBases["registered-gp"] {
			return false, nil
		}
		for _, l := range f.req.Event.Labels {
			if !f.sensitive(l) {
				continue
			}
			listed := false
			for _, p := range f.permitsFor() {
				listed = listed || slices.Contains(p.Categories, l)
			}
			if !listed {
				return true, nil
			}
		}
		return false, nil
	}},
	// 6
	{consent.Deny, "directive:deny-role", false, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindDenyRole, aboutRole)
		return len(ds) > 0 && len(f.permitsFor()) == 0, ds
	}},
	// 7
	{consent.Permit, "directive:notification-only", true, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindNotificationOnly, aboutOrg)
		return len(ds) > 0, ds
	}},
	// 8
	{consent.Permit, "directive:notification-only", true, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindNotificationOnly, aboutRole)
		return len(ds) > 0 && len(f.permitsFor()) == 0, ds
	}},
	// 9
	{consent.Permit, "directive:permit-organisation", false, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.permitsFor()
		return len(ds) > 0, ds
	}},
	// 10
	{consent.Permit, "policy:confidential-allowed", false, func(f *oracleFacts) (bool, []consent.Directive) {
		ds := f.of(consent.KindConfidential, nil)
		return len(ds) > 0 || f.req.Event.Confidential, ds
	}},
	// 11
	{consent.Permit, "relationship-confirmed", false, func(*oracleFacts) (bool, []consent.Directive) { return true, nil }},
}

// oracle decides a valid request. Validity is not its business: the
// generator knows which requests it broke.
func oracle(p consent.Policy, r consent.Request) consent.Decision {
	f := &oracleFacts{req: r, policy: p, heldBases: map[consent.Basis]bool{r.Basis: true}}
	if r.Event.GPPractice != "" && r.Event.GPPractice == r.Recipient.ODS {
		f.heldBases["registered-gp"] = true
	}
	if r.Recipient.Role != "gp-practice" {
		delete(f.heldBases, "registered-gp") // only a GP practice is anyone's registered GP
	}
	if r.Event.DischargeDestination != "" && r.Event.DischargeDestination == r.Recipient.ODS {
		f.heldBases["discharge-destination"] = true
	}
	latest := map[string]time.Time{}
	for _, d := range r.Directives {
		k := scopeKey(d)
		if t, ok := latest[k]; !ok || d.Recorded.After(t) {
			latest[k] = d.Recorded
		}
	}
	for _, d := range r.Directives {
		if d.Recorded.Equal(latest[scopeKey(d)]) && inPeriod(d.Period, r.Event.Time) {
			f.counting = append(f.counting, d)
		}
	}
	for _, row := range oracleTable {
		ok, ds := row.when(f)
		if !ok {
			continue
		}
		d := consent.Decision{Effect: row.effect, Rule: row.rule, DirectiveID: named(ds)}
		if row.rule == "directive:confidential" && len(ds) == 0 {
			d.Rule = "event:confidential" // the event, not a directive, is confidential
		}
		if row.notify {
			d.Obligations = []consent.Obligation{consent.NotificationOnly}
		}
		return d
	}
	panic("no row matched")
}

// ---------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------

var (
	genOrgs   = []string{"A81001", "A81002", "RRK", "VN4K1", "RY4"}
	genRoles  = []consent.Role{consent.RoleGPPractice, consent.RoleHospital, consent.RoleSocialCare, consent.RoleCommunity}
	genBases  = []consent.Basis{consent.BasisRegisteredGP, consent.BasisDischargeDestination, consent.BasisPatientList, consent.BasisCareRelationship}
	genLabels = []string{"mental-health", "sexual-health", "safeguarding", "gender-identity", "hiv", "maternity", "x-ray"}
	genKinds  = []consent.Kind{consent.KindDenyOrganisation, consent.KindDenyRole, consent.KindNotificationOnly, consent.KindPermitOrganisation, consent.KindConfidential}
	genBase   = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// day returns one of a few instants, so that periods, event times and
// recorded times often coincide (inclusive bounds, ties, supersession).
func day(r *rand.Rand) time.Time {
	return genBase.Add(time.Duration(r.IntN(7)-3) * 24 * time.Hour)
}

func subset[T any](r *rand.Rand, xs []T, max int) []T {
	var out []T
	for _, i := range r.Perm(len(xs))[:r.IntN(max+1)] {
		out = append(out, xs[i])
	}
	return out
}

type genCase struct {
	Policy  consent.Policy
	Request consent.Request
	Broken  string // why the request is invalid, if it is
}

func generate(r *rand.Rand) genCase {
	var c genCase
	c.Policy.ExtraSensitiveCategories = subset(r, []string{"hiv", "maternity"}, 2)
	c.Policy.ConfidentialAllow = subset(r, genBases, 2)

	rec := consent.Recipient{ODS: pick(r, genOrgs), Role: pick(r, genRoles)}
	e := consent.Event{ID: "ev", Type: "uk.carehub.discharge.v1", Publisher: "RXX", Time: day(r),
		HasDocument: r.IntN(2) == 0, Labels: subset(r, genLabels, 2), Confidential: r.IntN(6) == 0}
	basis := pick(r, genBases)
	if r.IntN(40) == 0 {
		basis = "bogus"
	}
	// Mostly confirmed relationships (rows 3 to 11 are where the work is),
	// sometimes not, sometimes confirmed by the event on another basis.
	switch r.IntN(4) {
	case 0:
		e.GPPractice = pick(r, genOrgs)
	case 1:
		e.GPPractice = ""
	default:
		if basis == consent.BasisRegisteredGP || r.IntN(3) == 0 {
			e.GPPractice = rec.ODS
		} else {
			e.GPPractice = pick(r, genOrgs)
		}
	}
	switch r.IntN(4) {
	case 0:
		e.DischargeDestination = pick(r, genOrgs)
	case 1:
	default:
		if basis == consent.BasisDischargeDestination || r.IntN(3) == 0 {
			e.DischargeDestination = rec.ODS
		}
	}
	n := r.IntN(7)
	ids := r.Perm(n) // ids in an order unrelated to positions
	var ds []consent.Directive
	for i := 0; i < n; i++ {
		d := consent.Directive{ID: "d" + string(rune('a'+ids[i])), Kind: pick(r, genKinds), Recorded: day(r), RecordedBy: "X26"}
		org := pick(r, genOrgs)
		if r.IntN(2) == 0 {
			org = rec.ODS
		}
		role := pick(r, genRoles)
		if r.IntN(2) == 0 {
			role = rec.Role
		}
		switch d.Kind {
		case consent.KindDenyOrganisation:
			d.Organisation = org
		case consent.KindDenyRole:
			d.Role = role
		case consent.KindNotificationOnly:
			if r.IntN(2) == 0 {
				d.Organisation = org
			} else {
				d.Role = role
			}
		case consent.KindPermitOrganisation:
			d.Organisation = org
			d.Categories = subset(r, genLabels, 2)
		}
		if r.IntN(2) == 0 {
			s := day(r)
			d.Period.Start = &s
		}
		if r.IntN(2) == 0 {
			end := day(r)
			if d.Period.Start != nil && end.Before(*d.Period.Start) {
				end = *d.Period.Start
			}
			d.Period.End = &end
		}
		ds = append(ds, d)
	}
	c.Request = consent.Request{Event: e, Recipient: rec, Basis: basis, Directives: ds}
	if r.IntN(30) == 0 {
		breakRequest(r, &c)
	}
	return c
}

// breakRequest makes a valid request invalid in one of the ways Evaluate
// must refuse, and says which.
func breakRequest(r *rand.Rand, c *genCase) {
	q := &c.Request
	ds := q.Directives
	type breaker struct {
		name string
		ok   bool
		do   func()
	}
	bs := []breaker{
		{"zero event time", true, func() { q.Event.Time = time.Time{} }},
		{"label not a code", true, func() { q.Event.Labels = append(q.Event.Labels, "Mental Health") }},
		{"recipient ODS lower case", true, func() { q.Recipient.ODS = strings.ToLower(q.Recipient.ODS) }},
		{"recipient role unknown", true, func() { q.Recipient.Role = "pharmacy" }},
		{"directive without id", len(ds) > 0, func() { ds[0].ID = "" }},
		{"duplicate id", len(ds) > 1, func() { ds[1].ID = ds[0].ID }},
		{"id shaped like an NHS number", len(ds) > 0, func() { ds[0].ID = "9434765919" }},
		{"unknown kind", len(ds) > 0, func() { ds[0].Kind = "share-with-everyone" }},
		{"organisation on a deny-role", len(ds) > 0, func() {
			ds[0] = consent.Directive{ID: ds[0].ID, Kind: consent.KindDenyRole, Role: consent.RoleHospital,
				Organisation: "RRK", Recorded: ds[0].Recorded, RecordedBy: "X26"}
		}},
		{"period backwards", len(ds) > 0, func() {
			s, e := genBase, genBase.Add(-time.Second)
			ds[0].Period = consent.Period{Start: &s, End: &e}
		}},
		{"zero recorded", len(ds) > 0, func() { ds[0].Recorded = time.Time{} }},
		{"categories on a deny", len(ds) > 0, func() {
			ds[0] = consent.Directive{ID: ds[0].ID, Kind: consent.KindDenyOrganisation, Organisation: "RRK",
				Categories: []string{"mental-health"}, Recorded: ds[0].Recorded, RecordedBy: "X26"}
		}},
	}
	for {
		b := pick(r, bs)
		if b.ok {
			b.do()
			c.Broken = b.name
			return
		}
	}
}

func cloneCase(c genCase) genCase {
	c.Policy.ExtraSensitiveCategories = slices.Clone(c.Policy.ExtraSensitiveCategories)
	c.Policy.ConfidentialAllow = slices.Clone(c.Policy.ConfidentialAllow)
	c.Request = cloneRequest(c.Request)
	return c
}

// disagree reports how the Policy and the oracle differ on c ("" when they
// agree), and checks the contract on the way.
func disagree(c genCase, decide decideFunc) string {
	got, err := decide(c.Policy, c.Request)
	if c.Broken != "" {
		switch {
		case err == nil:
			return "want an error (" + c.Broken + "), got " + jsonString(got)
		case !sameDecision(got, consent.Decision{}):
			return "an error came with a decision " + jsonString(got)
		}
		return ""
	}
	if err != nil {
		return "unexpected error: " + err.Error()
	}
	want := oracle(c.Policy, c.Request)
	if !sameDecision(got, want) {
		return "got  " + jsonString(got) + "\n\twant " + jsonString(want)
	}
	if got.Rule == "" || (got.Effect == consent.Deny && len(got.Obligations) > 0) {
		return "contract broken: " + jsonString(got)
	}
	return ""
}

// sameDecision compares decisions, nil and empty obligations alike (cmp.Equal
// is too slow for hundreds of thousands of cases).
func sameDecision(a, b consent.Decision) bool {
	return a.Effect == b.Effect && a.Rule == b.Rule && a.DirectiveID == b.DirectiveID && slices.Equal(a.Obligations, b.Obligations)
}

type decideFunc func(consent.Policy, consent.Request) (consent.Decision, error)

func evaluate(p consent.Policy, r consent.Request) (consent.Decision, error) { return p.Evaluate(r) }

// shrink removes what it can from a failing case while it still fails.
func shrink(c genCase, decide decideFunc) genCase {
	for changed := true; changed; {
		changed = false
		try := func(mut func(*genCase)) {
			n := cloneCase(c)
			mut(&n)
			if disagree(n, decide) != "" {
				c, changed = n, true
			}
		}
		for i := range c.Request.Directives {
			if i < len(c.Request.Directives) {
				try(func(n *genCase) { n.Request.Directives = slices.Delete(n.Request.Directives, i, i+1) })
			}
		}
		for i := range c.Request.Event.Labels {
			if i < len(c.Request.Event.Labels) {
				try(func(n *genCase) { n.Request.Event.Labels = slices.Delete(n.Request.Event.Labels, i, i+1) })
			}
		}
		for i := range c.Request.Directives {
			if i < len(c.Request.Directives) && (c.Request.Directives[i].Period != consent.Period{}) {
				try(func(n *genCase) { n.Request.Directives[i].Period = consent.Period{} })
			}
			if i < len(c.Request.Directives) && len(c.Request.Directives[i].Categories) > 0 {
				try(func(n *genCase) { n.Request.Directives[i].Categories = nil })
			}
		}
		if len(c.Policy.ExtraSensitiveCategories) > 0 {
			try(func(n *genCase) { n.Policy.ExtraSensitiveCategories = nil })
		}
		if len(c.Policy.ConfidentialAllow) > 0 {
			try(func(n *genCase) { n.Policy.ConfidentialAllow = nil })
		}
	}
	return c
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func TestPropertyAgainstOracle(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	n := *propCases
	if testing.Short() && n > 30_000 {
		n = 30_000
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	start := time.Now()
	rows := map[string]int{}
	broken := 0
	for i := 0; i < n; i++ {
		c := generate(r)
		if msg := disagree(cloneCase(c), evaluate); msg != "" {
			m := shrink(c, evaluate)
			t.Fatalf("case %d of seed %d (rerun: go test ./consent/ -run TestPropertyAgainstOracle -consent.seed=%d):\n\t%s\nminimal case:\n%s\n\t%s",
				i, seed, seed, msg, indentJSON(m), disagree(cloneCase(m), evaluate))
		}
		if c.Broken != "" {
			broken++
		} else {
			rows[oracle(c.Policy, c.Request).Rule]++
		}
	}
	t.Logf("seed %d: %d cases (%d invalid) agreed in %v; rules: %v", seed, n, broken, time.Since(start).Round(time.Millisecond), rows)
	// A generator that never reaches a row tests nothing about it.
	for _, row := range oracleTable {
		if rows[row.rule] < n/2000 {
			t.Errorf("rule %s decided only %d of %d cases: the generator does not reach it", row.rule, rows[row.rule], n)
		}
	}
}

func indentJSON(c genCase) string {
	b, _ := json.MarshalIndent(c, "\t", "  ")
	return "\t" + string(b)
}

// TestPropertyCatchesMutants: the property test must be able to fail. Each
// mutant is Policy with one rule of the table subtly broken; the generator
// and oracle must find a disagreement, and the shrinker must cut it down to
// a case a person can read.
func TestPropertyCatchesMutants(t *testing.T) {
	mutants := map[string]decideFunc{
		// The leak the issue names: a permit-organisation lifting deny-organisation.
		"permit lifts deny-organisation": func(p consent.Policy, r consent.Request) (consent.Decision, error) {
			d, err := p.Evaluate(r)
			if err == nil && d.Rule == consent.RuleDenyOrganisation {
				for _, x := range r.Directives {
					if x.Kind == consent.KindPermitOrganisation && x.Organisation == r.Recipient.ODS {
						return consent.Decision{Effect: consent.Permit, Rule: consent.RulePermitOrganisation, DirectiveID: x.ID}, nil
					}
				}
			}
			return d, err
		},
		// Periods read as half-open (end excluded).
		"end exclusive": func(p consent.Policy, r consent.Request) (consent.Decision, error) {
			for i := range r.Directives {
				if e := r.Directives[i].Period.End; e != nil && e.Equal(r.Event.Time) {
					r.Directives = slices.Delete(slices.Clone(r.Directives), i, i+1)
					break
				}
			}
			return p.Evaluate(r)
		},
		// The oldest, not the latest, statement of a scope wins.
		"oldest supersedes": func(p consent.Policy, r consent.Request) (consent.Decision, error) {
			ds := slices.Clone(r.Directives)
			for i := range ds {
				ds[i].Recorded = genBase.Add(genBase.Sub(ds[i].Recorded))
			}
			r.Directives = ds
			return p.Evaluate(r)
		},
		// The registered GP only by the basis asked on.
		"registered GP by basis only": func(p consent.Policy, r consent.Request) (consent.Decision, error) {
			if r.Basis != consent.BasisRegisteredGP {
				r.Event.GPPractice = ""
			}
			return p.Evaluate(r)
		},
		// Validation skipped for categories on a deny.
		"lenient validation": func(p consent.Policy, r consent.Request) (consent.Decision, error) {
			ds := slices.Clone(r.Directives)
			for i := range ds {
				if ds[i].Kind != consent.KindPermitOrganisation {
					ds[i].Categories = nil
				}
			}
			r.Directives = ds
			return p.Evaluate(r)
		},
	}
	for name, m := range mutants {
		r := rand.New(rand.NewPCG(7, 11))
		found := false
		for i := 0; i < 300_000 && !found; i++ {
			c := generate(r)
			if disagree(cloneCase(c), m) == "" {
				continue
			}
			found = true
			small := shrink(c, m)
			if disagree(cloneCase(small), m) == "" {
				t.Errorf("%s: the shrunk case no longer fails", name)
			}
			if len(small.Request.Directives) > 3 {
				t.Errorf("%s: shrunk to %d directives, want at most 3:\n%s", name, len(small.Request.Directives), indentJSON(small))
			}
		}
		if !found {
			t.Errorf("mutant %q survived the property test", name)
		}
	}
}
