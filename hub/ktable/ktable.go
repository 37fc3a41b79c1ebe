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
// a partition; the owner guards its own state. The table records a record
// as applied only after Apply returns, so whatever Apply changed is visible
// to a caller once Sync returns. mu guards applied, loaded and changed;
// changed is closed and replaced whenever applied advances. fetchMu guards
// the lookup state.
package ktable

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/carehub/carehub/internal/logging"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// ErrNotLoaded is returned before the initial load completes.
var ErrNotLoaded = errors.New("the table is not loaded yet")

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
	writer *kafka.Writer
	client *kafka.Client

	mu      sync.Mutex
	applied map[int]int64 // next offset to apply, per partition
	loaded  bool
	changed chan struct{}

	lookup   func(context.Context) (map[int]int64, error) // lookupEnds; tests replace it
	fetchMu  sync.Mutex
	fetching bool      // a lookup is running
	next     *endFetch // the lookup to start when the running one ends

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// endFetch is one end-offset lookup and everyone waiting for it.
type endFetch struct {
	done chan struct{}
	ends map[int]int64
	err  error
}

// Open starts following the topic and returns at once; WaitLoaded tells
// when the initial load is complete.
func Open(cfg Config) (*Table, error) {
	if len(cfg.Brokers) == 0 || cfg.Topic == "" || cfg.Log == nil || cfg.Apply == nil {
		return nil, errors.New("ktable: brokers, topic, logger and Apply are required")
	}
	t := &Table{
		cfg:     cfg,
		client:  &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second},
		applied: map[int]int64{},
		changed: make(chan struct{}),
		writer: &kafka.Writer{
			Addr: kafka.TCP(cfg.Brokers...), Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 5,
		},
	}
	t.lookup = t.lookupEnds
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Add(1)
	go t.run(t.ctx)
	return t, nil
}

// Topic is the followed topic.
func (t *Table) Topic() string { return t.cfg.Topic }

func (t *Table) run(ctx context.Context) {
	defer t.wg.Done()
	var parts []int
	for ctx.Err() == nil {
		md, err := t.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{t.cfg.Topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			for _, p := range md.Topics[0].Partitions {
				parts = append(parts, p.ID)
			}
			break
		}
		t.cfg.Log.Warn("topic metadata not available yet; retrying", zap.String("topic", t.cfg.Topic), logging.Err(err))
		sleep(ctx, time.Second)
	}
	if ctx.Err() != nil {
		return
	}
	t.mu.Lock()
	for _, p := range parts {
		t.applied[p] = 0
	}
	t.mu.Unlock()
	for _, p := range parts {
		t.wg.Add(1)
		go t.follow(ctx, p)
	}
	for ctx.Err() == nil {
		if err := t.waitApplied(ctx, nil); err == nil {
			break
		}
		sleep(ctx, 100*time.Millisecond)
	}
	t.mu.Lock()
	t.loaded = true
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
	t.cfg.Log.Info("table loaded", zap.String("topic", t.cfg.Topic), zap.Int("partitions", len(parts)))
}

func sleep(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

func (t *Table) follow(ctx context.Context, partition int) {
	defer t.wg.Done()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: t.cfg.Brokers, Topic: t.cfg.Topic, Partition: partition,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond,
		StartOffset: kafka.FirstOffset,
	})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.cfg.Log.Warn("reading a table; retrying", zap.String("topic", t.cfg.Topic), zap.Int("partition", partition), logging.Err(err))
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		t.cfg.Apply(m)
		t.mu.Lock()
		t.applied[partition] = m.Offset + 1
		close(t.changed)
		t.changed = make(chan struct{})
		t.mu.Unlock()
	}
}

// WaitLoaded blocks until the initial load completes or ctx ends.
func (t *Table) WaitLoaded(ctx context.Context) error {
	for {
		t.mu.Lock()
		loaded, ch := t.loaded, t.changed
		t.mu.Unlock()
		if loaded {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Loaded reports whether the initial load is complete.
func (t *Table) Loaded() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loaded
}

// Sync returns once every record in the topic when Sync was called is
// applied.
func (t *Table) Sync(ctx context.Context) error {
	if !t.Loaded() {
		return ErrNotLoaded
	}
	ends, err := t.endOffsets(ctx)
	if err != nil {
		return err
	}
	return t.waitApplied(ctx, ends)
}

// endOffsets returns end offsets from a lookup that started after the call:
// it joins the next lookup, which starts now when none is running, or when
// the running one ends. The lookup runs on the table's context, so one
// caller giving up does not fail the others.
func (t *Table) endOffsets(ctx context.Context) (map[int]int64, error) {
	t.fetchMu.Lock()
	f := t.next
	if f == nil {
		f = &endFetch{done: make(chan struct{})}
		t.next = f
	}
	start := !t.fetching
	if start {
		t.fetching = true
	}
	t.fetchMu.Unlock()
	if start {
		go t.fetchLoop()
	}
	select {
	case <-f.done:
		return f.ends, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetchLoop runs the next lookup until nobody asks for another.
func (t *Table) fetchLoop() {
	for {
		t.fetchMu.Lock()
		f := t.next
		if f == nil {
			t.fetching = false
			t.fetchMu.Unlock()
			return
		}
		t.next = nil
		t.fetchMu.Unlock()
		f.ends, f.err = t.lookup(t.ctx)
		close(f.done)
	}
}

func (t *Table) lookupEnds(ctx context.Context) (map[int]int64, error) {
	t.mu.Lock()
	var reqs []kafka.OffsetRequest
	for p := range t.applied {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	t.mu.Unlock()
	res, err := t.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{t.cfg.Topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("looking up end offsets of %s: %w", t.cfg.Topic, err)
	}
	ends := map[int]int64{}
	for _, p := range res.Topics[t.cfg.Topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("looking up end offsets of %s: %w", t.cfg.Topic, p.Error)
		}
		ends[p.Partition] = p.LastOffset
	}
	return ends, nil
}

// waitApplied waits until applied reaches ends (looked up now when nil).
func (t *Table) waitApplied(ctx context.Context, ends map[int]int64) error {
	if ends == nil {
		var err error
		if ends, err = t.lookupEnds(ctx); err != nil {
			return err
		}
	}
	for {
		t.mu.Lock()
		behind := false
		for p, end := range ends {
			if t.applied[p] < end {
				behind = true
				break
			}
		}
		ch := t.changed
		t.mu.Unlock()
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

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
	t.cancel()
	t.wg.Wait()
	return t.writer.Close()
}
