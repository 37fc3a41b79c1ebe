package dedup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func startBroker(t *testing.T, window time.Duration) []string {
	return brokertest.Start(t, topic.AcceptedSpec(1, window))
}

func open(t *testing.T, brokers []string, window time.Duration) *Store {
	t.Helper()
	s, err := Open(brokers, topic.Accepted, window, 10*time.Second, zaptest.NewLogger(t))
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

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var (
	digestA = DigestOf([]byte(`{"id":"a"}`))
	digestB = DigestOf([]byte(`{"id":"b"}`))
)

func claim(t *testing.T, s *Store, source, id string, d Digest) Claim {
	t.Helper()
	c, err := s.Claim(ctx(t), source, id, d)
	if err != nil {
		t.Fatalf("Claim(%s, %s): %v", source, id, err)
	}
	return c
}

func accept(t *testing.T, s *Store, source, id string, d Digest) {
	t.Helper()
	c := claim(t, s, source, id, d)
	if c.State != New {
		t.Fatalf("Claim(%s, %s): got %v, want new", source, id, c.State)
	}
	if err := s.Record(ctx(t), c); err != nil {
		t.Fatalf("Record(%s, %s): %v", source, id, err)
	}
}

func TestClaimStates(t *testing.T) {
	s := open(t, startBroker(t, time.Hour), time.Hour)
	accept(t, s, "urn:ods:RX1", "0001", digestA)
	tests := []struct {
		name       string
		source, id string
		digest     Digest
		want       State
	}{
		{"a retry", "urn:ods:RX1", "0001", digestA, Duplicate},
		{"the id reused for other content", "urn:ods:RX1", "0001", digestB, Conflict},
		// Regression: events were told apart by id alone.
		{"the same id from another source", "urn:ods:VM123", "0001", digestB, New},
		{"another id", "urn:ods:RX1", "0002", digestA, New},
	}
	for _, tt := range tests {
		c := claim(t, s, tt.source, tt.id, tt.digest)
		if c.State != tt.want {
			t.Errorf("Claim(%s):\n\tgot  %v\n\twant %v", tt.name, c.State, tt.want)
		}
		s.Abandon(c)
	}
}

// TestAbandonForgets: an event whose publication failed was never
// accepted; its retry is new.
func TestAbandonForgets(t *testing.T) {
	s := open(t, startBroker(t, time.Hour), time.Hour)
	c := claim(t, s, "urn:ods:RX1", "e", digestA)
	s.Abandon(c)
	if c2 := claim(t, s, "urn:ods:RX1", "e", digestB); c2.State != New {
		t.Errorf("Claim after Abandon: got %v, want new", c2.State)
	}
}

// TestAnotherProcessSeesTheRecordAtOnce: a record acknowledged by one
// process is seen by the next Claim of any other (the freshness barrier),
// and by a process that starts later (the memory is in Kafka).
func TestAnotherProcessSeesTheRecordAtOnce(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	for i := 0; i < 50; i++ {
		id := fmt.Sprintf("e-%d", i)
		accept(t, a, "urn:ods:RX1", id, digestA)
		if c := claim(t, b, "urn:ods:RX1", id, digestA); c.State != Duplicate {
			t.Fatalf("the other process's Claim(%s) right after Record: got %v, want duplicate", id, c.State)
		}
	}
	a.Close()
	b.Close()
	later := open(t, brokers, time.Hour)
	if n := later.Len(); n != 50 {
		t.Errorf("a restarted process remembers %d events, want 50", n)
	}
	if c := claim(t, later, "urn:ods:RX1", "e-7", digestB); c.State != Conflict {
		t.Errorf("Claim(other content) after a restart: got %v, want conflict", c.State)
	}
}

// TestConcurrentClaimsInOneProcess: a second request for an event another
// request is publishing waits for it, and is then a duplicate (or new, if
// the first gave up).
func TestConcurrentClaimsInOneProcess(t *testing.T) {
	s := open(t, startBroker(t, time.Hour), time.Hour)
	for _, publish := range []bool{true, false} {
		id := fmt.Sprintf("c-%v", publish)
		first := claim(t, s, "urn:ods:RX1", id, digestA)
		got := make(chan State, 1)
		go func() {
			c, err := s.Claim(context.Background(), "urn:ods:RX1", id, digestA)
			if err != nil {
				t.Error(err)
			}
			got <- c.State
			s.Abandon(c)
		}()
		select {
		case st := <-got:
			t.Fatalf("the second Claim returned %v while the first was held", st)
		case <-time.After(100 * time.Millisecond): // it must still be waiting; a wrong pass cannot be missed for long
		}
		want := Duplicate
		if publish {
			if err := s.Record(ctx(t), first); err != nil {
				t.Fatal(err)
			}
		} else {
			s.Abandon(first)
			want = New
		}
		if st := <-got; st != want {
			t.Errorf("the waiting Claim after the first %s: got %v, want %v", map[bool]string{true: "recorded", false: "abandoned"}[publish], st, want)
		}
	}
}

func TestClaimAllRepeats(t *testing.T) {
	s := open(t, startBroker(t, time.Hour), time.Hour)
	accept(t, s, "urn:ods:RX1", "old", digestA)
	cs, err := s.ClaimAll(ctx(t),
		[]string{"urn:ods:RX1", "urn:ods:RX1", "urn:ods:RX1", "urn:ods:RX1", "urn:ods:VM123"},
		[]string{"x", "x", "x", "old", "x"},
		[]Digest{digestA, digestA, digestB, digestA, digestA})
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		State    State
		RepeatOf int
	}
	want := []got{{New, 0}, {Duplicate, 1}, {Conflict, 1}, {Duplicate, 0}, {New, 0}}
	for i, c := range cs {
		if (got{c.State, c.RepeatOf}) != want[i] {
			t.Errorf("ClaimAll[%d]:\n\tgot  %+v\n\twant %+v", i, got{c.State, c.RepeatOf}, want[i])
		}
	}
	if err := s.Record(ctx(t), cs...); err != nil {
		t.Fatal(err)
	}
	if c := claim(t, s, "urn:ods:VM123", "x", digestA); c.State != Duplicate {
		t.Errorf("after Record of a batch: got %v, want duplicate", c.State)
	}
}

