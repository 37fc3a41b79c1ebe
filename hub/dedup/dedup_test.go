package dedup

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
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

func accept(t *testing.T, s *Store, source, id string, d Digest) Claim {
	t.Helper()
	c := claim(t, s, source, id, d)
	if c.State != New {
		t.Fatalf("Claim(%s, %s): got %v, want new", source, id, c.State)
	}
	if err := s.Record(ctx(t), c); err != nil {
		t.Fatalf("Record(%s, %s): %v", source, id, err)
	}
	return c
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

// TestAcknowledged: an attempt is acknowledged when its record was written,
// by this process or another, with the same content; not when it was never
// recorded, abandoned, or recorded with other content.
func TestAcknowledged(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	past := time.Now().Add(-time.Minute) // the ingest gave up long ago: no waiting
	for _, tc := range []struct {
		name    string
		prepare func(id string) string // returns the attempt asked about
		digest  Digest
		want    bool
	}{
		{"recorded by this process", func(id string) string { return accept(t, a, "urn:ods:RX1", id, digestA).Attempt }, digestA, true},
		{"recorded by another process: found after catching up", func(id string) string { return accept(t, b, "urn:ods:RX1", id, digestA).Attempt }, digestA, true},
		{"recorded with other content", func(id string) string { return accept(t, b, "urn:ods:RX1", id, digestB).Attempt }, digestA, false},
		{"never recorded", func(string) string { return NewAttempt() }, digestA, false},
		{"another attempt recorded", func(id string) string { accept(t, b, "urn:ods:RX1", id, digestA); return NewAttempt() }, digestA, false},
		{"claimed and abandoned", func(id string) string {
			c := claim(t, a, "urn:ods:RX1", id, digestA)
			a.Abandon(c)
			return c.Attempt
		}, digestA, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 20; i++ { // the other process's record is applied by the catch-up, not by chance
				id := fmt.Sprintf("%s-%d", tc.name, i)
				att := tc.prepare(id)
				got, err := a.Acknowledged(ctx(t), "urn:ods:RX1", id, att, tc.digest, past, past)
				if err != nil || got != tc.want {
					t.Fatalf("Acknowledged(%s): got %v, %v; want %v", id, got, err, tc.want)
				}
				// Decided for good, and the same in the other process.
				if got, err := b.Acknowledged(ctx(t), "urn:ods:RX1", id, att, tc.digest, past, past); err != nil || got != tc.want {
					t.Fatalf("the other process's Acknowledged(%s): got %v, %v; want %v", id, got, err, tc.want)
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
	ask := func(id, att string, until time.Time) chan error {
		got := make(chan error, 1)
		go func() {
			ok, err := a.Acknowledged(ctx(t), "urn:ods:RX1", id, att, digestA, time.Now(), until)
			if err == nil && !ok {
				err = errors.New("not acknowledged")
			}
			got <- err
		}()
		return got
	}

	cb := claim(t, b, "urn:ods:RX1", "later", digestA)
	got := ask("later", cb.Attempt, time.Now().Add(time.Hour))
	<-waiting
	if err := b.Record(ctx(t), cb); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("a record written by another process during the wait: %v", err)
	}

	c := claim(t, a, "urn:ods:RX1", "pending", digestA)
	got = ask("pending", c.Attempt, time.Now().Add(time.Hour))
	<-waiting
	if err := a.Record(ctx(t), c); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("a claim of this process, recorded: %v", err)
	}

	ok, err := a.Acknowledged(ctx(t), "urn:ods:RX1", "never", NewAttempt(), digestA, time.Now(), time.Now().Add(200*time.Millisecond))
	if err != nil || ok {
		t.Errorf("a record that never comes: got %v, %v; want false", ok, err)
	}
	select {
	case <-waiting:
	default:
		t.Error("Acknowledged did not wait for a record that could still come")
	}
}

// writeRaw writes a record to carehub.accepted as another (or an older)
// hub, or a Kafka client completing a write its caller gave up on, would.
func writeRaw(t *testing.T, brokers []string, k string, r Record) {
	t.Helper()
	b, _ := json.Marshal(r)
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Accepted, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx(t), kafka.Message{Key: []byte(k), Value: b}); err != nil {
		t.Fatal(err)
	}
}

// lateRecord is the record of claim c, written after its Record gave up.
func lateRecord(t *testing.T, brokers []string, c Claim) {
	t.Helper()
	writeRaw(t, brokers, RecordKey(c.source, c.id, c.Attempt),
		Record{Source: c.source, ID: c.id, Digest: hex.EncodeToString(c.digest[:]), Accepted: time.Now().UTC(), Attempt: c.Attempt})
}

// TestALateRecordAfterTheVoidIsIgnored pins review bug (1) of the ack
// gate: the record's write timed out at the ingest (503), the router gave
// up waiting and dropped the event, then kafka-go's retry landed the
// record; the sender's resend found it, was answered 202 as a duplicate
// and nothing was published: the event was lost. Now the router's void
// comes first in the log, so the late record is ignored everywhere: the
// resend is New, and routed.
func TestALateRecordAfterTheVoidIsIgnored(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	first := claim(t, a, "urn:ods:RX1", "E", digestA)
	a.Abandon(first) // the record's write timed out: 503
	past := time.Now().Add(-time.Minute)
	if ok, err := b.Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, past, past); ok || err != nil {
		t.Fatalf("the router's check of the 503'd attempt: got %v, %v; want false", ok, err)
	}
	lateRecord(t, brokers, first)
	for name, s := range map[string]*Store{"the ingest's process": a, "the router's process": b, "a process started later": open(t, brokers, time.Hour)} {
		if c := claim(t, s, "urn:ods:RX1", "E", digestA); c.State != New {
			t.Fatalf("%s: the resend after a late record: got %v, want new", name, c.State)
		} else {
			s.Abandon(c)
		}
		if ok, err := s.Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, past, past); ok || err != nil {
			t.Errorf("%s: the voided attempt after its late record: got %v, %v; want false", name, ok, err)
		}
	}
	resend := accept(t, a, "urn:ods:RX1", "E", digestA)
	if ok, err := b.Acknowledged(ctx(t), "urn:ods:RX1", "E", resend.Attempt, digestA, past, past); !ok || err != nil {
		t.Errorf("the resend, answered 202: got %v, %v; want routed", ok, err)
	}
}

