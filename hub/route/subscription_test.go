package route

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/schemas/event"
)

func listSubs(t *testing.T) *Subscriptions {
	t.Helper()
	adm := map[string]bool{event.TypeAdmission: true}
	all := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true}
	s, err := NewSubscriptions([]Subscription{
		{ID: "gp", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "home", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: all},
		{ID: "team", Recipient: consent.Recipient{ODS: "8HV48", Role: consent.RoleCommunity}, Basis: consent.BasisPatientList, Types: all,
			Patients: patientlist.Set{"p1_alice": {}, "p1_bob": {}}},
		{ID: "hospice", Recipient: consent.Recipient{ODS: "NQ123", Role: consent.RoleCommunity}, Basis: consent.BasisPatientList, Types: adm,
			Patients: patientlist.Set{"p1_alice": {}}},
		{ID: "gp-list", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisPatientList, Types: all,
			Patients: patientlist.Set{"p1_alice": {}}},
		{ID: "self", Recipient: consent.Recipient{ODS: "RX1", Role: consent.RoleHospital}, Basis: consent.BasisPatientList, Types: all,
			Patients: patientlist.Set{"p1_alice": {}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMatch(t *testing.T) {
	s := listSubs(t)
	tests := []struct {
		name string
		ev   event.Event
		key  string
		want []string // subscription ids, sorted
	}{
		{"registered GP and destination", event.Event{Type: event.TypeDischarge, Publisher: "RX1",
			Patient: event.Patient{GPPractice: "A81001"}, DischargeDestination: "VM123"}, "p1_carol", []string{"gp", "home"}},
		{"on two lists, and the GP's own list", event.Event{Type: event.TypeAdmission, Publisher: "RX1",
			Patient: event.Patient{GPPractice: "A81001"}}, "p1_alice", []string{"gp", "gp-list", "hospice", "team"}},
		{"a list's types filter", event.Event{Type: event.TypeDischarge, Publisher: "RX1"}, "p1_alice", []string{"gp-list", "team"}},
		{"on one list", event.Event{Type: event.TypeDischarge, Publisher: "RX1"}, "p1_bob", []string{"team"}},
		{"on no list", event.Event{Type: event.TypeDischarge, Publisher: "RX1"}, "p1_carol", nil},
		{"no key, no list", event.Event{Type: event.TypeDischarge, Publisher: "RX1"}, "", nil},
		{"the publisher's own list", event.Event{Type: event.TypeDischarge, Publisher: "8HV48"}, "p1_bob", nil},
		{"type nobody wants", event.Event{Type: event.TypeCarePlan, Publisher: "RX1",
			Patient: event.Patient{GPPractice: "A81001"}}, "p1_alice", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, c := range s.Match(&tt.ev, tt.key) {
				got = append(got, c.Subscription.ID)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewSubscriptionsRejects(t *testing.T) {
	gp := consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}
	list := patientlist.Set{"p1_alice": {}}
	tests := []struct {
		name string
		sub  Subscription
		want string
	}{
		{"unknown basis", Subscription{ID: "s", Recipient: gp, Basis: "postcode"}, `unknown basis "postcode"`},
		{"care relationship", Subscription{ID: "s", Recipient: gp, Basis: consent.BasisCareRelationship}, "cannot be matched yet"},
		{"list without patients", Subscription{ID: "s", Recipient: gp, Basis: consent.BasisPatientList}, "needs its patient list"},
		{"patients on another basis", Subscription{ID: "s", Recipient: gp, Basis: consent.BasisRegisteredGP, Patients: list}, "only a patient-list subscription"},
		{"unknown role", Subscription{ID: "s", Recipient: consent.Recipient{ODS: "X1", Role: "dentist"}, Basis: consent.BasisRegisteredGP}, `unknown role "dentist"`},
	}
	for _, tt := range tests {
		_, err := NewSubscriptions([]Subscription{tt.sub})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	if _, err := NewSubscriptions([]Subscription{{ID: "s", Recipient: gp, Basis: consent.BasisPatientList, Patients: patientlist.Set{}}}); err != nil {
		t.Errorf("an empty list is a list: got %v", err)
	}
}

// TestPatientListDecidedByPolicy: a recipient on a patient list gets the
// event under the deployment's policy (the list confirms the relationship),
// and a patient's deny-role still wins over the list.
func TestPatientListDecidedByPolicy(t *testing.T) {
	policy := consent.DefaultPolicy()
	ev := &event.Event{ID: "e1", Type: event.TypeDischarge, Publisher: "RX1", Time: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)}
	tests := []struct {
		name string
		dirs Directives
		want consent.Effect
		rule string
	}{
		{"on the list", NoDirectives{}, consent.Permit, "relationship-confirmed"},
		{"patient denies community", staticDirectives{{ID: "d", Kind: consent.KindDenyRole, Role: consent.RoleCommunity, RecordedBy: "x", Recorded: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}},
			consent.Deny, "directive:deny-role"},
	}
	for _, tt := range tests {
		r := newRouter(t, listSubs(t), &policy, tt.dirs, &fakePub{})
		dec, err := r.Decide(context.Background(), ev, "p1_bob")
		if err != nil {
			t.Fatal(err)
		}
		v := dec.Verdicts
		if len(v) != 1 || v[0].Subscription.ID != "team" || v[0].Decision.Effect != tt.want || v[0].Decision.Rule != tt.rule || v[0].Copy != (tt.want == consent.Permit) {
			t.Errorf("%s: got %+v, want one verdict for team: %v by %s", tt.name, v, tt.want, tt.rule)
		}
	}
}

// TestSetSubscriptionsAppliesToTheNextEvent: swapped subscriptions (patient
// lists reloaded) decide every event after the call; nil is ignored.
func TestSetSubscriptionsAppliesToTheNextEvent(t *testing.T) {
	r := newRouter(t, listSubs(t), consent.Relationship{}, NoDirectives{}, &fakePub{})
	ev := &event.Event{ID: "e1", Type: event.TypeDischarge, Publisher: "RX1", Time: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)}
	count := func() int {
		dec, err := r.Decide(context.Background(), ev, "p1_carol")
		if err != nil {
			t.Fatal(err)
		}
		return len(dec.Verdicts)
	}
	if got := count(); got != 0 {
		t.Fatalf("before: got %d verdicts for a patient on no list, want 0", got)
	}
	next, err := NewSubscriptions([]Subscription{{ID: "team", Recipient: consent.Recipient{ODS: "8HV48", Role: consent.RoleCommunity},
		Basis: consent.BasisPatientList, Types: map[string]bool{event.TypeDischarge: true}, Patients: patientlist.Set{"p1_carol": {}}}})
	if err != nil {
		t.Fatal(err)
	}
	r.SetSubscriptions(next)
	r.SetSubscriptions(nil)
	if got := count(); got != 1 {
		t.Errorf("after: got %d verdicts, want 1 (the team's)", got)
	}
}
