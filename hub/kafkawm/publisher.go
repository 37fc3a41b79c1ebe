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
}

// Publisher publishes watermill messages to Kafka. It is safe for concurrent
// use.
type Publisher struct {
	w       *kafka.Writer
	tr      *kafka.Transport
	keyMeta string
	logger  watermill.LoggerAdapter

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
	}
	return &Publisher{w: w, tr: tr, keyMeta: cfg.KeyMetadata, logger: logger}, nil
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
	return p.write(pending, topic)
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
	var pending []kafka.Message
	var names []string
	for topic, msgs := range byTopic {
		if topic == "" {
			return errors.New("kafkawm: publish: empty topic")
		}
		if len(msgs) > 0 {
			names = append(names, topic)
		}
		for _, m := range msgs {
			pending = append(pending, toKafka(topic, p.keyMeta, m))
		}
	}
	if len(pending) == 0 {
		return nil
	}
	sort.Strings(names)
	return p.write(pending, strings.Join(names, ","))
}

// write produces pending, waiting out an unknown topic as Publish
// describes. topic names the topics for logs and errors.
//
// p.mu must be held for reading.
func (p *Publisher) write(pending []kafka.Message, topic string) error {
	total := len(pending)
	deadline := time.Now().Add(unknownTopicWait)
	for {
		err := p.w.WriteMessages(context.Background(), pending...)
		if err == nil {
			return nil
		}
		failed, causes := failures(pending, err)
		if !onlyUnknownTopic(causes) || time.Now().After(deadline) {
			p.logger.Error("Kafka publish failed", errors.New(errorKind(causes[0])), watermill.LogFields{
				"topic":    topic,
				"failed":   len(failed),
				"messages": total,
			})
			return fmt.Errorf("kafkawm: publish to topic %q: %d of %d messages not acknowledged: %w",
				topic, len(failed), total, errors.Join(dedupe(causes)...))
		}
		// The metadata cache has not seen the topic (yet): retry the
		// messages that failed once it has refreshed.
		pending = failed
		time.Sleep(unknownTopicRetry)
	}
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

// failures returns the records of pending that err reports as not written,
// and the causes, stripped of anything that can carry a record.
func failures(pending []kafka.Message, err error) ([]kafka.Message, []error) {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(pending) {
		var failed []kafka.Message
		var causes []error
		for i, e := range werrs {
			if e != nil {
				failed = append(failed, pending[i])
				causes = append(causes, safeError(e))
			}
		}
		if len(causes) > 0 {
			return failed, causes
		}
	}
	return pending, []error{safeError(err)}
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
	err := p.w.Close()
	p.tr.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("kafkawm: close publisher: %w", safeError(err))
	}
	return nil
}