// TestWindow: an event accepted longer ago than the window is forgotten, in
// memory and when loading.
func TestWindow(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	s := open(t, brokers, time.Hour)
	accept(t, s, "urn:ods:RX1", "w", digestA)
	var mu sync.Mutex
	later := time.Now().Add(61 * time.Minute)
	s.mu.Lock()
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return later }
	s.mu.Unlock()
	if n := s.Len(); n != 0 {
		t.Errorf("Len an hour and a minute later: got %d, want 0", n)
	}
	if c := claim(t, s, "urn:ods:RX1", "w", digestB); c.State != New {
		t.Errorf("Claim after the window: got %v, want new", c.State)
	}
	// A record written two hours ago is not loaded.
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Accepted, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	b, _ := json.Marshal(Record{Source: "urn:ods:RX1", ID: "old", Digest: fmt.Sprintf("%x", digestA), Accepted: time.Now().Add(-2 * time.Hour)})
	bad := [][]byte{[]byte(`not json`), []byte(`{"source":"urn:ods:RX1","id":"bad","digest":"zz","accepted":"2026-01-01T00:00:00Z"}`)}
	msgs := []kafka.Message{{Key: []byte("k-old"), Value: b}}
	for _, v := range bad {
		msgs = append(msgs, kafka.Message{Key: []byte("k-bad"), Value: v})
	}
	if err := w.WriteMessages(ctx(t), msgs...); err != nil {
		t.Fatal(err)
	}
	fresh := open(t, brokers, time.Hour)
	if c := claim(t, fresh, "urn:ods:RX1", "old", digestB); c.State != New {
		t.Errorf("Claim of an event accepted before the window: got %v, want new", c.State)
	}
	if c := claim(t, fresh, "urn:ods:RX1", "w", digestB); c.State != Conflict {
		t.Errorf("Claim of an event accepted within the window, after a restart: got %v, want conflict", c.State)
	}
}

func TestDigestOf(t *testing.T) {
	a := DigestOf([]byte(`{"id":"1","data":{"a":1,"b":[{"x":"y","z":2.50}]}}`))
	tests := []struct {
		doc  string
		same bool
	}{
		{`{"data":{"b":[{"z":2.50,"x":"y"}],"a":1},"id":"1"}`, true}, // members in another order
		{"{\n  \"id\": \"1\",\n  \"data\": {\"a\": 1, \"b\": [{\"x\": \"y\", \"z\": 2.50}]}\n}", true},
		{`{"id":"1","data":{"a":2,"b":[{"x":"y","z":2.50}]}}`, false},
		{`{"id":"1","data":{"a":1,"b":[{"x":"y","z":2.5}]}}`, false}, // numbers as written
		{`{"id":"1","data":{"a":1,"b":[{"x":"y"},{"z":2.50}]}}`, false},
	}
	for _, tt := range tests {
		if got := DigestOf([]byte(tt.doc)) == a; got != tt.same {
			t.Errorf("DigestOf(%s) == DigestOf(first): got %v, want %v", tt.doc, got, tt.same)
		}
	}
}

