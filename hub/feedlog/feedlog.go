// Package feedlog is the hub's implementation of connector.Feed: one pull
// recipient's durable, gapless, numbered log of delivered events.
//
// # Storage
//
// Each feed is a Kafka topic of one partition, carehub.feed.<ods>
// (topic.Feed), with retention.ms=-1: only the retention sweep removes
// records, and only acknowledged ones (below). An event's number is its offset plus
// one: Kafka gives the records of one partition consecutive offsets (this
// hub's producers are neither transactional nor compacting, so no control
// record or compaction leaves a hole), so the numbers are gapless and
// strictly increasing, and they are the same for every process and after
// every restart because they are the broker's, not ours. Retention that
// deletes old segments raises the partition's start offset: Oldest follows
// it, and a Read from before it is refused (problem.Gone), never skipped.
//
// # One tailer per feed per process
//
// Every hub process follows each feed topic with one fetch loop (a kafka-go
// Reader on the partition), which keeps an index of event ids to numbers,
// the most recent entries (up to CacheEntries) and the latest number, and
// closes a channel each time the log grows. Readers waiting for new entries
// (a long-poll, a stream) wait on that channel: no broker fetch and no
// goroutine per waiting reader. Reads of older entries than the cache holds
// fetch them from the broker.
//
// # Exactly once per event (source, id)
//
// An event is its source and its id together (event.Identity): two
// publishers may use the same id for two different events, and both are
// entries of the feed, each with its source (the ce_source header).
// Delivery is at least once: after a crash or a rebalance the deliverer
// hands the same event again. Append first catches up with the topic's end
// (so the index includes what any process appended), returns the number the
// event already has, and only otherwise produces (acks from all
// in-sync replicas) and waits for its own tailer to see the record. Appends
// of one process are serialised per feed. An event lives in one outbox
// partition and one deliverer owns a partition at a time, with one window:
// a rebalance that moves the partition while its former owner is between
// its check and its produce's acknowledgement lets the new owner, which
// redelivers from the last commit, check before that record lands. The
// event then has two numbers; the index keeps the first, and both are
// served (README "The guarantee the numbers give" says so to clients, who
// drop the second by source and id).
//
// # Acknowledgement and retention
//
// A read that asks for the entries after N tells the hub the recipient
// holds 1..N: Acknowledge commits offset N for the feed's consumer group
// (topic.FeedGroup; no consumer joins it), durably and for every process.
// The retention sweep (hub/retention) deletes the records below that
// committed offset once the window has passed, as it does for an outbox
// below its deliverers' commits; unacknowledged records are never deleted.
// Deletion raises the partition's start offset: every process learns it
// within StartRefresh (or at once, from Refresh or a fetch that finds the
// records gone), and from then Oldest is the new start and a read from
// before it is Gone.
//
// Concurrency: mu guards every field below it; appendMu serialises Append;
// ackMu serialises Acknowledge and guards acked.
package feedlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// Record header names. None holds patient data.
const (
	headerEventID   = "ce_id"
	headerEventType = "ce_type"
	headerSource    = "ce_source"
	// The copy's form and sealed routing decision (topic.MetaForm,
	// topic.MetaDecision): the consent re-check at read time needs them.
	headerForm     = "carehub_form"
	headerDecision = "carehub_decision"
)

// StartRefresh is how often each process asks the broker for the feed's
// start offset, to learn of records deleted by retention.
const StartRefresh = 30 * time.Second

// CacheEntries is how many of the latest entries each process keeps in
// memory; older ones are read from the broker.
const CacheEntries = 4096

