package route

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

type fakeDirectives struct {
	mu      sync.Mutex
	calls   []string
	syncErr error
	by      map[string]consent.PatientConsent
}

func (f *fakeDirectives) Sync(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "sync")
	return f.syncErr
}

func (f *fakeDirectives) For(k string) (consent.PatientConsent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "for")
	return f.by[k], nil
}

func (f *fakeDirectives) set(k string, ds ...consent.Directive) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.by == nil {
		f.by = map[string]consent.PatientConsent{}
	}
	f.by[k] = consent.PatientConsent{Version: f.by[k].Version + 1, Directives: ds}
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

func (p *fakePub) take() map[string][]*message.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sent
	p.sent = nil
	return s
}

var testPseudo = func() *nhs.Pseudonymiser {
	p, err := nhs.NewPseudonymiser([]byte("route-test-pseudonym-key"))
	if err != nil {
		panic(err)
	}
	return p
}()

func newRouter(t testing.TB, s *Subscriptions, d consent.Decider, dirs Directives, pub message.Publisher, opts ...func(*Config)) *Router {
	t.Helper()
	sealer, err := NewSealer([]byte("route-test-pseudonym-key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Subscriptions: s, Decider: d, Directives: dirs, Index: patientindex.NewMemory(24 * time.Hour), Publisher: pub,
		Pseudonym: testPseudo.Pseudonym, Sealer: sealer, Log: zap.NewNop(), Contacts: map[string]string{"RX1": "records team 0300 000 0000"}}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var all = map[string]bool{}

func init() {
	for _, t := range event.Types() {
		all[t] = true
	}
}

func subs(t testing.TB) *Subscriptions {
	t.Helper()
	two := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true}
	s, err := NewSubscriptions([]Subscription{
		{ID: "gp", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "gp2", Recipient: consent.Recipient{ODS: "A81002", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "home", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: two},
		{ID: "home-as-gp", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisRegisteredGP, Types: two},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var validator = func() *event.Validator {
	v, err := event.NewValidator()
	if err != nil {
		panic(err)
	}
	return v
}()

// example reads deploy/examples/NAME.json, edits it, and returns it as a
// carehub.events message keyed by the patient's pseudonym.
func example(t testing.TB, name string, edit func(m map[string]any)) *message.Message {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/examples/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		raw, _ = json.Marshal(m)
	}
	ev, err := validator.Parse(raw)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	body, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(ev.ID, body)
	m.Metadata.Set(topic.MetaKey, testPseudo.Pseudonym(ev.Patient.NHSNumber))
	m.Metadata.Set(topic.MetaEventID, ev.ID)
	m.Metadata.Set(topic.MetaEventType, ev.Type)
	return m
}

func discharge(t testing.TB) *message.Message { return example(t, "discharge", nil) }

func data(m map[string]any) map[string]any { return m["data"].(map[string]any) }

func patientKey() string { n, _ := nhs.Parse("9990500002"); return testPseudo.Pseudonym(n) }

func TestHandleSyncsBeforeReadingDirectivesAndPublishesCopiesAndAudit(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, subs(t), consent.Relationship{}, dirs, pub)
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
	if n := len(pub.sent[topic.Audit]); n != 2 {
		t.Errorf("audit records: got %d, want 2", n)
	}
	for _, m := range pub.sent[topic.Audit] {
		rec, err := audit.Unmarshal(m.Payload)
		if err != nil || rec.Rule == "" || rec.Patient != patientKey() || m.Metadata.Get(topic.MetaKey) != patientKey() ||
			rec.Form != string(event.FormFull) || !slices.Equal(rec.DirectiveVersions, []audit.DirectiveVersion{{Patient: patientKey(), Version: 0}}) {
			t.Errorf("audit record: got %+v, %v", rec, err)
		}
	}
	if n := len(pub.sent[topic.Patients]); n != 1 {
		t.Errorf("patient index records: got %d, want 1", n)
	}
	for _, m := range pub.sent["carehub.outbox.a81001"] {
		if m.Metadata.Get(topic.MetaDecision) == "" || m.Metadata.Get(topic.MetaForm) != "full" {
			t.Errorf("copy metadata: %v", m.Metadata)
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
			r := newRouter(t, subs(t), tc.decider, tc.dirs, pub)
			if err := r.Handle(discharge(t)); err == nil {
				t.Fatalf("Handle succeeded; want an error so the event is retried")
			}
			if len(pub.sent) != 0 {
				t.Errorf("published %d topics despite the failure", len(pub.sent))
			}
		})
	}
}

func TestNotificationOnlyCopyIsTheAllowList(t *testing.T) {
	pub := &fakePub{}
	d := consent.DeciderFunc(func(_ context.Context, req consent.Request) (consent.Decision, error) {
		dec := consent.Decision{Effect: consent.Permit, Rule: "test"}
		if req.Recipient.ODS == "VM123" {
			dec.Obligations = []consent.Obligation{consent.NotificationOnly}
		}
		return dec, nil
	})
	r := newRouter(t, subs(t), d, NoDirectives{}, pub)
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	gp := string(pub.sent["carehub.outbox.a81001"][0].Payload)
	home := pub.sent["carehub.outbox.vm123"][0]
	if !strings.Contains(gp, `"summary"`) {
		t.Errorf("the GP's full copy lost the summary")
	}
	for _, s := range []string{"summary", "Ward 7", "destination", "gpPractice", "TESTPATIENT"} {
		if strings.Contains(string(home.Payload), s) {
			t.Errorf("the care home's notification-only copy holds %s", s)
		}
	}
	if home.Metadata.Get(topic.MetaForm) != "notification" || !strings.Contains(string(home.Payload), "records team") {
		t.Errorf("notification copy: form %q, body %s", home.Metadata.Get(topic.MetaForm), home.Payload)
	}
}

func TestOneCopyPerRecipientWhateverTheBases(t *testing.T) {
	m := discharge(t)
	ev, _ := event.Unmarshal(m.Payload)
	ev.Patient.GPPractice = "VM123" // the care home is both GP (oddly) and destination
	r := newRouter(t, subs(t), consent.DeciderFunc(func(context.Context, consent.Request) (consent.Decision, error) {
		return consent.Decision{Effect: consent.Permit, Rule: "test"}, nil
	}), NoDirectives{}, &fakePub{})
	dec, err := r.Decide(context.Background(), ev, "p1_test")
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, x := range dec.Verdicts {
		if x.Copy {
			copies++
		}
	}
	if len(dec.Verdicts) != 2 || copies != 1 {
		t.Errorf("verdicts %d (want 2), copies %d (want 1)", len(dec.Verdicts), copies)
	}
}

// copies returns the recipients (ODS, lower case) that got a copy of the
// event id (notices about it not counted).
func copies(sent map[string][]*message.Message, id string) []string {
	var out []string
	for t, msgs := range sent {
		if !strings.HasPrefix(t, "carehub.outbox.") {
			continue
		}
		for _, m := range msgs {
			if m.Metadata.Get(topic.MetaEventID) == id {
				out = append(out, strings.TrimPrefix(t, "carehub.outbox."))
			}
		}
	}
	slices.Sort(out)
	return out
}

func decisions(sent map[string][]*message.Message) map[string]audit.Record {
	out := map[string]audit.Record{}
	for _, m := range sent[topic.Audit] {
		r, _ := audit.Unmarshal(m.Payload)
		out[r.Recipient+" "+r.EventType] = r
	}
	return out
}

var policy = consent.DefaultPolicy()

// TestCorrectionFollowsTheOriginal pins finding 1 of issue 11: a
// cancellation went by today's subscriptions, not by who got the original.
// A mental-health admission withheld from the care home and the GP (who
// had asked not to be told of this stay) must not be followed by a
// cancellation to them; and the care home that received an admission must
// receive its cancellation although it does not subscribe to cancellations
// and the cancellation names no destination.
func TestCorrectionFollowsTheOriginal(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, subs(t), &policy, dirs, pub)
	key := patientKey()
	jan := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	end := time.Date(2025, 3, 14, 10, 0, 0, 0, time.UTC) // before the cancellation's time
	dirs.set(key, consent.Directive{ID: "not-this-stay", Kind: consent.KindDenyOrganisation, Organisation: "A81001",
		Recorded: jan, RecordedBy: "x", Period: consent.Period{End: &end}})

	// Withheld: a mental-health admission, encounter ENC-MH.
	adm := example(t, "admission", func(m map[string]any) {
		m["id"] = "adm-mh"
		data(m)["sensitivity"] = []any{"mental-health"}
		data(m)["encounter"].(map[string]any)["id"] = "ENC-MH"
		data(m)["discharge"] = map[string]any{"destination": map[string]any{"type": "care-home", "ods": "VM123"}}
	})
	if err := r.Handle(adm); err != nil {
		t.Fatal(err)
	}
	if got := copies(pub.take(), "adm-mh"); len(got) != 0 {
		t.Fatalf("the admission went to %v, want nobody", got)
	}
	cancel := example(t, "admission-cancelled", func(m map[string]any) {
		m["id"] = "cancel-mh"
		data(m)["encounter"].(map[string]any)["id"] = "ENC-MH"
		delete(data(m), "sensitivity")
	})
	if err := r.Handle(cancel); err != nil {
		t.Fatal(err)
	}
	sent := pub.take()
	if got := copies(sent, "cancel-mh"); len(got) != 0 {
		t.Errorf("the cancellation of a withheld admission went to %v, want nobody", got)
	}
	if d := decisions(sent)["A81001 "+event.TypeAdmissionCancelled]; d.Rule != consent.RuleOriginalNotReceived || d.Relation != "corrects" {
		t.Errorf("GP's decision on the cancellation: %+v", d)
	}

	// Received: an ordinary admission to the care home, then cancelled.
	adm2 := example(t, "admission", func(m map[string]any) {
		m["id"] = "adm-2"
		m["time"] = "2025-03-20T10:00:00Z" // after the GP's directive ended
		data(m)["encounter"].(map[string]any)["id"] = "ENC-2"
		data(m)["discharge"] = map[string]any{"destination": map[string]any{"type": "care-home", "ods": "VM123"}}
	})
	if err := r.Handle(adm2); err != nil {
		t.Fatal(err)
	}
	if got := copies(pub.take(), "adm-2"); !slices.Equal(got, []string{"a81001", "vm123"}) {
		t.Fatalf("admission 2 went to %v", got)
	}
	cancel2 := example(t, "admission-cancelled", func(m map[string]any) {
		m["id"] = "cancel-2"
		m["time"] = "2025-03-20T11:00:00Z"
		data(m)["encounter"].(map[string]any)["id"] = "ENC-2"
	})
	if err := r.Handle(cancel2); err != nil {
		t.Fatal(err)
	}
	sent = pub.take()
	if got := copies(sent, "cancel-2"); !slices.Equal(got, []string{"a81001", "vm123"}) {
		t.Errorf("the cancellation went to %v, want both recipients of the admission", got)
	}
	for _, m := range sent["carehub.outbox.vm123"] {
		for _, s := range []string{"Ward", "period", "specialty", "serviceProvider", "gpPractice"} {
			if strings.Contains(string(m.Payload), s) {
				t.Errorf("the cancellation carries %s: %s", s, m.Payload)
			}
		}
	}
}

// TestFollowUpCarriesTheEncounterSensitivity: a discharge from a
// mental-health admission that does not repeat the label is still decided
// as mental-health.
func TestFollowUpCarriesTheEncounterSensitivity(t *testing.T) {
	pub := &fakePub{}
	r := newRouter(t, subs(t), &policy, &fakeDirectives{}, pub)
	adm := example(t, "admission", func(m map[string]any) {
		m["id"] = "adm-mh"
		data(m)["sensitivity"] = []any{"mental-health"}
	})
	if err := r.Handle(adm); err != nil {
		t.Fatal(err)
	}
	pub.take()
	if err := r.Handle(example(t, "discharge", func(m map[string]any) { m["id"] = "dis" })); err != nil {
		t.Fatal(err)
	}
	if got := copies(pub.take(), "dis"); !slices.Equal(got, []string{"a81001"}) {
		t.Errorf("the discharge went to %v, want the GP only (the stay was mental-health)", got)
	}
}

// TestMergeCarriesDirectivesAndTellsThePreviousGP pins finding 4 of issue
// 11: after an A40 the retired number's deny-organisation no longer
// applied, and a change of registered GP told the new practice only.
func TestMergeCarriesDirectivesAndTellsThePreviousGP(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, subs(t), &policy, dirs, pub)
	retired, _ := nhs.Parse("9990500010")
	rk := testPseudo.Pseudonym(retired)
	dirs.set(rk, consent.Directive{ID: "no-home", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})
	// An event under the surviving number names the GP A81002 first.
	if err := r.Handle(example(t, "admission", func(m map[string]any) {
		m["id"] = "adm-0"
		data(m)["patient"].(map[string]any)["gpPractice"] = "A81002"
	})); err != nil {
		t.Fatal(err)
	}
	pub.take()
	if err := r.Handle(example(t, "patient-merged", func(m map[string]any) {
		m["id"] = "merge"
		data(m)["mergedPatient"].(map[string]any)["nhsNumber"] = retired.Digits()
	})); err != nil {
		t.Fatal(err)
	}
	sent := pub.take()
	// The merge names A81001: A81002 learns the registration ended.
	if got := copies(sent, "merge"); !slices.Equal(got, []string{"a81001"}) {
		t.Errorf("the merge went to %v, want the GP", got)
	}
	if n := len(sent["carehub.outbox.a81002"]); n != 1 {
		t.Errorf("the previous GP got %d messages, want the registration-ended notice", n)
	}
	for _, m := range sent["carehub.outbox.a81002"] {
		if m.Metadata.Get(topic.MetaEventType) != event.TypeRegistrationEnded || strings.Contains(string(m.Payload), "A81001") {
			t.Errorf("previous GP's copy: type %s body %s", m.Metadata.Get(topic.MetaEventType), m.Payload)
		}
	}
	if err := r.Handle(example(t, "discharge", func(m map[string]any) { m["id"] = "dis" })); err != nil {
		t.Fatal(err)
	}
	sent = pub.take()
	if got := copies(sent, "dis"); !slices.Equal(got, []string{"a81001"}) {
		t.Errorf("after the merge the discharge went to %v; the retired number's deny of VM123 must hold", got)
	}
	if d := decisions(sent)["VM123 "+event.TypeDischarge]; d.Directive != "no-home" ||
		!slices.Equal(d.DirectiveVersions, []audit.DirectiveVersion{{Patient: patientKey(), Version: 0}, {Patient: rk, Version: 1}}) {
		t.Errorf("the care home's decision: %+v", d)
	}
}