// TestAcknowledged: an event is acknowledged when its record was written,
// by this process or another, with the same content; not when it was never
// recorded, abandoned, or recorded with other content.
func TestAcknowledged(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	past := time.Now().Add(-time.Minute) // the ingest gave up long ago: no waiting
	for _, tc := range []struct {
		name    string
		prepare func(id string)
		digest  Digest
		want    bool
	}{
		{"recorded by this process", func(id string) { accept(t, a, "urn:ods:RX1", id, digestA) }, digestA, true},
		{"recorded by another process: found after catching up", func(id string) { accept(t, b, "urn:ods:RX1", id, digestA) }, digestA, true},
		{"recorded with other content", func(id string) { accept(t, b, "urn:ods:RX1", id, digestB) }, digestA, false},
		{"never recorded", func(string) {}, digestA, false},
		{"claimed and abandoned", func(id string) { a.Abandon(claim(t, a, "urn:ods:RX1", id, digestA)) }, digestA, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 20; i++ { // the other process's record is applied by the catch-up, not by chance
				id := fmt.Sprintf("%s-%d", tc.name, i)
				tc.prepare(id)
				got, err := a.Acknowledged(ctx(t), "urn:ods:RX1", id, tc.digest, past)
				if err != nil || got != tc.want {
					t.Fatalf("Acknowledged(%s): got %v, %v; want %v", id, got, err, tc.want)
				}
			}
		})
	}
}

// TestAcknowledgedWaitsForARecordBeingWritten: while the ingest that
// published an event may still write its record (until), Acknowledged
// waits for it: a record another process writes during the wait is found
// (without it, the call would wait out until, an hour, and its context end
// first); a claim this process holds is waited for; a record that never
// comes is not found once until has passed.
func TestAcknowledgedWaitsForARecordBeingWritten(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	waiting := make(chan struct{}, 1)
	a.waiting = func() { waiting <- struct{}{} }
	ask := func(id string, until time.Time) chan error {
		got := make(chan error, 1)
		go func() {
			ok, err := a.Acknowledged(ctx(t), "urn:ods:RX1", id, digestA, until)
			if err == nil && !ok {
				err = errors.New("not acknowledged")
			}
			got <- err
		}()
		return got
	}

	got := ask("later", time.Now().Add(time.Hour))
	<-waiting
	accept(t, b, "urn:ods:RX1", "later", digestA)
	if err := <-got; err != nil {
		t.Errorf("a record written by another process during the wait: %v", err)
	}

	c := claim(t, a, "urn:ods:RX1", "pending", digestA)
	got = ask("pending", time.Now().Add(time.Hour))
	if err := a.Record(ctx(t), c); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("a claim of this process, recorded: %v", err)
	}

	ok, err := a.Acknowledged(ctx(t), "urn:ods:RX1", "never", digestA, time.Now().Add(200*time.Millisecond))
	if err != nil || ok {
		t.Errorf("a record that never comes: got %v, %v; want false", ok, err)
	}
	select {
	case <-waiting:
	default:
		t.Error("Acknowledged did not wait for a record that could still come")
	}
}

// BenchmarkAcknowledged is the router's hot path: an event whose record
// this process wrote, found without a round trip to the broker.
func BenchmarkAcknowledged(b *testing.B) {
	brokers := brokertest.Start(b, topic.AcceptedSpec(1, time.Hour))
	s, err := Open(brokers, topic.Accepted, time.Hour, 10*time.Second, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitLoaded(c); err != nil {
		b.Fatal(err)
	}
	cl, err := s.Claim(c, "urn:ods:RX1", "hot", digestA)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Record(c, cl); err != nil {
		b.Fatal(err)
	}
	until := time.Now().Add(time.Hour)
	b.ResetTimer()
	for b.Loop() {
		if ok, err := s.Acknowledged(c, "urn:ods:RX1", "hot", digestA, until); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
