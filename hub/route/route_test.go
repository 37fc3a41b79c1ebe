package route

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"go.uber.org/zap"
)

type fakeDirectives struct {
	mu      sync.Mutex
	calls   []string
	syncErr error
	ds      []consent.Directive
}

func (f *fakeDirectives) Sync(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "sync")
	return f.syncErr
}

func (f *fakeDirectives) For(string) ([]consent.Directive, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "for")
	return f.ds, nil
}

type fakePub struct {
	mu   sync.Mutex
	sent map[string][]*message.Message
	err  error
}

func (p *fakePub) Publish(t string, msgs ...*message.Message) error {
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

func (p *fakePub) Close() error { return nil }

func subs(t testing.TB) *Subscriptions {
	t.Helper()
	all := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true}
	s, err := NewSubscriptions([]Subscription{
		{ID: "gp", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "home", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: all},
		{ID: "home-as-gp", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisRegisteredGP, Types: all},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func discharge(t testing.TB) *message.Message {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	ev, err := v.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	body, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(ev.ID, body)
	m.Metadata.Set(topic.MetaKey, "p1_test")
	m.Metadata.Set(topic.MetaEventID, ev.ID)
	m.Metadata.Set(topic.MetaEventType, ev.Type)
	return m
}

func TestHandleSyncsBeforeReadingDirectivesAndPublishesCopiesAndAudit(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r, err := New(subs(t), consent.Relationship{}, dirs, pub, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(dirs.calls, ","); got != "sync,for" {
		t.Errorf("directive calls:\n\tgot  %s\n\twant sync,for", got)
	}
	for _, o := range []string{"a81001", "vm123"} {
		if n := len(pub.sent["carehub.outbox."+o]); n != 1 {
			t.Errorf("outbox %s: got %d copies, want 1", o, n)
		}
	}
	// Three candidates (the example patient's GP, the destination, and no
	// registered-GP match for VM123) → two decisions audited.
	if n := len(pub.sent[topic.Audit]); n != 2 {
		t.Errorf("audit records: got %d, want 2", n)
	}
	for _, m := range pub.sent[topic.Audit] {
		rec, err := audit.Unmarshal(m.Payload)
		if err != nil || rec.Rule == "" || rec.Patient != "p1_test" || m.Metadata.Get(topic.MetaKey) != "p1_test" {
			t.Errorf("audit record: got %+v, %v", rec, err)
		}
	}
}

func TestFailuresFailClosed(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		dirs    *fakeDirectives
		decider consent.Decider
		pubErr  error
	}{
		{"consent store cannot sync", &fakeDirectives{syncErr: boom}, consent.Relationship{}, nil},
		{"decider errors", &fakeDirectives{}, consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
			return consent.Decision{}, boom
		}), nil},
		{"decider returns no rule", &fakeDirectives{}, consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
			return consent.Decision{Effect: consent.Permit}, nil
		}), nil},
		{"publishing fails", &fakeDirectives{}, consent.Relationship{}, boom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePub{err: tc.pubErr}
			r, _ := New(subs(t), tc.decider, tc.dirs, pub, zap.NewNop())
			if err := r.Handle(discharge(t)); err == nil {
				t.Fatalf("Handle succeeded; want an error so the event is retried")
			}
			if len(pub.sent) != 0 {
				t.Errorf("published %d topics despite the failure", len(pub.sent))
			}
		})
	}
}

func TestNotificationOnlyCopyHasNoSummary(t *testing.T) {
	pub := &fakePub{}
	d := consent.DeciderFunc(func(_ context.Context, req consent.Request) (consent.Decision, error) {
		dec := consent.Decision{Effect: consent.Permit, Rule: "test"}
		if req.Recipient.ODS == "VM123" {
			dec.Obligations = []consent.Obligation{consent.NotificationOnly}
		}
		return dec, nil
	})
	r, _ := New(subs(t), d, NoDirectives{}, pub, zap.NewNop())
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	gp := string(pub.sent["carehub.outbox.a81001"][0].Payload)
	home := string(pub.sent["carehub.outbox.vm123"][0].Payload)
	if !strings.Contains(gp, `"summary"`) || strings.Contains(home, `"summary"`) {
		t.Errorf("summary: in the GP's copy %v (want true), in the care home's %v (want false)",
			strings.Contains(gp, `"summary"`), strings.Contains(home, `"summary"`))
	}
}

