// Package follow reads a Kafka topic that every hub process holds in memory
// (a table kept as a topic: consent directives, accepted event identities),
// from its first record, and keeps following it, with a freshness barrier.
//
// Usage:
//
//	f := follow.Start(brokers, topic, apply, log) // apply(partition, record) for every record, in order
//	err := f.WaitLoaded(ctx)                      // every record there was at the start is applied
//	err = f.Sync(ctx)                             // every record there was at the call is applied
//	f.Close()
//
// Every partition is read by its own goroutine, from the first offset, with
// no consumer group: each process applies every record. apply is called for
// one partition at a time, in offset order; it must not block for long.
//
// Freshness: Sync returns once every record that was in the topic when Sync
// was called has been applied. A writer that waits for its record's
// acknowledgement and then answers its caller therefore knows that any Sync
// that starts afterwards, in this process or any other, sees the record.
// Sync calls share end-offset lookups: a call joins the next lookup to start
// (at once when none is running, else as soon as the running one ends), so
// each call's lookup starts after the call, and under load the cost is about
// one lookup per round trip however many callers wait. A lookup is one
// request per partition (kafka-go's ListOffsets): give such topics one
// partition.
//
// Until the initial load is complete, Sync fails with ErrNotLoaded.
//
// hub/ktable builds a table with a writer on it (the consent store, the
// patient index); hub/dedup follows carehub.accepted with it directly.
package follow

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

// ErrNotLoaded is returned by Sync before the initial load completes.
var ErrNotLoaded = errors.New("follow: the topic is not loaded yet")

// Follower follows one topic.
//
// Concurrency: mu guards applied and loaded; changed is closed and replaced
// (under mu) whenever applied advances or loaded is set, to wake waiters.
// fetchMu guards fetching and next.
type Follower struct {
	brokers []string
	topic   string
	apply   func(partition int, m kafka.Message)
	log     *zap.Logger
	client  *kafka.Client

	mu      sync.Mutex
	applied map[int]int64 // next offset to apply, per partition
	loaded  bool
	changed chan struct{}

	lookup   func(context.Context) (map[int]int64, error) // lookupEnds; tests replace it
	fetchMu  sync.Mutex
	fetching bool
	next     *endFetch

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

// DefaultRequestTimeout bounds one request to the brokers (a metadata or
// end-offset lookup) when Start is given no RequestTimeout.
const DefaultRequestTimeout = 10 * time.Second

// Option configures a Follower.
type Option func(*Follower)

// RequestTimeout bounds each request to the brokers: a lookup shared by
// Sync callers ends by then, so a broker that accepts connections but never
// answers holds a lookup no longer than d (each caller is bound by its own
// context besides). The hub passes kafka.publishTimeout where a publish
// waits on Sync.
func RequestTimeout(d time.Duration) Option {
	return func(f *Follower) {
		if d > 0 {
			f.client.Timeout = d
		}
	}
}

// Start begins following topic and returns at once: use WaitLoaded to know
// when the initial load is complete.
func Start(brokers []string, topic string, apply func(partition int, m kafka.Message), log *zap.Logger, opts ...Option) *Follower {
	if log == nil {
		log = zap.NewNop()
	}
	f := &Follower{
		brokers: brokers, topic: topic, apply: apply, log: log,
		client:  &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: DefaultRequestTimeout},
		applied: map[int]int64{},
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(f)
	}
	f.lookup = f.lookupEnds
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.run()
	return f
}

