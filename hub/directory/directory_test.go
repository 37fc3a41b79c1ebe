package directory

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

const pseudonymKey = "directory-test-pseudonym-key"

// The webhook secret is a canary: it must never be readable in the topic,
// in an answer or in the audit.
const (
	secret  = "whsec_ZGlyZWN0b3J5LXRlc3Qtc2VjcmV0LTAxMjM0NTY3"
	secret2 = "whsec_ZGlyZWN0b3J5LXRlc3Qtc2VjcmV0LTk4NzY1NDMy"
)

func startBroker(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0", Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	specs := topic.Specs(2, 1, nil, topic.Retention{})
	if err := broker.EnsureTopics(ctx, emb.Addrs(), specs); err != nil {
		t.Fatal(err)
	}
	return emb.Addrs()
}

var pseudo = func() *nhs.Pseudonymiser {
	p, err := nhs.NewPseudonymiser([]byte(pseudonymKey))
	if err != nil {
		panic(err)
	}
	return p
}()

// open is one hub process's directory.
func open(t *testing.T, brokers []string, reserved map[string]string) *Directory {
	t.Helper()
	d, err := Open(Config{Brokers: brokers, Topic: topic.Subscriptions, AuditTopic: topic.Audit, Registry: all.Registry(),
		PseudonymKey: []byte(pseudonymKey), Pseudonym: pseudo.Pseudonym, Log: zaptest.NewLogger(t),
		Reserved: func(k string) (string, bool) { v, ok := reserved[k]; return v, ok }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

func careHome(ods, url, sec string, types ...string) []byte {
	b, _ := json.Marshal(map[string]any{"ods": ods, "name": "A care home", "role": "social-care",
		"webhook":       map[string]any{"url": url, "secret": map[string]any{"value": sec}},
		"subscriptions": []any{map[string]any{"id": strings.ToLower(ods) + "-residents", "basis": "patient-list", "types": types}}})
	return b
}

func version(v int64) Precondition { return Precondition{Version: &v} }

// candidates are the recipients an event about patient would go to.
func candidates(d *Directory, typ, patient string) []string {
	ev := &event.Event{Type: typ, Publisher: "RX1"}
	var out []string
	for _, c := range d.Subscriptions().Match(ev, pseudo.Pseudonym(nhs.MustParse(patient))) {
		out = append(out, c.Subscription.Recipient.ODS)
	}
	return out
}

// TestACreatedRecipientReachesAnotherProcess: a recipient created through
// one process is held, with its subscriptions and its list, by another
// once it syncs, and its entry in the topic holds no secret.
func TestACreatedRecipientReachesAnotherProcess(t *testing.T) {
	brokers := startBroker(t)
	a, b := open(t, brokers, nil), open(t, brokers, nil)
	ctx := context.Background()
	resident := nhs.Synthetic(501).Digits()

	got, err := a.Create(ctx, careHome("VM456", "https://vm456.example/carehub", secret, "discharge"), "ig-lead")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if got.Version != 1 || got.Actor != "ig-lead" {
		t.Errorf("Create: got version %d by %q, want 1 by ig-lead", got.Version, got.Actor)
	}
	if _, err := a.ChangeList(ctx, "VM456", []nhs.Number{nhs.MustParse(resident)}, nil, "VM456"); err != nil {
		t.Fatalf("ChangeList: %v", err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	r, ok, err := b.Get(ctx, "VM456")
	if err != nil || !ok || r.Err != nil {
		t.Fatalf("Get on the other process: %+v, %v, %v", r, ok, err)
	}
	if got, want := candidates(b, event.TypeDischarge, resident), []string{"VM456"}; !slices.Equal(got, want) {
		t.Errorf("the other process's candidates for the resident's discharge:\n\tgot  %v\n\twant %v", got, want)
	}
	if got := candidates(b, event.TypeAdmission, resident); len(got) != 0 {
		t.Errorf("an admission, not subscribed: got candidates %v", got)
	}
	if strings.Contains(string(r.Entry()), secret) || !strings.Contains(string(r.Entry()), `"value":"(hidden)"`) {
		t.Errorf("Entry shows the secret, or does not say it is hidden: %s", r.Entry())
	}
	for _, m := range readAll(t, brokers, topic.Subscriptions) {
		if strings.Contains(string(m.Value), secret) || strings.Contains(string(m.Value), "vm456.example") {
			t.Errorf("a record of the directory topic holds the entry in clear: %s", m.Key)
		}
		if strings.Contains(string(m.Key)+string(m.Value), resident) {
			t.Errorf("a record of the directory topic holds an NHS number")
		}
	}
	for _, m := range readAll(t, brokers, topic.Audit) {
		if strings.Contains(string(m.Value), secret) || strings.Contains(string(m.Key)+string(m.Value), resident) {
			t.Errorf("an audit record holds the secret or an NHS number: %s", m.Value)
		}
	}
}

func readAll(t *testing.T, brokers []string, name string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, end, err := broker.Offsets(ctx, brokers, name)
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for p, e := range end {
		if e <= first[p] {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: name, Partition: p, MaxWait: 50 * time.Millisecond})
		_ = r.SetOffset(first[p])
		for o := first[p]; o < e; o++ {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
		r.Close()
	}
	return out
}

func TestCreateRefusesWhatTheConfigurationRefuses(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, map[string]string{"rx1-source-key": "sources[0].apiKey"})
	ctx := context.Background()
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		body    string
		kind    problem.Kind
		pointer string
		detail  string
	}{
		{"not JSON", `{"ods":`, problem.Malformed, "", ""},
		{"unknown field", `{"ods": "VM457", "role": "social-care", "colour": "red"}`, problem.Invalid, "", "field colour not found"},
		{"bad secret", string(careHome("VM457", "https://x.example/", "not-a-whsec", "discharge")), problem.Invalid, "/webhook", "secret: a webhook secret is whsec_"},
		{"unknown type", string(careHome("VM457", "https://x.example/", secret, "birthday")), problem.Invalid, "/subscriptions/0/types", `unknown event type "birthday"`},
		{"exists", string(careHome("VM456", "https://x.example/", secret, "discharge")), problem.Conflict, "", ""},
		{"subscription id taken", strings.Replace(string(careHome("VM457", "https://x.example/", secret, "discharge")), "vm457-residents", "vm456-residents", 1),
			problem.Conflict, "/subscriptions/0/id", `"vm456-residents": used by recipient VM456`},
		{"key of a source", `{"ods": "VM457", "role": "social-care", "apiKey": {"value": "rx1-source-key"}, "feed": {"apiKey": {"value": "vm457-feed-key"}},
			"subscriptions": [{"basis": "registered-gp", "types": ["discharge"]}]}`, problem.Conflict, "/apiKey", "already used by sources[0].apiKey"},
		{"a list file", `{"ods": "VM457", "role": "social-care", "feed": {"apiKey": {"value": "vm457-feed-key"}},
			"subscriptions": [{"basis": "patient-list", "patientList": "/etc/passwd", "types": ["discharge"]}]}`, problem.Invalid, "/subscriptions/0/patientList", "for the configuration file"},
		{"hidden on create", strings.Replace(string(careHome("VM457", "https://x.example/", secret, "discharge")), secret, hidden, 1),
			problem.Invalid, "/webhook/secret", "keeps the secret stored here, and there is none"},
	}
	for _, tt := range tests {
		_, err := d.Create(ctx, []byte(tt.body), "admin")
		if got := problem.KindOf(err); got != tt.kind {
			t.Errorf("Create(%s): got %v (%v), want kind %v", tt.name, got, err, tt.kind)
			continue
		}
		if tt.detail == "" {
			continue
		}
		var pe *problem.Error
		found := false
		if e, ok := err.(*problem.Error); ok {
			pe = e
			for _, v := range pe.Violations {
				if v.Pointer == tt.pointer && strings.Contains(v.Detail, tt.detail) {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("Create(%s): no violation at %q saying %q: %+v", tt.name, tt.pointer, tt.detail, pe)
		}
	}
	if _, ok, _ := d.Get(ctx, "VM457"); ok {
		t.Errorf("a refused recipient was created")
	}
}

func TestReplaceAndDeleteWithVersions(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/a", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	// GET shows (hidden); sent back, it keeps the stored secret.
	r, _, _ := d.Get(ctx, "VM456")
	var entry map[string]any
	_ = json.Unmarshal(r.Entry(), &entry)
	entry["webhook"].(map[string]any)["url"] = "https://vm456.example/b"
	body, _ := json.Marshal(entry)
	if _, err := d.Replace(ctx, "VM456", body, Precondition{}, "admin"); problem.KindOf(err) != problem.PreconditionRequired {
		t.Errorf("Replace without If-Match: got %v, want 428", err)
	}
	if _, err := d.Replace(ctx, "VM456", body, version(7), "admin"); problem.KindOf(err) != problem.Precondition {
		t.Errorf("Replace with a stale version: got %v, want 412", err)
	}
	got, err := d.Replace(ctx, "VM456", body, version(1), "ig-lead")
	if err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if got.Version != 2 {
		t.Errorf("Replace: version %d, want 2", got.Version)
	}
	if v, _ := got.Config.Sink.Config.(interface{ Validate() error }), 0; v == nil {
		t.Fatal("no sink")
	}
	if sec := reflect.ValueOf(got.Config.Sink.Config).Elem().FieldByName("Secret").Interface().(connector.Secret); true {
		if v, _ := sec.Reveal(); v != secret {
			t.Errorf("the secret sent back as (hidden) was not kept")
		}
	}
	// The ODS code cannot change.
	entry["ods"] = "VM999"
	body, _ = json.Marshal(entry)
	if _, err := d.Replace(ctx, "VM456", body, version(2), "admin"); problem.KindOf(err) != problem.Invalid {
		t.Errorf("Replace changing the ODS code: got %v, want 422", err)
	}
	if err := d.Delete(ctx, "VM456", Precondition{}, "admin"); problem.KindOf(err) != problem.PreconditionRequired {
		t.Errorf("Delete without If-Match: got %v, want 428", err)
	}
	if err := d.Delete(ctx, "VM456", version(2), "admin"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, ok, _ := d.Get(ctx, "VM456"); ok {
		t.Errorf("Get after Delete: still there")
	}
	if n := len(d.Subscriptions().Of("VM456")); n != 0 {
		t.Errorf("after Delete the router still has %d of its subscriptions", n)
	}
	// Created again, its versions go on: an ETag read before never matches.
	got, err = d.Create(ctx, careHome("VM456", "https://vm456.example/c", secret2, "discharge"), "admin")
	if err != nil || got.Version != 4 {
		t.Errorf("Create after Delete: version %d, %v; want 4", got.Version, err)
	}
}

// TestChangesRacingFromTwoProcesses: two processes change one recipient
// against the same version at once; one wins, the other is told (412),
// and both hold the winner.
func TestChangesRacingFromTwoProcesses(t *testing.T) {
	brokers := startBroker(t)
	a, b := open(t, brokers, nil), open(t, brokers, nil)
	ctx := context.Background()
	if _, err := a.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	_ = b.Sync(ctx)
	type result struct {
		r   Recipient
		err error
	}
	res := make(chan result, 2)
	for i, d := range []*Directory{a, b} {
		go func() {
			r, err := d.Replace(ctx, "VM456", careHome("VM456", fmt.Sprintf("https://vm456.example/%d", i), secret, "discharge"), version(1), "admin")
			res <- result{r, err}
		}()
	}
	var won, lost int
	for range 2 {
		r := <-res
		switch {
		case r.err == nil:
			won++
		case problem.KindOf(r.err) == problem.Precondition:
			lost++
		default:
			t.Errorf("Replace: %v", r.err)
		}
	}
	if won != 1 || lost != 1 {
		t.Fatalf("racing changes: %d won and %d lost, want one each", won, lost)
	}
	ra, _, _ := a.Get(ctx, "VM456")
	rb, _, _ := b.Get(ctx, "VM456")
	if string(ra.Entry()) != string(rb.Entry()) || ra.Version != 2 {
		t.Errorf("the processes disagree: %s (v%d) and %s (v%d)", ra.Entry(), ra.Version, rb.Entry(), rb.Version)
	}
}

func TestSubscriptionsThroughTheirOwnCalls(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	s, err := d.PutSubscription(ctx, "", []byte(`{"recipient": "VM456", "id": "vm456-destination", "basis": "discharge-destination", "types": ["admission"]}`), Precondition{}, "admin")
	if err != nil || s.Version != 2 || s.Recipient != "VM456" {
		t.Fatalf("create subscription: %+v, %v", s, err)
	}
	ev := &event.Event{Type: event.TypeAdmission, Publisher: "RX1", DischargeDestination: "VM456"}
	if got := d.Subscriptions().Match(ev); len(got) != 1 || got[0].Subscription.ID != "vm456-destination" {
		t.Errorf("an admission to VM456 after the subscription: got %v", got)
	}
	_, err = d.PutSubscription(ctx, "vm456-destination", []byte(`{"basis": "discharge-destination", "types": ["birthday"]}`), version(2), "admin")
	var pe *problem.Error
	if !errorsAs(err, &pe) || pe.Kind != problem.Invalid || pe.Violations[0].Pointer != "/types" {
		t.Errorf("replace with an unknown type: got %+v, want a violation at /types", err)
	}
	if _, err := d.PutSubscription(ctx, "vm456-destination", []byte(`{"basis": "discharge-destination", "types": ["admission", "discharge"]}`), version(2), "admin"); err != nil {
		t.Fatalf("replace subscription: %v", err)
	}
	if err := d.DeleteSubscription(ctx, "vm456-destination", version(3), "admin"); err != nil {
		t.Fatalf("delete subscription: %v", err)
	}
	if err := d.DeleteSubscription(ctx, "vm456-residents", version(4), "admin"); problem.KindOf(err) != problem.Conflict {
		t.Errorf("deleting the last subscription: got %v, want 409", err)
	}
	all, _ := d.AllSubscriptions(ctx)
	if len(all) != 1 || all[0].ID != "vm456-residents" {
		t.Errorf("AllSubscriptions: got %+v", all)
	}
	var actions []string
	for _, m := range readAll(t, brokers, topic.Audit) {
		r, _ := audit.Unmarshal(m.Value)
		if r.Kind == audit.KindRecipientChange {
			actions = append(actions, r.Action+":"+r.Subscription)
		}
	}
	want := []string{"recipient-create:", "subscription-create:vm456-destination", "subscription-update:vm456-destination", "subscription-delete:vm456-destination"}
	if !slices.Equal(actions, want) {
		t.Errorf("audited changes:\n\tgot  %v\n\twant %v", actions, want)
	}
}

func errorsAs(err error, pe **problem.Error) bool {
	e, ok := err.(*problem.Error)
	*pe = e
	return ok
}

// TestListsAddRemoveReplaceAndAudit: list changes answer by index and
// pseudonym, reach the router's subscriptions, and are audited by
// pseudonym with who made them.
func TestListsAddRemoveReplaceAndAudit(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	n := func(i int) nhs.Number { return nhs.Synthetic(600 + i) }
	res, err := d.ChangeList(ctx, "VM456", []nhs.Number{n(1), n(2), n(1)}, []nhs.Number{n(3)}, "VM456")
	if err != nil {
		t.Fatal(err)
	}
	var outcomes []string
	for _, it := range res.Items {
		outcomes = append(outcomes, it.Op+" "+it.Outcome)
	}
	if want := []string{"add added", "add added", "add already-on-list", "remove not-on-list"}; !slices.Equal(outcomes, want) {
		t.Errorf("ChangeList outcomes:\n\tgot  %v\n\twant %v", outcomes, want)
	}
	if res.Count != 2 || res.Items[0].Patient != pseudo.Pseudonym(n(1)) {
		t.Errorf("ChangeList: count %d, first pseudonym %q", res.Count, res.Items[0].Patient)
	}
	if _, err := d.ChangeList(ctx, "VM456", []nhs.Number{n(4)}, []nhs.Number{n(4)}, "VM456"); problem.KindOf(err) != problem.Invalid {
		t.Errorf("a number both added and removed: got %v", err)
	}
	if _, err := d.ChangeList(ctx, "VM999", []nhs.Number{n(4)}, nil, "admin"); problem.KindOf(err) != problem.NotFound {
		t.Errorf("the list of no recipient: got %v", err)
	}
	res, err = d.ReplaceList(ctx, "VM456", []nhs.Number{n(2), n(5)}, "admin")
	if err != nil || res.Added != 1 || res.Removed != 1 || res.Unchanged != 1 || res.Count != 2 {
		t.Errorf("ReplaceList: %+v, %v", res, err)
	}
	if got := candidates(d, event.TypeDischarge, n(1).Digits()); len(got) != 0 {
		t.Errorf("a patient removed by the replacement is still a candidate")
	}
	if got := candidates(d, event.TypeDischarge, n(5).Digits()); !slices.Equal(got, []string{"VM456"}) {
		t.Errorf("a patient added by the replacement: got %v", got)
	}
	members, _ := d.Members(ctx, "VM456")
	if len(members) != 2 {
		t.Errorf("Members: got %d", len(members))
	}
	var got []string
	for _, m := range readAll(t, brokers, topic.Audit) {
		r, _ := audit.Unmarshal(m.Value)
		if r.Kind == audit.KindListChange {
			if string(m.Key) != r.Patient {
				t.Errorf("a list-change record is not keyed by its patient's pseudonym")
			}
			who := map[string]int{pseudo.Pseudonym(n(1)): 1, pseudo.Pseudonym(n(2)): 2, pseudo.Pseudonym(n(5)): 5}[r.Patient]
			got = append(got, fmt.Sprintf("%s %d by %s", r.Action, who, r.Actor))
		}
	}
	slices.Sort(got)
	want := []string{"patient-list-add 1 by VM456", "patient-list-add 2 by VM456", "patient-list-add 5 by admin", "patient-list-remove 1 by admin"}
	if !slices.Equal(got, want) {
		t.Errorf("list-change audit:\n\tgot  %v\n\twant %v", got, want)
	}
	// Deleting a paused recipient removes its pause and its list, and
	// audits each, made by whoever deleted it.
	if _, err := d.Pause(ctx, "VM456", "ig-lead", "maintenance"); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, "VM456", Precondition{Any: true}, "ig-lead"); err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	for _, m := range readAll(t, brokers, topic.Audit) {
		r, _ := audit.Unmarshal(m.Value)
		recs = append(recs, r)
	}
	applied, err := d.Applied(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for i, r := range recs {
		if r.Actor != "ig-lead" {
			continue
		}
		who := map[string]string{pseudo.Pseudonym(n(2)): " 2", pseudo.Pseudonym(n(5)): " 5"}[r.Patient]
		got = append(got, fmt.Sprintf("%s %s%s by %s, reason %q, applied %v", r.Kind, r.Action, who, r.Actor, r.Reason, applied[i]))
	}
	slices.Sort(got)
	want = []string{
		`list-change patient-list-remove 2 by ig-lead, reason "the recipient was deleted", applied true`,
		`list-change patient-list-remove 5 by ig-lead, reason "the recipient was deleted", applied true`,
		`recipient-change recipient-delete by ig-lead, reason "", applied true`,
		`recipient-change recipient-pause by ig-lead, reason "maintenance", applied true`,
		`recipient-change recipient-resume by ig-lead, reason "the recipient was deleted", applied true`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit of the deletion:\n\tgot  %q\n\twant %q", got, want)
	}
	if m, _ := d.Members(ctx, "VM456"); len(m) != 0 {
		t.Errorf("a deleted recipient's list has %d patients", len(m))
	}
	if _, paused := d.Paused("VM456"); paused {
		t.Errorf("a deleted recipient is still paused")
	}
	r, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin")
	if err != nil {
		t.Fatal(err)
	}
	if r.Paused != nil {
		t.Errorf("a recipient created again is paused: %+v", r.Paused)
	}
	if got := candidates(d, event.TypeDischarge, n(5).Digits()); len(got) != 0 {
		t.Errorf("a recipient created again has its old list")
	}
}

func TestPauseAndResume(t *testing.T) {
	brokers := startBroker(t)
	a, b := open(t, brokers, nil), open(t, brokers, nil)
	ctx := context.Background()
	if _, err := a.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "admin"); err != nil {
		t.Fatal(err)
	}
	_ = b.Sync(ctx)
	changed := b.Changed()
	r, err := a.Pause(ctx, "VM456", "ig-lead", "maintenance window")
	if err != nil || r.Paused == nil || r.Paused.Actor != "ig-lead" {
		t.Fatalf("Pause: %+v, %v", r, err)
	}
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("the other process was not told of the pause")
	}
	if p, ok := b.Paused("VM456"); !ok || p.Reason != "maintenance window" {
		t.Errorf("Paused on the other process: %+v, %v", p, ok)
	}
	if r, err := a.Pause(ctx, "VM456", "admin", "again"); err != nil || r.Paused.Actor != "ig-lead" {
		t.Errorf("pausing a paused recipient changed it: %+v, %v", r.Paused, err)
	}
	if r, err := a.Resume(ctx, "VM456", "admin"); err != nil || r.Paused != nil {
		t.Errorf("Resume: %+v, %v", r, err)
	}
	if _, err := a.Pause(ctx, "VM999", "admin", ""); problem.KindOf(err) != problem.NotFound {
		t.Errorf("pausing no recipient: got %v", err)
	}
}

// seedConfig is a configuration file's recipients.
func seedConfig(t *testing.T, url string) []config.Recipient {
	t.Helper()
	y := fmt.Sprintf(`
pseudonymKey: {value: %s}
sources: [{ods: RX1, apiKey: {value: rx1-source-key}}]
inputs: [{cloudevents: {}}]
recipients:
  - ods: VM123
    role: social-care
    webhook: {url: %q, secret: {value: %s}}
    subscriptions: [{id: vm123-residents, basis: patient-list, types: [discharge]}]
`, pseudonymKey, url, secret)
	c, err := config.Parse([]byte(y), all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	return c.Recipients
}

func url(d *Directory, ods string) string {
	r, ok, _ := d.Get(context.Background(), ods)
	if !ok || r.Config == nil {
		return ""
	}
	return reflect.ValueOf(r.Config.Sink.Config).Elem().FieldByName("URL").String()
}

// TestSeedFromTheConfigurationFile pins which wins: the file's entry at
// first start; afterwards the admin API's changes while the file's entry
// is unchanged; the file's entry again once it changes; a deletion through
// the API while the file's entry is unchanged.
func TestSeedFromTheConfigurationFile(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	if err := d.Seed(ctx, seedConfig(t, "https://vm123.example/one")); err != nil {
		t.Fatalf("Seed: %v", err)
	}
	r, _, _ := d.Get(ctx, "VM123")
	if r.Version != 1 || r.Actor != audit.ActorConfig || url(d, "VM123") != "https://vm123.example/one" {
		t.Fatalf("after the first start: %+v", r)
	}
	// Changed through the API, then a restart with the same file.
	if _, err := d.Replace(ctx, "VM123", careHome("VM123", "https://vm123.example/api", secret, "discharge"), version(1), "ig-lead"); err != nil {
		t.Fatal(err)
	}
	if err := open(t, brokers, nil).Seed(ctx, seedConfig(t, "https://vm123.example/one")); err != nil {
		t.Fatal(err)
	}
	if got := url(d, "VM123"); got != "https://vm123.example/api" {
		t.Errorf("the file unchanged: got %s, want the change made through the API", got)
	}
	// The file's entry changes: it wins.
	if err := open(t, brokers, nil).Seed(ctx, seedConfig(t, "https://vm123.example/two")); err != nil {
		t.Fatal(err)
	}
	if got := url(d, "VM123"); got != "https://vm123.example/two" {
		t.Errorf("the file changed: got %s, want the file's", got)
	}
	// Deleted through the API, the file unchanged: it stays deleted.
	if err := d.Delete(ctx, "VM123", Precondition{Any: true}, "ig-lead"); err != nil {
		t.Fatal(err)
	}
	if err := open(t, brokers, nil).Seed(ctx, seedConfig(t, "https://vm123.example/two")); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := d.Get(ctx, "VM123"); ok {
		t.Errorf("a recipient deleted through the API came back from an unchanged file")
	}
	// Two processes starting together seed it once.
	if err := d.Seed(ctx, seedConfig(t, "https://vm123.example/three")); err != nil {
		t.Fatal(err)
	}
	v := func() int64 { r, _, _ := d.Get(ctx, "VM123"); return r.Version }()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- open(t, brokers, nil).Seed(ctx, seedConfig(t, "https://vm123.example/four")) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Seed at once: %v", err)
		}
	}
	if r, _, _ := d.Get(ctx, "VM123"); r.Version != v+1 {
		t.Errorf("two processes seeding one change: version %d, want %d", r.Version, v+1)
	}
}

func TestSeedListOnlyWhenTheFileChanged(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	if err := d.Seed(ctx, seedConfig(t, "https://vm123.example/")); err != nil {
		t.Fatal(err)
	}
	file := []nhs.Number{nhs.Synthetic(701), nhs.Synthetic(702)}
	if wrote, err := d.SeedList(ctx, "VM123", file); err != nil || !wrote {
		t.Fatalf("SeedList first: %v, %v", wrote, err)
	}
	// A resident added through the API stands while the file is unchanged.
	if _, err := d.ChangeList(ctx, "VM123", []nhs.Number{nhs.Synthetic(703)}, nil, "VM123"); err != nil {
		t.Fatal(err)
	}
	if wrote, err := d.SeedList(ctx, "VM123", []nhs.Number{file[1], file[0]}); err != nil || wrote {
		t.Errorf("SeedList unchanged (another order): wrote %v, %v", wrote, err)
	}
	if m, _ := d.Members(ctx, "VM123"); len(m) != 3 {
		t.Errorf("after an unchanged file: %d members, want 3", len(m))
	}
	if wrote, err := d.SeedList(ctx, "VM123", file[:1]); err != nil || !wrote {
		t.Errorf("SeedList changed: %v, %v", wrote, err)
	}
	if m, _ := d.Members(ctx, "VM123"); len(m) != 1 {
		t.Errorf("after a changed file: %d members, want 1", len(m))
	}
}

// TestWalkSecretsFindsEverySinksSecrets: the walk that hides and keeps
// secrets finds those of every registered sink, by the sink's own field
// names.
func TestWalkSecretsFindsEverySinksSecrets(t *testing.T) {
	tests := []struct {
		sink string
		tree map[string]any
		want []string
	}{
		{"webhook", map[string]any{"url": "x", "secret": map[string]any{"value": "s"}}, []string{"webhook.secret"}},
		{"fhir", map[string]any{"url": "x", "token": map[string]any{"env": "T"}, "tls": map[string]any{"cert": "c"}}, []string{"fhir.token"}},
		{"feed", map[string]any{"apiKey": map[string]any{"file": "/k"}}, []string{"feed.apiKey"}},
	}
	reg := all.Registry()
	for _, tt := range tests {
		f, ok := reg.Sink(tt.sink)
		if !ok {
			t.Fatalf("no sink %s", tt.sink)
		}
		var got []string
		walkSecrets(reflect.TypeOf(f.Default()), tt.tree, []string{tt.sink}, func(path []string, _ map[string]any) {
			got = append(got, strings.Join(path, "."))
		})
		if !slices.Equal(got, tt.want) {
			t.Errorf("walkSecrets(%s):\n\tgot  %v\n\twant %v", tt.sink, got, tt.want)
		}
	}
}

// TestBacklogCountsWhatWaits: the backlog is what the recipient's group
// has not committed, and its age the oldest waiting copy's.
func TestBacklogCountsWhatWaits(t *testing.T) {
	brokers := startBroker(t)
	ctx := context.Background()
	if err := broker.EnsureTopics(ctx, brokers, []broker.TopicSpec{topic.OutboxSpec(2, 1, "VM456")}); err != nil {
		t.Fatal(err)
	}
	b, err := ReadBacklog(ctx, brokers, "VM456")
	if err != nil || b.Events != 0 || !b.Oldest.IsZero() {
		t.Fatalf("an empty outbox: %+v, %v", b, err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Outbox("VM456"), Balancer: &kafka.Hash{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	start := time.Now().Add(-time.Second)
	for i := range 5 {
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(fmt.Sprintf("p%d", i)), Value: []byte("copy")}); err != nil {
			t.Fatal(err)
		}
	}
	b, err = ReadBacklog(ctx, brokers, "VM456")
	if err != nil || b.Events != 5 || b.Oldest.Before(start) || b.Oldest.After(time.Now()) {
		t.Fatalf("five waiting: %+v, %v", b, err)
	}
	// The deliverers commit two on partition 0.
	g, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{ID: topic.DeliverGroup("VM456"), Brokers: brokers, Topics: []string{topic.Outbox("VM456")}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gen, err := g.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, end, _ := broker.Offsets(ctx, brokers, topic.Outbox("VM456"))
	if err := gen.CommitOffsets(map[string]map[int]int64{topic.Outbox("VM456"): {0: end[0]}}); err != nil {
		t.Fatal(err)
	}
	b, err = ReadBacklog(ctx, brokers, "VM456")
	if err != nil || b.Events != 5-end[0] {
		t.Errorf("after a commit of partition 0 (%d): %+v, %v", end[0], b, err)
	}
	_ = consent.BasisPatientList
}