// TestARecordBeforeTheVoidWins: a record cut short at the ingest (503)
// that lands before the router voids the attempt is the attempt's answer:
// the event is routed (a 503 that was durable after all), and the resend
// is a duplicate, published no more.
func TestARecordBeforeTheVoidWins(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	first := claim(t, a, "urn:ods:RX1", "E", digestA)
	a.Abandon(first)
	lateRecord(t, brokers, first)
	past := time.Now().Add(-time.Minute)
	if ok, err := b.Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, past, past); !ok || err != nil {
		t.Fatalf("an attempt whose record landed first: got %v, %v; want routed", ok, err)
	}
	// A void written after the record (another router's, say) changes nothing.
	writeRaw(t, brokers, VoidKey("urn:ods:RX1", "E", first.Attempt), Record{Source: "urn:ods:RX1", ID: "E", Accepted: past.UTC(), Attempt: first.Attempt, Void: true})
	if c := claim(t, a, "urn:ods:RX1", "E", digestA); c.State != Duplicate {
		t.Errorf("the resend: got %v, want duplicate", c.State)
	}
	if ok, err := open(t, brokers, time.Hour).Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, past, past); !ok || err != nil {
		t.Errorf("a process started later: got %v, %v; want routed", ok, err)
	}
}

// TestAForeignRecordIsAppliedWhileAClaimIsPending pins review bug (2) of
// the ack gate: process B recorded E (answered 202) while A held a pending
// claim on E; A skipped B's record, then abandoned its own claim (its
// publish timed out) and deleted the entry, so A's memory never had B's
// record and A's router dropped B's 202'd event.
func TestAForeignRecordIsAppliedWhileAClaimIsPending(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a, b := open(t, brokers, time.Hour), open(t, brokers, time.Hour)
	ca := claim(t, a, "urn:ods:RX1", "E", digestA)
	if ca.State != New {
		t.Fatal(ca.State)
	}
	cb := accept(t, b, "urn:ods:RX1", "E", digestA) // B: 202
	if err := a.f.Sync(ctx(t)); err != nil {        // A applies B's record
		t.Fatal(err)
	}
	a.Abandon(ca) // A's publish timed out: 503
	ok, err := a.Acknowledged(ctx(t), "urn:ods:RX1", "E", cb.Attempt, digestA, time.Now(), time.Now())
	if !ok || err != nil {
		t.Errorf("A's router on B's 202'd event: got %v, %v; want routed", ok, err)
	}
	if c := claim(t, a, "urn:ods:RX1", "E", digestA); c.State != Duplicate {
		t.Errorf("A's next Claim: got %v, want duplicate (B accepted it)", c.State)
	}
}

