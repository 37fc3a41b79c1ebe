// Package ktable holds a compacted Kafka topic in memory: every hub process
// reads every partition from the beginning (no consumer group), hands each
// record to its owner's Apply in order, and follows the topic from then on.
// The consent store (carehub.consent) and the patient index
// (carehub.patients) are built on it.
//
// # Freshness
//
// Sync returns once every record that was in the topic when Sync was
// called has been applied: a write acknowledged to anyone, by any process,
// before the call is visible when it returns. Sync calls share end-offset
// lookups: a call joins the next lookup to start (one starts at once when
// none is running, else as soon as the running one ends), so each call's
// lookup starts after the call, and under load the cost is about one lookup
// per round trip however many callers wait. A topic of one partition costs
// one request per lookup (kafka-go sends one per partition).
//
// Until the initial load is complete, Sync fails with ErrNotLoaded: callers
// fail closed.
//
// # Concurrency
//
// Apply is called from one goroutine per partition, in offset order within
// a partition; the owner guards its own state. A record counts as applied
// only after Apply returns, so whatever Apply changed is visible to a
// caller once Sync returns.
//
// Following, loading and the freshness barrier are package follow's; a
// Table adds the writer and the owner's Apply.
package ktable

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/carehub/carehub/hub/follow"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// ErrNotLoaded is returned before the initial load completes.
var ErrNotLoaded = follow.ErrNotLoaded

// Config says which topic to follow and who applies its records.
type Config struct {
	Brokers []string
	Topic   string
	Log     *zap.Logger
	// Apply is called for every record, in order per partition. A nil
	// value is a tombstone.
	Apply func(m kafka.Message)
}

// Table is one followed topic.
type Table struct {
	cfg    Config
	f      *follow.Follower
	writer *kafka.Writer
}

// Open starts following the topic and returns at once; WaitLoaded tells
// when the initial load is complete.
func Open(cfg Config) (*Table, error) {
	if len(cfg.Brokers) == 0 || cfg.Topic == "" || cfg.Log == nil || cfg.Apply == nil {
		return nil, errors.New("ktable: brokers, topic, logger and Apply are required")
	}
	return &Table{
		cfg: cfg,
		f:   follow.Start(cfg.Brokers, cfg.Topic, func(_ int, m kafka.Message) { cfg.Apply(m) }, cfg.Log),
		writer: &kafka.Writer{
			Addr: kafka.TCP(cfg.Brokers...), Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 5,
		},
	}, nil
}

// Topic is the followed topic.
func (t *Table) Topic() string { return t.cfg.Topic }

// WaitLoaded blocks until the initial load completes or ctx ends.
func (t *Table) WaitLoaded(ctx context.Context) error { return t.f.WaitLoaded(ctx) }

// Loaded reports whether the initial load is complete.
func (t *Table) Loaded() bool { return t.f.Loaded() }

// Sync returns once every record in the topic when Sync was called is
// applied; before the initial load completes it fails with ErrNotLoaded.
func (t *Table) Sync(ctx context.Context) error { return t.f.Sync(ctx) }

// Write produces msgs, each to its Topic (the table's topic when empty),
// keyed by its Key with the murmur2 partitioner, acknowledged by every
// in-sync replica. Write does not wait for the records to be applied: call
// Sync for that.
func (t *Table) Write(ctx context.Context, msgs ...kafka.Message) error {
	for i := range msgs {
		if msgs[i].Topic == "" {
			msgs[i].Topic = t.cfg.Topic
		}
	}
	if err := t.writer.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("writing to %s: %w", t.cfg.Topic, err)
	}
	return nil
}

// Close stops following and closes the writer.
func (t *Table) Close() error {
	t.f.Close()
	return t.writer.Close()
}
