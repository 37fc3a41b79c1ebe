package consenttest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/carehub/carehub/consent"
)

func policyDecider(p consent.Policy) consent.Decider { return &p }

func TestPolicyConforms(t *testing.T) {
	Run(t, Features{Directives: true, RuleNames: true}, policyDecider)
}

func TestRelationshipConforms(t *testing.T) {
	Run(t, Features{}, func(consent.Policy) consent.Decider { return consent.Relationship{} })
}

// A decider that denies everything keeps the contract: it is useless but
// never leaks, and the suite without Features accepts it.
func TestDenyAllConforms(t *testing.T) {
	Run(t, Features{}, func(consent.Policy) consent.Decider {
		return consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
			return consent.Decision{Effect: consent.Deny, Rule: "deny-all"}, nil
		})
	})
}

// recorder is a testing.TB that records failures instead of failing the
// test it runs in. Only the methods the suite uses are implemented; the
// embedded nil TB makes any other call panic, which the test reports.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	msgs   []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}
func (r *recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recorder) Fail()             { r.Errorf("Fail") }
func (r *recorder) FailNow()          { r.Fatalf("FailNow") }
func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Log(...any)          {}
func (r *recorder) Name() string        { return "recorder" }

// runChecks runs every check for f against nd, each with its own recorder,
// and returns the names of the checks that failed with their messages.
func runChecks(f Features, nd NewDecider) map[string][]string {
	failed := map[string][]string{}
	for _, c := range checks(f) {
		r := &recorder{}
		done := make(chan struct{})
		go func() { // Fatalf ends the goroutine with runtime.Goexit
			defer close(done)
			c.run(r, f, nd)
		}()
		<-done
		if r.Failed() {
			failed[c.name] = r.msgs
		}
	}
	return failed
}

// wrap builds a broken decider from the Policy and a change to its answer.
func wrap(change func(r consent.Request, d consent.Decision, err error) (consent.Decision, error)) NewDecider {
	return func(p consent.Policy) consent.Decider {
		return consent.DeciderFunc(func(ctx context.Context, r consent.Request) (consent.Decision, error) {
			d, err := p.Evaluate(r)
			return change(r, d, err)
		})
	}
}

