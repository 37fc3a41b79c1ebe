package consentstore

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

const (
	testTopic  = "carehub.consent"
	auditTopic = "carehub.audit"
)

func startBroker(t *testing.T) []string {
	return brokertest.Start(t,
		broker.TopicSpec{Name: testTopic, Partitions: 1, ReplicationFactor: 1, Configs: map[string]string{"cleanup.policy": "compact"}},
		broker.TopicSpec{Name: auditTopic, Partitions: 3, ReplicationFactor: 1})
}

func open(t *testing.T, brokers []string) *Store {
	t.Helper()
	s, err := Open(brokers, testTopic, auditTopic, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func directive(id string) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), RecordedBy: "test"}
}

func version(v int64) *int64 { return &v }

func TestPutGetDeleteWithVersions(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	other := open(t, brokers) // a second process's view
	ctx := context.Background()
	got, err := s.Put(ctx, "p1_a", Change{Directives: []consent.Directive{directive("first")}, Actor: "ig-lead"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.Updated.IsZero() {
		t.Errorf("Put: got version %d updated %v, want version 1 and a time", got.Version, got.Updated)
	}
	got, err = s.Put(ctx, "p1_a", Change{Directives: []consent.Directive{directive("second")}, IfVersion: version(1), Actor: "ig-lead"})
	if err != nil || got.Version != 2 {
		t.Fatalf("second Put: got version %d, err %v; want 2", got.Version, err)
	}
	for name, st := range map[string]*Store{"writer": s, "other": other} {
		pc, ok, err := st.Get(ctx, "p1_a")
		if err != nil || !ok || pc.Directives[0].ID != "second" {
			t.Errorf("%s Get: got %+v ok=%v err=%v, want the second record", name, pc, ok, err)
		}
	}
	if err := s.Delete(ctx, "p1_a", version(2), "ig-lead"); err != nil {
		t.Fatal(err)
	}
	if err := other.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	pc, err := other.For("p1_a")
	if err != nil || len(pc.Directives) != 0 || pc.Version != 3 {
		t.Errorf("after Delete: got %+v %v, want no directives at version 3", pc, err)
	}
	if _, err := s.Put(ctx, "p1_b", Change{Directives: []consent.Directive{{ID: "bad", Kind: "share-everything"}}}); err == nil {
		t.Errorf("Put of an invalid directive succeeded")
	}
}

// TestPreconditions pins finding 5 of issue 11: two operators' changes to
// one patient, the second made without having seen the first, silently
// removed the first one's directive. A change must name the version it was
// made against once the patient has a record.
func TestPreconditions(t *testing.T) {
	s := open(t, startBroker(t))
	ctx := context.Background()
	if _, err := s.Put(ctx, "p1_c", Change{Directives: []consent.Directive{directive("one")}, Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		ch   Change
		want problem.Kind
	}{
		{"no version", Change{Directives: []consent.Directive{directive("two")}, Actor: "b"}, problem.PreconditionRequired},
		{"an old version", Change{Directives: []consent.Directive{directive("two")}, IfVersion: version(0), Actor: "b"}, problem.Precondition},
		{"a future version", Change{Directives: []consent.Directive{directive("two")}, IfVersion: version(7), Actor: "b"}, problem.Precondition},
	} {
		if _, err := s.Put(ctx, "p1_c", tt.ch); problem.KindOf(err) != tt.want {
			t.Errorf("%s: got %v (%v), want %v", tt.name, problem.KindOf(err), err, tt.want)
		}
	}
	if err := s.Delete(ctx, "p1_c", nil, "b"); problem.KindOf(err) != problem.PreconditionRequired {
		t.Errorf("Delete without a version: got %v", err)
	}
	if _, err := s.Put(ctx, "p1_none", Change{Directives: []consent.Directive{directive("x")}, IfExists: true}); problem.KindOf(err) != problem.Precondition {
		t.Errorf("If-Match * on a patient without a record: got %v, want 412", err)
	}
	pc, _ := s.For("p1_c")
	if len(pc.Directives) != 1 || pc.Directives[0].ID != "one" || pc.Version != 1 {
		t.Errorf("after refused changes: got %+v, want the first record untouched", pc)
	}
}

// TestConcurrentChangesFromTwoProcessesOneWins: two processes change one
// patient against the same version at once; exactly one change takes
// effect, both agree which, and the loser answers 412.
func TestConcurrentChangesFromTwoProcessesOneWins(t *testing.T) {
	brokers := startBroker(t)
	a, b := open(t, brokers), open(t, brokers)
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		key := "p1_race" + string(rune('a'+round))
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []*Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.Put(ctx, key, Change{Directives: []consent.Directive{directive("by-" + string(rune('a'+i)))}, IfVersion: version(0), Actor: "op"})
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case problem.KindOf(err) != problem.Precondition:
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d changes took effect, want exactly 1 (%v)", round, ok, errs)
		}
		pa, _, _ := a.Get(ctx, key)
		pb, _, _ := b.Get(ctx, key)
		if pa.Directives[0].ID != pb.Directives[0].ID {
			t.Fatalf("round %d: the processes disagree: %s and %s", round, pa.Directives[0].ID, pb.Directives[0].ID)
		}
		winner := "by-a"
		if errs[0] != nil {
			winner = "by-b"
		}
		if pa.Directives[0].ID != winner {
			t.Fatalf("round %d: the change in force is %s, but %s was told it won", round, pa.Directives[0].ID, winner)
		}
		// The record in force is the key's last record: compaction keeps it.
		a.mu.Lock()
		last, cur := string(a.last[key]), string(a.raw[key])
		a.mu.Unlock()
		if last != cur {
			t.Fatalf("round %d: the key's last record is not the one in force:\n\tlast %s\n\tcur  %s", round, last, cur)
		}
	}
	// A fresh process, reading the topic from the start, agrees too.
	c := open(t, brokers)
	pa, _ := a.For("p1_racea")
	pc, _ := c.For("p1_racea")
	if pa.Directives[0].ID != pc.Directives[0].ID {
		t.Errorf("a fresh process sees %s, the others %s", pc.Directives[0].ID, pa.Directives[0].ID)
	}
}

// TestHistoryIsAudited: every change, with who, when, before and after,
// is in the audit topic, which nothing compacts.
func TestHistoryIsAudited(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	ctx := context.Background()
	if _, err := s.Put(ctx, "p1_h", Change{Directives: []consent.Directive{directive("one")}, Actor: "ig-lead"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "p1_h", version(1), "caldicott"); err != nil {
		t.Fatal(err)
	}
	var got []audit.Record
	for _, m := range readAll(t, brokers, auditTopic) {
		r, err := audit.Unmarshal(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != "p1_h" || r.Patient != "p1_h" {
			t.Errorf("history record keyed %q for patient %q, want the pseudonym", m.Key, r.Patient)
		}
		got = append(got, r)
	}
	if len(got) != 2 {
		t.Fatalf("history: got %d records, want 2", len(got))
	}
	if r := got[0]; r.Kind != audit.KindConsentChange || r.Actor != "ig-lead" || r.Before.Version != 0 || len(r.Before.Directives) != 0 ||
		r.After.Version != 1 || r.After.Directives[0].ID != "one" || r.Time.IsZero() {
		t.Errorf("first change: %+v", r)
	}
	if r := got[1]; r.Actor != "caldicott" || r.Action != audit.ActionConsentWithdraw || r.Before.Directives[0].ID != "one" || len(r.After.Directives) != 0 {
		t.Errorf("withdrawal: %+v", r)
	}
}

func TestReloadAfterRestartAndInvalidRecordsFailClosed(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	ctx := context.Background()
	if _, err := s.Put(ctx, "p1_kept", Change{Directives: []consent.Directive{directive("kept")}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: testTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	stale, _ := json.Marshal(consent.PatientConsent{Version: 1, Directives: []consent.Directive{directive("stale")}})
	if err := w.WriteMessages(ctx,
		kafka.Message{Key: []byte("p1_garbled"), Value: []byte(`{"directives":[{"kind":"nonsense"}]}`)},
		kafka.Message{Key: []byte("p1_kept"), Value: stale}, // an older version, read after the newer: ignored
	); err != nil {
		t.Fatal(err)
	}
	fresh := open(t, brokers) // loads everything before WaitLoaded returns
	if pc, _ := fresh.For("p1_kept"); len(pc.Directives) != 1 || pc.Directives[0].ID != "kept" {
		t.Errorf("reloaded: got %+v, want the kept directive", pc)
	}
	pc, err := fresh.For("p1_garbled")
	if err != nil || len(pc.Directives) != 1 || pc.Directives[0].Kind != consent.KindConfidential {
		t.Errorf("invalid record: got %+v %v, want a confidential directive (fail closed)", pc, err)
	}
}

func TestNotLoadedFailsClosed(t *testing.T) {
	s, err := Open([]string{"127.0.0.1:1"}, testTopic, auditTopic, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.For("p1_x"); err != ErrNotLoaded {
		t.Errorf("For before load: got %v, want ErrNotLoaded", err)
	}
	if err := s.Sync(context.Background()); err != ErrNotLoaded {
		t.Errorf("Sync before load: got %v, want ErrNotLoaded", err)
	}
}

func readAll(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []kafka.Message
	for p := 0; p < 3; p++ {
		conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		for i := int64(0); i < last; i++ {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
		r.Close()
	}
	return out
}

// faultyWriter writes through the store's writer, failing the calls that
// fail says to: a publisher that fails the history record or the change.
func faultyWriter(s *Store, fail func(call int, msgs []kafka.Message) (write bool, err error)) {
	real := s.write
	call := 0
	s.write = func(ctx context.Context, msgs ...kafka.Message) error {
		call++
		write, err := fail(call, msgs)
		if write {
			if werr := real(ctx, msgs...); werr != nil {
				return werr
			}
		}
		return err
	}
}

var errInjected = errors.New("injected produce failure")

// historyOf returns the consent-change records of patient, in order.
func historyOf(t *testing.T, brokers []string, patient string) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, m := range readAll(t, brokers, auditTopic) {
		if string(m.Key) != patient {
			continue
		}
		r, err := audit.Unmarshal(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// TestAChangeInForceAlwaysHasItsHistory pins the audit's finding on issue
// 11 (gap 3): a change and its history record were written in one
// produce to two topics, which is not atomic: when the history record
// failed and the change did not, the caller got 503 while the change was
// in force with no history. The history record is now written first; a
// change whose own write fails is an attempt, which Applied reports as
// not applied.
func TestAChangeInForceAlwaysHasItsHistory(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	ctx := context.Background()
	current := func(p string) (consent.PatientConsent, bool) {
		pc, ok, err := s.Get(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		return pc, ok
	}
	if _, err := s.Put(ctx, "p1_f", Change{Directives: []consent.Directive{directive("one")}, Actor: "a"}); err != nil {
		t.Fatal(err)
	}

	// The history record fails: nothing changes.
	faultyWriter(s, func(call int, msgs []kafka.Message) (bool, error) {
		if msgs[0].Topic == auditTopic {
			return false, errInjected
		}
		return true, nil
	})
	if _, err := s.Put(ctx, "p1_f", Change{Directives: []consent.Directive{directive("two")}, IfVersion: version(1), Actor: "b"}); !errors.Is(err, errInjected) {
		t.Fatalf("Put with the history record failing: got %v, want the injected error", err)
	}
	if pc, _ := current("p1_f"); pc.Version != 1 || pc.Directives[0].ID != "one" {
		t.Fatalf("after a failed history record: %+v in force, want version 1 unchanged", pc)
	}

	// The second write, the change itself, fails: the history has the
	// attempt, and nothing changed.
	s.write = s.t.Write
	faultyWriter(s, func(call int, msgs []kafka.Message) (bool, error) {
		if call == 2 {
			return false, errInjected
		}
		return true, nil
	})
	if _, err := s.Put(ctx, "p1_f", Change{Directives: []consent.Directive{directive("three")}, IfVersion: version(1), Actor: "c"}); !errors.Is(err, errInjected) {
		t.Fatalf("Put with the change failing: got %v, want the injected error", err)
	}
	if pc, _ := current("p1_f"); pc.Version != 1 || pc.Directives[0].ID != "one" {
		t.Fatalf("after a failed change: %+v in force, want version 1 unchanged", pc)
	}

	// The change is written but its answer is lost: it is in force, and
	// Put says so.
	s.write = s.t.Write
	faultyWriter(s, func(call int, msgs []kafka.Message) (bool, error) {
		if call == 2 {
			return true, errInjected
		}
		return true, nil
	})
	got, err := s.Put(ctx, "p1_f", Change{Directives: []consent.Directive{directive("four")}, IfVersion: version(1), Actor: "d"})
	if err != nil || got.Version != 2 {
		t.Fatalf("Put whose answer was lost: got version %d, %v; want version 2 in force", got.Version, err)
	}
	s.write = s.t.Write

	hist := historyOf(t, brokers, "p1_f")
	var actors []string
	for _, r := range hist {
		actors = append(actors, r.Actor)
	}
	if diff := cmp.Diff([]string{"a", "c", "d"}, actors); diff != "" {
		t.Fatalf("history records by actor (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]bool{true, false, true}, Applied(hist, current)); diff != "" {
		t.Errorf("Applied (-want +got):\n%s", diff)
	}
	// Every version in force has its history record.
	pc, _ := current("p1_f")
	found := false
	for _, r := range hist {
		if r.After.Version == pc.Version && r.After.Directives[0].ID == pc.Directives[0].ID {
			found = true
		}
	}
	if !found {
		t.Errorf("version %d is in force with no history record", pc.Version)
	}
}

func TestApplied(t *testing.T) {
	state := func(v int64, ids ...string) *audit.ConsentState {
		cs := &audit.ConsentState{Version: v, Directives: []consent.Directive{}}
		for _, id := range ids {
			cs.Directives = append(cs.Directives, directive(id))
		}
		return cs
	}
	change := func(p string, before, after *audit.ConsentState, outcome string) audit.Record {
		return audit.Record{Kind: audit.KindConsentChange, Patient: p, Before: before, After: after, Outcome: outcome}
	}
	now := map[string]consent.PatientConsent{
		"p1": {Version: 2, Directives: []consent.Directive{directive("y")}},
		"p2": {Version: 1, Directives: []consent.Directive{directive("q")}},
	}
	current := func(p string) (consent.PatientConsent, bool) { pc, ok := now[p]; return pc, ok }
	tests := []struct {
		name string
		recs []audit.Record
		want []bool
	}{
		{"a change replaced by a later one", []audit.Record{
			change("p1", state(0), state(1, "x"), ""),
			change("p1", state(1, "x"), state(2, "y"), ""),
		}, []bool{true, true}},
		{"an attempt, then the change made again", []audit.Record{
			change("p1", state(0), state(1, "x"), ""),
			change("p1", state(1, "x"), state(2, "z"), ""), // never written
			change("p1", state(1, "x"), state(2, "y"), ""),
		}, []bool{true, false, true}},
		{"the last change an attempt", []audit.Record{
			change("p2", state(0), state(1, "q"), ""),
			change("p2", state(1, "q"), state(2, "r"), ""),
		}, []bool{true, false}},
		{"a conflict and other kinds are not attempts", []audit.Record{
			{Kind: audit.KindDecision, Patient: "p1"},
			change("p1", state(1, "x"), state(2, "y"), ""),
			change("p1", state(1, "x"), state(2, "w"), "conflict"),
		}, []bool{true, true, true}},
		{"two patients apart", []audit.Record{
			change("p1", state(1, "x"), state(2, "y"), ""),
			change("p2", state(2, "y"), state(3, "s"), ""),
		}, []bool{true, false}},
		{"no record in force", []audit.Record{
			change("p3", state(0), state(1, "x"), ""),
		}, []bool{false}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, Applied(tt.recs, current)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
