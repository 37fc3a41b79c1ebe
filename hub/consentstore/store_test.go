package consentstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/broker"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

const testTopic = "carehub.consent"

func startBroker(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	if err := broker.EnsureTopics(ctx, emb.Addrs(), []broker.TopicSpec{{Name: testTopic, Partitions: 3, ReplicationFactor: 1,
		Configs: map[string]string{"cleanup.policy": "compact"}}}); err != nil {
		t.Fatal(err)
	}
	return emb.Addrs()
}

func open(t *testing.T, brokers []string) *Store {
	t.Helper()
	s, err := Open(brokers, testTopic, zaptest.NewLogger(t))
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

func record(id string) consent.PatientConsent {
	return consent.PatientConsent{Version: 1, Directives: []consent.Directive{{
		ID: id, Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), RecordedBy: "test",
	}}}
}

// TestSyncSeesEveryAcknowledgedWriteOfAnotherProcess pins the freshness
// guarantee at its source: a record acknowledged by the broker before Sync
// is called is visible to For once Sync returns, even when another writer
// (another carehub process) wrote it and this store has not fetched it yet.
func TestSyncSeesEveryAcknowledgedWriteOfAnotherProcess(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: testTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < 200; i++ {
		patient := fmt.Sprintf("p1_patient%03d", i%7)
		want := fmt.Sprintf("d-%d", i)
		b, _ := json.Marshal(record(want))
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(patient), Value: b}); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		ds, err := s.For(patient)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != 1 || ds[0].ID != want {
			t.Fatalf("write %d: For after Sync:\n\tgot  %+v\n\twant directive %s", i, ds, want)
		}
	}
}

func TestPutGetDelete(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	other := open(t, brokers) // a second process's view
	ctx := context.Background()
	pc := record("first")
	pc.Version = 0
	got, err := s.Put(ctx, "p1_a", pc)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.Updated.IsZero() {
		t.Errorf("Put: got version %d updated %v, want version 1 and a time", got.Version, got.Updated)
	}
	got, err = s.Put(ctx, "p1_a", record("second"))
	if err != nil || got.Version != 2 {
		t.Fatalf("second Put: got version %d, err %v; want 2", got.Version, err)
	}
	for name, st := range map[string]*Store{"writer": s, "other": other} {
		pc, ok, err := st.Get(ctx, "p1_a")
		if err != nil || !ok || pc.Directives[0].ID != "second" {
			t.Errorf("%s Get: got %+v ok=%v err=%v, want the second record", name, pc, ok, err)
		}
	}
	if err := s.Delete(ctx, "p1_a"); err != nil {
		t.Fatal(err)
	}
	if err := other.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if ds, _ := other.For("p1_a"); len(ds) != 0 {
		t.Errorf("after Delete: got %d directives, want none", len(ds))
	}
	if _, err := s.Put(ctx, "p1_b", consent.PatientConsent{Directives: []consent.Directive{{ID: "bad", Kind: "share-everything"}}}); err == nil {
		t.Errorf("Put of an invalid directive succeeded")
	}
}

func TestReloadAfterRestartAndInvalidRecordsFailClosed(t *testing.T) {
	brokers := startBroker(t)
	s := open(t, brokers)
	ctx := context.Background()
	if _, err := s.Put(ctx, "p1_kept", record("kept")); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: testTopic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("p1_garbled"), Value: []byte(`{"directives":[{"kind":"nonsense"}]}`)}); err != nil {
		t.Fatal(err)
	}
	fresh := open(t, brokers) // loads everything before WaitLoaded returns
	if ds, _ := fresh.For("p1_kept"); len(ds) != 1 || ds[0].ID != "kept" {
		t.Errorf("reloaded: got %+v, want the kept directive", ds)
	}
	ds, err := fresh.For("p1_garbled")
	if err != nil || len(ds) != 1 || ds[0].Kind != consent.KindConfidential {
		t.Errorf("invalid record: got %+v %v, want a confidential directive (fail closed)", ds, err)
	}
}

func TestNotLoadedFailsClosed(t *testing.T) {
	// No broker listens here: the store can never load.
	s, err := Open([]string{"127.0.0.1:1"}, testTopic, zaptest.NewLogger(t))
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
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.WaitLoaded(ctx); err == nil {
		t.Errorf("WaitLoaded succeeded without a broker")
	}
}

// TestSyncSharesLookupsThatStartAfterIt: a Sync never uses a lookup that
// started before it was called (freshness), and the calls that arrive while
// a lookup runs share the next one instead of each making their own.
func TestSyncSharesLookupsThatStartAfterIt(t *testing.T) {
	s := open(t, startBroker(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	started := make(chan int, 10)
	release := make(chan struct{}, 10)
	var n atomic.Int32
	s.lookup = func(context.Context) (map[int]int64, error) {
		i := int(n.Add(1))
		started <- i
		<-release
		return map[int]int64{-i: 0}, nil // the lookup's number, in a partition nobody applies
	}
	type result struct {
		caller string
		ends   map[int]int64
		err    error
	}
	results := make(chan result, 4)
	call := func(caller string) { e, err := s.endOffsets(ctx); results <- result{caller, e, err} }

	go call("a")
	if got := <-started; got != 1 {
		t.Fatalf("first lookup: got %d", got)
	}
	for _, c := range []string{"b", "c", "d"} {
		go call(c)
	}
	time.Sleep(50 * time.Millisecond) // b, c and d are waiting for the next lookup
	release <- struct{}{}
	got := map[string]int{}
	r := <-results
	if r.caller != "a" || r.err != nil {
		t.Fatalf("after the first lookup: got %s (%v), want a", r.caller, r.err)
	}
	got[r.caller] = -firstKey(r.ends)
	if i := <-started; i != 2 {
		t.Fatalf("second lookup: got %d", i)
	}
	release <- struct{}{}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		got[r.caller] = -firstKey(r.ends)
	}
	if want := map[string]int{"a": 1, "b": 2, "c": 2, "d": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("lookup used by each caller: got %v, want %v", got, want)
	}
	select {
	case i := <-started:
		t.Errorf("lookup %d started with nobody waiting", i)
	case <-time.After(50 * time.Millisecond):
	}
}

func firstKey(m map[int]int64) int {
	for k := range m {
		return k
	}
	return 0
}
