package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
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
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// pub is a message.Publisher that keeps what it is given; fail, when set,
// decides per message whether a publish fails (a broker away, a full disk).
type pub struct {
	mu    sync.Mutex
	sent  map[string][]*message.Message
	err   error
	fail  func(topic string, m *message.Message) error
	tries int
}

func (p *pub) Publish(t string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tries++
	if p.err != nil {
		return p.err
	}
	if p.fail != nil {
		for _, m := range msgs {
			if err := p.fail(t, m); err != nil {
				return err
			}
		}
	}
	if p.sent == nil {
		p.sent = map[string][]*message.Message{}
	}
	p.sent[t] = append(p.sent[t], msgs...)
	return nil
}
func (p *pub) Close() error { return nil }

const canary = "9990000018"

// rechecker answers re-checks with dec (permit by default) and keeps the
// settlements it is given; settleErr, when set, fails the first ones.
type rechecker struct {
	mu        sync.Mutex
	dec       consent.Decision
	calls     int
	err       error
	settled   []route.Settlement
	settleErr []error
	// audited is how many audit records pub held at each settlement.
	audited []int
	pub     *pub
}

func (r *rechecker) Settle(_ context.Context, s route.Settlement) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.settleErr) > 0 {
		err := r.settleErr[0]
		r.settleErr = r.settleErr[1:]
		return err
	}
	r.settled = append(r.settled, s)
	if r.pub != nil {
		r.pub.mu.Lock()
		r.audited = append(r.audited, len(r.pub.sent[topic.Audit]))
		r.pub.mu.Unlock()
	}
	return nil
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
			if len(recs) == 0 {
				t.Fatalf("no audit record: want a sending record before the sink is called")
			}
			if rec, _ := audit.Unmarshal(recs[0].Payload); rec.Outcome != audit.Sending || rec.EventID != "ev-1" || rec.Patient != "p1_test" ||
				rec.Recipient != "A81001" || rec.Form != "full" || rec.Kind != audit.KindDelivery {
				t.Errorf("the first audit record:\n\tgot  %+v\n\twant a sending record of ev-1 to A81001", rec)
			}
			recs = recs[1:]
			if tc.wantAudit == "" {
				if len(recs) != 0 {
					t.Errorf("audited %d outcomes for an undelivered event; want none until it is delivered", len(recs))
				}
			} else {
				if len(recs) != 1 {
					t.Fatalf("audit records after the sending record: got %d, want 1", len(recs))
				}
				rec, _ := audit.Unmarshal(recs[0].Payload)
				if rec.Outcome != tc.wantAudit || rec.Status != tc.wantStatus || rec.Patient != "p1_test" || rec.Basis != "registered-gp" ||
					rec.EventID != "ev-1" || rec.Publisher != "RX1" || rec.Form != "full" ||
					!slices.Equal(rec.DirectiveVersions, []audit.DirectiveVersion{{Patient: "p1_test", Version: 4}}) {
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
		recs := p.sent[topic.Audit]
		rec, _ := audit.Unmarshal(recs[len(recs)-1].Payload)
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
		wantForm  string
		// wantSettled is what the patient index is told became of the
		// copy (nil: nothing).
		wantSettled *route.Settlement
	}{
		{name: "denied now: not sent", r: &rechecker{dec: deny}, wantOut: audit.Withheld, wantRule: consent.RuleDenyOrganisation,
			wantSettled: &route.Settlement{Key: "p1_test", Recipient: "A81001", Source: "urn:ods:RX1", EventID: "ev-1", Sealed: "sealed-decision", Rule: consent.RuleDenyOrganisation}},
		{name: "thin now: sent thin", r: &rechecker{dec: thin}, wantSends: 1, wantOut: audit.Delivered, wantBody: `{"thin":true}`, wantForm: "notification",
			wantSettled: &route.Settlement{Key: "p1_test", Recipient: "A81001", Source: "urn:ods:RX1", EventID: "ev-1", Sealed: "sealed-decision", Form: "notification"}},
		{name: "delivered as routed: nothing settled", r: &rechecker{}, wantSends: 1, wantOut: audit.Delivered, wantForm: "full"},
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
		}, wantSends: 1, wantOut: audit.Withheld, wantRule: consent.RuleDenyRole,
			wantSettled: &route.Settlement{Key: "p1_test", Recipient: "A81001", Source: "urn:ods:RX1", EventID: "ev-1", Sealed: "sealed-decision", Rule: consent.RuleDenyRole}},
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
				tc.r.pub = p
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
			recs, sending := outcomes(p.sent[topic.Audit])
			if sending != tc.wantSends {
				t.Errorf("sending records: %d, want one before each call of the sink (%d)", sending, tc.wantSends)
			}
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
			if tc.wantForm != "" && rec.Form != tc.wantForm {
				t.Errorf("audited form %q, want %q", rec.Form, tc.wantForm)
			}
			var want []route.Settlement
			if tc.wantSettled != nil {
				want = []route.Settlement{*tc.wantSettled}
			}
			if tc.r != nil && !slices.Equal(tc.r.settled, want) {
				t.Errorf("settled %+v, want %+v", tc.r.settled, want)
			}
			// A withholding names the version that decided it now (the
			// fake's 5), not the routing decision's.
			if tc.r != nil && tc.r.dec.Effect == consent.Deny && tc.wantOut == audit.Withheld &&
				!slices.Equal(rec.DirectiveVersions, []audit.DirectiveVersion{{Patient: "p1_test", Version: 5}}) {
				t.Errorf("withheld with directive versions %+v, want p1_test at version 5", rec.DirectiveVersions)
			}
		})
	}
}

