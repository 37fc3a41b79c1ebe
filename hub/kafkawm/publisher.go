package kafkawm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/segmentio/kafka-go"
)

// DefaultBatchTimeout is the default PublisherConfig.BatchTimeout.
const DefaultBatchTimeout = 2 * time.Millisecond

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("kafkawm: publisher closed")

// PublisherConfig configures NewPublisher. Every write requires
// acknowledgement from all in-sync replicas (acks=all); that is not
// configurable.
type PublisherConfig struct {
	// Brokers are bootstrap host:port addresses. Required.
	Brokers []string

	// BatchTimeout is how long the writer waits to fill a batch before
	// sending it. Default 2 ms (kafka-go's own default, 1 s, would delay
	// every lone Publish by a second).
	BatchTimeout time.Duration

	// KeyMetadata names the metadata field whose value becomes the record
	// key (and is then not written as a header). Default "partition_key".
	KeyMetadata string

	// WriteTimeout bounds one Publish: past it, what is not acknowledged is
	// reported failed (PublishError), so that a caller answering a sender
	// can say "not durable, retry" instead of hanging while the broker is
	// away. Default 10 s.
	WriteTimeout time.Duration
}

// DefaultWriteTimeout is the default PublisherConfig.WriteTimeout.
const DefaultWriteTimeout = 10 * time.Second

const (
	// publishAttempts bounds the writer's own retries of one batch.
	publishAttempts = 3
	// closeTimeout bounds Close's wait for batches still in flight: what is
	// not acknowledged by then was never answered as durable.
	closeTimeout = 5 * time.Second
)

// Publisher publishes watermill messages to Kafka. It is safe for concurrent
// use.
type Publisher struct {
	w       *kafka.Writer
	tr      *kafka.Transport
	keyMeta string
	logger  watermill.LoggerAdapter
	timeout time.Duration
	brokers string // for logs

	mu     sync.RWMutex // held for reading by Publish, for writing by Close
	closed bool
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher validates cfg and returns a Publisher. It does not connect:
// the first Publish does.
func NewPublisher(cfg PublisherConfig, logger watermill.LoggerAdapter) (*Publisher, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafkawm: PublisherConfig.Brokers is empty")
	}
	for _, b := range cfg.Brokers {
		if b == "" {
			return nil, errors.New("kafkawm: PublisherConfig.Brokers has an empty address")
		}
	}
	if cfg.BatchTimeout < 0 {
		return nil, errors.New("kafkawm: PublisherConfig.BatchTimeout is negative")
	}
	if cfg.BatchTimeout == 0 {
		cfg.BatchTimeout = DefaultBatchTimeout
	}
	if cfg.KeyMetadata == "" {
		cfg.KeyMetadata = DefaultKeyMetadata
	}
	if cfg.WriteTimeout < 0 {
		return nil, errors.New("kafkawm: PublisherConfig.WriteTimeout is negative")
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	// A short metadata TTL: the writer learns of new topics and partitions
	// from this cache only.
	tr := &kafka.Transport{MetadataTTL: metadataTTL}
	w := &kafka.Writer{
		Addr: kafka.TCP(cfg.Brokers...),
		// Topic is unset: each record names its own.
		// Murmur2 is the Java client's default partitioner: a key lands on
		// the same partition whichever client produced it.
		Balancer:               kafka.Murmur2Balancer{},
		BatchTimeout:           cfg.BatchTimeout,
		RequiredAcks:           kafka.RequireAll,
		AllowAutoTopicCreation: false,
		Async:                  false,
		Transport:              tr,
		// A batch in flight when Publish gives up goes on in the writer's
		// background: bound it too, so that Close does not wait for ten
		// attempts of ten seconds each against a broker that is away.
		WriteTimeout: cfg.WriteTimeout,
		ReadTimeout:  cfg.WriteTimeout,
		MaxAttempts:  publishAttempts,
	}
	return &Publisher{w: w, tr: tr, keyMeta: cfg.KeyMetadata, logger: logger, timeout: cfg.WriteTimeout,
		brokers: strings.Join(cfg.Brokers, ",")}, nil
}

// Publish writes msgs to topic and returns nil only once the broker has
// acknowledged all of them (acks=all). On error, any subset of msgs may have
// been written; publishing them again is safe for at-least-once consumers.
// Errors name the topic and counts, never message contents.
//
// A topic unknown to the publisher is waited for up to 3 s (kafka-go serves
// partition lookups from a metadata cache, refreshed every second here, so a
// topic another client has just created is not known at once); a topic that
// does not exist fails after that wait. Topics are never created.
//
// A publish lasts at most the WriteTimeout, or until the earliest deadline
// of the messages' contexts (message.SetContext) if that comes first.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if topic == "" {
		return errors.New("kafkawm: publish: empty topic")
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrPublisherClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	pending := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		pending[i] = toKafka(topic, p.keyMeta, m)
	}
	return p.write(deadlineOf(msgs), pending, topic)
}

