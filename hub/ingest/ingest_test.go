package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

type pub struct {
	sent  []*message.Message
	audit []*message.Message
	err   error
}

func (p *pub) Publish(t string, msgs ...*message.Message) error {
	if p.err != nil {
		return p.err
	}
	switch t {
	case topic.Events:
		p.sent = append(p.sent, msgs...)
	case topic.Audit:
		p.audit = append(p.audit, msgs...)
	default:
		return errors.New("wrong topic " + t)
	}
	return nil
}

// now is the clock of the tests: three days after the example events.
var now = time.Date(2025, 3, 21, 12, 0, 0, 0, time.UTC)

func (p *pub) Close() error { return nil }

func setup(t *testing.T, p *pub) (*Ingest, []byte) {
	t.Helper()
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	ps, err := nhs.NewPseudonymiser([]byte("ingest-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := New(v, ps, p, Options{MaxFutureSkew: 5 * time.Minute, FlagOlderThan: 7 * 24 * time.Hour, Timeout: 42 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	return in, raw
}

func TestAcceptKeysByPseudonymAndCarriesNoIdentifierInHeaders(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	acc, err := in.Accept(context.Background(), "RX1", raw)
	if err != nil {
		t.Fatal(err)
	}
	if acc.ID == "" || acc.Type != event.TypeDischarge || len(p.sent) != 1 {
		t.Fatalf("Accept: got %+v and %d messages", acc, len(p.sent))
	}
	m := p.sent[0]
	key := m.Metadata.Get(topic.MetaKey)
	if !strings.HasPrefix(key, nhs.PseudonymPrefix) {
		t.Errorf("key: got %q, want a pseudonym", key)
	}
	for k, v := range m.Metadata {
		if strings.Contains(v, "9990500002") {
			t.Errorf("metadata %s holds the NHS number", k)
		}
	}
	if got, want := m.Metadata.Get(topic.MetaAccepted), now.Format(time.RFC3339Nano); got != want {
		t.Errorf("accepted time: got %q, want %q", got, want)
	}
	// Gate review bug (2): the router waited for the record with its own
	// publishTimeout; the event now carries the ingest's.
	if got, want := m.Metadata.Get(topic.MetaPublishTimeout), "42000"; got != want {
		t.Errorf("publish timeout header: got %q, want %q (milliseconds)", got, want)
	}
}

func TestAcceptRefusals(t *testing.T) {
	tests := []struct {
		name   string
		org    string
		mutate func(map[string]any)
		pubErr error
		want   problem.Kind
	}{
		{"publishing as another organisation", "VM123", nil, nil, problem.Forbidden},
		{"invalid event", "RX1", func(m map[string]any) { m["type"] = "org.carehub.unknown.v1" }, nil, problem.Unsupported},
		{"broker down", "RX1", nil, errors.New("kafka: leader not available"), problem.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &pub{err: tc.pubErr}
			in, raw := setup(t, p)
			if tc.mutate != nil {
				var m map[string]any
				_ = json.Unmarshal(raw, &m)
				tc.mutate(m)
				raw, _ = json.Marshal(m)
			}
			_, err := in.Accept(context.Background(), tc.org, raw)
			if got := problem.KindOf(err); got != tc.want {
				t.Fatalf("Accept: got kind %v (%v), want %v", got, err, tc.want)
			}
			if len(p.sent) != 0 {
				t.Errorf("published %d messages for a refused event", len(p.sent))
			}
			if strings.Contains(err.Error(), "leader") {
				t.Errorf("the error shows the broker's own text: %q", err.Error())
			}
		})
	}
}

func TestAcceptBatchPublishesTheValidOnesTogether(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	bad := []byte(`{"specversion":"1.0"}`)
	second := strings.Replace(string(raw), "3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03", "second-id", 1)
	res := in.AcceptBatch(context.Background(), "RX1", []json.RawMessage{raw, bad, json.RawMessage(second)})
	var got []bool
	for _, r := range res {
		got = append(got, r.Err == nil)
	}
	if want := []bool{true, false, true}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("results:\n\tgot  %v\n\twant %v", got, want)
	}
	if len(p.sent) != 2 {
		t.Errorf("published %d, want 2", len(p.sent))
	}
	// When the broker refuses, every valid event of the batch fails with it.
	p2 := &pub{err: errors.New("down")}
	in2, _ := setup(t, p2)
	for i, r := range in2.AcceptBatch(context.Background(), "RX1", []json.RawMessage{raw, json.RawMessage(second)}) {
		if problem.KindOf(r.Err) != problem.Unavailable {
			t.Errorf("result %d with the broker down: got %v, want unavailable", i, r.Err)
		}
	}
}

// topicPub records what is published, on any topic.
type topicPub struct {
	sent map[string][]*message.Message
	err  error
}

func (p *topicPub) Publish(t string, msgs ...*message.Message) error {
	if p.err != nil {
		return p.err
	}
	if p.sent == nil {
		p.sent = map[string][]*message.Message{}
	}
	p.sent[t] = append(p.sent[t], msgs...)
	return nil
}
func (p *topicPub) Close() error { return nil }

