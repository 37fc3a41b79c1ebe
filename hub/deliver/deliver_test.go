package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

type pub struct {
	mu   sync.Mutex
	sent map[string][]*message.Message
	err  error
}

func (p *pub) Publish(t string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if p.sent == nil {
		p.sent = map[string][]*message.Message{}
	}
	p.sent[t] = append(p.sent[t], msgs...)
	return nil
}
func (p *pub) Close() error { return nil }

const canary = "9990000018"

// rechecker answers re-checks with dec (permit by default).
type rechecker struct {
	mu    sync.Mutex
	dec   consent.Decision
	calls int
	err   error
}

func (r *rechecker) Recheck(context.Context, string, string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.dec.Effect == "" {
		return consent.Decision{Effect: consent.Permit, Rule: "relationship-confirmed"}, route.Sealed{}, []audit.DirectiveVersion{{Patient: "p1_test", Version: 4}}, r.err
	}
	return r.dec, route.Sealed{}, []audit.DirectiveVersion{{Patient: "p1_test", Version: 5}}, r.err
}

func (r *rechecker) Narrow([]byte) ([]byte, error) { return []byte(`{"thin":true}`), nil }

func gate(r Rechecker) *Gate {
	g := &Gate{}
	if r != nil {
		g.Set(r)
	}
	return g
}

func outboxMessage() *message.Message {
	m := message.NewMessage("ev-1", []byte(`{"id":"ev-1","data":{"patient":{"nhsNumber":"`+canary+`"}}}`))
	m.Metadata.Set(topic.MetaKey, "p1_test")
	m.Metadata.Set(topic.MetaEventID, "ev-1")
	m.Metadata.Set(topic.MetaSource, "urn:ods:RX1")
	m.Metadata.Set(topic.MetaEventType, "org.carehub.discharge.v1")
	m.Metadata.Set(topic.MetaBasis, "registered-gp")
	m.Metadata.Set(topic.MetaForm, "full")
	m.Metadata.Set(topic.MetaDecision, "sealed-decision")
	return m
}

func TestHandleOutcomes(t *testing.T) {
	tests := []struct {
		name       string
		sink       connector.SinkFunc
		wantErr    bool
		wantDLQ    int
		wantAudit  string // outcome of the audit record, "" for none
		wantStatus int
	}{
		{"delivered", func(context.Context, connector.Delivery) (connector.Outcome, error) {
			return connector.Outcome{Attempts: 2, Status: 204}, nil
		}, false, 0, audit.Delivered, 204},
		{"rejected for good", func(context.Context, connector.Delivery) (connector.Outcome, error) {
			return connector.Outcome{Attempts: 1, Status: 400}, connector.Permanent("recipient answered 400", nil)
		}, false, 1, audit.DeadLettered, 400},
		{"not delivered yet", func(context.Context, connector.Delivery) (connector.Outcome, error) {
			return connector.Outcome{Attempts: 7}, errors.New("connection refused to http://x/?nhs=" + canary)
		}, true, 0, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			p := &pub{}
			d, err := New(context.Background(), "A81001", tc.sink, gate(&rechecker{}), p, zap.New(core))
			if err != nil {
				t.Fatal(err)
			}
			err = d.Handle(outboxMessage())
			if (err != nil) != tc.wantErr {
				t.Fatalf("Handle: got error %v, want error %v", err, tc.wantErr)
			}
			if got := len(p.sent[topic.DLQ]); got != tc.wantDLQ {
				t.Errorf("dead letters: got %d, want %d", got, tc.wantDLQ)
			}
			if tc.wantDLQ > 0 {
				var dl audit.DeadLetter
				_ = json.Unmarshal(p.sent[topic.DLQ][0].Payload, &dl)
				if dl.Reason == "" || dl.Recipient != "A81001" || len(dl.Event) == 0 || p.sent[topic.DLQ][0].Metadata.Get(topic.MetaKey) != "A81001" {
					t.Errorf("dead letter: got %+v, want reason, recipient, event and the recipient as key", dl)
				}
			}
			recs := p.sent[topic.Audit]
			if tc.wantAudit == "" {
				if len(recs) != 0 {
					t.Errorf("audited %d records for an undelivered event; want none until it is delivered", len(recs))
				}
			} else {
				if len(recs) != 1 {
					t.Fatalf("audit records: got %d, want 1", len(recs))
				}
				rec, _ := audit.Unmarshal(recs[0].Payload)
				if rec.Outcome != tc.wantAudit || rec.Status != tc.wantStatus || rec.Patient != "p1_test" || rec.Basis != "registered-gp" ||
					rec.EventID != "ev-1" || rec.Publisher != "RX1" || rec.Form != "full" || len(rec.DirectiveVersions) != 1 {
					t.Errorf("audit record:\n\tgot  %+v\n\twant outcome %s status %d", rec, tc.wantAudit, tc.wantStatus)
				}
			}
			for _, e := range logs.All() {
				b, _ := json.Marshal(e.ContextMap())
				if strings.Contains(string(b)+e.Message, canary) {
					t.Errorf("a log line holds the canary: %s %s", e.Message, b)
				}
			}
		})
	}
}