// TestALateRecordWithOtherContentChangesNothing pins review bug (3) of the
// ack gate: a record written late (after its Record gave up) with other
// content replaced the record of the resend that was answered 202, and the
// router dropped the resend (digest mismatch).
func TestALateRecordWithOtherContentChangesNothing(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	a := open(t, brokers, time.Hour)
	first := claim(t, a, "urn:ods:RX1", "E", digestA)
	a.Abandon(first)                                    // 503
	resend := accept(t, a, "urn:ods:RX1", "E", digestB) // resend, other content: 202
	lateRecord(t, brokers, first)
	if err := a.f.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute)
	for name, s := range map[string]*Store{"this process": a, "a process started later": open(t, brokers, time.Hour)} {
		if ok, err := s.Acknowledged(ctx(t), "urn:ods:RX1", "E", resend.Attempt, digestB, past, past); !ok || err != nil {
			t.Errorf("%s: the 202'd resend once the first record landed: got %v, %v; want routed", name, ok, err)
		}
	}
}

// TestRecordsWithoutAnAttempt: records of hubs from before attempts (key
// the identity, no attempt) count as recorded for Claim (upgrade).
func TestRecordsWithoutAnAttempt(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	writeRaw(t, brokers, event.Identity("urn:ods:RX1", "old"),
		Record{Source: "urn:ods:RX1", ID: "old", Digest: hex.EncodeToString(digestA[:]), Accepted: time.Now().UTC()})
	s := open(t, brokers, time.Hour)
	for _, tc := range []struct {
		d    Digest
		want State
	}{{digestA, Duplicate}, {digestB, Conflict}} {
		if c := claim(t, s, "urn:ods:RX1", "old", tc.d); c.State != tc.want {
			t.Errorf("Claim after an old-format record: got %v, want %v", c.State, tc.want)
		}
	}
}