func TestHoldWritesTheHeldTopicKeyedByAPseudonym(t *testing.T) {
	v, _ := event.NewValidator()
	ps, _ := nhs.NewPseudonymiser([]byte("ingest-test-key-0123456789"))
	p := &topicPub{}
	in, err := New(v, ps, p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	original := []byte("MSH|^~\\&|PAS|RX1|||20250314||ADT^A15|C1|P|2.4\rPID|1||9990500002^^^NHS^NH~H123^^^RX1^MR\r")
	base := connector.Held{ID: "id-1", Trigger: "ADT^A15", Reason: connector.HeldTriggerNotShared, Detail: "not shared",
		ContentType: media.HL7v2, Original: original}
	tests := []struct {
		name    string
		h       connector.Held
		wantKey string
	}{
		{"NHS number", with(base, func(h *connector.Held) { h.NHSNumber = nhs.MustParse("9990500002"); h.LocalID = "H123" }),
			ps.Pseudonym(nhs.MustParse("9990500002"))},
		{"local identifier", with(base, func(h *connector.Held) { h.LocalID = "H123" }), ps.LocalPseudonym("RX1", "H123")},
		{"neither", base, ps.LocalPseudonym("RX1", "message\x00id-1")},
	}
	for _, tt := range tests {
		p.sent = nil
		if err := in.Hold(context.Background(), "RX1", tt.h); err != nil {
			t.Fatalf("%s: Hold: %v", tt.name, err)
		}
		msgs := p.sent[topic.Held]
		if len(msgs) != 1 || len(p.sent) != 1 {
			t.Fatalf("%s: published %v, want one record on %s", tt.name, p.sent, topic.Held)
		}
		m := msgs[0]
		if got := m.Metadata.Get(topic.MetaKey); got != tt.wantKey {
			t.Errorf("%s: key %q, want %q", tt.name, got, tt.wantKey)
		}
		for k, v := range m.Metadata {
			if strings.Contains(v, "9990500002") || strings.Contains(v, "H123") {
				t.Errorf("%s: header %s holds an identifier", tt.name, k)
			}
		}
		rec, err := held.Unmarshal(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if rec.ID != "id-1" || rec.Source != "RX1" || rec.Reason != connector.HeldTriggerNotShared || rec.Trigger != "ADT^A15" ||
			rec.Patient != tt.wantKey || !bytes.Equal(rec.Original, original) || rec.Received.IsZero() {
			t.Errorf("%s: record %+v", tt.name, rec)
		}
	}
}

func TestHoldRefusals(t *testing.T) {
	v, _ := event.NewValidator()
	ps, _ := nhs.NewPseudonymiser([]byte("ingest-test-key-0123456789"))
	base := connector.Held{ID: "id-1", Trigger: "ADT^A15", Reason: connector.HeldNoNHSNumber, ContentType: media.HL7v2, Original: []byte("MSH|")}
	tests := []struct {
		name string
		h    connector.Held
		kind problem.Kind
	}{
		{"unknown reason", with(base, func(h *connector.Held) { h.Reason = "because" }), problem.Internal},
		{"trigger with a value", with(base, func(h *connector.Held) { h.Trigger = "A15 9990500002 SMITH" }), problem.Internal},
		{"no id", with(base, func(h *connector.Held) { h.ID = "" }), problem.Internal},
		{"no original", with(base, func(h *connector.Held) { h.Original = nil }), problem.Internal},
	}
	for _, tt := range tests {
		p := &topicPub{}
		in, _ := New(v, ps, p, Options{})
		err := in.Hold(context.Background(), "RX1", tt.h)
		if problem.KindOf(err) != tt.kind || len(p.sent) != 0 {
			t.Errorf("%s: got %v (%s) and %d topics written, want %s and nothing", tt.name, err, problem.KindOf(err), len(p.sent), tt.kind)
		}
		if err != nil && strings.Contains(err.Error(), "9990500002") {
			t.Errorf("%s: the error holds the trigger's value", tt.name)
		}
	}
	p := &topicPub{err: errors.New("broker down")}
	in, _ := New(v, ps, p, Options{})
	if err := in.Hold(context.Background(), "RX1", base); problem.KindOf(err) != problem.Unavailable {
		t.Errorf("broker down: got %v, want Unavailable", err)
	}
}

func with(h connector.Held, f func(*connector.Held)) connector.Held { f(&h); return h }

// partialErr is a publisher's report that some records of a publish were
// not acknowledged (kafkawm.PublishError has the same method).
type partialErr struct{ failed map[int]bool }

func (e partialErr) Error() string       { return "kafka: 1 of 3 records not acknowledged" }
func (e partialErr) FailedAt(i int) bool { return e.failed[i] }

// partialPub acknowledges every record but those at failed.
type partialPub struct {
	pub
	failed map[int]bool
}

func (p *partialPub) Publish(t string, msgs ...*message.Message) error {
	for i, m := range msgs {
		if !p.failed[i] {
			p.sent = append(p.sent, m)
		}
	}
	if len(p.failed) > 0 {
		return partialErr{p.failed}
	}
	return nil
}

// TestBatchAnswersEachEventByWhatWasWritten pins issue 14's second defect:
// when the broker wrote some records of a batch and failed others,
// AcceptBatch answered every event 503, yet the written ones were in
// carehub.events and reached recipients. Now an event is 503 only if its
// own record was not acknowledged.
func TestBatchAnswersEachEventByWhatWasWritten(t *testing.T) {
	v, _ := event.NewValidator()
	ps, _ := nhs.NewPseudonymiser([]byte("ingest-test-key-0123456789"))
	p := &partialPub{failed: map[int]bool{1: true}} // the second valid event's record fails
	in, err := New(v, ps, p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	withID := func(id string) json.RawMessage {
		return json.RawMessage(strings.Replace(string(raw), "3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03", id, 1))
	}
	res := in.AcceptBatch(context.Background(), "RX1", []json.RawMessage{withID("a"), []byte(`{}`), withID("b"), withID("c")})
	got := make([]string, len(res))
	for i, r := range res {
		got[i] = "ok"
		if r.Err != nil {
			got[i] = problem.KindOf(r.Err).String()
		}
	}
	want := []string{"ok", "invalid", "unavailable", "ok"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("AcceptBatch answers:\n\tgot  %v\n\twant %v", got, want)
	}
	if len(p.sent) != 2 {
		t.Errorf("records written: got %d, want 2", len(p.sent))
	}
}

// TestClosedGatePublishesNothing: while the gate is closed (the hub's disk
// guard below its floor), every event is answered with the gate's reason,
// of kind Unavailable, and nothing is published.
func TestClosedGatePublishesNothing(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.SetGate(func() error {
		return problem.New(problem.Unavailable, "data directory disk space low: retry later")
	})
	if _, err := in.Accept(context.Background(), "RX1", raw); problem.KindOf(err) != problem.Unavailable {
		t.Errorf("Accept with the gate closed: got %v, want unavailable", err)
	}
	res := in.AcceptBatch(context.Background(), "RX1", []json.RawMessage{raw, []byte(`{}`)})
	if problem.KindOf(res[0].Err) != problem.Unavailable || problem.KindOf(res[1].Err) != problem.Invalid {
		t.Errorf("AcceptBatch with the gate closed: got %v, %v; want unavailable for the valid event, invalid for the other", res[0].Err, res[1].Err)
	}
	if len(p.sent) != 0 {
		t.Errorf("published %d records with the gate closed", len(p.sent))
	}
	in.SetGate(func() error { return nil })
	if _, err := in.Accept(context.Background(), "RX1", raw); err != nil {
		t.Errorf("Accept with the gate open: %v", err)
	}
}

// TestEventTimeBounds pins finding 7 of issue 11: events dated 1970 and
// 2099 were accepted, and the event time chooses which directive periods
// apply. Too far in the future is refused with the rule; long past is
// accepted and flagged in the audit.
func TestEventTimeBounds(t *testing.T) {
	for _, tt := range []struct {
		time    string
		refused bool
		flagged bool
	}{
		{"2099-01-01T00:00:00Z", true, false},
		{"2025-03-21T12:04:59Z", false, false}, // within the skew
		{"2025-03-21T12:05:01Z", true, false},
		{"2025-03-18T14:05:00Z", false, false}, // three days old
		{"1970-01-01T00:00:00Z", false, true},
		{"2025-03-14T11:59:59Z", false, true}, // just over seven days
	} {
		p := &pub{}
		in, raw := setup(t, p)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		m["time"] = tt.time
		raw, _ = json.Marshal(m)
		_, err := in.Accept(context.Background(), "RX1", raw)
		if tt.refused {
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Kind != problem.Invalid || len(pe.Violations) != 1 || pe.Violations[0].Rule != RuleEventTimeFuture || pe.Violations[0].Pointer != "/time" {
				t.Errorf("%s: got %v, want Invalid at /time by %s", tt.time, err, RuleEventTimeFuture)
			}
			if len(p.sent)+len(p.audit) != 0 {
				t.Errorf("%s: published a refused event", tt.time)
			}
			continue
		}
		if err != nil || len(p.sent) != 1 {
			t.Fatalf("%s: got %v, %d published", tt.time, err, len(p.sent))
		}
		if (len(p.audit) == 1) != tt.flagged {
			t.Errorf("%s: %d audit records, want flagged %v", tt.time, len(p.audit), tt.flagged)
		}
		for _, a := range p.audit {
			r, _ := audit.Unmarshal(a.Payload)
			if r.Kind != audit.KindReceived || len(r.Flags) != 1 || r.Flags[0] != audit.FlagEventTimeOld || r.Patient != p.sent[0].Metadata.Get(topic.MetaKey) {
				t.Errorf("%s: audit record %+v", tt.time, r)
			}
		}
	}
}