// TestStopEndsInFlightRetries: when the hub stops, a delivery retrying
// against a recipient that is down ends (and is redelivered after restart).
func TestStopEndsInFlightRetries(t *testing.T) {
	stop, cancel := context.WithCancel(context.Background())
	sink := connector.SinkFunc(func(ctx context.Context, _ connector.Delivery) (connector.Outcome, error) {
		<-ctx.Done()
		return connector.Outcome{}, ctx.Err()
	})
	d, _ := New(stop, "A81001", sink, gate(&rechecker{}), &pub{}, zap.NewNop())
	done := make(chan error, 1)
	go func() { done <- d.Handle(outboxMessage()) }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Handle returned nil for an undelivered event")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Handle did not return after the stop context ended")
	}
}

func TestPublishFailureIsRetried(t *testing.T) {
	sink := connector.SinkFunc(func(context.Context, connector.Delivery) (connector.Outcome, error) {
		return connector.Outcome{Status: 400}, connector.Permanent("recipient answered 400", nil)
	})
	d, _ := New(context.Background(), "A81001", sink, gate(&rechecker{}), &pub{err: errors.New("broker down")}, zap.NewNop())
	if err := d.Handle(outboxMessage()); err == nil {
		t.Errorf("Handle succeeded though the dead letter could not be written: the event would be lost")
	}
}

// TestDeliveryCarriesSource: the sink is told the event's source with its
// id, from the outbox headers or, for a copy without them, from the event;
// the delivery's audit record names the publisher, so that the disclosure
// report joins it to the right decision (events are identified by source
// and id together).
func TestDeliveryCarriesSource(t *testing.T) {
	withHeaders := outboxMessage()
	bare := message.NewMessage("x", []byte(`{"specversion":"1.0","id":"ev-2","source":"urn:ods:VM123",`+
		`"type":"org.carehub.careplan.v1","time":"2026-11-24T10:00:00Z","data":{"patient":{"nhsNumber":"`+canary+`"}}}`))
	bare.Metadata.Set(topic.MetaKey, "p1_test")
	bare.Metadata.Set(topic.MetaDecision, "sealed-decision")
	tests := []struct {
		name                 string
		msg                  *message.Message
		id, source, typ, org string
	}{
		{"headers", withHeaders, "ev-1", "urn:ods:RX1", "org.carehub.discharge.v1", "RX1"},
		{"no headers", bare, "ev-2", "urn:ods:VM123", "org.carehub.careplan.v1", "VM123"},
	}
	for _, tc := range tests {
		var got connector.Delivery
		sink := connector.SinkFunc(func(_ context.Context, d connector.Delivery) (connector.Outcome, error) {
			got = d
			return connector.Outcome{Attempts: 1, Status: 204}, nil
		})
		p := &pub{}
		d, _ := New(context.Background(), "A81001", sink, gate(&rechecker{}), p, zap.NewNop())
		if err := d.Handle(tc.msg); err != nil {
			t.Fatalf("Handle(%s): %v", tc.name, err)
		}
		if got.EventID != tc.id || got.EventSource != tc.source || got.EventType != tc.typ {
			t.Errorf("Handle(%s) delivery:\n\tgot  id %q source %q type %q\n\twant id %q source %q type %q",
				tc.name, got.EventID, got.EventSource, got.EventType, tc.id, tc.source, tc.typ)
		}
		rec, _ := audit.Unmarshal(p.sent[topic.Audit][0].Payload)
		if rec.Publisher != tc.org || rec.EventID != tc.id {
			t.Errorf("Handle(%s) audit record:\n\tgot  publisher %q event %q\n\twant publisher %q event %q", tc.name, rec.Publisher, rec.EventID, tc.org, tc.id)
		}
	}
}

