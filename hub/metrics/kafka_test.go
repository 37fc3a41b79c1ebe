package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

func startBroker(t *testing.T) (*broker.Embedded, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	if err := broker.EnsureTopics(ctx, emb.Addrs(), topic.Specs(1, 1, []string{"VM123", "A81001"}, topic.Retention{})); err != nil {
		t.Fatal(err)
	}
	return emb, emb.Addrs()
}

func produce(t *testing.T, brokers []string, name string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: name, Balancer: &kafka.LeastBytes{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	// A topic created a moment ago may not be known to the writer yet.
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := w.WriteMessages(context.Background(), msgs...)
		if err == nil {
			return
		}
		if !errors.Is(err, kafka.UnknownTopicOrPartition) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consume reads n records of name as group and commits them.
func consume(t *testing.T, brokers []string, group, name string, n int) {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: name, GroupID: group, MaxWait: 50 * time.Millisecond})
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

func deadLetter(t *testing.T, dl audit.DeadLetter) kafka.Message {
	t.Helper()
	b, err := json.Marshal(dl)
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Message{Key: []byte(dl.Recipient), Value: b}
}

// TestKafkaSeries: backlogs, their ages, the router's lag and the open
// dead letters come from Kafka's offsets, for recipients found from their
// outbox topics, and follow what is produced, committed and resolved.
func TestKafkaSeries(t *testing.T) {
	emb, brokers := startBroker(t)
	at := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	clock := at.Add(time.Hour)
	m := New()
	m.WatchKafka(KafkaConfig{Brokers: brokers, MinInterval: time.Nanosecond, Now: func() time.Time { return clock }, Log: zaptest.NewLogger(t)})

	check := func(step string, want map[string]float64) {
		t.Helper()
		got := samples(t, m)
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s: %s: got %v (present %v), want %v", step, k, g, ok, v)
			}
		}
	}
	check("nothing yet", map[string]float64{
		"carehub_kafka_up": 1,
		"carehub_recipient_backlog_events{recipient=VM123}":                           0,
		"carehub_recipient_backlog_age_seconds{recipient=VM123}":                      0,
		"carehub_recipient_backlog_events{recipient=A81001}":                          0,
		"carehub_consumer_lag_events{group=carehub-router,topic=carehub.events}":      0,
		"carehub_consumer_lag_age_seconds{group=carehub-router,topic=carehub.events}": 0,
		"carehub_dead_letters_open{recipient=VM123}":                                  0,
	})

	var copies []kafka.Message
	for i := range 3 {
		copies = append(copies, kafka.Message{Key: []byte("p1_test"), Value: []byte(`{}`), Time: at.Add(time.Duration(i) * time.Minute)})
	}
	produce(t, brokers, topic.Outbox("VM123"), copies...)
	produce(t, brokers, topic.Events, kafka.Message{Key: []byte("p1_test"), Value: []byte(`{}`), Time: at.Add(30 * time.Minute)},
		kafka.Message{Key: []byte("p2_test"), Value: []byte(`{}`), Time: at.Add(40 * time.Minute)})
	check("three copies, two events, nothing consumed", map[string]float64{
		"carehub_recipient_backlog_events{recipient=VM123}":                           3,
		"carehub_recipient_backlog_age_seconds{recipient=VM123}":                      3600,
		"carehub_recipient_backlog_events{recipient=A81001}":                          0,
		"carehub_consumer_lag_events{group=carehub-router,topic=carehub.events}":      2,
		"carehub_consumer_lag_age_seconds{group=carehub-router,topic=carehub.events}": 1800,
	})

	consume(t, brokers, topic.DeliverGroup("VM123"), topic.Outbox("VM123"), 1)
	consume(t, brokers, topic.GroupRouter, topic.Events, 2)
	check("one delivered, both routed", map[string]float64{
		"carehub_recipient_backlog_events{recipient=VM123}":                           2,
		"carehub_recipient_backlog_age_seconds{recipient=VM123}":                      3600 - 60,
		"carehub_consumer_lag_events{group=carehub-router,topic=carehub.events}":      0,
		"carehub_consumer_lag_age_seconds{group=carehub-router,topic=carehub.events}": 0,
	})

	produce(t, brokers, topic.DLQ,
		deadLetter(t, audit.DeadLetter{Recipient: "VM123", EventID: "e1", Reason: "recipient answered 400"}),
		deadLetter(t, audit.DeadLetter{Recipient: "VM123", EventID: "e2", Reason: "recipient answered 400"}),
		deadLetter(t, audit.DeadLetter{Recipient: "A81001", EventID: "e3", Reason: "recipient answered 410"}),
		deadLetter(t, audit.DeadLetter{Recipient: "ZZ999", EventID: "e4", Reason: "an outbox no longer there"}))
	check("four dead letters", map[string]float64{
		"carehub_dead_letters_open{recipient=VM123}":  2,
		"carehub_dead_letters_open{recipient=A81001}": 1,
		"carehub_dead_letters_open{recipient=other}":  1,
	})
	produce(t, brokers, topic.DLQ, deadLetter(t, audit.DeadLetter{Recipient: "VM123", EventID: "e1",
		Resolution: &audit.Resolution{Offset: 0, Action: "replayed", Actor: "admin"}}))
	check("one replayed", map[string]float64{
		"carehub_dead_letters_open{recipient=VM123}":  1,
		"carehub_dead_letters_open{recipient=A81001}": 1,
	})

	// A recipient added at run time is counted from its outbox.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureTopics(ctx, brokers, topic.Specs(1, 1, []string{"CN001"}, topic.Retention{})); err != nil {
		t.Fatal(err)
	}
	produce(t, brokers, topic.Outbox("CN001"), kafka.Message{Key: []byte("p3_test"), Value: []byte(`{}`), Time: at.Add(50 * time.Minute)})
	check("a new recipient", map[string]float64{
		"carehub_recipient_backlog_events{recipient=CN001}":      1,
		"carehub_recipient_backlog_age_seconds{recipient=CN001}": 600,
		"carehub_dead_letters_open{recipient=CN001}":             0,
	})

	// Kafka gone: the scrape says so, and exports no stale figures.
	emb.Close()
	got := samples(t, m)
	if got["carehub_kafka_up"] != 0 {
		t.Errorf("broker closed: carehub_kafka_up %v, want 0", got["carehub_kafka_up"])
	}
	if _, ok := got["carehub_recipient_backlog_events{recipient=VM123}"]; ok {
		t.Errorf("broker closed: a backlog is still exported")
	}
}