// TestRecordReportsEachRecord: when the broker refuses part of a batch of
// records, Record says which (kafka-go's per-message errors), and exactly
// those are not in the topic and not remembered; the others are (review
// bug (4) of the ack gate: every claim was abandoned though some records
// landed). The embedded broker refuses the second Produce request to
// carehub.accepted; kafka-go sends a batch larger than its batch size in
// several.
func TestRecordReportsEachRecord(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic.Accepted))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var failing atomic.Bool
	var n atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !failing.Load() || n.Add(1) != 2 {
			return nil, nil, false
		}
		req := kr.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.InvalidRecord.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	brokers := c.ListenAddrs()
	s := open(t, brokers, time.Hour)
	const count = 250
	sources, ids, digests := make([]string, count), make([]string, count), make([]Digest, count)
	for i := range ids {
		sources[i], ids[i], digests[i] = "urn:ods:RX1", fmt.Sprintf("e-%d", i), digestA
	}
	claims, err := s.ClaimAll(ctx(t), sources, ids, digests)
	if err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	err = s.Record(ctx(t), claims...)
	failing.Store(false)
	var rerr *RecordError
	if !errors.As(err, &rerr) {
		t.Fatalf("Record with the broker refusing part of the batch: got %v, want a *RecordError", err)
	}
	later := open(t, brokers, time.Hour) // what is in the topic
	failed := 0
	for i := range ids {
		if rerr.FailedAt(i) {
			failed++
		}
		want := Duplicate
		if rerr.FailedAt(i) {
			want = New
		}
		for name, st := range map[string]*Store{"in the topic": later, "in memory": s} {
			got := claim(t, st, sources[i], ids[i], digestA)
			st.Abandon(got)
			if got.State != want {
				t.Fatalf("%s, %s (failed %v): got %v, want %v", name, ids[i], rerr.FailedAt(i), got.State, want)
			}
		}
	}
	if failed == 0 || failed == count {
		t.Errorf("%d of %d records reported failed: want some, not all", failed, count)
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
	past := time.Now().Add(-time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Record(c, cl); err != nil {
		b.Fatal(err)
	}
	if err := s.f.Sync(c); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if ok, err := s.Acknowledged(c, "urn:ods:RX1", "hot", cl.Attempt, digestA, past, past); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// TestCompactionCannotReverseAVoid pins review bug (1) of the ack gate's
// rework: carehub.accepted was compact,delete. A void may be written twice
// (kafka-go retries a write without idempotence; two routers across a
// rebalance): void V, a late record R, V's second copy. Live processes
// applied V first (not routed); compaction removed V's first copy, leaving
// R before V, and a process started afterwards applied R first: the resend
// was a Duplicate (202, not published) and the event was lost. Now the
// topic is delete-only, as created by this version, and as the hub sets an
// existing topic at start (topic.AcceptedConfigs).
func TestCompactionCannotReverseAVoid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  broker.TopicSpec
		alter bool // set topic.AcceptedConfigs on it, as the hub does at start
	}{
		{"created by this version", topic.AcceptedSpec(1, time.Hour), false},
		{"created compacted by an earlier version, set at start", broker.TopicSpec{Name: topic.Accepted, Partitions: 1, ReplicationFactor: 1,
			Configs: map[string]string{"cleanup.policy": "compact,delete", "retention.ms": "3600000"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			brokers := c.ListenAddrs()
			if err := broker.EnsureTopics(ctx(t), brokers, []broker.TopicSpec{tc.spec}); err != nil {
				t.Fatal(err)
			}
			if tc.alter {
				if err := broker.SetTopicConfigs(ctx(t), brokers, topic.Accepted, topic.AcceptedConfigs(time.Hour)); err != nil {
					t.Fatal(err)
				}
			}
			live := open(t, brokers, time.Hour)
			first := claim(t, live, "urn:ods:RX1", "E", digestA)
			live.Abandon(first) // 503
			at := time.Now().Add(-time.Minute).UTC()
			void := Record{Source: "urn:ods:RX1", ID: "E", Accepted: at, Attempt: first.Attempt, Void: true}
			writeRaw(t, brokers, VoidKey("urn:ods:RX1", "E", first.Attempt), void)
			if ok, err := live.Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, at, at); ok || err != nil {
				t.Fatalf("the live process on the voided attempt: got %v, %v; want false", ok, err)
			}
			lateRecord(t, brokers, first)
			writeRaw(t, brokers, VoidKey("urn:ods:RX1", "E", first.Attempt), void) // the void's second copy
			for i := range 3 {                                                     // the last batch is never compacted
				writeRaw(t, brokers, fmt.Sprintf("filler-%d", i), Record{Source: "urn:ods:RX1", ID: fmt.Sprintf("filler-%d", i),
					Digest: hex.EncodeToString(digestB[:]), Accepted: at, Attempt: NewAttempt()})
			}
			c.Compact()

			later := open(t, brokers, time.Hour)
			if ok, err := later.Acknowledged(ctx(t), "urn:ods:RX1", "E", first.Attempt, digestA, at, at); ok || err != nil {
				t.Errorf("a process started after compaction, on the voided attempt: got %v, %v; want false (not routed)", ok, err)
			}
			if got := claim(t, later, "urn:ods:RX1", "E", digestA); got.State != New {
				t.Errorf("the resend, in a process started after compaction: got %v, want new (published and routed)", got.State)
			} else {
				later.Abandon(got)
			}
		})
	}
}