// TestBrokenDecidersFail: the suite must fail each deliberately broken
// Decider, in the check that is about its fault.
func TestBrokenDecidersFail(t *testing.T) {
	var calls atomic.Int64
	tests := []struct {
		name     string
		features Features
		nd       NewDecider
		want     string // the check that must fail
	}{
		{"permits with an error", Features{Directives: true}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err != nil {
				return consent.Decision{Effect: consent.Permit, Rule: "oops"}, err
			}
			return d, nil
		}), "no-permit-with-error"},
		{"permits with an error only when the context is cancelled", Features{}, func(consent.Policy) consent.Decider {
			return consent.DeciderFunc(func(ctx context.Context, r consent.Request) (consent.Decision, error) {
				if ctx.Err() != nil {
					return consent.Decision{Effect: consent.Permit, Rule: "late"}, ctx.Err()
				}
				return consent.Relationship{}.Decide(ctx, r)
			})
		}, "no-permit-with-error"},
		{"refuses everything with an error", Features{}, func(consent.Policy) consent.Decider {
			return consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
				return consent.Decision{}, errors.New("not today")
			})
		}, "decides-valid-requests"},
		{"no rule", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			d.Rule = ""
			return d, err
		}), "decision-shape"},
		{"a rule that is a sentence", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			d.Rule = "Permitted because I said so"
			return d, err
		}), "decision-shape"},
		{"an effect that is neither", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err == nil && d.Effect == consent.Deny {
				d.Effect = "refuse"
			}
			return d, err
		}), "decision-shape"},
		{"obligations on a deny", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if d.Effect == consent.Deny {
				d.Obligations = []consent.Obligation{consent.NotificationOnly}
			}
			return d, err
		}), "decision-shape"},
		{"an obligation nobody knows", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if d.Effect == consent.Permit {
				d.Obligations = []consent.Obligation{"redact-address"}
			}
			return d, err
		}), "decision-shape"},
		{"permits an unconfirmed relationship", Features{}, func(p consent.Policy) consent.Decider {
			return consent.DeciderFunc(func(_ context.Context, r consent.Request) (consent.Decision, error) {
				if r.Basis == consent.BasisRegisteredGP || r.Basis == consent.BasisDischargeDestination {
					r.Basis = consent.BasisPatientList // trusts the subscription, not the event
				}
				return p.Evaluate(r)
			})
		}, "denies-unconfirmed-relationship"},
		{"the recipient's ODS code in the rule", Features{}, wrap(func(r consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err == nil {
				d.Rule += ":" + strings.ToLower(r.Recipient.ODS)
			}
			return d, err
		}), "no-request-data-in-rule"},
		{"the directive's recorder in the rule", Features{}, wrap(func(r consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err == nil && len(r.Directives) > 0 {
				d.Rule += "." + r.Directives[0].RecordedBy
			}
			return d, err
		}), "no-request-data-in-rule"},
		{"a directive id from elsewhere", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err == nil {
				d.DirectiveID = "dir-zzz"
			}
			return d, err
		}), "no-request-data-in-rule"},
		{"changes its mind", Features{}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if calls.Add(1)%2 == 0 {
				d.Rule += "-again"
			}
			return d, err
		}), "deterministic"},
		{"changes the request", Features{}, wrap(func(r consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			slices.Reverse(r.Directives)
			if len(r.Directives) > 0 {
				r.Directives[0].Recorded = r.Directives[0].Recorded.Add(1)
			}
			return d, err
		}), "does-not-mutate-request"},
		{"panics on a confidential patient", Features{}, wrap(func(r consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			for _, x := range r.Directives {
				if x.Kind == consent.KindConfidential {
					panic("confidential")
				}
			}
			return d, err
		}), "decides-valid-requests"},
		{"a permit lifts deny-organisation", Features{Directives: true}, wrap(func(r consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if d.Rule == consent.RuleDenyOrganisation {
				for _, x := range r.Directives {
					if x.Kind == consent.KindPermitOrganisation && x.Organisation == r.Recipient.ODS {
						return consent.Decision{Effect: consent.Permit, Rule: consent.RulePermitOrganisation, DirectiveID: x.ID}, nil
					}
				}
			}
			return d, err
		}), "rule-table"},
		{"drops notification-only", Features{Directives: true}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			d.Obligations = nil
			return d, err
		}), "rule-table"},
		{"ignores the deployment's sensitive categories", Features{Directives: true}, func(p consent.Policy) consent.Decider {
			p.ExtraSensitiveCategories = nil
			return &p
		}, "rule-table"},
		{"its own rule names, claiming consent's", Features{RuleNames: true}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if d.Rule == consent.RuleDenyRole {
				d.Rule = "deny-role"
			}
			return d, err
		}), "rule-table"},
		{"decides invalid requests", Features{Directives: true}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if err != nil {
				return consent.Decision{Effect: consent.Deny, Rule: "invalid"}, nil
			}
			return d, nil
		}), "refuses-invalid-requests"},
		{"Relationship, claiming directives", Features{Directives: true}, func(consent.Policy) consent.Decider { return consent.Relationship{} }, "rule-table"},
	}
	for _, tt := range tests {
		failed := runChecks(tt.features, tt.nd)
		if _, ok := failed[tt.want]; !ok {
			var names []string
			for n := range failed {
				names = append(names, n)
			}
			slices.Sort(names)
			t.Errorf("%s: check %q did not fail (failed: %v)", tt.name, tt.want, names)
		}
	}
}

// TestCorrectDecidersPassUnderTheRecorder: the recorder itself does not make
// good deciders fail (so the failures above are the deciders' own).
func TestCorrectDecidersPassUnderTheRecorder(t *testing.T) {
	for name, c := range map[string]struct {
		f  Features
		nd NewDecider
	}{
		"Policy":               {Features{Directives: true, RuleNames: true}, policyDecider},
		"Policy, effects only": {Features{Directives: true}, policyDecider},
		"Relationship":         {Features{}, func(consent.Policy) consent.Decider { return consent.Relationship{} }},
		"renamed rules, effects": {Features{Directives: true}, wrap(func(_ consent.Request, d consent.Decision, err error) (consent.Decision, error) {
			if d.Rule == consent.RuleDenyRole {
				d.Rule = "deny-role"
			}
			return d, err
		})},
	} {
		if failed := runChecks(c.f, c.nd); len(failed) > 0 {
			t.Errorf("%s failed: %v", name, failed)
		}
	}
}

// TestCorpusCoversEveryRow: the suite holds a case for each row of
// consent's rule table (rows 1 to 11).
func TestCorpusCoversEveryRow(t *testing.T) {
	seen := map[int]bool{}
	for _, c := range rows() {
		seen[c.row] = true
	}
	for r := 1; r <= 11; r++ {
		if !seen[r] {
			t.Errorf("no case for row %d", r)
		}
	}
}