// PublishTopics writes messages to several topics in one produce and
// returns nil only once the broker has acknowledged all of them (acks=all).
// A handler that writes to several topics for one input (an outbox copy per
// recipient and an audit record per decision) waits for one round trip
// instead of one per topic. Errors are as for Publish.
func (p *Publisher) PublishTopics(byTopic map[string][]*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrPublisherClosed
	}
	var names []string
	for topic, msgs := range byTopic {
		if topic == "" {
			return errors.New("kafkawm: publish: empty topic")
		}
		if len(msgs) > 0 {
			names = append(names, topic)
		}
	}
	sort.Strings(names)
	var pending []kafka.Message
	var all []*message.Message
	for _, topic := range names {
		for _, m := range byTopic[topic] {
			pending = append(pending, toKafka(topic, p.keyMeta, m))
			all = append(all, m)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	return p.write(deadlineOf(all), pending, strings.Join(names, ","))
}

// deadlineOf returns the earliest deadline of the messages' contexts (zero
// if none has one). A caller that has a deadline of its own (an ingest
// bound by kafka.publishTimeout from the moment the request arrived) sets it
// on the messages, and Publish gives up by then even if its WriteTimeout
// would allow longer. Cancellation of those contexts is not followed: a
// publish under way is finished or timed out, never dropped half-way
// because a client went away.
func deadlineOf(msgs []*message.Message) time.Time {
	var earliest time.Time
	for _, m := range msgs {
		if d, ok := m.Context().Deadline(); ok && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	return earliest
}

// write produces pending, waiting out an unknown topic as Publish
// describes, for at most the publisher's WriteTimeout, and never past by
// (when it is not zero: the messages' own deadline). topic names the
// topics for logs and errors.
//
// p.mu must be held for reading.
func (p *Publisher) write(by time.Time, pending []kafka.Message, topic string) error {
	end := time.Now().Add(p.timeout)
	if !by.IsZero() && by.Before(end) {
		end = by
	}
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	total := len(pending)
	index := make([]int, len(pending)) // position of each pending record in the caller's list
	for i := range index {
		index[i] = i
	}
	deadline := time.Now().Add(unknownTopicWait)
	for {
		err := p.w.WriteMessages(ctx, pending...)
		if err == nil {
			return nil
		}
		failed, causes := failures(index, err)
		if !onlyUnknownTopic(causes) || time.Now().After(deadline) || ctx.Err() != nil {
			pe := &PublishError{Topic: topic, Failed: failed, Total: total, Brokers: p.brokers, causes: dedupe(causes)}
			for _, c := range pe.causes {
				pe.Causes = append(pe.Causes, errorKind(c))
			}
			p.logger.Error("Kafka publish failed", pe, watermill.LogFields{
				"topic":    topic,
				"failed":   len(failed),
				"messages": total,
				"brokers":  p.brokers,
			})
			return pe
		}
		// The metadata cache has not seen the topic (yet): retry the
		// messages that failed once it has refreshed.
		retry := make([]kafka.Message, len(failed))
		for i, f := range failed {
			retry[i] = pending[indexOf(index, f)]
		}
		pending, index = retry, failed
		time.Sleep(unknownTopicRetry)
	}
}

func indexOf(index []int, v int) int {
	for i, x := range index {
		if x == v {
			return i
		}
	}
	return -1
}

// PublishError reports a publish of which some records, or all, were not
// acknowledged: those at Failed (positions in the call's list of messages;
// for PublishTopics, in the order the topics are sorted by name, then as
// given) may or may not be in the topic; the others are. Its text names the
// topics, counts, causes and brokers, never a record, and is safe to log
// (logging.Safe).
type PublishError struct {
	Topic   string
	Failed  []int
	Total   int
	Causes  []string // Kafka error names or error kinds
	Brokers string

	causes []error // Kafka errors (kafka.Error values) or sentinels, none carrying a record
}

// Unwrap returns the causes, so that errors.Is finds a Kafka error code
// (kafka.MessageSizeTooLarge, kafka.UnknownTopicOrPartition, ...).
func (e *PublishError) Unwrap() []error { return e.causes }

func (e *PublishError) Error() string {
	return fmt.Sprintf("kafka: publishing to %s: %d of %d records not acknowledged (%s) by %s",
		e.Topic, len(e.Failed), e.Total, strings.Join(e.Causes, "; "), e.Brokers)
}

// SafeToLog marks the text safe to log (internal/logging.Safe).
func (*PublishError) SafeToLog() {}

// FailedAt reports whether the record at position i is among those not
// acknowledged.
func (e *PublishError) FailedAt(i int) bool {
	for _, f := range e.Failed {
		if f == i {
			return true
		}
	}
	return false
}

const (
	// metadataTTL is how often the publisher refreshes its metadata cache.
	metadataTTL = time.Second
	// unknownTopicWait bounds how long Publish waits for a topic to appear
	// in the metadata cache.
	unknownTopicWait = 3 * metadataTTL
	// unknownTopicRetry is the pause between those attempts.
	unknownTopicRetry = 100 * time.Millisecond
)

// failures returns the positions (from index) of the records that err
// reports as not written, and the causes, stripped of anything that can
// carry a record. An error that is not per record fails them all.
func failures(index []int, err error) ([]int, []error) {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(index) {
		var failed []int
		var causes []error
		for i, e := range werrs {
			if e != nil {
				failed = append(failed, index[i])
				causes = append(causes, safeError(e))
			}
		}
		if len(causes) > 0 {
			return failed, causes
		}
	}
	return append([]int(nil), index...), []error{safeError(err)}
}

func onlyUnknownTopic(causes []error) bool {
	for _, c := range causes {
		if !errors.Is(c, kafka.UnknownTopicOrPartition) {
			return false
		}
	}
	return len(causes) > 0
}

func dedupe(errs []error) []error {
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		if k := e.Error(); !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return out
}

// Close waits for publishes in progress, then closes the writer. It is safe
// to call more than once; Publish after Close returns ErrPublisherClosed.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	done := make(chan error, 1)
	go func() { done <- p.w.Close() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(closeTimeout):
		err = errors.New("batches still in flight abandoned (never acknowledged)")
	}
	p.tr.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("kafkawm: close publisher: %w", safeError(err))
	}
	return nil
}