// Log is one recipient's feed.
type Log struct {
	recipient string
	topic     string
	log       *zap.Logger

	appendMu sync.Mutex

	ackMu sync.Mutex
	acked int64 // the highest acknowledgement known to be committed

	mu      sync.Mutex
	client  *kafka.Client
	brokers []string
	loaded  chan struct{}         // closed once the tailer has caught up with the end seen at start
	next    int64                 // the offset the tailer reads next: the latest number
	first   int64                 // the partition's start offset as last seen: Oldest is first+1
	ids     map[string]int64      // number by event.Identity(source, id)
	cache   []connector.FeedEntry // the latest entries, consecutive numbers
	changed chan struct{}         // closed and replaced whenever next grows
	done    chan struct{}         // closed by Drain
	stopped chan struct{}         // closed when the tailer returns
	drained bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New returns the feed of a recipient stored in topic. It starts nothing:
// Start does, once the broker is up.
func New(recipient, topic string, log *zap.Logger) *Log {
	return &Log{recipient: recipient, topic: topic, log: log.With(zap.String("recipient", recipient)),
		loaded: make(chan struct{}), ids: map[string]int64{}, changed: make(chan struct{}), done: make(chan struct{}),
		stopped: make(chan struct{})}
}

// Stopped is closed when the feed stops following its topic (Close): from
// then on nothing appended by another process is served.
func (l *Log) Stopped() <-chan struct{} { return l.stopped }

// Start follows the feed's topic on brokers.
func (l *Log) Start(brokers []string) {
	l.mu.Lock()
	l.brokers = brokers
	l.client = &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.mu.Unlock()
	l.wg.Add(2)
	go l.tail(ctx)
	go l.refreshEvery(ctx, StartRefresh)
}

func (l *Log) refreshEvery(ctx context.Context, d time.Duration) {
	defer l.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.Refresh(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("reading the feed's start", logging.Err(err))
			}
		}
	}
}

// Refresh asks the broker for the feed's start offset now: records deleted
// by retention are dropped from the cache, Oldest moves past them, and a
// read from before it is Gone.
func (l *Log) Refresh(ctx context.Context) error {
	l.mu.Lock()
	client := l.client
	l.mu.Unlock()
	if client == nil {
		return problem.New(problem.Unavailable, "the feed has not started")
	}
	first, _, err := l.offsets(ctx)
	if err != nil {
		return problem.Wrap(problem.Unavailable, "reading the feed's start", errors.New(logging.Class(err)))
	}
	l.trimTo(first)
	return nil
}

// trimTo records that the partition starts at offset first.
func (l *Log) trimTo(first int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if first <= l.first {
		return
	}
	l.first = first
	if len(l.cache) > 0 {
		drop := min(max(first+1-l.cache[0].Number, 0), int64(len(l.cache)))
		l.cache = append([]connector.FeedEntry(nil), l.cache[drop:]...)
	}
}

// Acknowledge implements connector.Feed: it commits offset n (the first
// entry the recipient does not hold is number n+1, at offset n) for the
// feed's group, unless a commit as high is there already. A number beyond
// the latest is taken as the latest.
func (l *Log) Acknowledge(ctx context.Context, n int64) error {
	if err := l.ready(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	n = min(n, l.next)
	client := l.client
	l.mu.Unlock()
	l.ackMu.Lock()
	defer l.ackMu.Unlock()
	if n <= l.acked {
		return nil
	}
	group := topic.FeedGroup(l.recipient)
	got, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{l.topic: {0}}})
	if err == nil && got.Error != nil && !errors.Is(got.Error, kafka.GroupIdNotFound) { // not found: nothing acknowledged yet
		err = got.Error
	}
	if err != nil {
		return problem.Wrap(problem.Unavailable, "reading the feed's acknowledgement", errors.New(logging.Class(err)))
	}
	for _, p := range got.Topics[l.topic] {
		if p.Partition == 0 && p.Error == nil && p.CommittedOffset >= n {
			l.acked = p.CommittedOffset
			return nil
		}
	}
	res, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{l.topic: {{Partition: 0, Offset: n}}}})
	if err == nil {
		for _, p := range res.Topics[l.topic] {
			if p.Error != nil {
				err = p.Error
			}
		}
	}
	if err != nil {
		return problem.Wrap(problem.Unavailable, "recording the feed's acknowledgement", errors.New(logging.Class(err)))
	}
	l.acked = n
	return nil
}

