// Package retention removes what carehub no longer needs to keep, on a
// schedule:
//
//   - from each recipient's outbox, the copies below the offsets the
//     recipient's deliverers had committed at least OutboxWindow ago: a copy
//     is removed once it was delivered (or withheld, or dead-lettered) and
//     the window has passed since;
//   - from each pull recipient's feed (carehub.feed.<ods>), the entries the
//     recipient had acknowledged at least OutboxWindow ago (a read after N
//     acknowledges 1..N: the feed group's committed offset, topic.FeedGroup);
//     an entry it has not acknowledged is kept however old;
//   - from carehub.dlq, dead letters resolved (replayed or dismissed) at
//     least DeadLetterWindow ago, with their resolutions; an unresolved
//     dead letter keeps itself and every later record of its partition;
//   - from carehub.held, messages released or resolved at least HeldWindow
//     ago (their originals are patient data), with the records that
//     closed them; an open one keeps every later record of its partition;
//   - from the patient index, patients with nothing left to remember
//     (patientindex.Index.Sweep).
//
// Removal is Kafka's DeleteRecords: the partition's log start moves up and
// the records are gone for every reader, on the embedded broker and on a
// cluster alike. carehub.events and carehub.audit are kept by time instead
// (retention.ms, years by default: topic.Specs).
//
// Each hub process sweeps; sweeps are idempotent. A process remembers the
// committed offsets it saw at each sweep for the window, in memory: after a
// restart, outbox copies are removed one window later than they could be,
// never earlier.
package retention

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/deadletter"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// Config says what to sweep and how long to keep it.
type Config struct {
	Brokers    []string
	Recipients []string // ODS codes
	// Live, when set, gives the recipients at each sweep instead (the
	// recipient directory's).
	Live func() []string
	// Feeds gives the pull recipients whose feeds are swept, at each sweep;
	// Trimmed, when set, is told of each feed records were removed from.
	Feeds            func() []string
	Trimmed          func(recipient string)
	OutboxWindow     time.Duration
	DeadLetterWindow time.Duration
	HeldWindow       time.Duration
	Interval         time.Duration
	// Index is swept too when set.
	Index interface {
		Sweep(ctx context.Context) (int, error)
	}
	Log *zap.Logger
	Now func() time.Time
}

// Sweeper runs the removals. mu guards seen.
type Sweeper struct {
	cfg  Config
	mu   sync.Mutex
	seen map[string][]snapshot // committed offsets seen, by topic, oldest first
}

type snapshot struct {
	at        time.Time
	committed broker.PartitionOffsets
}

// New builds a Sweeper.
func New(cfg Config) *Sweeper {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sweeper{cfg: cfg, seen: map[string][]snapshot{}}
}

// Report is what one sweep removed.
type Report struct {
	// Outbox is how many copies were removed, by recipient.
	Outbox map[string]int64
	// Feeds is how many feed entries were removed, by recipient.
	Feeds map[string]int64
	// DeadLetters is how many dead-letter records were removed.
	DeadLetters int64
	// Held is how many records of carehub.held were removed.
	Held int64
	// Patients is how many patient index records were deleted.
	Patients int
}