func (f *Follower) run() {
	defer f.wg.Done()
	ctx := f.ctx
	var parts []int
	for ctx.Err() == nil {
		md, err := f.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{f.topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			for _, p := range md.Topics[0].Partitions {
				parts = append(parts, p.ID)
			}
			break
		}
		f.log.Warn("topic metadata not available yet; retrying", zap.String("topic", f.topic), logging.Err(err))
		sleep(ctx, time.Second)
	}
	// Start each partition's count at its first offset: a topic with a
	// retention time may have deleted everything before it (and all of a
	// partition that has been quiet long enough).
	var starts map[int]int64
	for ctx.Err() == nil {
		var err error
		if starts, err = f.firstOffsets(ctx, parts); err == nil {
			break
		}
		f.log.Warn("first offsets not available yet; retrying", zap.String("topic", f.topic), logging.Err(err))
		sleep(ctx, time.Second)
	}
	if ctx.Err() != nil {
		return
	}
	f.mu.Lock()
	for _, p := range parts {
		f.applied[p] = starts[p]
	}
	f.mu.Unlock()
	for _, p := range parts {
		f.wg.Add(1)
		go f.follow(p)
	}
	for ctx.Err() == nil {
		if err := f.waitApplied(ctx, nil); err == nil {
			break
		}
		sleep(ctx, 100*time.Millisecond)
	}
	if ctx.Err() != nil {
		return
	}
	f.mu.Lock()
	f.loaded = true
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (f *Follower) follow(partition int) {
	defer f.wg.Done()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: f.brokers, Topic: f.topic, Partition: partition,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond,
		StartOffset: kafka.FirstOffset,
	})
	defer r.Close()
	for {
		m, err := r.FetchMessage(f.ctx)
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			f.log.Warn("reading; retrying", zap.String("topic", f.topic), zap.Int("partition", partition), logging.Err(err))
			sleep(f.ctx, 200*time.Millisecond)
			continue
		}
		f.apply(partition, m)
		f.mu.Lock()
		f.applied[partition] = m.Offset + 1
		close(f.changed)
		f.changed = make(chan struct{})
		f.mu.Unlock()
	}
}

// WaitLoaded blocks until the initial load completes or ctx ends.
func (f *Follower) WaitLoaded(ctx context.Context) error {
	for {
		f.mu.Lock()
		loaded, ch := f.loaded, f.changed
		f.mu.Unlock()
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
func (f *Follower) Loaded() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loaded
}

// Sync returns once every record in the topic when Sync was called is
// applied.
func (f *Follower) Sync(ctx context.Context) error {
	if !f.Loaded() {
		return ErrNotLoaded
	}
	ends, err := f.endOffsets(ctx)
	if err != nil {
		return err
	}
	return f.waitApplied(ctx, ends)
}

// endOffsets returns end offsets from a lookup that started after the call.
// The lookup runs on the follower's context, so one caller giving up does
// not fail the others.
func (f *Follower) endOffsets(ctx context.Context) (map[int]int64, error) {
	f.fetchMu.Lock()
	e := f.next
	if e == nil {
		e = &endFetch{done: make(chan struct{})}
		f.next = e
	}
	start := !f.fetching
	if start {
		f.fetching = true
	}
	f.fetchMu.Unlock()
	if start {
		go f.fetchLoop()
	}
	select {
	case <-e.done:
		return e.ends, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetchLoop runs the next lookup until nobody asks for another.
func (f *Follower) fetchLoop() {
	for {
		f.fetchMu.Lock()
		e := f.next
		if e == nil {
			f.fetching = false
			f.fetchMu.Unlock()
			return
		}
		f.next = nil
		f.fetchMu.Unlock()
		e.ends, e.err = f.lookup(f.ctx)
		close(e.done)
	}
}

func (f *Follower) lookupEnds(ctx context.Context) (map[int]int64, error) {
	f.mu.Lock()
	reqs := make([]kafka.OffsetRequest, 0, len(f.applied))
	for p := range f.applied {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	f.mu.Unlock()
	res, err := f.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{f.topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("looking up the end offsets of %s: %w", f.topic, err)
	}
	ends := map[int]int64{}
	for _, p := range res.Topics[f.topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("looking up the end offsets of %s: %w", f.topic, p.Error)
		}
		ends[p.Partition] = p.LastOffset
	}
	return ends, nil
}

func (f *Follower) firstOffsets(ctx context.Context, parts []int) (map[int]int64, error) {
	reqs := make([]kafka.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p))
	}
	res, err := f.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{f.topic: reqs}})
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	for _, p := range res.Topics[f.topic] {
		if p.Error != nil {
			return nil, p.Error
		}
		out[p.Partition] = p.FirstOffset
	}
	return out, nil
}

// waitApplied waits until applied reaches ends (looked up now when nil).
func (f *Follower) waitApplied(ctx context.Context, ends map[int]int64) error {
	if ends == nil {
		var err error
		if ends, err = f.lookupEnds(ctx); err != nil {
			return err
		}
	}
	for {
		f.mu.Lock()
		behind := false
		for p, end := range ends {
			if f.applied[p] < end {
				behind = true
				break
			}
		}
		ch := f.changed
		f.mu.Unlock()
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

// Close stops following.
func (f *Follower) Close() {
	f.cancel()
	f.wg.Wait()
}