// WaitLoaded returns once the feed has read everything its topic held when
// it started, or ctx ends.
func (l *Log) WaitLoaded(ctx context.Context) error {
	select {
	case <-l.loaded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Loaded reports whether the feed has read everything its topic held when
// it started.
func (l *Log) Loaded() bool {
	select {
	case <-l.loaded:
		return true
	default:
		return false
	}
}

// Drain makes every waiting reader answer: Done is closed and so is every
// channel Changed returned. Appends go on.
func (l *Log) Drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.drained {
		l.drained = true
		close(l.done)
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// Close stops following the topic.
func (l *Log) Close() {
	l.Drain()
	l.mu.Lock()
	cancel := l.cancel
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	l.wg.Wait()
}

func (l *Log) offsets(ctx context.Context) (first, end int64, err error) {
	res, err := l.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		l.topic: {kafka.FirstOffsetOf(0), kafka.LastOffsetOf(0)}}})
	if err != nil {
		return 0, 0, err
	}
	for _, p := range res.Topics[l.topic] {
		if p.Partition == 0 {
			if p.Error != nil {
				return 0, 0, p.Error
			}
			return p.FirstOffset, p.LastOffset, nil
		}
	}
	return 0, 0, errors.New("no offsets for the feed's partition")
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// tail follows the partition from its start.
func (l *Log) tail(ctx context.Context) {
	defer l.wg.Done()
	defer close(l.stopped)
	var first, end int64
	for {
		var err error
		if first, end, err = l.offsets(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("feed offsets not available yet; retrying", logging.Err(err))
		sleep(ctx, 500*time.Millisecond)
	}
	l.mu.Lock()
	l.first, l.next = first, first
	if end <= first {
		close(l.loaded)
	}
	l.mu.Unlock()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: l.brokers, Topic: l.topic, Partition: 0,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 500 * time.Millisecond, StartOffset: first})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("reading the feed; retrying", logging.Err(err))
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		l.apply(m, end)
	}
}

// entry decodes a record of the feed topic.
func (l *Log) entry(m kafka.Message) connector.FeedEntry {
	e := connector.FeedEntry{Number: m.Offset + 1, Time: m.Time.UTC(),
		Delivery: connector.Delivery{Recipient: l.recipient, PatientRef: string(m.Key), Body: m.Value}}
	for _, h := range m.Headers {
		switch h.Key {
		case headerEventID:
			e.Delivery.EventID = string(h.Value)
		case headerEventType:
			e.Delivery.EventType = string(h.Value)
		case headerSource:
			e.Delivery.EventSource = string(h.Value)
		case headerForm:
			e.Delivery.Form = string(h.Value)
		case headerDecision:
			e.Delivery.Decision = string(h.Value)
		}
	}
	return e
}

func (l *Log) apply(m kafka.Message, loadedAt int64) {
	e := l.entry(m)
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.Offset < l.next {
		return // seen (a reader restart re-reads)
	}
	if m.Offset > l.next {
		// Records before this one were deleted by retention while we
		// were not looking: the cache no longer runs on from here.
		l.cache = nil
	}
	if e.Delivery.EventID != "" {
		k := event.Identity(e.Delivery.EventSource, e.Delivery.EventID)
		if _, dup := l.ids[k]; !dup {
			l.ids[k] = e.Number
		}
	}
	l.cache = append(l.cache, e)
	if len(l.cache) > CacheEntries {
		l.cache = append([]connector.FeedEntry(nil), l.cache[len(l.cache)-CacheEntries/2:]...)
	}
	l.next = m.Offset + 1
	if l.next >= loadedAt {
		select {
		case <-l.loaded:
		default:
			close(l.loaded)
			l.log.Info("feed loaded", zap.Int64("latest", l.next), zap.Int("events", len(l.ids)))
		}
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitNext waits until the tailer has read every offset below end.
func (l *Log) waitNext(ctx context.Context, end int64) error {
	for {
		l.mu.Lock()
		next, ch := l.next, l.changed
		l.mu.Unlock()
		if next >= end {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return problem.Wrap(problem.Unavailable, "the feed has not caught up", ctx.Err())
		}
	}
}

func (l *Log) ready(ctx context.Context) error {
	select {
	case <-l.loaded:
		return nil
	case <-ctx.Done():
		return problem.Wrap(problem.Unavailable, "the feed is still loading", ctx.Err())
	}
}

// Append implements connector.Feed.
func (l *Log) Append(ctx context.Context, d connector.Delivery) (int64, error) {
	if d.EventID == "" {
		return 0, problem.New(problem.Internal, "appending an event without an id")
	}
	l.appendMu.Lock()
	defer l.appendMu.Unlock()
	if err := l.ready(ctx); err != nil {
		return 0, err
	}
	_, end, err := l.offsets(ctx)
	if err != nil {
		return 0, problem.Wrap(problem.Unavailable, "reading the feed's end", err)
	}
	if err := l.waitNext(ctx, end); err != nil {
		return 0, err
	}
	l.mu.Lock()
	n, dup := l.ids[event.Identity(d.EventSource, d.EventID)]
	l.mu.Unlock()
	if dup {
		return n, nil
	}
	res, err := l.client.Produce(ctx, &kafka.ProduceRequest{
		Topic: l.topic, Partition: 0, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes([]byte(d.PatientRef)), Value: kafka.NewBytes(d.Body), Time: time.Now(),
			Headers: []kafka.Header{{Key: headerEventID, Value: []byte(d.EventID)}, {Key: headerEventType, Value: []byte(d.EventType)},
				{Key: headerSource, Value: []byte(d.EventSource)}, {Key: headerForm, Value: []byte(d.Form)},
				{Key: headerDecision, Value: []byte(d.Decision)}}}),
	})
	if err == nil && res.Error != nil {
		err = res.Error
	}
	if err != nil {
		// Not a MessageTooLargeError's text: it may carry the record.
		return 0, problem.Wrap(problem.Unavailable, "appending to the feed", errors.New(logging.Class(err)))
	}
	if err := l.waitNext(ctx, res.BaseOffset+1); err != nil {
		return 0, err
	}
	return res.BaseOffset + 1, nil
}