// TestWithheldDischargeNotice: both deployment choices for a discharge the
// patient withholds from the care home they go to.
func TestWithheldDischargeNotice(t *testing.T) {
	for _, choice := range []WithheldNotice{NoticeContentFree, NoticeNone} {
		t.Run(string(choice), func(t *testing.T) {
			dirs := &fakeDirectives{}
			pub := &fakePub{}
			r := newRouter(t, subs(t), &policy, dirs, pub, func(c *Config) { c.WithheldNotice = choice })
			dirs.set(patientKey(), consent.Directive{ID: "no-home", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
				Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})
			if err := r.Handle(discharge(t)); err != nil {
				t.Fatal(err)
			}
			sent := pub.take()
			home := sent["carehub.outbox.vm123"]
			if choice == NoticeNone {
				if len(home) != 0 {
					t.Fatalf("policy none: the care home got %d messages", len(home))
				}
				return
			}
			if len(home) != 1 {
				t.Fatalf("policy notice: the care home got %d messages, want 1", len(home))
			}
			n := home[0]
			if n.Metadata.Get(topic.MetaEventType) != event.TypeWithheldNotice || n.Metadata.Get(topic.MetaKey) == patientKey() ||
				n.Metadata.Get(topic.MetaDecision) != "" {
				t.Errorf("notice metadata: %v", n.Metadata)
			}
			for _, s := range []string{"9990500002", "TESTPATIENT", "summary", "Ward 7", patientKey()} {
				if strings.Contains(string(n.Payload), s) {
					t.Errorf("the notice holds %q", s)
				}
			}
			if d := decisions(sent)["VM123 "+event.TypeWithheldNotice]; d.Rule != RuleWithheldNotice || d.About == "" || d.Form != "notice" {
				t.Errorf("the notice's audit record: %+v", d)
			}
		})
	}
}

