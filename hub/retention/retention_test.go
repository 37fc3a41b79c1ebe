package retention

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/deadletter"
	"github.com/carehub/carehub/hub/feedlog"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

func startBroker(t *testing.T) []string {
	return brokertest.Start(t, topic.Specs(1, 1, []string{"VM123"}, topic.Retention{})...)
}

func produce(t *testing.T, brokers []string, name string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: name, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// consume reads n copies of the outbox as the deliverers' group and commits them.
func consume(t *testing.T, brokers []string, n int) {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic.Outbox("VM123"), GroupID: topic.DeliverGroup("VM123"), MaxWait: 50 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

func firstOffset(t *testing.T, brokers []string, name string) int64 {
	t.Helper()
	first, _, err := broker.Offsets(context.Background(), brokers, name)
	if err != nil {
		t.Fatal(err)
	}
	return first[0]
}

// readFrom reads what a consumer starting at offset 0 gets: after a
// delete, the first record it gets is the first one kept.
func readFrom(t *testing.T, brokers []string, name string) []string {
	t.Helper()
	_, end, _ := broker.Offsets(context.Background(), brokers, name)
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: name, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	_ = r.SetOffset(kafka.FirstOffset)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []string
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(m.Value))
		if m.Offset >= end[0]-1 {
			return out
		}
	}
}

// TestOutboxCopiesAreDeletedOnceDeliveredAndTheWindowPassed pins finding 6
// of issue 11: outboxes kept full identifiable payloads for ever. On the
// embedded broker, copies below the deliverers' committed offset are
// deleted once the window has passed since they were seen committed, and
// copies not yet delivered are kept.
func TestOutboxCopiesAreDeletedOnceDeliveredAndTheWindowPassed(t *testing.T) {
	brokers := startBroker(t)
	var msgs []kafka.Message
	for i := range 10 {
		msgs = append(msgs, kafka.Message{Key: []byte("p1_x"), Value: []byte("copy-" + strconv.Itoa(i))})
	}
	produce(t, brokers, topic.Outbox("VM123"), msgs...)
	consume(t, brokers, 6)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s := New(Config{Brokers: brokers, Recipients: []string{"VM123"}, OutboxWindow: time.Hour, DeadLetterWindow: time.Hour,
		Log: zaptest.NewLogger(t), Now: func() time.Time { return now }})
	ctx := context.Background()
	if rep, err := s.Sweep(ctx); err != nil || rep.Outbox["VM123"] != 0 {
		t.Fatalf("first sweep: %+v %v, want nothing removed inside the window", rep, err)
	}
	if got := firstOffset(t, brokers, topic.Outbox("VM123")); got != 0 {
		t.Fatalf("log start after the first sweep: %d, want 0", got)
	}
	consume(t, brokers, 2) // committed 8 now, but 6 was what the window saw
	now = now.Add(time.Hour)
	rep, err := s.Sweep(ctx)
	if err != nil || rep.Outbox["VM123"] != 6 {
		t.Fatalf("sweep after the window: %+v %v, want 6 copies removed", rep, err)
	}
	if got := firstOffset(t, brokers, topic.Outbox("VM123")); got != 6 {
		t.Errorf("log start: %d, want 6", got)
	}
	if got := readFrom(t, brokers, topic.Outbox("VM123")); len(got) != 4 || got[0] != "copy-6" {
		t.Errorf("a reader from the start gets %v, want copy-6 to copy-9", got)
	}
	now = now.Add(time.Hour)
	if rep, _ := s.Sweep(ctx); rep.Outbox["VM123"] != 2 {
		t.Errorf("third sweep: %+v, want the two copies committed since", rep)
	}
}

type pub struct {
	mu   sync.Mutex
	w    *kafka.Writer
	sent map[string]int
}

func (p *pub) Publish(name string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if err := p.w.WriteMessages(context.Background(), kafka.Message{Topic: name, Key: []byte(m.Metadata.Get(topic.MetaKey)), Value: m.Payload}); err != nil {
			return err
		}
		p.sent[name]++
	}
	return nil
}
func (p *pub) Close() error { return p.w.Close() }

// permitNow is a re-check that permits every copy.
type permitNow struct{}

func (permitNow) Recheck(context.Context, string, string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error) {
	return consent.Decision{Effect: consent.Permit, Rule: "test:permit"}, route.Sealed{}, nil, nil
}

