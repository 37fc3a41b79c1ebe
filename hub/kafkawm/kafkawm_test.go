package kafkawm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/broker"
	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Values that stand for patient data: they must never reach a log or error.
const (
	secretPayload = "SECRET-PAYLOAD nhs=9434765919 name=Jane Doe"
	secretHeader  = "secret-header-value-9434765919"
	secretKey     = "secret-key-9434765919"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var topicSeq struct {
	sync.Mutex
	n int
}

func newTopic(t *testing.T, partitions int) string {
	t.Helper()
	topicSeq.Lock()
	topicSeq.n++
	name := fmt.Sprintf("own-%s-%d", strings.ReplaceAll(t.Name(), "/", "_"), topicSeq.n)
	topicSeq.Unlock()
	if err := broker.EnsureTopics(ctxT(t, 10*time.Second), brokers, []broker.TopicSpec{{Name: name, Partitions: partitions}}); err != nil {
		t.Fatal(err)
	}
	return name
}

func testSubConfig(group string) SubscriberConfig {
	cfg := suiteSubscriberConfig(group)
	cfg.NackResendDelay = 0 // default
	return cfg
}

func mustSub(t *testing.T, cfg SubscriberConfig, logger watermill.LoggerAdapter) *Subscriber {
	t.Helper()
	if logger == nil {
		logger = testLogger()
	}
	s, err := NewSubscriber(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustPub(t *testing.T, logger watermill.LoggerAdapter) *Publisher {
	t.Helper()
	if logger == nil {
		logger = testLogger()
	}
	p, err := NewPublisher(PublisherConfig{Brokers: brokers}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func receive(t *testing.T, ch <-chan *message.Message, d time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return m
	case <-time.After(d):
		t.Fatalf("no message within %v", d)
		return nil
	}
}

func committedOffsets(t *testing.T, group, topic string, partitions int) map[int]int64 {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	resp, err := c.OffsetFetch(ctxT(t, 10*time.Second), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		t.Errorf("OffsetFetch: %v", err)
		return nil
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			t.Errorf("OffsetFetch %s/%d: %v", topic, p.Partition, p.Error)
			continue
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// captureLogger records every log line with its error and fields.
type captureLogger struct {
	mu    sync.Mutex
	lines []string
}

func (c *captureLogger) add(level, msg string, err error, f watermill.LogFields) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines = append(c.lines, fmt.Sprintf("%s %s err=%v fields=%v", level, msg, err, f))
}
func (c *captureLogger) Error(msg string, err error, f watermill.LogFields) {
	c.add("ERROR", msg, err, f)
}
func (c *captureLogger) Info(msg string, f watermill.LogFields)  { c.add("INFO", msg, nil, f) }
func (c *captureLogger) Debug(msg string, f watermill.LogFields) { c.add("DEBUG", msg, nil, f) }
func (c *captureLogger) Trace(msg string, f watermill.LogFields) { c.add("TRACE", msg, nil, f) }
func (c *captureLogger) With(f watermill.LogFields) watermill.LoggerAdapter {
	return &withLogger{c, f}
}

type withLogger struct {
	c *captureLogger
	f watermill.LogFields
}

func (w *withLogger) Error(msg string, err error, f watermill.LogFields) {
	w.c.add("ERROR", msg, err, w.f.Add(f))
}
func (w *withLogger) Info(msg string, f watermill.LogFields)  { w.c.add("INFO", msg, nil, w.f.Add(f)) }
func (w *withLogger) Debug(msg string, f watermill.LogFields) { w.c.add("DEBUG", msg, nil, w.f.Add(f)) }
func (w *withLogger) Trace(msg string, f watermill.LogFields) { w.c.add("TRACE", msg, nil, w.f.Add(f)) }
func (w *withLogger) With(f watermill.LogFields) watermill.LoggerAdapter {
	return &withLogger{w.c, w.f.Add(f)}
}

func (c *captureLogger) assertClean(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		for _, s := range []string{secretPayload, secretHeader, secretKey, "9434765919"} {
			if strings.Contains(l, s) {
				t.Errorf("log line leaks patient data: %s", l)
			}
		}
	}
}

func (c *captureLogger) count(substr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func secretMessage() *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(secretPayload))
	m.Metadata.Set("nhs_number", secretHeader)
	m.Metadata.Set(DefaultKeyMetadata, secretKey)
	return m
}

func TestMarshalRoundTrip(t *testing.T) {
	in := message.NewMessage("uuid-1", []byte("payload"))
	in.Metadata.Set("b", "2")
	in.Metadata.Set("a", "1")
	in.Metadata.Set("partition_key", "patient-1")
	in.Metadata.Set(PartitionMetadata, "7")       // from an earlier consumption: not forwarded
	in.Metadata.Set(OffsetMetadata, "99")         // idem
	in.Metadata.Set(HighWaterMarkMetadata, "100") // idem
	in.Metadata.Set(UUIDHeader, "forged-id")      // the UUID header comes from msg.UUID only

	km := toKafka("t", DefaultKeyMetadata, in)
	wantHeaders := []kafka.Header{
		{Key: UUIDHeader, Value: []byte("uuid-1")},
		{Key: "a", Value: []byte("1")},
		{Key: "b", Value: []byte("2")},
	}
	if diff := cmp.Diff(wantHeaders, km.Headers); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if string(km.Key) != "patient-1" || string(km.Value) != "payload" || km.Topic != "t" {
		t.Errorf("record = %+v", km)
	}

	km.Partition, km.Offset, km.HighWaterMark = 3, 41, 45
	out := toWatermill(DefaultKeyMetadata, km)
	if out.UUID != "uuid-1" || string(out.Payload) != "payload" {
		t.Errorf("message = %s %q", out.UUID, out.Payload)
	}
	wantMD := message.Metadata{"a": "1", "b": "2", "partition_key": "patient-1", PartitionMetadata: "3", OffsetMetadata: "41", HighWaterMarkMetadata: "45"}
	if diff := cmp.Diff(wantMD, out.Metadata); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}

	// A record from another client: no UUID header, no key.
	foreign := toWatermill("k", kafka.Message{Topic: "t", Partition: 1, Offset: 5, Value: []byte("x")})
	if foreign.UUID != "t/1/5" {
		t.Errorf("fallback UUID = %q", foreign.UUID)
	}
	if _, ok := foreign.Metadata["k"]; ok {
		t.Error("nil key produced a key metadata field")
	}

	// A custom key field.
	km = toKafka("t", "patient", func() *message.Message {
		m := message.NewMessage("u", nil)
		m.Metadata.Set("patient", "p9")
		m.Metadata.Set("partition_key", "kept-as-header")
		return m
	}())
	if string(km.Key) != "p9" || len(km.Headers) != 2 || km.Headers[1].Key != "partition_key" {
		t.Errorf("custom key field: key %q headers %v", km.Key, km.Headers)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := NewPublisher(PublisherConfig{}, nil); err == nil {
		t.Error("publisher without brokers accepted")
	}
	if _, err := NewPublisher(PublisherConfig{Brokers: []string{"x:1"}, BatchTimeout: -1}, nil); err == nil {
		t.Error("negative BatchTimeout accepted")
	}
	bad := []SubscriberConfig{
		{ConsumerGroup: "g"},
		{Brokers: []string{"x:1"}},
		{Brokers: []string{"x:1"}, ConsumerGroup: "g", InitialOffset: 5},
		{Brokers: []string{"x:1"}, ConsumerGroup: "g", HeartbeatInterval: 10 * time.Second, SessionTimeout: 6 * time.Second},
		{Brokers: []string{"x:1"}, ConsumerGroup: "g", NackResendDelay: -1},
	}
	for _, c := range bad {
		if _, err := NewSubscriber(c, nil); err == nil {
			t.Errorf("NewSubscriber(%+v) accepted", c)
		}
	}
	s, err := NewSubscriber(SubscriberConfig{Brokers: []string{"x:1"}, ConsumerGroup: "g"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := SubscriberConfig{
		Brokers: []string{"x:1"}, ConsumerGroup: "g", InitialOffset: kafka.FirstOffset,
		SessionTimeout: 10 * time.Second, HeartbeatInterval: time.Second, RebalanceTimeout: 5 * time.Second,
		NackResendDelay: 100 * time.Millisecond, CommitInterval: 50 * time.Millisecond,
		PartitionWatchInterval: 30 * time.Second, KeyMetadata: "partition_key", InitializePartitions: 1,
	}
	if diff := cmp.Diff(want, s.cfg); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestPublishKeysAndHeaders(t *testing.T) {
	const partitions = 4
	topic := newTopic(t, partitions)
	pub := mustPub(t, nil)
	var msgs []*message.Message
	for i := 0; i < 40; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		m.Metadata.Set("partition_key", "patient-"+strconv.Itoa(i%5))
		m.Metadata.Set("event_type", "admit")
		msgs = append(msgs, m)
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}

	// Read the raw records: each key on the partition murmur2 picks, the key
	// not repeated as a header, the UUID in its header.
	keyPartition := map[string]int{}
	count := 0
	for p := 0; p < partitions; p++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		_, ends, err := broker.Offsets(ctxT(t, 10*time.Second), brokers, topic)
		if err != nil {
			t.Fatal(err)
		}
		for i := int64(0); i < ends[p]; i++ {
			km, err := r.FetchMessage(ctxT(t, 10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			count++
			key := string(km.Key)
			if prev, ok := keyPartition[key]; ok && prev != p {
				t.Errorf("key %s on partitions %d and %d", key, prev, p)
			}
			keyPartition[key] = p
			if want := (kafka.Murmur2Balancer{}).Balance(km, 0, 1, 2, 3); want != p {
				t.Errorf("key %s on partition %d, murmur2 says %d", key, p, want)
			}
			var names []string
			for _, h := range km.Headers {
				names = append(names, h.Key)
			}
			if diff := cmp.Diff([]string{UUIDHeader, "event_type"}, names); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		}
		r.Close()
	}
	if count != 40 {
		t.Fatalf("read %d records, want 40", count)
	}
}

func TestPublisherClose(t *testing.T) {
	topic := newTopic(t, 1)
	pub, err := NewPublisher(PublisherConfig{Brokers: brokers}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); !errors.Is(err, ErrPublisherClosed) {
		t.Fatalf("Publish after Close = %v", err)
	}
}

func TestPublishLatency(t *testing.T) {
	// A lone Publish must not wait kafka-go's default 1 s batch timeout.
	topic := newTopic(t, 1)
	pub := mustPub(t, nil)
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("warm"))); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	const n = 20
	for i := 0; i < n; i++ {
		if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	if per := time.Since(start) / n; per > 100*time.Millisecond {
		t.Fatalf("a lone Publish took %v", per)
	} else {
		t.Logf("a lone acknowledged Publish took %v", per)
	}
}

func TestPublishErrorsCarryNoPatientData(t *testing.T) {
	logs := &captureLogger{}
	pub := mustPub(t, logs)

	// Too large for a batch: kafka-go returns an error holding the message.
	topic := newTopic(t, 1)
	big := secretMessage()
	big.Payload = []byte(strings.Repeat(secretPayload, 2<<20/len(secretPayload)))
	err := pub.Publish(topic, big)
	if err == nil {
		t.Fatal("publishing 2 MiB succeeded")
	}
	if !errors.Is(err, kafka.MessageSizeTooLarge) {
		t.Errorf("error does not wrap MessageSizeTooLarge: %v", err)
	}
	if errors.As(err, new(kafka.MessageTooLargeError)) {
		t.Error("returned error still carries the message (kafka.MessageTooLargeError)")
	}

	// A topic that does not exist (topics are never auto-created).
	start := time.Now()
	err = pub.Publish("no-such-topic-"+watermill.NewShortUUID(), secretMessage())
	if err == nil {
		t.Fatal("publishing to a missing topic succeeded")
	}
	t.Logf("missing topic failed after %v: %v", time.Since(start), err)

	for _, s := range []string{secretPayload, secretHeader, secretKey} {
		if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v", err), s) {
			t.Errorf("error leaks patient data: %v", err)
		}
	}
	if logs.count("Kafka publish failed") != 2 {
		t.Errorf("want 2 publish failures logged, got lines %v", logs.lines)
	}
	logs.assertClean(t)
}

func TestNackRedelivery(t *testing.T) {
	topic := newTopic(t, 1)
	pub := mustPub(t, nil)
	cfg := testSubConfig("nack-" + watermill.NewShortUUID())
	cfg.NackResendDelay = 200 * time.Millisecond
	sub := mustSub(t, cfg, nil)

	first := message.NewMessage(watermill.NewUUID(), []byte("first"))
	first.Metadata.Set("partition_key", "p1")
	first.Metadata.Set("h", "v")
	second := message.NewMessage(watermill.NewUUID(), []byte("second"))
	if err := pub.Publish(topic, first, second); err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	check := func(m *message.Message) {
		t.Helper()
		if m.UUID != first.UUID || string(m.Payload) != "first" || m.Metadata.Get("h") != "v" ||
			m.Metadata.Get("partition_key") != "p1" || m.Metadata.Get(OffsetMetadata) != "0" || m.Metadata.Get(PartitionMetadata) != "0" ||
			m.Metadata.Get(HighWaterMarkMetadata) != "2" { // both records were in the log when it was fetched
			t.Fatalf("got %s %q %v, want the first message", m.UUID, m.Payload, m.Metadata)
		}
	}
	// Nack twice: each time the same message comes back, after the delay,
	// before the next record.
	m := receive(t, ch, 15*time.Second)
	check(m)
	for i := 0; i < 2; i++ {
		nackAt := time.Now()
		m.Nack()
		next := receive(t, ch, 15*time.Second)
		if d := time.Since(nackAt); d < 150*time.Millisecond {
			t.Errorf("redelivered after %v, want >= NackResendDelay", d)
		}
		check(next)
		if m.Context().Err() == nil {
			t.Error("context of a nacked message not cancelled")
		}
		m = next
	}
	m.Ack()
	select {
	case <-m.Context().Done():
	case <-time.After(5 * time.Second):
		t.Error("context of an acked message not cancelled")
	}
	m = receive(t, ch, 15*time.Second)
	if m.UUID != second.UUID {
		t.Fatalf("after ack got %s, want the second message", m.UUID)
	}
	m.Ack()
}

func TestSubscriberClose(t *testing.T) {
	topic := newTopic(t, 2)
	sub := mustSub(t, testSubConfig("close-"+watermill.NewShortUUID()), nil)
	ch1, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let both join
	done := make(chan struct{})
	go func() {
		_ = sub.Close()
		_ = sub.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, ch := range []<-chan *message.Message{ch1, ch2} {
		if _, ok := <-ch; ok {
			t.Fatal("message after Close")
		}
	}
	if _, err := sub.Subscribe(context.Background(), topic); !errors.Is(err, ErrSubscriberClosed) {
		t.Fatalf("Subscribe after Close = %v", err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribeContextEnds(t *testing.T) {
	topic := newTopic(t, 1)
	sub := mustSub(t, testSubConfig("ctx-"+watermill.NewShortUUID()), nil)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	pub := mustPub(t, nil)
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
		t.Fatal(err)
	}
	m := receive(t, ch, 15*time.Second)
	cancel()
	select {
	case <-m.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("message context not cancelled when the subscription ended")
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("message after the subscription's context ended")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("channel not closed after the subscription's context ended")
	}
}

// TestCommitSurvivesShutdown acks and closes at once: the only commit that
// can record the ack is the one made while shutting down.
func TestCommitSurvivesShutdown(t *testing.T) {
	topic := newTopic(t, 1)
	group := "shutdown-" + watermill.NewShortUUID()
	pub := mustPub(t, nil)
	var ids []string
	for i := 0; i < 3; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		ids = append(ids, m.UUID)
		if err := pub.Publish(topic, m); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testSubConfig(group)
	cfg.CommitInterval = time.Hour // no periodic commit can happen
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, ch, 15*time.Second)
	if m.UUID != ids[0] {
		t.Fatalf("first message %s, want %s", m.UUID, ids[0])
	}
	m.Ack()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committedOffsets(t, group, topic, 1)[0]; got != 1 {
		t.Fatalf("committed offset after ack+Close = %d, want 1", got)
	}

	sub2 := mustSub(t, cfg, nil)
	ch2, err := sub2.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	m = receive(t, ch2, 15*time.Second)
	if m.UUID != ids[1] {
		t.Fatalf("after restart got %s (offset %s), want the second message", m.UUID, m.Metadata.Get(OffsetMetadata))
	}
	// Not acked: Close must not commit it.
	if err := sub2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committedOffsets(t, group, topic, 1)[0]; got != 1 {
		t.Fatalf("committed offset after an unacked Close = %d, want 1", got)
	}
	if m.Context().Err() == nil {
		t.Fatal("context of an unacked message not cancelled by Close")
	}

	// A handler that finishes while Close is under way (a router shutting
	// down) keeps its context until it acks, and its ack is committed.
	sub3, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ch3, err := sub3.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	m = receive(t, ch3, 15*time.Second)
	if m.UUID != ids[1] {
		t.Fatalf("third subscriber got %s, want the second message", m.UUID)
	}
	closed := make(chan struct{})
	go func() { _ = sub3.Close(); close(closed) }()
	time.Sleep(200 * time.Millisecond)
	if m.Context().Err() != nil {
		t.Fatal("context cancelled before the grace ended")
	}
	m.Ack()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the ack")
	}
	if got := committedOffsets(t, group, topic, 1)[0]; got != 2 {
		t.Fatalf("committed offset after an ack during Close = %d, want 2", got)
	}
}

func TestSynchronousCommit(t *testing.T) {
	topic := newTopic(t, 1)
	group := "sync-" + watermill.NewShortUUID()
	pub := mustPub(t, nil)
	for i := 0; i < 5; i++ {
		if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testSubConfig(group)
	cfg.CommitInterval = CommitSynchronously
	sub := mustSub(t, cfg, nil)
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		m := receive(t, ch, 15*time.Second)
		// The previous ack was committed before this message came.
		if i > 0 {
			if got := committedOffsets(t, group, topic, 1)[0]; got != int64(i) {
				t.Fatalf("before delivering offset %d the committed offset is %d", i, got)
			}
		}
		m.Ack()
	}
}

func TestSubscribeBeforeTopicExists(t *testing.T) {
	topic := "late-" + watermill.NewShortUUID()
	cfg := testSubConfig("late-" + watermill.NewShortUUID())
	cfg.PartitionWatchInterval = 200 * time.Millisecond
	sub := mustSub(t, cfg, nil)
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := sub.SubscribeInitialize(topic); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(watermill.NewUUID(), []byte("x"))
	if err := mustPub(t, nil).Publish(topic, m); err != nil {
		t.Fatal(err)
	}
	got := receive(t, ch, 20*time.Second)
	if got.UUID != m.UUID {
		t.Fatalf("got %s", got.UUID)
	}
	got.Ack()
}

type delivery struct {
	consumer  string
	uuid      string
	partition int
	offset    int64
}

// TestRebalanceMidStream runs two members of one group over a 4-partition
// topic: B joins while A is consuming, then A leaves while B is consuming.
// No message may be lost; no partition may be delivered by A after B took
// it over (stale fetches, #1398); the committed offsets, sampled all along,
// may never move backwards (#1308, out-of-order commits); and a consumer
// started afterwards begins after the last acknowledged offset.
func TestRebalanceMidStream(t *testing.T) {
	const partitions, total = 4, 2000
	topic := newTopic(t, partitions)
	group := "rebalance-" + watermill.NewShortUUID()
	logs := &captureLogger{}
	pub := mustPub(t, logs)

	var published []*message.Message
	for i := 0; i < total; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(secretPayload+strconv.Itoa(i)))
		m.Metadata.Set("partition_key", "patient-"+strconv.Itoa(i%37))
		m.Metadata.Set("nhs_number", secretHeader)
		published = append(published, m)
	}
	if err := pub.Publish(topic, published...); err != nil {
		t.Fatal(err)
	}
	_, ends, err := broker.Offsets(ctxT(t, 10*time.Second), brokers, topic)
	if err != nil {
		t.Fatal(err)
	}

	// Sample the committed offsets continuously.
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	var samples int
	go func() {
		defer close(pollDone)
		last := map[int]int64{}
		for {
			select {
			case <-stopPoll:
				return
			case <-time.After(10 * time.Millisecond):
			}
			got := committedOffsets(t, group, topic, partitions)
			samples++
			for p, off := range got {
				prev, seen := last[p]
				if seen && off < prev {
					t.Errorf("partition %d: committed offset went back from %d to %d", p, prev, off)
				}
				if !seen || off > prev {
					last[p] = off
				}
			}
		}
	}()

	var (
		mu         sync.Mutex
		deliveries []delivery
		unique     = map[string]bool{}
		allDone    = make(chan struct{})
		closedOnce sync.Once
	)
	consume := func(name string, ch <-chan *message.Message) {
		for m := range ch {
			p, _ := strconv.Atoi(m.Metadata.Get(PartitionMetadata))
			o, _ := strconv.ParseInt(m.Metadata.Get(OffsetMetadata), 10, 64)
			mu.Lock()
			deliveries = append(deliveries, delivery{name, m.UUID, p, o})
			unique[m.UUID] = true
			n := len(unique)
			mu.Unlock()
			time.Sleep(time.Millisecond) // a handler doing some work
			m.Ack()
			if n == total {
				closedOnce.Do(func() { close(allDone) })
			}
		}
	}
	uniqueCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(unique)
	}
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for uniqueCount() < n {
			if time.Now().After(deadline) {
				t.Fatalf("stuck at %d of %d messages", uniqueCount(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	cfg := testSubConfig(group)
	subA := mustSub(t, cfg, logs)
	chA, err := subA.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	doneA := make(chan struct{})
	go func() { consume("A", chA); close(doneA) }()

	waitFor(300)
	subB := mustSub(t, cfg, logs)
	chB, err := subB.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	doneB := make(chan struct{})
	go func() { consume("B", chB); close(doneB) }()

	// Wait until B has consumed something, then take A away.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		bGot := 0
		for _, d := range deliveries {
			if d.consumer == "B" {
				bGot++
			}
		}
		mu.Unlock()
		if bGot >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B never received anything")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if uniqueCount() >= total {
		t.Fatal("the whole stream was consumed before A left: no rebalance mid-stream")
	}
	if err := subA.Close(); err != nil {
		t.Fatal(err)
	}
	<-doneA

	select {
	case <-allDone:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d of %d messages received", uniqueCount(), total)
	}
	if err := subB.Close(); err != nil {
		t.Fatal(err)
	}
	<-doneB
	close(stopPoll)
	<-pollDone

	// Ownership of each partition moved at most once (A to B): a member
	// never delivered a partition after another member started on it.
	mu.Lock()
	switches := map[int]int{}
	lastOwner := map[int]string{}
	dups := len(deliveries) - len(unique)
	for _, d := range deliveries {
		if o, ok := lastOwner[d.partition]; ok && o != d.consumer {
			switches[d.partition]++
		}
		lastOwner[d.partition] = d.consumer
	}
	mu.Unlock()
	moved := 0
	for p, n := range switches {
		if n > 1 {
			t.Errorf("partition %d changed hands %d times: deliveries interleaved between members", p, n)
		}
		moved += n
	}
	if moved == 0 {
		t.Error("no partition moved between members")
	}
	t.Logf("%d deliveries for %d messages (%d redelivered), %d offset samples, %d partition moves", len(deliveries), total, dups, samples, moved)

	// Everything acknowledged is committed.
	got := committedOffsets(t, group, topic, partitions)
	for p := 0; p < partitions; p++ {
		if got[p] != ends[p] {
			t.Errorf("partition %d committed %d, end offset %d", p, got[p], ends[p])
		}
	}

	// A new member starts after the last acknowledged offset: the first
	// message it sees is one published now.
	subC := mustSub(t, cfg, nil)
	chC, err := subC.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	fresh := message.NewMessage(watermill.NewUUID(), []byte("fresh"))
	fresh.Metadata.Set("partition_key", "patient-1")
	if err := pub.Publish(topic, fresh); err != nil {
		t.Fatal(err)
	}
	m := receive(t, chC, 20*time.Second)
	if m.UUID != fresh.UUID {
		t.Fatalf("restarted consumer got %s at offset %s/%s, want only the fresh message", m.UUID, m.Metadata.Get(PartitionMetadata), m.Metadata.Get(OffsetMetadata))
	}
	m.Ack()
	logs.assertClean(t)
}

// TestReconnectBrokerRestart restarts the broker twice while publishing and
// consuming: publishes keep retrying, the subscription survives (fetch and
// group errors are logged and retried), and every acknowledged publish is
// delivered. It is the suite's TestReconnect without its data race.
func TestReconnectBrokerRestart(t *testing.T) {
	const total, publishers = 3000, 20
	topic := newTopic(t, 2)
	logs := &captureLogger{}
	pub := mustPub(t, logs)
	sub := mustSub(t, testSubConfig("reconnect-"+watermill.NewShortUUID()), logs)
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		published = map[string]bool{}
		received  = map[string]bool{}
	)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for m := range ch {
			mu.Lock()
			received[m.UUID] = true
			mu.Unlock()
			m.Ack()
		}
	}()

	work := make(chan int)
	var pubWG sync.WaitGroup
	for i := 0; i < publishers; i++ {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for i := range work {
				m := secretMessage()
				m.Metadata.Set("partition_key", strconv.Itoa(i%10))
				for {
					if err := pub.Publish(topic, m); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				mu.Lock()
				published[m.UUID] = true
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < total; i++ {
		if i == total/3 || i == total/2 {
			if err := restartBroker(); err != nil {
				t.Fatal(err)
			}
		}
		work <- i
	}
	close(work)
	pubWG.Wait()

	deadline := time.Now().Add(90 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for id := range published {
			if !received[id] {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d published messages never received", missing, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-recvDone:
		t.Fatal("subscription ended during the broker restarts")
	default:
	}
	if len(published) != total {
		t.Fatalf("published %d, want %d", len(published), total)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	<-recvDone
	t.Logf("errors logged and retried: %d", logs.count("ERROR"))
	logs.assertClean(t)
}

// TestFetchErrorsAreRetried makes the broker fail fetches (a separate,
// in-memory kfake cluster whose Fetch responses carry KAFKA_STORAGE_ERROR
// for a while): kafka-go surfaces the errors, the subscription logs them
// (kind only), backs off and retries, stays open, and delivers once fetches
// work again.
func TestFetchErrorsAreRetried(t *testing.T) {
	const topic = "faulty"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addrs := c.ListenAddrs()

	var failing atomic.Bool
	var injected atomic.Int32
	failing.Store(true)
	c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !failing.Load() {
			return nil, nil, false
		}
		req := kreq.(*kmsg.FetchRequest)
		resp := req.ResponseKind().(*kmsg.FetchResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewFetchResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewFetchResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.KafkaStorageError.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		injected.Add(1)
		return resp, nil, true
	})

	logs := &captureLogger{}
	cfg := testSubConfig("fetcherr")
	cfg.Brokers = addrs
	sub, err := NewSubscriber(cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, err := NewPublisher(PublisherConfig{Brokers: addrs}, logs)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	m := secretMessage()
	if err := pub.Publish(topic, m); err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(20 * time.Second)
	for logs.count("Kafka fetch failed, retrying") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("fetch failures not logged (%d injected); logs: %v", injected.Load(), logs.lines)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case got := <-ch:
		t.Fatalf("delivered %v while every fetch fails", got)
	default:
	}
	failing.Store(false)
	got := receive(t, ch, 20*time.Second)
	if got.UUID != m.UUID {
		t.Fatalf("got %s, want %s", got.UUID, m.UUID)
	}
	got.Ack()
	logs.assertClean(t)
	for _, l := range logs.lines {
		if strings.Contains(l, "fetch failed") {
			t.Logf("%d fetches failed; logged as: %s", injected.Load(), l)
			break
		}
	}
}

// TestPublishToNewTopic publishes to a topic created by another client after
// the publisher's metadata cache was filled: kafka-go's cache does not know
// it yet, and Publish must wait for it instead of failing.
func TestPublishToNewTopic(t *testing.T) {
	pub := mustPub(t, nil)
	warm := newTopic(t, 1)
	if err := pub.Publish(warm, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		fresh := newTopic(t, 1)
		start := time.Now()
		if err := pub.Publish(fresh, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatalf("publish to a topic just created: %v", err)
		}
		t.Logf("publish to a new topic took %v", time.Since(start))
	}
}

// TestPartitionsAdded grows a topic from 1 to 3 partitions under a running
// subscription: the group notices, rebalances, and consumes the new
// partitions too.
func TestPartitionsAdded(t *testing.T) {
	topic := newTopic(t, 1)
	cfg := testSubConfig("grow-" + watermill.NewShortUUID())
	cfg.PartitionWatchInterval = 200 * time.Millisecond
	sub := mustSub(t, cfg, nil)
	pub := mustPub(t, nil)
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("before"))); err != nil {
		t.Fatal(err)
	}
	receive(t, ch, 15*time.Second).Ack()

	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	admin := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	resp, err := admin.CreatePartitions(ctxT(t, 10*time.Second), &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: topic, Count: 3}},
	})
	if err != nil || resp.Errors[topic] != nil {
		t.Fatalf("CreatePartitions: %v %v", err, resp)
	}
	// Publish keys spread over partitions until messages from all three
	// partitions have been consumed (the publisher learns of the new
	// partitions within its 1 s metadata refresh).
	partitions := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; len(partitions) < 3; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s consumed only from partitions %v", partitions)
		}
		m := message.NewMessage(watermill.NewUUID(), []byte("after"))
		m.Metadata.Set("partition_key", "k"+strconv.Itoa(i))
		if err := pub.Publish(topic, m); err != nil {
			t.Fatal(err)
		}
		for {
			got := receive(t, ch, 20*time.Second)
			got.Ack()
			if got.UUID == m.UUID {
				partitions[got.Metadata.Get(PartitionMetadata)] = true
				break
			}
		}
	}
	if len(partitions) != 3 {
		t.Fatalf("consumed from partitions %v, want 0, 1 and 2", partitions)
	}
}

// TestPublishTopics: one produce to several topics, every record keyed as
// Publish keys it, every one acknowledged before the call returns.
func TestPublishTopics(t *testing.T) {
	a, b := newTopic(t, 2), newTopic(t, 3)
	pub := mustPub(t, nil)
	byTopic := map[string][]*message.Message{}
	for i := 0; i < 10; i++ {
		for _, topic := range []string{a, b} {
			m := message.NewMessage(watermill.NewUUID(), []byte(topic+strconv.Itoa(i)))
			m.Metadata.Set("partition_key", "patient-"+strconv.Itoa(i))
			byTopic[topic] = append(byTopic[topic], m)
		}
	}
	byTopic["unused"] = nil
	delete(byTopic, "unused")
	if err := pub.PublishTopics(byTopic); err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]int{a: 10, b: 10} {
		_, ends, err := broker.Offsets(ctxT(t, 10*time.Second), brokers, topic)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, n := range ends {
			got += int(n)
		}
		if got != want {
			t.Errorf("PublishTopics: %s holds %d records, want %d", topic, got, want)
		}
	}
	if err := pub.PublishTopics(map[string][]*message.Message{"": {message.NewMessage("x", nil)}}); err == nil {
		t.Errorf("PublishTopics with an empty topic name succeeded")
	}
	if err := pub.PublishTopics(nil); err != nil {
		t.Errorf("PublishTopics(nil): %v", err)
	}
}

