package route

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
)

// The numbers of the number-correction tests: the patient was known by
// oldNumber until an A47 corrected it to the examples' number
// (patientKey).
var oldNumber = func() nhs.Number { n, _ := nhs.Parse("9990500010"); return n }()

func oldKey() string { return testPseudo.Pseudonym(oldNumber) }

// correctionSubs: the GP takes every type; the care home VM123 holds the
// OLD number on its residents list and takes admissions, discharges, their
// cancellations and patient updates and merges; the care home VM456 takes
// admissions and discharges as the discharge destination only (no patient
// updates); the community team CN001 holds the NEW number on its caseload
// and takes every type.
func correctionSubs(t testing.TB) *Subscriptions {
	t.Helper()
	two := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true}
	residents := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true, event.TypeAdmissionCancelled: true,
		event.TypeDischargeCancelled: true, event.TypePatientUpdated: true, event.TypePatientMerged: true}
	s, err := NewSubscriptions([]Subscription{
		{ID: "gp", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "residents", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisPatientList, Types: residents,
			Patients: patientlist.Set{oldKey(): {}}},
		{ID: "home2", Recipient: consent.Recipient{ODS: "VM456", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: two},
		{ID: "team", Recipient: consent.Recipient{ODS: "CN001", Role: consent.RoleCommunity}, Basis: consent.BasisPatientList, Types: all,
			Patients: patientlist.Set{patientKey(): {}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Edits of the examples for the number-correction tests.
var (
	// underOld: the event is about the patient under the old number.
	underOld = func(m map[string]any) { data(m)["patient"].(map[string]any)["nhsNumber"] = oldNumber.Digits() }
	// toVM456: the event names VM456 as where the patient goes.
	toVM456 = func(m map[string]any) {
		data(m)["discharge"] = map[string]any{"destination": map[string]any{"type": "care-home", "ods": "VM456"}}
	}
	// a47: the patient-updated example as an HL7 A47 maps it: the NHS
	// number corrected from the old number to the examples' number.
	a47 = func(m map[string]any) {
		m["id"] = "a47"
		data(m)["previousNhsNumber"] = oldNumber.Digits()
		data(m)["changed"] = []any{"nhsNumber"}
	}
	retireOld = func(m map[string]any) {
		m["id"] = "merge"
		data(m)["mergedPatient"].(map[string]any)["nhsNumber"] = oldNumber.Digits()
	}
)

func both(edits ...func(m map[string]any)) func(m map[string]any) {
	return func(m map[string]any) {
		for _, e := range edits {
			e(m)
		}
	}
}

// TestNumberCorrectionIsAMergeOfTheOldNumber pins the reviewer's finding
// on issue 10 (A47): a patient-updated carrying previousNhsNumber was
// routed as a standalone update by the new number alone: a care home with
// the old number on its list, or that had received earlier events under
// it, did not get the correction; directives recorded under the old number
// stopped applying; and a cancellation after the correction found no
// original. Each case routes its steps and checks who got a copy of the
// last one, and how each named recipient's decision on it was audited.
func TestNumberCorrectionIsAMergeOfTheOldNumber(t *testing.T) {
	deny := func(ods string, end *time.Time) consent.Directive {
		return consent.Directive{ID: "no-" + ods, Kind: consent.KindDenyOrganisation, Organisation: ods,
			Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{End: end}}
	}
	// After the admission's time (2025-03-14T09:35Z), before the A47's
	// (2025-03-20T08:15Z).
	beforeA47 := time.Date(2025, 3, 16, 0, 0, 0, 0, time.UTC)

	type step struct {
		example string
		edit    func(m map[string]any)
		// old and new are the directives recorded under each number
		// from this step on (nil: unchanged).
		old, new []consent.Directive
	}
	type decision struct{ effect, rule, relation string }
	tests := []struct {
		name    string
		steps   []step // the last is the one checked
		want    []string
		decided map[string]decision // "" effect: not a candidate
	}{
		{
			name:  "the care home whose list holds the old number receives the correction",
			steps: []step{{example: "patient-updated", edit: a47}},
			want:  []string{"a81001", "cn001", "vm123"},
			decided: map[string]decision{
				"VM123": {"permit", consent.RuleRelationshipConfirmed, ""},
				"VM456": {},
			},
		},
		{
			name: "a recipient of earlier events under the old number receives the correction as an update",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "patient-updated", edit: a47},
			},
			want: []string{"a81001", "cn001", "vm123", "vm456"},
			decided: map[string]decision{
				"VM456": {"permit", consent.RuleRelationshipConfirmed, "updates"},
			},
		},
		{
			name: "a recipient withheld every event under the old number is not an earlier recipient",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456), old: []consent.Directive{deny("VM456", &beforeA47)}},
				{example: "patient-updated", edit: a47},
			},
			want:    []string{"a81001", "cn001", "vm123"},
			decided: map[string]decision{"VM456": {}},
		},
		{
			name: "an update without previousNhsNumber goes by the new number's subscriptions only",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "patient-updated", edit: func(m map[string]any) { m["id"] = "a08" }},
			},
			want:    []string{"a81001", "cn001"},
			decided: map[string]decision{"VM123": {}, "VM456": {}},
		},
		{
			name: "a directive under the old number binds the correction",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456), old: []consent.Directive{deny("VM456", nil)}},
				{example: "patient-updated", edit: a47},
			},
			want:    []string{"a81001", "cn001", "vm123"},
			decided: map[string]decision{"VM456": {}},
		},
		{
			name: "a directive under the old number applies to a later event under the new number",
			steps: []step{
				{example: "patient-updated", edit: a47, old: []consent.Directive{deny("VM123", nil)}},
				{example: "discharge", edit: func(m map[string]any) { m["id"] = "dis-new" }},
			},
			want: []string{"a81001", "cn001"},
			decided: map[string]decision{
				"VM123": {"deny", consent.RuleDenyOrganisation, "continues"},
			},
		},
		{
			name: "the old number's list membership matches a later event under the new number",
			steps: []step{
				{example: "patient-updated", edit: a47},
				{example: "discharge", edit: both(toVM456, func(m map[string]any) { m["id"] = "dis-new" })},
			},
			want:    []string{"a81001", "cn001", "vm123", "vm456"},
			decided: map[string]decision{"VM123": {"permit", consent.RuleRelationshipConfirmed, "continues"}},
		},
		{
			name: "a cancellation after the correction reaches the original's recipients",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "patient-updated", edit: a47},
				{example: "admission-cancelled", edit: func(m map[string]any) { m["id"] = "a11-new" }},
			},
			// The team holds the new number only: it got no admission.
			want: []string{"a81001", "vm123", "vm456"},
			decided: map[string]decision{
				"VM456": {"permit", consent.RuleRelationshipConfirmed, "corrects"},
				"CN001": {"deny", consent.RuleOriginalNotReceived, "corrects"},
			},
		},
		{
			name: "without the correction the cancellation under the new number finds no original",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "admission-cancelled", edit: func(m map[string]any) { m["id"] = "a11-new" }},
			},
			want:    nil,
			decided: map[string]decision{"VM456": {}},
		},
		{
			// The re-check at delivery withheld it from the GP and the
			// care home (follow-up:original-not-received): the copy's
			// place on the encounter (Copy.N) was counted under the
			// surviving number alone, so the admission under the retired
			// number seemed to come after it.
			name: "a cancellation after a merge reaches the original's recipients, through the re-check",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "patient-merged", edit: retireOld},
				{example: "admission-cancelled", edit: func(m map[string]any) { m["id"] = "a11-new" }},
			},
			want: []string{"a81001", "vm123", "vm456"},
			decided: map[string]decision{
				"VM456": {"permit", consent.RuleRelationshipConfirmed, "corrects"},
			},
		},
		{
			name: "a merge reaches the recipients of earlier events under the retired number too",
			steps: []step{
				{example: "admission", edit: both(underOld, toVM456)},
				{example: "patient-merged", edit: retireOld},
			},
			want:    []string{"a81001", "cn001", "vm123", "vm456"},
			decided: map[string]decision{"VM456": {"permit", consent.RuleRelationshipConfirmed, "updates"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dirs := &fakeDirectives{}
			pub := &fakePub{}
			r := newRouter(t, correctionSubs(t), &policy, dirs, pub)
			for i, s := range tc.steps {
				if s.old != nil {
					dirs.set(oldKey(), s.old...)
				}
				if s.new != nil {
					dirs.set(patientKey(), s.new...)
				}
				m := example(t, s.example, s.edit)
				if err := r.Handle(m); err != nil {
					t.Fatalf("step %d (%s): %v", i, s.example, err)
				}
				sent := pub.take()
				if i < len(tc.steps)-1 {
					continue
				}
				if got := copies(sent, m.UUID); !slices.Equal(got, tc.want) {
					t.Errorf("%s went to:\n\tgot  %v\n\twant %v", s.example, got, tc.want)
				}
				// With nothing changed since routing, the re-check at
				// delivery lets every copy through.
				for tp, msgs := range sent {
					for _, c := range msgs {
						if sealed := c.Metadata.Get(topic.MetaDecision); sealed != "" && tp != topic.Audit {
							d, _, _, err := r.Recheck(context.Background(), c.Metadata.Get(topic.MetaKey), sealed)
							if err != nil || !d.Permitted() {
								t.Errorf("the re-check at delivery of %s's copy: %+v %v, want a permit", tp, d, err)
							}
						}
					}
				}
				typ := m.Metadata.Get(topic.MetaEventType)
				got := decisions(sent)
				for ods, want := range tc.decided {
					d := got[ods+" "+typ]
					if g := (decision{d.Effect, d.Rule, d.Relation}); g != want {
						t.Errorf("%s's decision on %s:\n\tgot  %+v\n\twant %+v", ods, s.example, g, want)
					}
				}
			}
		})
	}
}