// TestRecheckDecidesWithTheDirectivesOfNow pins finding 2 of issue 11: a
// deny recorded after routing did not stop a queued copy.
func TestRecheckDecidesWithTheDirectivesOfNow(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, subs(t), &policy, dirs, pub)
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	home := pub.take()["carehub.outbox.vm123"][0]
	sealed := home.Metadata.Get(topic.MetaDecision)
	d, _, _, err := r.Recheck(context.Background(), patientKey(), sealed)
	if err != nil || !d.Permitted() {
		t.Fatalf("re-check with unchanged directives: %+v %v", d, err)
	}
	dirs.set(patientKey(), consent.Directive{ID: "thin", Kind: consent.KindNotificationOnly, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})
	if d, _, _, _ := r.Recheck(context.Background(), patientKey(), sealed); !d.Has(consent.NotificationOnly) {
		t.Errorf("re-check after a notification-only directive: %+v", d)
	}
	dirs.set(patientKey(), consent.Directive{ID: "no-home", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})
	d, _, versions, err := r.Recheck(context.Background(), patientKey(), sealed)
	if err != nil || d.Permitted() || d.DirectiveID != "no-home" || versions[0].Version != 2 {
		t.Errorf("re-check after a deny: %+v %v %v", d, versions, err)
	}
	if _, _, _, err := r.Recheck(context.Background(), patientKey(), sealed[:len(sealed)-4]+"AAAA"); err == nil {
		t.Errorf("a damaged sealed decision opened")
	}
}

