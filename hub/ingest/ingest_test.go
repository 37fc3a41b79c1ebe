package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

type pub struct {
	sent []*message.Message
	err  error
}

func (p *pub) Publish(t string, msgs ...*message.Message) error {
	if t != topic.Events {
		return errors.New("wrong topic " + t)
	}
	if p.err != nil {
		return p.err
	}
	p.sent = append(p.sent, msgs...)
	return nil
}
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
	in, err := New(v, ps, p)
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
	in, err := New(v, ps, p)
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
		in, _ := New(v, ps, p)
		err := in.Hold(context.Background(), "RX1", tt.h)
		if problem.KindOf(err) != tt.kind || len(p.sent) != 0 {
			t.Errorf("%s: got %v (%s) and %d topics written, want %s and nothing", tt.name, err, problem.KindOf(err), len(p.sent), tt.kind)
		}
		if err != nil && strings.Contains(err.Error(), "9990500002") {
			t.Errorf("%s: the error holds the trigger's value", tt.name)
		}
	}
	p := &topicPub{err: errors.New("broker down")}
	in, _ := New(v, ps, p)
	if err := in.Hold(context.Background(), "RX1", base); problem.KindOf(err) != problem.Unavailable {
		t.Errorf("broker down: got %v, want Unavailable", err)
	}
}

func with(h connector.Held, f func(*connector.Held)) connector.Held { f(&h); return h }