func TestOneCopyPerRecipientWhateverTheBases(t *testing.T) {
	pub := &fakePub{}
	m := discharge(t)
	ev, _ := event.Unmarshal(m.Payload)
	ev.Patient.GPPractice = "VM123" // the care home is both GP (oddly) and destination
	r, _ := New(subs(t), consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
		return consent.Decision{Effect: consent.Permit, Rule: "test"}, nil
	}), NoDirectives{}, pub, zap.NewNop())
	v, err := r.Decide(context.Background(), ev, "p1_test")
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, x := range v {
		if x.Copy {
			copies++
		}
	}
	if len(v) != 2 || copies != 1 {
		t.Errorf("verdicts %d (want 2), copies %d (want 1)", len(v), copies)
	}
}

type staticDirectives []consent.Directive

func (staticDirectives) Sync(context.Context) error                { return nil }
func (s staticDirectives) For(string) ([]consent.Directive, error) { return s, nil }

// BenchmarkPlan compares routing with the first policy (relationship only)
// against the full consent policy with a patient holding directives, in the
// same run: the consent issue asks for ≥ 0.9x.
func BenchmarkPlan(b *testing.B) {
	policy := consent.DefaultPolicy()
	ds := []consent.Directive{
		{ID: "a", Kind: consent.KindDenyRole, Role: consent.RoleCommunity, RecordedBy: "b"},
		{ID: "b", Kind: consent.KindDenyOrganisation, Organisation: "B82002", RecordedBy: "b"},
		{ID: "c", Kind: consent.KindPermitOrganisation, Organisation: "A81001", Categories: []string{"mental-health"}, RecordedBy: "b"},
	}
	for i := range ds {
		ds[i].Recorded = ds[0].Recorded.AddDate(2026, 0, i)
	}
	cases := []struct {
		name string
		d    consent.Decider
		dirs Directives
	}{
		{"consent=relationship-only", consent.Relationship{}, NoDirectives{}},
		{"consent=policy+3-directives", &policy, staticDirectives(ds)},
	}
	msg := discharge(b)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			r, _ := New(subs(b), c.d, c.dirs, &fakePub{}, zap.NewNop())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Plan(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type topicsPub struct {
	fakePub
	calls int
}

func (p *topicsPub) PublishTopics(byTopic map[string][]*message.Message) error {
	p.calls++
	for t, msgs := range byTopic {
		if err := p.Publish(t, msgs...); err != nil {
			return err
		}
	}
	return nil
}

// TestOneProducePerEvent: with a publisher that can write several topics at
// once, routing an event costs one produce (the outbox copies and the audit
// records together), not one per topic.
func TestOneProducePerEvent(t *testing.T) {
	p := &topicsPub{}
	r, _ := New(subs(t), consent.Relationship{}, NoDirectives{}, p, zap.NewNop())
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	if p.calls != 1 {
		t.Errorf("produces per event: got %d, want 1", p.calls)
	}
	if len(p.sent["carehub.outbox.a81001"]) != 1 || len(p.sent["carehub.outbox.vm123"]) != 1 || len(p.sent[topic.Audit]) != 2 {
		t.Errorf("published: got %d topics %v", len(p.sent), p.sent)
	}
}

// TestConfidentialEventReachesOnlyTheGP: an event the publisher marks
// confidential (data.confidential) is decided as confidential: with the
// default policy, the registered GP gets it and the care home does not.
func TestConfidentialEventReachesOnlyTheGP(t *testing.T) {
	m := discharge(t)
	m.Payload = []byte(strings.Replace(string(m.Payload), `"data":{`, `"data":{"confidential":true,`, 1))
	pub := &fakePub{}
	policy := consent.DefaultPolicy()
	r, _ := New(subs(t), &policy, NoDirectives{}, pub, zap.NewNop())
	if err := r.Handle(m); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.sent[topic.Outbox("A81001")]); got != 1 {
		t.Errorf("copies for the GP: got %d, want 1", got)
	}
	if got := len(pub.sent[topic.Outbox("VM123")]); got != 0 {
		t.Errorf("copies for the care home: got %d, want 0", got)
	}
	var rules []string
	for _, a := range pub.sent[topic.Audit] {
		rec, err := audit.Unmarshal(a.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Recipient == "VM123" {
			rules = append(rules, rec.Rule)
		}
	}
	for _, r := range rules {
		if r != consent.RuleConfidentialEvent {
			t.Errorf("the care home's decision: rule %s, want %s", r, consent.RuleConfidentialEvent)
		}
	}
	if len(rules) == 0 {
		t.Error("no decision audited for the care home")
	}
}