// TestAWithheldCopyIsSettledBeforeItIsCommitted pins audit-11 leak 1: a copy
// withheld at delivery still counted as received in the patient index, so a
// later update of the stay went to the care home in full form. The
// deliverer tells the index (Settle) before it writes the outcome record and
// before Handle returns (the commit): a settlement that fails is retried in
// process, and the copy is not committed past until it succeeds.
func TestAWithheldCopyIsSettledBeforeItIsCommitted(t *testing.T) {
	deny := consent.Decision{Effect: consent.Deny, Rule: consent.RuleDenyOrganisation, DirectiveID: "no-home"}
	p := &pub{}
	r := &rechecker{dec: deny, pub: p, settleErr: []error{errors.New("kafka: not enough replicas")}}
	sends := 0
	sink := connector.SinkFunc(func(context.Context, connector.Delivery) (connector.Outcome, error) {
		sends++
		return connector.Outcome{Status: 204}, nil
	})
	d, _ := New(context.Background(), "VM123", sink, gate(r), p, zap.NewNop())
	if err := d.Handle(outboxMessage()); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if sends != 0 {
		t.Errorf("sink called %d times, want 0", sends)
	}
	if len(r.settled) != 1 || r.settled[0].Rule != consent.RuleDenyOrganisation || r.settled[0].Recipient != "VM123" {
		t.Fatalf("settled %+v, want one withholding by %s", r.settled, consent.RuleDenyOrganisation)
	}
	if !slices.Equal(r.audited, []int{0}) {
		t.Errorf("audit records written before the settlement: %v, want none", r.audited)
	}
	recs, _ := outcomes(p.sent[topic.Audit])
	if len(recs) != 1 {
		t.Fatalf("audit records: %d, want 1", len(recs))
	}

	// The hub stops while the index cannot be written: the copy is not
	// committed, and nothing is audited.
	stop, cancel := context.WithCancel(context.Background())
	p2 := &pub{}
	r2 := &rechecker{dec: deny, pub: p2, settleErr: []error{errors.New("broker down")}}
	d2, _ := New(stop, "VM123", sink, gate(r2), p2, zap.NewNop())
	cancel()
	if err := d2.Handle(outboxMessage()); err == nil {
		t.Error("Handle returned nil (commit) though the settlement was never written")
	}
	if n := len(p2.sent[topic.Audit]); n != 0 {
		t.Errorf("audit records: %d, want none before the settlement", n)
	}
}

