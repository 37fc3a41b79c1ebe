package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
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
	in, err := New(v, ps, p, Options{MaxFutureSkew: 5 * time.Minute, FlagOlderThan: 7 * 24 * time.Hour, Now: func() time.Time { return now }})
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
