package consent_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
)

// ---------------------------------------------------------------------------
// Corrections, merges and delivery-time re-checks, against the oracle.
//
// The oracle below reads the README's words ("what each recipient
// receives", "corrections", "merges", "delivery-time re-check") as a list
// of conditions, each written from the text, and calls the table oracle
// above for the decisions underneath; it shares no code with followup.go.
// ---------------------------------------------------------------------------

type composedCase struct {
	Policy   consent.Policy
	Request  consent.Request
	Relation consent.Relation
	Original consent.Original
	// Others are the directive sets of numbers merged into the patient's.
	Others [][]consent.Directive
	// Later are the patient's directives at the moment of delivery.
	Later []consent.Directive
}

// oracleDecide reads "deny wins where the numbers' directives conflict":
// each number's directives decide on their own; any deny is the answer
// (the surviving number's first, then in merge order); else a
// notification-only answer if any (same order); else the surviving
// number's.
func oracleDecide(p consent.Policy, r consent.Request, others [][]consent.Directive) consent.Decision {
	all := []consent.Decision{oracle(p, r)}
	for _, o := range others {
		q := r
		q.Directives = o
		all = append(all, oracle(p, q))
	}
	if i := slices.IndexFunc(all, func(d consent.Decision) bool { return d.Effect == consent.Deny }); i >= 0 {
		return all[i]
	}
	if i := slices.IndexFunc(all, func(d consent.Decision) bool {
		return slices.Contains(d.Obligations, consent.NotificationOnly)
	}); i >= 0 {
		return all[i]
	}
	return all[0]
}

// oracleFollowUp reads the README's corrections section.
func oracleFollowUp(c composedCase) consent.Decision {
	r := c.Request
	o := c.Original
	// "carries the sensitivity of every earlier event on the encounter"
	if c.Relation != consent.Standalone {
		labels := slices.Clone(r.Event.Labels)
		for _, l := range o.Labels {
			if !slices.Contains(labels, l) {
				labels = append(labels, l)
			}
		}
		r.Event.Labels = labels
	}
	relationshipFromOriginal := false
	switch c.Relation {
	case consent.Corrects:
		// "to every recipient that received the original and to nobody else"
		if !o.Received {
			return consent.Decision{Effect: consent.Deny, Rule: "follow-up:original-not-received"}
		}
		r.Basis = o.Basis
		relationshipFromOriginal = true
	case consent.Updates:
		// "to nobody who was withheld it"
		if o.Withheld && !o.Received {
			return consent.Decision{Effect: consent.Deny, Rule: "follow-up:original-withheld"}
		}
		relationshipFromOriginal = o.Received && r.Basis == o.Basis
	}
	if relationshipFromOriginal {
		if r.Basis == consent.BasisRegisteredGP {
			r.Event.GPPractice = r.Recipient.ODS
		}
		if r.Basis == consent.BasisDischargeDestination {
			r.Event.DischargeDestination = r.Recipient.ODS
		}
	}
	return oracleDecide(c.Policy, r, c.Others)
}

func generateComposed(r *rand.Rand) composedCase {
	var c composedCase
	for {
		g := generate(r)
		if g.Broken == "" {
			c.Policy, c.Request = g.Policy, g.Request
			break
		}
	}
	c.Relation = pick(r, []consent.Relation{consent.Standalone, consent.Continues, consent.Updates, consent.Corrects})
	c.Original = consent.Original{Received: r.IntN(2) == 0, Withheld: r.IntN(2) == 0, Basis: pick(r, genBases),
		Labels: subset(r, genLabels, 2)}
	if r.IntN(2) == 0 {
		c.Original.Basis = c.Request.Basis
	}
	for i := r.IntN(3); i > 0; i-- {
		c.Others = append(c.Others, directivesLike(r, c.Request))
	}
	// The directives at delivery: the routed ones with some removed and
	// some recorded since.
	for _, d := range c.Request.Directives {
		if r.IntN(3) > 0 {
			c.Later = append(c.Later, d)
		}
	}
	extra := directivesLike(r, c.Request)
	for i := range extra {
		extra[i].ID = "later-" + extra[i].ID
	}
	c.Later = append(c.Later, extra...)
	return c
}

// directivesLike generates a valid directive set about the request's
// recipient (half the time) and its role.
func directivesLike(r *rand.Rand, q consent.Request) []consent.Directive {
	for {
		g := generate(r)
		if g.Broken != "" {
			continue
		}
		ds := g.Request.Directives
		for i := range ds {
			if ds[i].Organisation != "" && r.IntN(2) == 0 {
				ds[i].Organisation = q.Recipient.ODS
			}
			if ds[i].Role != "" && r.IntN(2) == 0 {
				ds[i].Role = q.Recipient.Role
			}
		}
		return ds
	}
}

type composedImpl struct {
	followUp func(consent.Policy, composedCase) (consent.Decision, error)
	recheck  func(routed, now consent.Decision) consent.Decision
}

var realComposed = composedImpl{
	followUp: func(p consent.Policy, c composedCase) (consent.Decision, error) {
		return consent.FollowUp(context.Background(), consent.Merged{Decider: &p, Others: c.Others}, c.Request, c.Relation, c.Original)
	},
	recheck: consent.Recheck,
}