// Read implements connector.Feed.
func (l *Log) Read(ctx context.Context, after int64, max int) (connector.FeedPage, error) {
	if err := l.ready(ctx); err != nil {
		return connector.FeedPage{}, err
	}
	if max < 1 {
		max = 1
	}
	l.mu.Lock()
	page := connector.FeedPage{Latest: l.next}
	if l.next > l.first {
		page.Oldest = l.first + 1
	}
	if after < 0 {
		after = 0
	}
	if after >= l.next {
		l.mu.Unlock()
		return page, nil
	}
	if after < l.first {
		l.mu.Unlock()
		return page, problem.New(problem.Gone, fmt.Sprintf("events numbered up to %d are no longer kept; the oldest available is %d", l.first, page.Oldest))
	}
	if len(l.cache) > 0 && after+1 >= l.cache[0].Number {
		i := int(after + 1 - l.cache[0].Number)
		j := min(i+max, len(l.cache))
		page.Entries = append([]connector.FeedEntry(nil), l.cache[i:j]...)
		l.mu.Unlock()
		return page, nil
	}
	l.mu.Unlock()
	entries, err := l.fetch(ctx, after, min(int64(max), page.Latest-after))
	if err != nil {
		return page, err
	}
	page.Entries = entries
	return page, nil
}

// fetch reads n entries after number after from the broker.
func (l *Log) fetch(ctx context.Context, after, n int64) ([]connector.FeedEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: l.brokers, Topic: l.topic, Partition: 0,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 200 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(after); err != nil {
		return nil, problem.Wrap(problem.Internal, "positioning the feed reader", err)
	}
	out := make([]connector.FeedEntry, 0, n)
	for int64(len(out)) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if errors.Is(err, kafka.OffsetOutOfRange) {
				_ = l.Refresh(ctx)
				return nil, problem.New(problem.Gone, "those events are no longer kept; ask the feed's status for the oldest available")
			}
			return nil, problem.Wrap(problem.Unavailable, "reading the feed", errors.New(logging.Class(err)))
		}
		if m.Offset < after {
			continue
		}
		if m.Offset != after+int64(len(out)) {
			_ = l.Refresh(ctx)
			return nil, problem.New(problem.Gone, "some of those events are no longer kept; ask the feed's status for the oldest available")
		}
		out = append(out, l.entry(m))
	}
	return out, nil
}

// Changed implements connector.Feed.
func (l *Log) Changed(after int64) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.next > after || l.drained {
		c := make(chan struct{})
		close(c)
		return c
	}
	return l.changed
}

// Done implements connector.Feed.
func (l *Log) Done() <-chan struct{} { return l.done }

var _ connector.Feed = (*Log)(nil)