// TestRecheckAtDelivery pins finding 2 of issue 11: a directive recorded
// after routing did not stop a queued copy. The re-check decides; the
// sink's own answers about consent are honoured too.
func TestRecheckAtDelivery(t *testing.T) {
	deny := consent.Decision{Effect: consent.Deny, Rule: consent.RuleDenyOrganisation, DirectiveID: "no-home"}
	thin := consent.Decision{Effect: consent.Permit, Rule: consent.RuleNotificationOnly, Obligations: []consent.Obligation{consent.NotificationOnly}}
	tests := []struct {
		name      string
		r         *rechecker
		unset     bool
		edit      func(*message.Message)
		sink      func(n *int) connector.SinkFunc
		wantErr   bool
		wantSends int
		wantOut   string
		wantRule  string
		wantBody  string
	}{
		{name: "denied now: not sent", r: &rechecker{dec: deny}, wantOut: audit.Withheld, wantRule: consent.RuleDenyOrganisation},
		{name: "thin now: sent thin", r: &rechecker{dec: thin}, wantSends: 1, wantOut: audit.Delivered, wantBody: `{"thin":true}`},
		{name: "the store cannot answer: postponed", r: &rechecker{err: errors.New("broker down")}, wantErr: true},
		{name: "no router yet: postponed", unset: true, wantErr: true},
		{name: "no routing decision: withheld", r: &rechecker{}, edit: func(m *message.Message) { m.Metadata.Set(topic.MetaDecision, "") },
			wantOut: audit.Withheld, wantRule: RuleUndecidable},
		{name: "a content-free notice goes without a decision", r: &rechecker{dec: deny}, edit: func(m *message.Message) {
			m.Metadata.Set(topic.MetaDecision, "")
			m.Metadata.Set(topic.MetaForm, "notice")
		}, wantSends: 1, wantOut: audit.Delivered},
		{name: "withheld by the sink's re-check between attempts", r: &rechecker{}, sink: func(n *int) connector.SinkFunc {
			return func(context.Context, connector.Delivery) (connector.Outcome, error) {
				*n++
				return connector.Outcome{Attempts: 3}, connector.Withheld(consent.RuleDenyRole)
			}
		}, wantSends: 1, wantOut: audit.Withheld, wantRule: consent.RuleDenyRole},
		{name: "the form changed between attempts: prepared again", r: &rechecker{}, sink: func(n *int) connector.SinkFunc {
			return func(context.Context, connector.Delivery) (connector.Outcome, error) {
				*n++
				if *n == 1 {
					return connector.Outcome{}, connector.ErrConsentChanged
				}
				return connector.Outcome{Status: 204}, nil
			}
		}, wantSends: 2, wantOut: audit.Delivered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &pub{}
			sends := 0
			var body []byte
			sink := connector.SinkFunc(func(_ context.Context, dl connector.Delivery) (connector.Outcome, error) {
				sends++
				body = dl.Body
				return connector.Outcome{Status: 204, Attempts: 1}, nil
			})
			if tc.sink != nil {
				sink = tc.sink(&sends)
			}
			var g *Gate
			if tc.unset {
				g = gate(nil)
			} else {
				g = gate(tc.r)
			}
			d, _ := New(context.Background(), "A81001", sink, g, p, zap.NewNop())
			m := outboxMessage()
			if tc.edit != nil {
				tc.edit(m)
			}
			err := d.Handle(m)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Handle: %v, want error %v", err, tc.wantErr)
			}
			if sends != tc.wantSends {
				t.Errorf("sink called %d times, want %d", sends, tc.wantSends)
			}
			if tc.wantBody != "" && string(body) != tc.wantBody {
				t.Errorf("sent %s, want %s", body, tc.wantBody)
			}
			recs := p.sent[topic.Audit]
			if tc.wantOut == "" {
				if len(recs) != 0 {
					t.Errorf("audited %d records", len(recs))
				}
				return
			}
			if len(recs) != 1 {
				t.Fatalf("audit records: %d", len(recs))
			}
			rec, _ := audit.Unmarshal(recs[0].Payload)
			if rec.Outcome != tc.wantOut || rec.Rule != tc.wantRule {
				t.Errorf("audit: %+v, want outcome %s rule %s", rec, tc.wantOut, tc.wantRule)
			}
		})
	}
}