// disagreeComposed compares the implementation with the oracle on c: the
// routing decision of a follow-up of a merged patient, and the decision at
// delivery after the directives changed to c.Later.
func disagreeComposed(c composedCase, impl composedImpl) string {
	got, err := impl.followUp(c.Policy, c)
	if err != nil {
		return "unexpected error: " + err.Error()
	}
	want := oracleFollowUp(c)
	if !sameDecision(got, want) {
		return "routing: got  " + jsonString(got) + "\n\twant " + jsonString(want)
	}
	// At delivery: the same request, the directives as they are then.
	later := c
	later.Request.Directives = c.Later
	now, err := impl.followUp(c.Policy, later)
	if err != nil {
		return "unexpected error at delivery: " + err.Error()
	}
	at := impl.recheck(got, now)
	wantNow := oracleFollowUp(later)
	// "A copy now denied is not sent; a copy is never sent in a fuller
	// form than both decisions allow."
	if got.Permitted() {
		if at.Permitted() != wantNow.Permitted() {
			return "re-check: delivered " + jsonString(at.Permitted()) + ", want " + jsonString(wantNow.Permitted()) +
				"\n\trouted " + jsonString(got) + "\n\tnow    " + jsonString(wantNow)
		}
		thin := slices.Contains(want.Obligations, consent.NotificationOnly) || slices.Contains(wantNow.Obligations, consent.NotificationOnly)
		if at.Permitted() && at.Has(consent.NotificationOnly) != thin {
			return "re-check: notification-only " + jsonString(at.Has(consent.NotificationOnly)) + ", want " + jsonString(thin)
		}
		if !at.Permitted() && at.Rule != wantNow.Rule {
			return "re-check: rule " + at.Rule + ", want " + wantNow.Rule
		}
	}
	return ""
}

func TestPropertyFollowUpsMergesAndRechecks(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	n := *propCases / 3
	if testing.Short() && n > 10_000 {
		n = 10_000
	}
	r := rand.New(rand.NewPCG(seed, seed^0x51ed270b27cf1d3))
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		c := generateComposed(r)
		if msg := disagreeComposed(c, realComposed); msg != "" {
			t.Fatalf("case %d of seed %d (rerun: go test ./consent/ -run TestPropertyFollowUpsMergesAndRechecks -consent.seed=%d):\n\t%s\ncase:\n\t%s",
				i, seed, seed, msg, jsonString(c))
		}
		w := oracleFollowUp(c)
		seen[w.Rule]++
		if len(c.Others) > 0 && w.Effect == consent.Deny && w.DirectiveID != "" && !slices.ContainsFunc(c.Request.Directives, func(d consent.Directive) bool { return d.ID == w.DirectiveID }) {
			seen["deny-by-merged-number"]++
		}
		later := c
		later.Request.Directives = c.Later
		if w.Permitted() && !oracleFollowUp(later).Permitted() {
			seen["withheld-at-delivery"]++
		}
	}
	t.Logf("seed %d: %d cases agreed; %v", seed, n, seen)
	for _, want := range []string{"follow-up:original-not-received", "follow-up:original-withheld", "deny-by-merged-number", "withheld-at-delivery",
		"directive:deny-organisation", "policy:sensitive-category-gp-only", "directive:notification-only"} {
		if seen[want] < n/1000 {
			t.Errorf("%s reached in only %d of %d cases: the generator does not reach it", want, seen[want], n)
		}
	}
}

// TestPropertyFollowUpsCatchesMutants: each mutant gets one of the new
// rules wrong; the generator and oracle must catch it.
func TestPropertyFollowUpsCatchesMutants(t *testing.T) {
	mutants := map[string]composedImpl{
		// The leak the issue names: a correction routed by today's
		// subscriptions, not by who received the original.
		"correction ignores the original": {followUp: func(p consent.Policy, c composedCase) (consent.Decision, error) {
			if c.Relation == consent.Corrects {
				c.Relation = consent.Standalone
			}
			return realComposed.followUp(p, c)
		}, recheck: consent.Recheck},
		// The earlier events' categories forgotten.
		"labels not carried": {followUp: func(p consent.Policy, c composedCase) (consent.Decision, error) {
			c.Original.Labels = nil
			return realComposed.followUp(p, c)
		}, recheck: consent.Recheck},
		// The retired number's directives lost (the A40 finding).
		"merge loses directives": {followUp: func(p consent.Policy, c composedCase) (consent.Decision, error) {
			c.Others = nil
			return realComposed.followUp(p, c)
		}, recheck: consent.Recheck},
		// Directives of both numbers pooled into one set.
		"merge pools directives": {followUp: func(p consent.Policy, c composedCase) (consent.Decision, error) {
			for _, o := range c.Others {
				c.Request.Directives = append(slices.Clone(c.Request.Directives), o...)
			}
			c.Others = nil
			return realComposed.followUp(p, c)
		}, recheck: consent.Recheck},
		// The queued copy delivered as routed (the delivery-time finding).
		"no re-check": {followUp: realComposed.followUp, recheck: func(routed, _ consent.Decision) consent.Decision { return routed }},
		// A thin copy sent in full because the directives now allow it.
		"re-check widens": {followUp: realComposed.followUp, recheck: func(_, now consent.Decision) consent.Decision { return now }},
	}
	for name, m := range mutants {
		r := rand.New(rand.NewPCG(3, 5))
		found := false
		for i := 0; i < 200_000 && !found; i++ {
			c := generateComposed(r)
			found = disagreeComposed(c, m) != ""
		}
		if !found {
			t.Errorf("mutant %q survived the property test", name)
		}
	}
}