// Run sweeps every Interval until ctx ends.
func (s *Sweeper) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("retention sweep", logging.Err(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep runs the removals once.
func (s *Sweeper) Sweep(ctx context.Context) (Report, error) {
	rep := Report{Outbox: map[string]int64{}, Feeds: map[string]int64{}}
	now := s.cfg.Now()
	var firstErr error
	keep := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	recipients := s.cfg.Recipients
	if s.cfg.Live != nil {
		recipients = s.cfg.Live()
	}
	for _, r := range recipients {
		n, err := s.sweepCommitted(ctx, topic.Outbox(r), topic.DeliverGroup(r), now)
		keep(err)
		if n > 0 {
			rep.Outbox[r] = n
		}
	}
	if s.cfg.Feeds != nil {
		for _, r := range s.cfg.Feeds() {
			n, err := s.sweepCommitted(ctx, topic.Feed(r), topic.FeedGroup(r), now)
			keep(err)
			if n > 0 {
				rep.Feeds[r] = n
				if s.cfg.Trimmed != nil {
					s.cfg.Trimmed(r)
				}
			}
		}
	}
	n, err := s.sweepDeadLetters(ctx, now)
	keep(err)
	rep.DeadLetters = n
	n, err = s.sweepHeld(ctx, now)
	keep(err)
	rep.Held = n
	if s.cfg.Index != nil {
		p, err := s.cfg.Index.Sweep(ctx)
		keep(err)
		rep.Patients = p
	}
	if total, feeds := sum(rep.Outbox), sum(rep.Feeds); total > 0 || feeds > 0 || rep.DeadLetters > 0 || rep.Held > 0 || rep.Patients > 0 {
		s.cfg.Log.Info("retention sweep", zap.Int64("outbox_records", total), zap.Int64("feed_records", feeds), zap.Int64("dead_letter_records", rep.DeadLetters),
			zap.Int64("held_records", rep.Held), zap.Int("patient_index_records", rep.Patients))
	}
	return rep, firstErr
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// sweepCommitted removes the records of t (a recipient's outbox, or its
// feed) below the offsets group had committed at least the window ago. A
// group that has committed nothing (a feed never acknowledged) keeps
// everything.
func (s *Sweeper) sweepCommitted(ctx context.Context, t, group string, now time.Time) (int64, error) {
	first, end, err := broker.Offsets(ctx, s.cfg.Brokers, t)
	if err != nil {
		return 0, err
	}
	parts := make([]int, 0, len(end))
	for p := range end {
		parts = append(parts, p)
	}
	committed, err := broker.Committed(ctx, s.cfg.Brokers, group, t, parts)
	if errors.Is(err, kafka.GroupIdNotFound) {
		committed, err = broker.PartitionOffsets{}, nil
	}
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	hist := append(s.seen[t], snapshot{at: now, committed: committed})
	// The newest snapshot at least a window old decides; older ones are
	// no longer needed.
	var decide broker.PartitionOffsets
	cut := 0
	for i, sn := range hist {
		if now.Sub(sn.at) >= s.cfg.OutboxWindow {
			decide, cut = sn.committed, i
		}
	}
	s.seen[t] = hist[cut:]
	s.mu.Unlock()
	below := broker.PartitionOffsets{}
	var n int64
	for p, c := range decide {
		if c > first[p] && c <= end[p] {
			below[p] = c
			n += c - first[p]
		}
	}
	if err := broker.DeleteRecords(ctx, s.cfg.Brokers, t, below); err != nil {
		return 0, err
	}
	return n, nil
}

// sweepHeld removes held messages closed at least the window ago.
func (s *Sweeper) sweepHeld(ctx context.Context, now time.Time) (int64, error) {
	recs, err := (&held.Reader{Brokers: s.cfg.Brokers, Topic: topic.Held}).All(ctx)
	if err != nil {
		return 0, err
	}
	first, _, err := broker.Offsets(ctx, s.cfg.Brokers, topic.Held)
	if err != nil {
		return 0, err
	}
	below := broker.PartitionOffsets{}
	var n int64
	for p, o := range held.Deletable(recs, now, s.cfg.HeldWindow) {
		if o > first[p] {
			below[p] = o
			n += o - first[p]
		}
	}
	if err := broker.DeleteRecords(ctx, s.cfg.Brokers, topic.Held, below); err != nil {
		return 0, err
	}
	return n, nil
}

// sweepDeadLetters removes dead letters resolved at least the window ago.
func (s *Sweeper) sweepDeadLetters(ctx context.Context, now time.Time) (int64, error) {
	entries, err := deadletter.Read(ctx, s.cfg.Brokers, topic.DLQ)
	if err != nil {
		return 0, err
	}
	first, _, err := broker.Offsets(ctx, s.cfg.Brokers, topic.DLQ)
	if err != nil {
		return 0, err
	}
	below := deadletter.Deletable(entries, now, s.cfg.DeadLetterWindow)
	var n int64
	for p, o := range below {
		if o <= first[p] {
			delete(below, p)
			continue
		}
		n += o - first[p]
	}
	if err := broker.DeleteRecords(ctx, s.cfg.Brokers, topic.DLQ, below); err != nil {
		return 0, err
	}
	return n, nil
}