// observed records what a Deliverer tells its Observer.
type observed struct {
	mu        sync.Mutex
	outcomes  []string
	latencies []time.Duration
}

func (o *observed) Outcome(recipient, outcome string) {
	o.mu.Lock()
	o.outcomes = append(o.outcomes, recipient+" "+outcome)
	o.mu.Unlock()
}

func (o *observed) Latency(_ string, d time.Duration) {
	o.mu.Lock()
	o.latencies = append(o.latencies, d)
	o.mu.Unlock()
}

// TestObserverHearsEachOutcome: every outcome is told once it is durable
// (audited), a postponement when the copy is left for later, and the time
// from acceptance for a delivered copy that carries it.
func TestObserverHearsEachOutcome(t *testing.T) {
	accepted := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ok := func(context.Context, connector.Delivery) (connector.Outcome, error) {
		return connector.Outcome{Attempts: 1, Status: 204}, nil
	}
	tests := []struct {
		name         string
		sink         connector.SinkFunc
		check        *rechecker
		auditFails   bool
		accepted     string // topic.MetaAccepted, "" for none
		wantOutcomes []string
		wantLatency  []time.Duration
	}{
		{"delivered", ok, &rechecker{}, false, accepted.Format(time.RFC3339Nano), []string{"A81001 delivered"}, []time.Duration{90 * time.Second}},
		{"delivered, accepted time unknown", ok, &rechecker{}, false, "", []string{"A81001 delivered"}, nil},
		{"delivered, accepted time not a time", ok, &rechecker{}, false, canary, []string{"A81001 delivered"}, nil},
		{"withheld", ok, &rechecker{dec: consent.Decision{Effect: consent.Deny, Rule: "directive:deny-organisation"}}, false, "", []string{"A81001 withheld"}, nil},
		{"dead-lettered", func(context.Context, connector.Delivery) (connector.Outcome, error) {
			return connector.Outcome{Attempts: 1, Status: 400}, connector.Permanent("recipient answered 400", nil)
		}, &rechecker{}, false, "", []string{"A81001 dead-lettered"}, nil},
		{"postponed: recipient down", func(context.Context, connector.Delivery) (connector.Outcome, error) {
			return connector.Outcome{Attempts: 3}, errors.New("connection refused")
		}, &rechecker{}, false, "", []string{"A81001 postponed"}, nil},
		{"postponed: consent not re-checked", ok, &rechecker{err: errors.New("store down")}, false, "", []string{"A81001 postponed"}, nil},
		{"audit not durable: nothing told", ok, &rechecker{}, true, "", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &pub{}
			if tc.auditFails {
				p.err = errors.New("broker down")
			}
			d, err := New(context.Background(), "A81001", tc.sink, gate(tc.check), p, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			d.now = func() time.Time { return accepted.Add(90 * time.Second) }
			var o observed
			d.Observe(&o)
			m := outboxMessage()
			if tc.accepted != "" {
				m.Metadata.Set(topic.MetaAccepted, tc.accepted)
			}
			_ = d.Handle(m)
			if !slices.Equal(o.outcomes, tc.wantOutcomes) {
				t.Errorf("outcomes:\n\tgot  %q\n\twant %q", o.outcomes, tc.wantOutcomes)
			}
			if !slices.Equal(o.latencies, tc.wantLatency) {
				t.Errorf("latencies:\n\tgot  %v\n\twant %v", o.latencies, tc.wantLatency)
			}
		})
	}
}
