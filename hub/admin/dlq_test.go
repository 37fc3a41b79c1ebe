package admin

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/deadletter"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/google/go-cmp/cmp"
)

// auditCapture keeps the audit records a publisher is given.
type auditCapture struct{ recs []audit.Record }

func (c *auditCapture) Publish(t string, msgs ...*message.Message) error {
	if t != topic.Audit {
		return nil
	}
	for _, m := range msgs {
		rec, err := audit.Unmarshal(m.Payload)
		if err != nil {
			return err
		}
		c.recs = append(c.recs, rec)
	}
	return nil
}
func (c *auditCapture) Close() error { return nil }

// denyAll re-checks every copy as denied now: the patient has since
// objected to the recipient.
type denyAll struct{}

func (denyAll) Recheck(_ context.Context, key, _ string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error) {
	return consent.Decision{Effect: consent.Deny, Rule: "directive:deny-organisation", DirectiveID: "no-gp"}, route.Sealed{},
		[]audit.DirectiveVersion{{Patient: key, Version: 2}}, nil
}

// TestReportPutsAReplayWithheldOnItsOwnEvent: RX1's admission and
// VM123's care plan share the id 0001; both were permitted to the GP
// practice A81001, both dead-lettered there, and one was replayed after the
// patient objected, so withheld. Regression: dead letters carried the
// event id only, the replay's withheld record named no publisher, and the
// report, finding two permits for (0001, A81001), joined it to neither:
// the withholding never reached the patient's disclosures. A dead letter
// written before dead letters named their publisher takes it from its copy.
func TestReportPutsAReplayWithheldOnItsOwnEvent(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	decisions := []audit.Record{
		{Time: t0, Kind: audit.KindDecision, Patient: "p1", Publisher: "RX1", EventID: "0001", EventType: "admission", Recipient: "A81001", Effect: "permit", Rule: "registered-gp"},
		{Time: t0, Kind: audit.KindDecision, Patient: "p1", Publisher: "VM123", EventID: "0001", EventType: "careplan", Recipient: "A81001", Effect: "permit", Rule: "registered-gp"},
		{Time: t0.Add(time.Second), Kind: audit.KindDelivery, Patient: "p1", Publisher: "RX1", EventID: "0001", Recipient: "A81001", Outcome: audit.DeadLettered, Reason: "recipient answered 400"},
		{Time: t0.Add(time.Second), Kind: audit.KindDelivery, Patient: "p1", Publisher: "VM123", EventID: "0001", Recipient: "A81001", Outcome: audit.DeadLettered, Reason: "recipient answered 422"},
	}
	letter := func(off int64, publisher, source, eventType string) deadletter.Entry {
		return deadletter.Entry{Partition: 0, Offset: off, DeadLetter: audit.DeadLetter{Time: t0.Add(time.Second), Recipient: "A81001",
			Publisher: publisher, EventID: "0001", EventType: eventType, Patient: "p1", Reason: "recipient answered 400", Status: 400,
			Event:    json.RawMessage(`{"specversion":"1.0","id":"0001","source":"` + source + `","type":"` + eventType + `"}`),
			Decision: "sealed", Form: "full", Basis: "registered-gp"}}
	}
	type line struct{ Publisher, Type, Outcome, OutcomeRule string }
	deadLettered := func(pub, typ string) line { return line{pub, typ, audit.DeadLettered, ""} }
	withheld := func(pub, typ string) line { return line{pub, typ, audit.Withheld, "directive:deny-organisation"} }
	tests := []struct {
		name    string
		letters []deadletter.Entry
		replay  int // the letter replayed
		want    []line
	}{
		{"the care plan's", []deadletter.Entry{letter(0, "RX1", "urn:ods:RX1", "admission"), letter(1, "VM123", "urn:ods:VM123", "careplan")}, 1,
			[]line{deadLettered("RX1", "admission"), withheld("VM123", "careplan")}},
		{"the admission's", []deadletter.Entry{letter(0, "RX1", "urn:ods:RX1", "admission"), letter(1, "VM123", "urn:ods:VM123", "careplan")}, 0,
			[]line{withheld("RX1", "admission"), deadLettered("VM123", "careplan")}},
		{"the care plan's, dead-lettered before dead letters named the publisher", []deadletter.Entry{letter(0, "", "urn:ods:RX1", "admission"), letter(1, "", "urn:ods:VM123", "careplan")}, 1,
			[]line{deadLettered("RX1", "admission"), withheld("VM123", "careplan")}},
	}
	for _, tt := range tests {
		ls := deadletter.Letters(tt.letters, "A81001")
		var pub auditCapture
		out, err := deadletter.Replay(context.Background(), &pub, denyAll{}, []deadletter.Letter{ls[tt.replay]}, "ops.jo", t0.Add(time.Hour))
		if err != nil || len(out) != 1 || out[0].Outcome != deadletter.WithheldNow {
			t.Fatalf("%s: replay %+v, %v", tt.name, out, err)
		}
		var got []line
		for _, d := range Histories(append(append([]audit.Record{}, decisions...), pub.recs...)).Disclosures {
			got = append(got, line{d.Publisher, d.EventType, d.Outcome, d.OutcomeRule})
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s: Report (-want +got):\n%s", tt.name, diff)
		}
		h := Histories(pub.recs)
		// The access line names whose event it was, too.
		wantPub := []string{"RX1", "VM123"}[tt.replay]
		if len(h.Accesses) != 1 || h.Accesses[0].Action != audit.ActionDeadLetterReplay || h.Accesses[0].Actor != "ops.jo" ||
			h.Accesses[0].Publisher != wantPub {
			t.Errorf("%s: accesses %+v, want the replay of %s's event by ops.jo", tt.name, h.Accesses, wantPub)
		}
	}
}