// outcomes splits audit records into the outcome records and the number of
// sending records.
func outcomes(msgs []*message.Message) ([]*message.Message, int) {
	var out []*message.Message
	sending := 0
	for _, m := range msgs {
		if rec, _ := audit.Unmarshal(m.Payload); rec.Outcome == audit.Sending {
			sending++
			continue
		}
		out = append(out, m)
	}
	return out, sending
}

// failing fails the first n publishes that match, then lets them through.
func failing(n int, match func(topic string, rec audit.Record) bool) func(string, *message.Message) error {
	return func(t string, m *message.Message) error {
		rec, _ := audit.Unmarshal(m.Payload)
		if n > 0 && match(t, rec) {
			n--
			return errors.New("kafka: publishing to " + t + ": 1 of 1 records not acknowledged (Kafka Storage Error)")
		}
		return nil
	}
}

func auditOutcome(outcome string) func(string, audit.Record) bool {
	return func(t string, rec audit.Record) bool { return t == topic.Audit && rec.Outcome == outcome }
}

// TestRecordWritesRetryNotDeliveries pins defect 4 of issue 14: a delivery
// succeeded, the audit write after it failed (the disk was full), the
// handler returned an error, and the copy was POSTed again 100 ms later:
// one event reached the GP 222 times in 23 s. A record that cannot be
// written is retried in process; the sink is called once, and each record
// is written once.
func TestRecordWritesRetryNotDeliveries(t *testing.T) {
	tests := []struct {
		name     string
		fail     func(string, *message.Message) error
		sink     connector.SinkFunc
		wantOut  string
		wantDLQ  int
		failures int
	}{
		{"the delivered record fails 5 times", failing(5, auditOutcome(audit.Delivered)), delivered, audit.Delivered, 0, 5},
		{"the sending record fails 3 times", failing(3, auditOutcome(audit.Sending)), delivered, audit.Delivered, 0, 3},
		{"the dead letter fails 4 times", failing(4, func(t string, _ audit.Record) bool { return t == topic.DLQ }), rejected, audit.DeadLettered, 1, 4},
		{"the dead-lettered record fails 2 times", failing(2, auditOutcome(audit.DeadLettered)), rejected, audit.DeadLettered, 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			p := &pub{fail: tc.fail}
			calls := 0
			sink := connector.SinkFunc(func(ctx context.Context, dl connector.Delivery) (connector.Outcome, error) {
				calls++
				return tc.sink(ctx, dl)
			})
			d, _ := New(context.Background(), "A81001", sink, gate(&rechecker{}), p, zap.New(core))
			d.writeRetry = connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
			// As the subscriber does: a copy whose handler fails is
			// handed over again, until it succeeds.
			handled := 0
			for ; handled < 20; handled++ {
				if err := d.Handle(outboxMessage()); err == nil {
					break
				}
			}
			if handled != 0 {
				t.Errorf("Handle failed %d times; want the writes retried within it until they succeed", handled)
			}
			if calls != 1 {
				t.Errorf("the sink was called %d times, want 1: a failed write must not deliver the copy again", calls)
			}
			recs, sending := outcomes(p.sent[topic.Audit])
			if sending != 1 || len(recs) != 1 {
				t.Fatalf("audit records: %d sending and %d outcomes, want 1 and 1", sending, len(recs))
			}
			if rec, _ := audit.Unmarshal(recs[0].Payload); rec.Outcome != tc.wantOut {
				t.Errorf("the outcome record: got %q, want %q", rec.Outcome, tc.wantOut)
			}
			if n := len(p.sent[topic.DLQ]); n != tc.wantDLQ {
				t.Errorf("dead letters: got %d, want %d", n, tc.wantDLQ)
			}
			if n := logs.FilterMessage("writing failed; retrying").Len(); n != tc.failures {
				t.Errorf("retry log lines: got %d, want %d (one per failed write)", n, tc.failures)
			}
			noCanary(t, logs)
		})
	}
}

