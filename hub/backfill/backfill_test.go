package backfill

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

func startBroker(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	if err := broker.EnsureTopics(ctx, emb.Addrs(), topic.Specs(2, 1, []string{"VM123"}, topic.Retention{})); err != nil {
		t.Fatal(err)
	}
	return emb.Addrs()
}

func produce(t *testing.T, brokers []string, name string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: name, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// router decides by the event's id: "e<n>" with n odd is for VM123, even
// is not; it can stop the run after a number of events.
type router struct {
	mu        sync.Mutex
	decided   []string
	published []string
	stopAfter int
	stop      context.CancelFunc
}

func (r *router) HasRecipient(ods string) bool { return ods == "VM123" }

func (r *router) Backfill(_ context.Context, msg *message.Message, ods, actor string, received route.Received) (*route.Plan, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := msg.Metadata.Get(topic.MetaEventID)
	r.decided = append(r.decided, id)
	if r.stopAfter > 0 && len(r.decided) == r.stopAfter {
		r.stop()
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "e"))
	plan := &route.Plan{Outbox: map[string][]*message.Message{}}
	switch {
	case n%2 == 0:
		return plan, route.BackfillNotForRecipient, nil
	case received("RX1", id, false):
		return plan, route.BackfillAlreadyReceived, nil
	}
	m := message.NewMessage(watermill.NewUUID(), nil)
	m.Metadata.Set(topic.MetaEventID, id)
	plan.Outbox[topic.Outbox(ods)] = []*message.Message{m}
	return plan, route.BackfillSent, nil
}

func (r *router) PublishPlan(plan *route.Plan) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range plan.Outbox[topic.Outbox("VM123")] {
		r.published = append(r.published, m.Metadata.Get(topic.MetaEventID))
	}
	return nil
}