// TestNumberCorrectionLinksTheNumbersInTheIndex: after an A47 both numbers
// are one family, the new number first, whichever is asked; the old
// number's record points at the new one, as after a merge.
func TestNumberCorrectionLinksTheNumbersInTheIndex(t *testing.T) {
	pub := &fakePub{}
	r := newRouter(t, correctionSubs(t), &policy, &fakeDirectives{}, pub)
	want := []string{patientKey(), oldKey()}
	if got := r.cfg.Index.Family(patientKey()); !slices.Equal(got, []string{patientKey()}) {
		t.Fatalf("before: family %v", got)
	}
	if err := r.Handle(example(t, "patient-updated", a47)); err != nil {
		t.Fatal(err)
	}
	for _, k := range want {
		if got := r.cfg.Index.Family(k); !slices.Equal(got, want) {
			t.Errorf("Family(%s) = %v, want %v", k, got, want)
		}
	}
	if got := r.cfg.Index.Get(oldKey()).MergedInto; got != patientKey() {
		t.Errorf("the old number's record is merged into %q, want the new number's", got)
	}
	if n := len(pub.sent[topic.Patients]); n != 2 {
		t.Errorf("%d patient index records written, want 2 (both numbers')", n)
	}
}

// TestNumberCorrectionNotificationKeepsTheOldNumber: a recipient under the
// notification-only obligation gets the correction with both numbers and
// nothing else of the patient (the notification allow-list of
// patient-updated keeps previousNhsNumber), valid against
// notification.v1.json.
func TestNumberCorrectionNotificationKeepsTheOldNumber(t *testing.T) {
	dirs := &fakeDirectives{}
	dirs.set(oldKey(), consent.Directive{ID: "thin-home", Kind: consent.KindNotificationOnly, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})
	pub := &fakePub{}
	r := newRouter(t, correctionSubs(t), &policy, dirs, pub)
	if err := r.Handle(example(t, "patient-updated", a47)); err != nil {
		t.Fatal(err)
	}
	home := pub.sent["carehub.outbox.vm123"]
	if len(home) != 1 || home[0].Metadata.Get(topic.MetaForm) != string(event.FormNotification) {
		t.Fatalf("the care home got %d copies, want one notification", len(home))
	}
	var env struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(home[0].Payload, &env); err != nil {
		t.Fatal(err)
	}
	if got := env.Data["previousNhsNumber"]; got != oldNumber.Digits() {
		t.Errorf("previousNhsNumber = %v, want the old number", got)
	}
	if got := env.Data["patient"].(map[string]any)["nhsNumber"]; got != "9990500002" {
		t.Errorf("patient.nhsNumber = %v, want the new number", got)
	}
	for _, k := range []string{"changed"} {
		if _, ok := env.Data[k]; ok {
			t.Errorf("the notification carries %s", k)
		}
	}
	if _, ok := env.Data["patient"].(map[string]any)["address"]; ok {
		t.Errorf("the notification carries the address")
	}
	c, err := schemas.NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	notif, err := c.Compile(schemas.URL(event.NotificationSchema))
	if err != nil {
		t.Fatal(err)
	}
	var raw any
	_ = json.Unmarshal(home[0].Payload, &raw)
	if err := notif.Validate(raw.(map[string]any)["data"]); err != nil {
		t.Errorf("the notification is not valid against %s: %v", event.NotificationSchema, err)
	}
}
