package admin

import (
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/consentstore"
	"github.com/google/go-cmp/cmp"
)

func TestReportJoinsDecisionsAndOutcomes(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	recs := []audit.Record{
		{Time: t0, Kind: audit.KindDecision, Publisher: "RX1", EventID: "e1", EventType: "discharge", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"},
		{Time: t0, Kind: audit.KindDecision, Publisher: "RX1", EventID: "e1", EventType: "discharge", Recipient: "VM123", Effect: "deny", Rule: "directive:deny-role", Directive: "no-sc"},
		{Time: t0.Add(time.Second), Kind: audit.KindDelivery, Publisher: "RX1", EventID: "e1", Recipient: "A81001", Outcome: audit.Delivered},
		{Time: t0.Add(2 * time.Second), Kind: audit.KindDecision, Publisher: "RX1", EventID: "e2", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"},
		{Time: t0.Add(3 * time.Second), Kind: audit.KindDelivery, Publisher: "RX1", EventID: "e2", Recipient: "A81001", Outcome: audit.DeadLettered, Reason: "recipient answered 400"},
		// A delivery whose decision is not in the report (older than the scan) is ignored.
		{Time: t0, Kind: audit.KindDelivery, Publisher: "RX1", EventID: "e0", Recipient: "A81001", Outcome: audit.Delivered},
	}
	got := Histories(recs).Disclosures
	type line struct {
		Event, Recipient, Decision, Outcome string
		Withheld                            bool
	}
	var gotLines []line
	for _, d := range got {
		gotLines = append(gotLines, line{d.EventID, d.Recipient, d.Decision, d.Outcome, d.Withheld})
	}
	want := []line{
		{"e1", "A81001", "permit", "delivered", false},
		{"e1", "VM123", "deny", "", true},
		{"e2", "A81001", "permit", "dead-lettered", false},
	}
	if diff := cmp.Diff(want, gotLines); diff != "" {
		t.Errorf("Histories (-want +got):\n%s", diff)
	}
	if got[1].Directive != "no-sc" || got[2].OutcomeNote == "" {
		t.Errorf("Histories lost the directive or the dead-letter reason: %+v", got)
	}
}

// TestReportTellsPublishersApart: a VM123 care plan and an RX1 admission
// with the same event id are two events. Regression: the report joined
// deliveries on the event id alone, and put the care plan's dead letter on
// the admission's line.
func TestReportTellsPublishersApart(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	recs := []audit.Record{
		{Time: t0, Kind: audit.KindDecision, Publisher: "RX1", EventID: "0001", EventType: "admission", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"},
		{Time: t0, Kind: audit.KindDecision, Publisher: "VM123", EventID: "0001", EventType: "careplan", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"},
		{Time: t0.Add(time.Second), Kind: audit.KindDelivery, Publisher: "VM123", EventID: "0001", Recipient: "A81001", Outcome: audit.DeadLettered, Reason: "recipient answered 400"},
		{Time: t0.Add(2 * time.Second), Kind: audit.KindDelivery, Publisher: "RX1", EventID: "0001", Recipient: "A81001", Outcome: audit.Delivered},
		// Records from before deliveries named their publisher: joined when
		// only one permit fits, left pending when two do.
		{Time: t0, Kind: audit.KindDecision, Publisher: "RX1", EventID: "0002", EventType: "admission", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"},
		{Time: t0.Add(time.Second), Kind: audit.KindDelivery, EventID: "0002", Recipient: "A81001", Outcome: audit.Delivered},
		{Time: t0.Add(3 * time.Second), Kind: audit.KindDelivery, EventID: "0001", Recipient: "A81001", Outcome: audit.Delivered},
	}
	type line struct{ Publisher, Event, Type, Outcome string }
	var got []line
	for _, d := range Histories(recs).Disclosures {
		got = append(got, line{d.Publisher, d.EventID, d.EventType, d.Outcome})
	}
	want := []line{
		{"RX1", "0001", "admission", "delivered"},
		{"VM123", "0001", "careplan", "dead-lettered"},
		{"RX1", "0002", "admission", "delivered"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Histories (-want +got):\n%s", diff)
	}
}

// TestReportSendingRecords: a sending record (written before a copy is
// handed to a push recipient) marks the line as possibly disclosed: it
// shows while no outcome follows (the hub stopped before it could write
// one), it is kept as SentAt when a withholding follows, and a delivery,
// once recorded, is not undone by a later redelivery's outcome.
func TestReportSendingRecords(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	permit := func(id string) audit.Record {
		return audit.Record{Time: t0, Kind: audit.KindDecision, Publisher: "RX1", EventID: id, Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed"}
	}
	delivery := func(s int, id, outcome string) audit.Record {
		return audit.Record{Time: at(s), Kind: audit.KindDelivery, Publisher: "RX1", EventID: id, Recipient: "A81001", Outcome: outcome, Rule: "r"}
	}
	recs := []audit.Record{
		permit("sent"), delivery(1, "sent", audit.Sending), delivery(2, "sent", audit.Delivered),
		permit("unknown"), delivery(1, "unknown", audit.Sending),
		permit("withheld"), delivery(1, "withheld", audit.Sending), delivery(5, "withheld", audit.Sending), delivery(6, "withheld", audit.Withheld),
		permit("again"), delivery(1, "again", audit.Sending), delivery(2, "again", audit.Delivered),
		delivery(7, "again", audit.Sending), delivery(8, "again", audit.Withheld), delivery(9, "again", audit.DeadLettered),
		permit("pending"),
	}
	type line struct {
		Event, Outcome string
		OutcomeAt      time.Time
		SentAt         time.Time
		Withheld       bool
	}
	var got []line
	for _, d := range Histories(recs).Disclosures {
		got = append(got, line{d.EventID, d.Outcome, d.OutcomeAt, d.SentAt, d.Withheld})
	}
	want := []line{
		{"sent", audit.Delivered, at(2), at(1), false},
		{"unknown", audit.Sending, at(1), at(1), false},
		{"withheld", audit.Withheld, at(6), at(1), true},
		{"again", audit.Delivered, at(2), at(1), false},
		{"pending", "", time.Time{}, time.Time{}, false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Histories (-want +got):\n%s", diff)
	}
}

// TestReportMarksConsentChangesNotApplied: a consent-change record whose
// change was never written (history is written first, gap 3 of the issue
// 11 audit) is marked not-applied in the report; the others are not.
func TestReportMarksConsentChangesNotApplied(t *testing.T) {
	st := func(v int64, ids ...string) *audit.ConsentState {
		cs := &audit.ConsentState{Version: v, Directives: []consent.Directive{}}
		for _, id := range ids {
			cs.Directives = append(cs.Directives, consent.Directive{ID: id, Kind: consent.KindConfidential, RecordedBy: "X26"})
		}
		return cs
	}
	recs := []audit.Record{
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "a", Before: st(0), After: st(1, "x")},
		{Kind: audit.KindDecision, Patient: "p1", EventID: "e1", Recipient: "RX1", Effect: "permit"},
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "b", Before: st(1, "x"), After: st(2, "y")}, // never written
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "c", Before: st(1, "x"), After: st(2, "z")},
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "d", Before: st(1, "x"), After: st(2, "w")}, // lost a race
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "d", Before: st(1, "x"), After: st(2, "w"), Outcome: "conflict"},
	}
	now := consent.PatientConsent{Version: 2, Directives: st(2, "z").Directives}
	applied := consentstore.Applied(recs, func(string) (consent.PatientConsent, bool) { return now, true })
	h := Histories(recs)
	markNotApplied(&h, recs, applied)
	var got []string
	for _, c := range h.ConsentChanges {
		got = append(got, c.Actor+":"+c.Outcome)
	}
	want := []string{"a:", "b:not-applied", "c:", "d:not-applied", "d:conflict"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("consent changes (-want +got):\n%s", diff)
	}
}

// TestReportMarksListChangesNotApplied: a list-change record whose change
// was never written (the directory audits before it writes, the review's
// finding on issue 13) is marked not-applied in the report, beside the
// consent changes' marks; the others are not.
func TestReportMarksListChangesNotApplied(t *testing.T) {
	recs := []audit.Record{
		{Kind: audit.KindListChange, Patient: "p1", Recipient: "VM123", Actor: "a", Action: audit.ActionListAdd},
		{Kind: audit.KindConsentChange, Patient: "p1", Actor: "b", After: &audit.ConsentState{Version: 1}},
		{Kind: audit.KindListChange, Patient: "p1", Recipient: "VM123", Actor: "c", Action: audit.ActionListRemove}, // never written
		{Kind: audit.KindListChange, Patient: "p1", Recipient: "VM123", Actor: "d", Action: audit.ActionListRemove,
			Reason: "the recipient was deleted"},
	}
	h := Histories(recs)
	markNotApplied(&h, recs, []bool{true, false, false, true})
	var got []string
	for _, c := range h.ListChanges {
		got = append(got, c.Actor+":"+c.Outcome+":"+c.Reason)
	}
	want := []string{"a::", "c:not-applied:", "d::the recipient was deleted"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list changes (-want +got):\n%s", diff)
	}
	if h.ConsentChanges[0].Outcome != audit.NotApplied {
		t.Errorf("the consent change: outcome %q, want not-applied", h.ConsentChanges[0].Outcome)
	}
}

// TestReportKeepsBothDirectiveVersions: a copy routed under version 1 and
// withheld at delivery under version 2 shows both (issue 11: audit records
// say which directive version decided).
func TestReportKeepsBothDirectiveVersions(t *testing.T) {
	v := func(n int64) []audit.DirectiveVersion { return []audit.DirectiveVersion{{Patient: "p1", Version: n}} }
	recs := []audit.Record{
		{Kind: audit.KindDecision, Patient: "p1", Publisher: "RX1", EventID: "e1", Recipient: "VM123", Effect: "permit", Rule: "relationship-confirmed", DirectiveVersions: v(1)},
		{Kind: audit.KindDecision, Patient: "p1", Publisher: "RX1", EventID: "e1", Recipient: "A81001", Effect: "permit", Rule: "relationship-confirmed", DirectiveVersions: v(1)},
		{Kind: audit.KindDelivery, Patient: "p1", Publisher: "RX1", EventID: "e1", Recipient: "VM123", Outcome: audit.Withheld, Rule: "directive:deny-organisation", Directive: "no-home", DirectiveVersions: v(2)},
		{Kind: audit.KindDelivery, Patient: "p1", Publisher: "RX1", EventID: "e1", Recipient: "A81001", Outcome: audit.Delivered, DirectiveVersions: v(2)},
	}
	got := Histories(recs).Disclosures
	type line struct {
		Recipient, Outcome string
		Versions, Routed   []audit.DirectiveVersion
	}
	var lines []line
	for _, d := range got {
		lines = append(lines, line{d.Recipient, d.Outcome, d.DirectiveVersions, d.RoutedDirectiveVersions})
	}
	want := []line{
		{"VM123", "withheld", v(2), v(1)},
		{"A81001", "delivered", v(1), nil},
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("Histories (-want +got):\n%s", diff)
	}
}