func TestSealedDecisionIsNotReadable(t *testing.T) {
	pub := &fakePub{}
	m := example(t, "discharge", func(m map[string]any) { data(m)["sensitivity"] = []any{"sexual-health"} })
	r := newRouter(t, subs(t), consent.Relationship{}, NoDirectives{}, pub)
	if err := r.Handle(m); err != nil {
		t.Fatal(err)
	}
	for _, msgs := range pub.sent {
		for _, c := range msgs {
			for k, v := range c.Metadata {
				if strings.Contains(v, "sexual-health") || strings.Contains(v, "9990500002") {
					t.Errorf("header %s holds patient data in clear", k)
				}
			}
		}
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
// once, routing an event costs one produce (the outbox copies, the audit
// records and the patient index record together), not one per topic.
func TestOneProducePerEvent(t *testing.T) {
	p := &topicsPub{}
	r := newRouter(t, subs(t), consent.Relationship{}, NoDirectives{}, p)
	if err := r.Handle(discharge(t)); err != nil {
		t.Fatal(err)
	}
	if p.calls != 1 {
		t.Errorf("produces per event: got %d, want 1", p.calls)
	}
	if len(p.sent["carehub.outbox.a81001"]) != 1 || len(p.sent["carehub.outbox.vm123"]) != 1 || len(p.sent[topic.Audit]) != 2 || len(p.sent[topic.Patients]) != 1 {
		t.Errorf("published: got %d topics %v", len(p.sent), p.sent)
	}
}

type staticDirectives []consent.Directive

func (staticDirectives) Sync(context.Context) error { return nil }
func (s staticDirectives) For(string) (consent.PatientConsent, error) {
	return consent.PatientConsent{Version: 1, Directives: s}, nil
}

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
			r := newRouter(b, subs(b), c.d, c.dirs, &fakePub{})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Plan(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestConfidentialEventReachesOnlyTheGP: an event the publisher marks
// confidential (data.confidential) is decided as confidential: with the
// default policy, the registered GP gets it and the care home does not. The
// care home, being the discharge destination, gets only the content-free
// withheld notice (consent.withheldDischarge: notice), which names no
// patient.
func TestConfidentialEventReachesOnlyTheGP(t *testing.T) {
	m := discharge(t)
	m.Payload = []byte(strings.Replace(string(m.Payload), `"data":{`, `"data":{"confidential":true,`, 1))
	pub := &fakePub{}
	policy := consent.DefaultPolicy()
	r := newRouter(t, subs(t), &policy, NoDirectives{}, pub)
	if err := r.Handle(m); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.sent[topic.Outbox("A81001")]); got != 1 {
		t.Errorf("copies for the GP: got %d, want 1", got)
	}
	home := pub.sent[topic.Outbox("VM123")]
	if len(home) != 1 || home[0].Metadata.Get(topic.MetaEventType) != event.TypeWithheldNotice {
		t.Fatalf("copies for the care home: got %d, want only the withheld notice", len(home))
	}
	if strings.Contains(string(home[0].Payload), "9990500002") || strings.Contains(string(home[0].Payload), `"patient"`) {
		t.Errorf("the withheld notice names the patient: %s", home[0].Payload)
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
	if want := []string{consent.RuleConfidentialEvent, RuleWithheldNotice}; !slices.Equal(rules, want) {
		t.Errorf("the care home's decisions: got rules %v, want %v", rules, want)
	}
}

// routedTo records what a Router tells its Observer.
type routedTo struct {
	mu    sync.Mutex
	calls [][]string // per event routed: effect rule, per verdict
}

func (o *routedTo) Routed(vs []Verdict) {
	var got []string
	for _, v := range vs {
		got = append(got, string(v.Decision.Effect)+" "+v.Decision.Rule)
	}
	o.mu.Lock()
	o.calls = append(o.calls, got)
	o.mu.Unlock()
}

// TestObserverHearsDecisionsOnceDurable: the Observer hears each event's
// verdicts once its copies and records are published, not when publishing
// fails (the event is redelivered and routed again); and the accepted time
// travels from the event to each copy.
func TestObserverHearsDecisionsOnceDurable(t *testing.T) {
	var o routedTo
	pub := &fakePub{err: errors.New("broker down")}
	r := newRouter(t, subs(t), consent.Relationship{}, &fakeDirectives{}, pub, func(c *Config) { c.Observer = &o })
	m := discharge(t)
	m.Metadata.Set(topic.MetaAccepted, "2026-12-01T10:00:00.123456789Z")
	if err := r.Handle(m); err == nil {
		t.Fatal("Handle succeeded with a broken publisher")
	}
	if len(o.calls) != 0 {
		t.Fatalf("told of an event whose copies were not published: %v", o.calls)
	}
	pub.err = nil
	if err := r.Handle(m); err != nil {
		t.Fatal(err)
	}
	// The example discharge names A81001 as the GP and VM123 as the
	// destination.
	want := [][]string{{"permit relationship-confirmed", "permit relationship-confirmed"}}
	if len(o.calls) != 1 || !slices.Equal(o.calls[0], want[0]) {
		t.Errorf("told:\n\tgot  %q\n\twant %q", o.calls, want)
	}
	for _, topicName := range []string{topic.Outbox("A81001"), topic.Outbox("VM123")} {
		for _, c := range pub.sent[topicName] {
			if got := c.Metadata.Get(topic.MetaAccepted); got != "2026-12-01T10:00:00.123456789Z" {
				t.Errorf("%s copy: accepted time %q, want the event's", topicName, got)
			}
		}
	}
}

// fakeSource is a SubscriptionSource whose subscriptions change when it
// syncs, as the recipient directory's do when it reads a change.
type fakeSource struct {
	mu     sync.Mutex
	now    *Subscriptions
	next   *Subscriptions // what a Sync makes current
	syncs  int
	failed error
}

func (f *fakeSource) Sync(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	if f.failed != nil {
		return f.failed
	}
	if f.next != nil {
		f.now, f.next = f.next, nil
	}
	return nil
}

func (f *fakeSource) Subscriptions() *Subscriptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// TestSubscriptionsFromASourceAreCaughtUpWithBeforeEachEvent: with a
// Source, the router catches up with it before deciding each event and
// decides with what it then holds (a recipient created through the admin
// API just before the event was accepted receives it); when the source
// cannot catch up, the event fails closed. The re-check at delivery does
// not wait for it.
func TestSubscriptionsFromASourceAreCaughtUpWithBeforeEachEvent(t *testing.T) {
	withNew, err := NewSubscriptions([]Subscription{
		{ID: "new-home", Recipient: consent.Recipient{ODS: "VM456", Role: consent.RoleSocialCare}, Basis: consent.BasisRegisteredGP, Types: all},
	})
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{now: subs(t), next: withNew}
	pub := &fakePub{}
	r := newRouter(t, subs(t), consent.Relationship{}, &fakeDirectives{}, pub, func(c *Config) { c.Source = src })
	if err := r.Handle(example(t, "discharge", func(m map[string]any) {
		data(m)["patient"].(map[string]any)["gpPractice"] = "VM456"
	})); err != nil {
		t.Fatal(err)
	}
	if n := len(pub.sent["carehub.outbox.vm456"]); n != 1 || src.syncs != 1 {
		t.Errorf("a recipient the source holds after its sync: %d copies after %d syncs, want 1 after 1", n, src.syncs)
	}
	src.failed = errors.New("directory unreachable")
	if err := r.Handle(discharge(t)); problem.KindOf(err) != problem.Unavailable {
		t.Errorf("Handle with a source that cannot catch up: got %v, want Unavailable", err)
	}
	syncs := src.syncs
	copyMsg := pub.sent["carehub.outbox.vm456"][0]
	if _, _, _, err := r.Recheck(context.Background(), copyMsg.Metadata.Get(topic.MetaKey), copyMsg.Metadata.Get(topic.MetaDecision)); err != nil {
		t.Errorf("Recheck with the source down: %v", err)
	}
	if src.syncs != syncs {
		t.Errorf("Recheck caught up with the subscriptions")
	}
}

// followUpSubs are the subscriptions of TestFollowUpCandidates: the GP
// takes every type; two care homes take admissions and discharges as the
// discharge destination only (no transfers, no class changes, no
// cancellations); a community team takes every type for the patients on
// its list, the test patient among them.
func followUpSubs(t testing.TB) *Subscriptions {
	t.Helper()
	two := map[string]bool{event.TypeAdmission: true, event.TypeDischarge: true}
	s, err := NewSubscriptions([]Subscription{
		{ID: "gp", Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Types: all},
		{ID: "home", Recipient: consent.Recipient{ODS: "VM123", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: two},
		{ID: "home2", Recipient: consent.Recipient{ODS: "VM456", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Types: two},
		{ID: "team", Recipient: consent.Recipient{ODS: "CN001", Role: consent.RoleCommunity}, Basis: consent.BasisPatientList, Types: all,
			Patients: patientlist.Set{patientKey(): {}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFollowUpCandidates: the router's follow-up candidates, over the
// patient index (not the pure consent.FollowUp alone). Each case routes
// earlier events on encounter ENC-0001 and then the follow-up, and checks
// who got a copy of the follow-up and how each named recipient's decision
// on it was audited.
func TestFollowUpCandidates(t *testing.T) {
	toHome := func(ods string) func(m map[string]any) {
		return func(m map[string]any) {
			data(m)["discharge"] = map[string]any{"destination": map[string]any{"type": "care-home", "ods": ods}}
		}
	}
	noDestination := func(m map[string]any) { delete(data(m), "discharge") }
	deny := func(ods string, end *time.Time) consent.Directive {
		return consent.Directive{ID: "no-" + ods, Kind: consent.KindDenyOrganisation, Organisation: ods,
			Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{End: end}}
	}
	// Before the transfer's time (2025-03-15T16:10Z), after the
	// admission's (2025-03-14T09:35Z).
	endOfStayDeny := time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC)

	type step struct {
		example string
		edit    func(m map[string]any)
		before  []consent.Directive // the patient's directives from this step on (nil: unchanged)
	}
	type decision struct{ effect, rule, relation string }
	tests := []struct {
		name  string
		steps []step // the last is the follow-up checked
		want  []string
		// decided: recipient -> its audited decision on the follow-up
		// ("" effect: no decision at all, the recipient was not a candidate).
		decided map[string]decision
	}{
		{
			name: "a transfer reaches an earlier recipient that does not subscribe to transfers",
			steps: []step{
				{example: "admission"},
				{example: "transfer"},
			},
			want: []string{"a81001", "cn001", "vm123"},
			decided: map[string]decision{
				"VM123": {"permit", consent.RuleRelationshipConfirmed, "updates"},
			},
		},
		{
			name: "a transfer does not reach a recipient that was withheld the encounter",
			steps: []step{
				// The team was denied the admission by a directive that has
				// ended by the transfer's time: the transfer alone would be
				// permitted, the encounter's withholding decides.
				{example: "admission", before: []consent.Directive{deny("CN001", &endOfStayDeny)}},
				{example: "transfer"},
			},
			want: []string{"a81001", "vm123"},
			decided: map[string]decision{
				"CN001": {"deny", consent.RuleOriginalWithheld, "updates"},
			},
		},
		{
			name: "a correction is withheld from an original recipient the patient has since denied",
			steps: []step{
				{example: "admission"},
				{example: "admission-cancelled", before: []consent.Directive{deny("VM123", nil)}},
			},
			want: []string{"a81001", "cn001"},
			decided: map[string]decision{
				"VM123": {"deny", "directive:deny-organisation", "corrects"},
			},
		},
		{
			name: "discharge-cancelled reaches only those who got the discharge",
			steps: []step{
				// The admission goes to VM123 (and the team is denied it);
				// the discharge to VM456 (and, the directive over, to the
				// team): its cancellation goes to the GP, VM456 and the
				// team, not to VM123, which got the admission only.
				{example: "admission", before: []consent.Directive{deny("CN001", &endOfStayDeny)}},
				{example: "discharge", edit: toHome("VM456")},
				{example: "discharge-cancelled"},
			},
			want: []string{"a81001", "cn001", "vm456"},
			decided: map[string]decision{
				"VM123": {},
				"VM456": {"permit", consent.RuleRelationshipConfirmed, "corrects"},
			},
		},
		{
			name: "transfer-cancelled reaches only those who got the transfer",
			steps: []step{
				{example: "admission"},
				// VM123 got the admission, was denied the transfer, and
				// the deny is lifted before the cancellation: it gets no
				// cancellation of a transfer it never heard of.
				{example: "transfer", before: []consent.Directive{deny("VM123", nil)}},
				{example: "transfer-cancelled", before: []consent.Directive{}},
			},
			want: []string{"a81001", "cn001"},
			decided: map[string]decision{
				"VM123": {},
			},
		},
		{
			name: "patient-class-changed (updates) reaches the original recipients",
			steps: []step{
				{example: "admission"},
				{example: "patient-class-changed"},
			},
			want: []string{"a81001", "cn001", "vm123"},
			decided: map[string]decision{
				"VM123": {"permit", consent.RuleRelationshipConfirmed, "updates"},
			},
		},
		{
			name: "without an earlier event on the encounter an update goes by subscription only",
			steps: []step{
				{example: "admission", edit: func(m map[string]any) {
					data(m)["encounter"].(map[string]any)["id"] = "ENC-OTHER"
				}},
				{example: "patient-class-changed"},
			},
			want: []string{"a81001", "cn001"},
			decided: map[string]decision{
				"VM123": {},
			},
		},
		{
			name: "a continuing event goes by subscription only, not to earlier recipients",
			steps: []step{
				{example: "admission"},
				{example: "discharge-pending", edit: noDestination},
			},
			want: []string{"a81001", "cn001"},
			decided: map[string]decision{
				"VM123": {},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dirs := &fakeDirectives{}
			pub := &fakePub{}
			r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
			var last string
			for i, s := range tc.steps {
				if s.before != nil {
					dirs.set(patientKey(), s.before...)
				}
				m := example(t, s.example, s.edit)
				if err := r.Handle(m); err != nil {
					t.Fatalf("step %d (%s): %v", i, s.example, err)
				}
				last = m.UUID
				sent := pub.take()
				if i == len(tc.steps)-1 {
					if got := copies(sent, last); !slices.Equal(got, tc.want) {
						t.Errorf("%s went to:\n\tgot  %v\n\twant %v", s.example, got, tc.want)
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
			}
		})
	}
}

// TestMergeRoutedLateStillBindsTheDelivery shows what covers, and what
// does not, the ordering window of merges (README, "Merges"): a merge is
// keyed by the surviving number, an event under the retired number by the
// retired one, so the router can decide that event before it has routed
// the merge, with the retired number's directives alone; the surviving
// number's deny of the care home does not stop the routing. The re-check
// at delivery reads the patient index after its freshness barrier: once
// the merge is routed, the copy still waiting in the care home's outbox is
// decided with both numbers' directives and withheld.
func TestMergeRoutedLateStillBindsTheDelivery(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, subs(t), &policy, dirs, pub)
	retired, _ := nhs.Parse("9990500010")
	dirs.set(patientKey(), consent.Directive{ID: "no-home", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x"})

	// The discharge under the retired number, routed first.
	if err := r.Handle(example(t, "discharge", func(m map[string]any) {
		m["id"] = "dis-retired"
		data(m)["patient"].(map[string]any)["nhsNumber"] = retired.Digits()
	})); err != nil {
		t.Fatal(err)
	}
	sent := pub.take()
	if got, want := copies(sent, "dis-retired"), []string{"a81001", "vm123"}; !slices.Equal(got, want) {
		t.Fatalf("the discharge routed before the merge went to:\n\tgot  %v\n\twant %v (the window: the surviving number's deny is not known yet)", got, want)
	}
	home := sent["carehub.outbox.vm123"][0]
	key, sealed := home.Metadata.Get(topic.MetaKey), home.Metadata.Get(topic.MetaDecision)
	if key != testPseudo.Pseudonym(retired) {
		t.Fatalf("the copy is keyed %q, want the retired number's pseudonym", key)
	}

	// The merge, routed after it.
	if err := r.Handle(example(t, "patient-merged", func(m map[string]any) {
		m["id"] = "merge"
		data(m)["mergedPatient"].(map[string]any)["nhsNumber"] = retired.Digits()
	})); err != nil {
		t.Fatal(err)
	}
	pub.take()

	d, _, versions, err := r.Recheck(context.Background(), key, sealed)
	if err != nil {
		t.Fatal(err)
	}
	if d.Permitted() || d.DirectiveID != "no-home" || len(versions) != 2 {
		t.Errorf("the re-check at delivery after the merge: %+v with %d numbers' directives; want deny by no-home with both numbers'", d, len(versions))
	}
}