// TestRunInterruptedAndResumed: a job covers the events accepted since its
// date, once the router has routed them all; a run stopped part-way is resumed from
// its committed position by another Runner (another process); an event the
// audit says the recipient was sent is not sent again; nothing is sent
// twice.
func TestRunInterruptedAndResumed(t *testing.T) {
	brokers := startBroker(t)
	ctx := context.Background()
	t0 := time.Now().Add(-48 * time.Hour).Truncate(time.Millisecond)
	var evs []kafka.Message
	for i := 1; i <= 12; i++ {
		at := t0
		if i > 4 {
			at = t0.Add(36 * time.Hour) // the last eight since the job's date
		}
		evs = append(evs, kafka.Message{Key: []byte("p1_patient" + strconv.Itoa(i%3)), Value: []byte(`{}`), Time: at,
			Headers: []kafka.Header{{Key: topic.MetaEventID, Value: []byte("e" + strconv.Itoa(i))}, {Key: topic.MetaSource, Value: []byte("urn:ods:RX1")}}})
	}
	produce(t, brokers, topic.Events, evs...)
	// The router has routed everything but the last event of one partition.
	_, end, err := broker.Offsets(ctx, brokers, topic.Events)
	if err != nil {
		t.Fatal(err)
	}
	routed := map[int]int64{0: end[0], 1: end[1] - 1}
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	commits := map[string][]kafka.OffsetCommit{topic.Events: {{Partition: 0, Offset: routed[0]}, {Partition: 1, Offset: routed[1]}}}
	if res, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: topic.GroupRouter, GenerationID: -1, Topics: commits}); err != nil {
		t.Fatal(err)
	} else {
		for _, ps := range res.Topics {
			for _, p := range ps {
				if p.Error != nil {
					t.Fatal(p.Error)
				}
			}
		}
	}
	// The recipient was sent e5 live.
	rec := audit.Record{Time: time.Now(), Kind: audit.KindDecision, Recipient: "VM123", Publisher: "RX1", EventID: "e5", Form: "full", Effect: "permit"}
	produce(t, brokers, topic.Audit, kafka.Message{Key: []byte("p1_x"), Value: rec.Marshal()})

	pub, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	rt := &router{}
	newRunner := func() *Runner {
		r, err := New(Config{Brokers: brokers, Router: rt, Publisher: pub, Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first := newRunner()
	if _, _, err := first.Create(ctx, "CN001", t0, "ig-lead"); problem.KindOf(err) != problem.Invalid {
		t.Errorf("a backfill of a recipient the hub does not route to: %v", err)
	}
	// The router has not routed the last event: a job would leave it out
	// (routed live, without the recipient) or decide it twice, so it waits
	// for the router, and says so when the router does not get there.
	impatient, err := New(Config{Brokers: brokers, Router: rt, Publisher: pub, Log: zaptest.NewLogger(t), RouterWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := impatient.Create(ctx, "VM123", t0.Add(24*time.Hour), "ig-lead"); problem.KindOf(err) != problem.Unavailable ||
		!strings.Contains(problem.Public(err), "1 events behind") {
		t.Errorf("a backfill while the router is behind: %v, want Unavailable naming how far behind", err)
	}
	commits = map[string][]kafka.OffsetCommit{topic.Events: {{Partition: 1, Offset: end[1]}}}
	if _, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: topic.GroupRouter, GenerationID: -1, Topics: commits}); err != nil {
		t.Fatal(err)
	}
	j, created, err := first.Create(ctx, "VM123", t0.Add(24*time.Hour), "ig-lead")
	if err != nil || !created {
		t.Fatal(created, err)
	}
	if j.Total != 8 {
		t.Errorf("the job covers %d events, want the 8 accepted since the date", j.Total)
	}
	if again, created, err := first.Create(ctx, "VM123", t0.Add(24*time.Hour), "ops.jo"); err != nil || created || again.ID != j.ID {
		t.Errorf("asking again: %v %v %v, want the same job", again.ID, created, err)
	}

	// Interrupted after three events.
	runCtx, stop := context.WithCancel(ctx)
	rt.stopAfter, rt.stop = 3, stop
	var lines []Job
	j, err = first.Run(runCtx, j.ID, "ig-lead", Options{Progress: func(j Job) { lines = append(lines, j) }})
	if err != nil || j.State != Interrupted || j.Read < 2 || j.Read > 3 {
		t.Fatalf("the interrupted run: %+v %v", j, err)
	}
	if len(lines) == 0 || lines[len(lines)-1].State != Interrupted {
		t.Errorf("progress: %+v", lines)
	}
	stored, _ := first.Job(ctx, j.ID)
	if stored.State != Interrupted || stored.Read != j.Read || stored.Runner != "" {
		t.Errorf("the stored job: %+v", stored)
	}

	// A job another process claims, with a fresh heartbeat, is not run.
	claimed := stored
	claimed.Runner, claimed.Heartbeat = "elsewhere:1", time.Now()
	if err := first.write(claimed); err != nil {
		t.Fatal(err)
	}
	if _, err := newRunner().Run(ctx, j.ID, "ig-lead", Options{}); problem.KindOf(err) != problem.Conflict {
		t.Errorf("running a job claimed elsewhere: %v, want a conflict", err)
	}
	claimed.Heartbeat = time.Now().Add(-2 * Lease)
	if err := first.write(claimed); err != nil {
		t.Fatal(err)
	}

	// Another process resumes it once the claim lapsed.
	rt.stopAfter = 0
	j, err = newRunner().Run(ctx, j.ID, "ops.jo", Options{})
	if err != nil || j.State != Done || j.Read != 8 {
		t.Fatalf("the resumed run: %+v %v", j, err)
	}
	if j.Counts.AlreadyReceived != 1 || j.Counts.Sent+j.Counts.AlreadyReceived+j.Counts.NotForRecipient != 8 {
		t.Errorf("counts %+v", j.Counts)
	}
	pubd := slices.Clone(rt.published)
	slices.Sort(pubd)
	if slices.Contains(pubd, "e5") || len(slices.Compact(slices.Clone(pubd))) != len(pubd) {
		t.Errorf("published %v: e5 was sent already, and nothing goes twice", rt.published)
	}
	for _, early := range []string{"e1", "e2", "e3", "e4"} {
		if slices.Contains(rt.decided, early) {
			t.Errorf("decided %s, accepted before the job's date: %v", early, rt.decided)
		}
	}
	// Done is done.
	again, err := newRunner().Run(ctx, j.ID, "ops.jo", Options{})
	if err != nil || again.State != Done || again.Read != 8 {
		t.Errorf("running a finished job: %+v %v", again, err)
	}
	b, _ := json.Marshal(again)
	if !strings.Contains(string(b), `"createdBy":"ig-lead"`) {
		t.Errorf("the job: %s", b)
	}
}

// TestRunSkipsWhatTheRouterDroppedAsNotAcknowledged: a copy of an event the
// router did not route because its publisher was told it was not accepted
// (an audit received record flagged not-acknowledged names its position)
// is not sent by a backfill either; the publisher's resend with the same
// id, another record that was acknowledged and routed, is.
func TestRunSkipsWhatTheRouterDroppedAsNotAcknowledged(t *testing.T) {
	brokers := startBroker(t)
	ctx := context.Background()
	since := time.Now().Add(-time.Hour)
	event := func(id string) kafka.Message {
		return kafka.Message{Key: []byte("p1_patient"), Value: []byte(`{}`),
			Headers: []kafka.Header{{Key: topic.MetaEventID, Value: []byte(id)}, {Key: topic.MetaSource, Value: []byte("urn:ods:RX1")}}}
	}
	// e3 twice: the copy that landed after its 503, then the resend.
	produce(t, brokers, topic.Events, event("e1"), event("e3"), event("e3"), event("e5"))
	_, end, err := broker.Offsets(ctx, brokers, topic.Events)
	if err != nil {
		t.Fatal(err)
	}
	p := 0
	if end[1] > 0 {
		p = 1
	}
	dropped := audit.Record{Time: time.Now(), Kind: audit.KindReceived, Publisher: "RX1", EventID: "e3", Patient: "p1_patient",
		Flags: []string{audit.FlagNotAcknowledged}, Position: audit.EventPosition(p, 1)}
	produce(t, brokers, topic.Audit, kafka.Message{Key: []byte("p1_patient"), Value: dropped.Marshal()})
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	commits := map[string][]kafka.OffsetCommit{topic.Events: {{Partition: 0, Offset: end[0]}, {Partition: 1, Offset: end[1]}}}
	if _, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: topic.GroupRouter, GenerationID: -1, Topics: commits}); err != nil {
		t.Fatal(err)
	}
	pub, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	rt := &router{}
	r, err := New(Config{Brokers: brokers, Router: rt, Publisher: pub, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	j, _, err := r.Create(ctx, "VM123", since, "ig-lead")
	if err != nil {
		t.Fatal(err)
	}
	j, err = r.Run(ctx, j.ID, "ig-lead", Options{})
	if err != nil || j.State != Done {
		t.Fatalf("the run: %+v %v", j, err)
	}
	if want := (Counts{Sent: 3, NotAcknowledged: 1}); j.Counts != want || j.Read != 4 {
		t.Errorf("counts: got %+v after reading %d, want %+v after reading 4", j.Counts, j.Read, want)
	}
	if want := []string{"e1", "e3", "e5"}; !slices.Equal(rt.decided, want) {
		t.Errorf("decided %v, want %v (the dropped copy of e3 skipped, its resend sent)", rt.decided, want)
	}
}