// TestPublishReportsWhichRecordsFailed pins issue 14's second defect at its
// source: when the broker writes some records of a publish and refuses
// others (seen with a full disk), the PublishError names exactly the
// records that were not acknowledged, and reading the topic back finds the
// others, so that the ingest can answer each event by its own record. The
// broker (an in-memory kfake) refuses every produce to partition 1.
func TestPublishReportsWhichRecordsFailed(t *testing.T) {
	const topic = "partial"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.ProduceRequest)
		refuse := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				refuse = refuse || rp.Partition == 1
			}
		}
		if !refuse {
			return nil, nil, false // the cluster writes it
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.InvalidRecord.Code // not retriable
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	pub, err := NewPublisher(PublisherConfig{Brokers: c.ListenAddrs()}, &captureLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	// Keys that the publisher's partitioner sends to partition 0 or 1.
	partitionOf := func(key string) int {
		return (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(key)}, 0, 1)
	}
	var msgs []*message.Message
	var want []int // positions that land on partition 1
	perPartition := map[int]int{}
	for i := 0; len(msgs) < 6; i++ {
		key := fmt.Sprintf("patient-%d", i)
		p := partitionOf(key)
		if perPartition[p] == 3 {
			continue
		}
		perPartition[p]++
		m := message.NewMessage(watermill.NewUUID(), []byte("record"))
		m.Metadata.Set(DefaultKeyMetadata, key)
		if p == 1 {
			want = append(want, len(msgs))
		}
		msgs = append(msgs, m)
	}
	err = pub.Publish(topic, msgs...)
	var pe *PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish with partition 1 refusing: got %v, want a *PublishError", err)
	}
	if fmt.Sprint(pe.Failed) != fmt.Sprint(want) {
		t.Errorf("Failed:\n\tgot  %v\n\twant %v (the records for partition 1)", pe.Failed, want)
	}
	for i := range msgs {
		if pe.FailedAt(i) != slices.Contains(want, i) {
			t.Errorf("FailedAt(%d) = %v", i, pe.FailedAt(i))
		}
	}
	// Read the topic back: partition 0 holds the others, partition 1 nothing.
	for p, n := range map[int]int{0: len(msgs) - len(want), 1: 0} {
		conn, err := kafka.DialLeader(context.Background(), "tcp", c.ListenAddrs()[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil || last != int64(n) {
			t.Errorf("partition %d holds %d records (%v), want %d", p, last, err, n)
		}
	}
}

// TestPublishIsBoundedByWriteTimeout: with a broker that takes produce
// requests and never answers them, Publish gives up after WriteTimeout and
// says which records (all) were not acknowledged, instead of hanging
// (issue 14, defect 6: publishing hung past 15 s while the broker was away).
func TestPublishIsBoundedByWriteTimeout(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return nil, nil, true // never answered
	})
	pub, err := NewPublisher(PublisherConfig{Brokers: c.ListenAddrs(), WriteTimeout: 300 * time.Millisecond}, &captureLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	done := make(chan error, 1)
	go func() { done <- pub.Publish("gone", secretMessage(), secretMessage()) }()
	select {
	case err := <-done:
		var pe *PublishError
		if !errors.As(err, &pe) || len(pe.Failed) != 2 {
			t.Errorf("Publish with the broker gone: got %v, want a PublishError for both records", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Publish with the broker gone did not return: WriteTimeout does not bound it")
	}
}

// TestPublishEndsByTheMessagesDeadline pins the audit's gap in issue 14
// ("a publish waits at most a configured time"): Publish took its own
// WriteTimeout from when it was called, whatever the caller had left. A
// message context's deadline now bounds it: with a WriteTimeout of an hour
// and a broker that never answers, Publish fails once the messages'
// deadline has passed.
func TestPublishEndsByTheMessagesDeadline(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "slow"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return nil, nil, true // never answered
	})
	pub, err := NewPublisher(PublisherConfig{Brokers: c.ListenAddrs(), WriteTimeout: time.Hour}, &captureLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	a, b := secretMessage(), secretMessage()
	b.SetContext(ctx) // one message's deadline bounds the whole publish
	done := make(chan error, 1)
	go func() { done <- pub.Publish("slow", a, b) }()
	select {
	case err := <-done:
		var pe *PublishError
		if !errors.As(err, &pe) || len(pe.Failed) != 2 {
			t.Errorf("Publish past the messages' deadline: got %v, want a PublishError for both records", err)
		}
	case <-time.After(30 * time.Second): // far above the 300 ms deadline, far below the hour
		t.Fatal("Publish did not return by the messages' deadline")
	}
}

// TestConsumerErrorsNameTheirBrokers pins the audit's gap in issue 14
// ("Kafka errors are logged with their class, broker and topic"): the
// subscriber's errors named the class and topic but not the broker, as the
// publisher's do. A failing fetch is now logged with all three.
func TestConsumerErrorsNameTheirBrokers(t *testing.T) {
	const topic = "faulty-brokers"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addrs := c.ListenAddrs()
	c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.FetchRequest)
		resp := req.ResponseKind().(*kmsg.FetchResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewFetchResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewFetchResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.KafkaStorageError.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	core, logs := observer.New(zapcore.DebugLevel)
	zl := zap.New(core)
	cfg := testSubConfig("fetcherr-brokers")
	cfg.Brokers = addrs
	sub, err := NewSubscriber(cfg, NewLogger(zl, false))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := sub.Subscribe(context.Background(), topic); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for logs.FilterMessage("Kafka fetch failed, retrying").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no fetch failure logged")
		}
		time.Sleep(20 * time.Millisecond) // polling the observed logs, not waiting for time to pass
	}
	got := logs.FilterMessage("Kafka fetch failed, retrying").All()[0].ContextMap()
	want := map[string]any{"brokers": strings.Join(addrs, ","), "topic": topic}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("fetch failure field %q: got %v, want %v (all fields %v)", k, got[k], v, got)
		}
	}
	if e, _ := got["error"].(string); !strings.HasPrefix(e, "kafka: ") {
		t.Errorf("fetch failure error: got %q, want its Kafka class (\"kafka: ...\")", got["error"])
	}
}