func delivered(context.Context, connector.Delivery) (connector.Outcome, error) {
	return connector.Outcome{Attempts: 1, Status: 204}, nil
}

func rejected(context.Context, connector.Delivery) (connector.Outcome, error) {
	return connector.Outcome{Attempts: 1, Status: 400}, connector.Permanent("recipient answered 400", nil)
}

func noCanary(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		if strings.Contains(string(b)+e.Message, canary) {
			t.Errorf("a log line holds the canary: %s %s", e.Message, b)
		}
	}
}

// TestStopBeforeTheAuditIsWritten: the recipient has the copy, the audit
// write keeps failing, and the hub stops. The sending record written
// before the handover stands (the recipient may have the copy: the trail
// says so); Handle fails, so the copy is not committed and is delivered
// again after the restart, with its outcome then.
func TestStopBeforeTheAuditIsWritten(t *testing.T) {
	stop, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &pub{fail: func(t string, m *message.Message) error {
		if rec, _ := audit.Unmarshal(m.Payload); t == topic.Audit && rec.Outcome == audit.Delivered {
			cancel() // the hub stops while the write fails
			return errors.New("kafka: broker unreachable")
		}
		return nil
	}}
	calls := 0
	sink := connector.SinkFunc(func(ctx context.Context, dl connector.Delivery) (connector.Outcome, error) {
		calls++
		return delivered(ctx, dl)
	})
	d, _ := New(stop, "A81001", sink, gate(&rechecker{}), p, zap.NewNop())
	d.writeRetry = connector.Retry{MinBackoff: time.Hour, MaxBackoff: time.Hour} // only the stop ends the wait
	done := make(chan error, 1)
	go func() { done <- d.Handle(outboxMessage()) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("Handle returned nil though the delivered record was never written: the copy would be committed unaudited")
		}
		if problem.KindOf(err) != problem.Unavailable {
			t.Errorf("Handle: %v; want a transient error (the copy is redelivered)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Handle did not return after the stop: the write's retries must end with the hub")
	}
	recs, sending := outcomes(p.sent[topic.Audit])
	if calls != 1 || sending != 1 || len(recs) != 0 {
		t.Errorf("got %d sink calls, %d sending records, %d outcomes; want 1, 1, 0", calls, sending, len(recs))
	}
}

// pullSink is a sink whose recipient reads over the hub's API (a feed).
type pullSink struct{ connector.SinkFunc }

func (pullSink) RegisterHTTP(*http.ServeMux) error { return nil }

// TestPullSinkWritesNoSendingRecord: appending to a feed discloses nothing
// (a read does, and is audited before it is answered).
func TestPullSinkWritesNoSendingRecord(t *testing.T) {
	p := &pub{}
	d, _ := New(context.Background(), "A81001", pullSink{delivered}, gate(&rechecker{}), p, zap.NewNop())
	if err := d.Handle(outboxMessage()); err != nil {
		t.Fatal(err)
	}
	recs, sending := outcomes(p.sent[topic.Audit])
	if sending != 0 || len(recs) != 1 {
		t.Errorf("audit records of a pull sink's append: %d sending and %d outcomes, want 0 and 1", sending, len(recs))
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
			stop := context.Background()
			if tc.auditFails {
				// Record writes are retried until the hub stops: stop it.
				var cancel context.CancelFunc
				stop, cancel = context.WithTimeout(stop, 100*time.Millisecond)
				defer cancel()
			}
			d, err := New(stop, "A81001", tc.sink, gate(tc.check), p, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			d.writeRetry = connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
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