// TestDeadLettersAreDeletedOnceResolvedAndTheWindowPassed: a dead letter
// is kept until it is resolved and the window has passed; an unresolved
// one keeps everything after it.
func TestDeadLettersAreDeletedOnceResolvedAndTheWindowPassed(t *testing.T) {
	brokers := startBroker(t)
	var msgs []kafka.Message
	for i := range 3 {
		b, _ := json.Marshal(audit.DeadLetter{Time: time.Now(), Recipient: "VM123", EventID: "ev-" + strconv.Itoa(i), Patient: "p1_x",
			Reason: "recipient answered 400", Event: json.RawMessage(`{"id":"ev"}`), Form: "full", Decision: "sealed"})
		msgs = append(msgs, kafka.Message{Key: []byte("VM123"), Value: b})
	}
	produce(t, brokers, topic.DLQ, msgs...)
	p := &pub{w: &kafka.Writer{Addr: kafka.TCP(brokers...), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}, sent: map[string]int{}}
	defer p.Close()
	ctx := context.Background()
	resolve := func(i int, action string) {
		t.Helper()
		entries, err := deadletter.Read(ctx, brokers, topic.DLQ)
		if err != nil {
			t.Fatal(err)
		}
		l, err := deadletter.Find(entries, deadletter.ID(0, int64(i)))
		if err != nil {
			t.Fatal(err)
		}
		if action == deadletter.Replayed {
			_, err = deadletter.Replay(ctx, p, permitNow{}, []deadletter.Letter{l}, "ig-lead", time.Now())
		} else {
			err = deadletter.Resolve(context.Background(), p, nil, l, "ig-lead", "the care home was told by phone", time.Now())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	resolve(0, deadletter.Dismissed)
	resolve(1, deadletter.Replayed)
	if p.sent[topic.Outbox("VM123")] != 1 {
		t.Errorf("replay put %d copies in the outbox, want 1", p.sent[topic.Outbox("VM123")])
	}
	now := time.Now()
	s := New(Config{Brokers: brokers, OutboxWindow: time.Hour, DeadLetterWindow: time.Hour, Log: zaptest.NewLogger(t), Now: func() time.Time { return now }})
	if rep, err := s.Sweep(ctx); err != nil || rep.DeadLetters != 0 {
		t.Fatalf("inside the window: %+v %v", rep, err)
	}
	now = now.Add(time.Hour)
	if rep, err := s.Sweep(ctx); err != nil || rep.DeadLetters != 2 {
		t.Fatalf("after the window: %+v %v, want the two resolved dead letters removed", rep, err)
	}
	if got := firstOffset(t, brokers, topic.DLQ); got != 2 {
		t.Errorf("log start %d, want 2: the unresolved dead letter stays", got)
	}
	entries, _ := deadletter.Read(ctx, brokers, topic.DLQ)
	if ls := deadletter.Letters(entries, "VM123"); len(ls) != 1 || ls[0].EventID != "ev-2" || ls[0].Resolution != nil {
		t.Errorf("dead letters left: %+v", ls)
	}
	resolve(2, deadletter.Dismissed)
	now = now.Add(2 * time.Hour)
	if rep, err := s.Sweep(ctx); err != nil || rep.DeadLetters != 4 {
		t.Errorf("after resolving the last: %+v %v, want it and the three resolutions removed", rep, err)
	}
}

// TestHeldMessagesAreDeletedOnceClosedAndTheWindowPassed: a held message
// (its original is patient data) is kept until it is released or resolved
// and the window has passed; an open one keeps everything after it.
func TestHeldMessagesAreDeletedOnceClosedAndTheWindowPassed(t *testing.T) {
	brokers := startBroker(t)
	ctx := context.Background()
	now := time.Now()
	var recs []held.Record
	for i := range 3 {
		recs = append(recs, held.Record{ID: "h" + strconv.Itoa(i), Source: "RX1", Received: now, Trigger: "ADT^A04", Reason: "no-nhs-number",
			Patient: "l1_x", ContentType: "x-application/hl7-v2+er7", Original: []byte("MSH|...")})
	}
	closeOf := func(r held.Record, action string) held.Record {
		return held.Closing(r, held.Resolution{Action: action, Actor: "ig-lead"}, now)
	}
	var msgs []kafka.Message
	for _, r := range []held.Record{recs[0], recs[1], recs[2], closeOf(recs[0], held.Released), closeOf(recs[1], held.Resolved)} {
		msgs = append(msgs, kafka.Message{Key: []byte(r.Patient), Value: r.Marshal()})
	}
	produce(t, brokers, topic.Held, msgs...)
	s := New(Config{Brokers: brokers, DeadLetterWindow: time.Hour, HeldWindow: time.Hour, Log: zaptest.NewLogger(t), Now: func() time.Time { return now }})
	if rep, err := s.Sweep(ctx); err != nil || rep.Held != 0 {
		t.Fatalf("inside the window: %+v %v", rep, err)
	}
	now = now.Add(time.Hour)
	if rep, err := s.Sweep(ctx); err != nil || rep.Held != 2 {
		t.Fatalf("after the window: %+v %v, want the two closed messages removed", rep, err)
	}
	if got := firstOffset(t, brokers, topic.Held); got != 2 {
		t.Errorf("log start %d, want 2: the open message stays, with what follows it", got)
	}
}

// TestFeedEntriesAreDeletedOnceAcknowledgedAndTheWindowPassed pins finding
// 6 of issue 11 for feeds: carehub.feed.<ods> kept full identifiable copies
// for ever. On the embedded broker, entries the recipient acknowledged (a
// read after N) are deleted once the window has passed since the
// acknowledgement was seen; entries it never acknowledged are kept however
// old; the feed's Oldest moves and a read from before it is Gone.
func TestFeedEntriesAreDeletedOnceAcknowledgedAndTheWindowPassed(t *testing.T) {
	brokers := brokertest.Start(t, append(topic.Specs(1, 1, []string{"B82005"}, topic.Retention{}),
		topic.FeedSpecs(1, []string{"B82005"})...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fl := feedlog.New("B82005", topic.Feed("B82005"), zaptest.NewLogger(t))
	fl.Start(brokers)
	defer fl.Close()
	if err := fl.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		d := connector.Delivery{EventID: "ev-" + strconv.Itoa(i), EventSource: "RX1", Recipient: "B82005", PatientRef: "p1_x", Body: []byte(`{}`)}
		if _, err := fl.Append(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var trimmed []string
	s := New(Config{Brokers: brokers, Recipients: []string{"B82005"}, Feeds: func() []string { return []string{"B82005"} },
		Trimmed: func(r string) {
			trimmed = append(trimmed, r)
			if err := fl.Refresh(ctx); err != nil {
				t.Error(err)
			}
		},
		OutboxWindow: time.Hour, DeadLetterWindow: time.Hour, HeldWindow: time.Hour,
		Log: zaptest.NewLogger(t), Now: func() time.Time { return now }})
	feedStart := func() int64 { return firstOffset(t, brokers, topic.Feed("B82005")) }
	sweep := func(after time.Duration, want int64) {
		t.Helper()
		now = now.Add(after)
		rep, err := s.Sweep(ctx)
		if err != nil || rep.Feeds["B82005"] != want {
			t.Fatalf("sweep at %v: %+v %v, want %d feed entries removed", now, rep, err, want)
		}
	}

	sweep(0, 0)              // nothing acknowledged
	sweep(1000*time.Hour, 0) // nothing acknowledged, however old
	if err := fl.Acknowledge(ctx, 6); err != nil {
		t.Fatal(err)
	}
	sweep(0, 0) // acknowledged, but not yet a window ago
	if got := feedStart(); got != 0 {
		t.Fatalf("feed start inside the window: %d, want 0", got)
	}
	if err := fl.Acknowledge(ctx, 8); err != nil {
		t.Fatal(err)
	}
	sweep(time.Hour, 6) // 6 was acknowledged a window ago; 8 was not yet
	if got := feedStart(); got != 6 {
		t.Errorf("feed start: %d, want 6", got)
	}
	if len(trimmed) != 1 || trimmed[0] != "B82005" {
		t.Errorf("Trimmed was told %v, want [B82005]", trimmed)
	}
	page, err := fl.Read(ctx, 0, 10)
	if problem.KindOf(err) != problem.Gone || page.Oldest != 7 || page.Latest != 10 {
		t.Errorf("Read(0) after the sweep: oldest %d latest %d, %v; want 7, 10, Gone", page.Oldest, page.Latest, err)
	}
	if page, err := fl.Read(ctx, 6, 10); err != nil || len(page.Entries) != 4 || page.Entries[0].Number != 7 {
		t.Errorf("Read(6) after the sweep: %d entries, %v; want 7 to 10", len(page.Entries), err)
	}
	sweep(time.Hour, 2)       // 8 a window ago
	sweep(10000*time.Hour, 0) // 9 and 10 were never acknowledged: kept
	if got := feedStart(); got != 8 {
		t.Errorf("feed start after every sweep: %d, want 8 (9 and 10 unacknowledged)", got)
	}
	if page, err := fl.Read(ctx, 8, 10); err != nil || len(page.Entries) != 2 || page.Oldest != 9 {
		t.Errorf("Read(8): %+v, %v; want 9 and 10, oldest 9", page, err)
	}
}