// TestARecordCarriesItsAttemptsAcceptanceTime pins review bug (4) of the
// ack gate's rework: a record carried the time Record ran, its void the
// event's acceptance time; a restart between the two expiries loaded the
// record without the void (the resend a Duplicate of an event never
// routed). The record now carries the claim's Accepted (the ingest sets
// the event's carehub_accepted), so both expire together.
func TestARecordCarriesItsAttemptsAcceptanceTime(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	s := open(t, brokers, time.Hour)
	at := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Microsecond)
	c := claim(t, s, "urn:ods:RX1", "E", digestA)
	c.Accepted = at
	if err := s.Record(ctx(t), c); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic.Accepted, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	m, err := r.ReadMessage(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := json.Unmarshal(m.Value, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Accepted.Equal(at) || got.Attempt != c.Attempt {
		t.Errorf("the record: got accepted %v attempt %q, want the attempt's acceptance time %v and %q", got.Accepted, got.Attempt, at, c.Attempt)
	}
}

// TestRecordsAndVoidsCarryTheAcceptanceTimeAsTheirKafkaTimestamp pins gate
// review bug (3): Kafka deletes carehub.accepted records by their write
// timestamp, and a void carried the router's clock at write time; with the
// router's clock behind, a void that came first could leave the topic
// before its later record, and a process started in the gap loaded the
// record alone (the resend a Duplicate of an attempt never routed). Both
// now carry the attempt's acceptance time as their Kafka timestamp, and
// the topic keeps them the window plus a slack.
func TestRecordsAndVoidsCarryTheAcceptanceTimeAsTheirKafkaTimestamp(t *testing.T) {
	brokers := startBroker(t, time.Hour)
	s := open(t, brokers, time.Hour)
	at := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Millisecond)
	rec := claim(t, s, "urn:ods:RX1", "R", digestA)
	rec.Accepted = at
	if err := s.Record(ctx(t), rec); err != nil {
		t.Fatal(err)
	}
	voided := claim(t, s, "urn:ods:RX1", "V", digestA)
	s.Abandon(voided)
	vat := at.Add(time.Second)
	if ok, err := s.Acknowledged(ctx(t), "urn:ods:RX1", "V", voided.Attempt, digestA, vat, vat); ok || err != nil {
		t.Fatalf("the abandoned attempt: got %v, %v; want false (voided)", ok, err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic.Accepted, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	want := map[string]time.Time{RecordKey("urn:ods:RX1", "R", rec.Attempt): at, VoidKey("urn:ods:RX1", "V", voided.Attempt): vat}
	for range want {
		m, err := r.ReadMessage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[string(m.Key)]
		if !ok {
			t.Fatalf("unexpected record %q", m.Key)
		}
		if !m.Time.Equal(w) {
			t.Errorf("record %q: got Kafka timestamp %v, want the attempt's acceptance time %v", m.Key, m.Time.UTC(), w)
		}
	}
	if got, want := topic.AcceptedConfigs(time.Hour)["retention.ms"], "7200000"; got != want {
		t.Errorf("retention.ms for a one-hour window: got %s, want %s (the window plus an hour)", got, want)
	}
}
