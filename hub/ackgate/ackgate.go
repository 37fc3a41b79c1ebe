// Package ackgate lets the router route only the events whose publisher was
// told they were accepted.
//
// An event is acknowledged (HTTP 202, HL7 AA, FHIR 201) only once it and the
// record of its publish attempt in the memory of accepted events (package
// dedup, topic carehub.accepted) are both durable. When the broker is slow
// the ingest stops waiting at kafka.publishTimeout and answers 503 (HL7 AR),
// but the Kafka client may still write the event, or its record,
// afterwards. The attempt's record, or its void, is what tells the two
// apart, in the same way in every process.
//
// Gate wraps the router's handler. For each event it asks the memory about
// its attempt (header carehub_attempt; dedup.Store.Acknowledged): decided
// already; else after catching up with the topic; else after waiting until
// the ingest that published it had given up, when the gate writes a void
// for the attempt and the first of record and void in the log decides.
// The wait is the ingest's kafka.publishTimeout (header
// carehub_publish_timeout, or this hub's if longer) + Margin, counted from
// the moment the event had surely landed (this process's clock: the first
// time a fetch of its partition, or a lookup of its end offset made while
// the gate waits (Config.EndOffset, every EndOffsetPoll), reported a
// high-water mark above its offset; fetch metadata from package kafkawm).
// That needs no agreement of clocks (the event's acceptance time, the
// ingest's clock, plays no part: see until) and makes events that landed
// together, or one by one while the gate waited, wait together, not one
// after another.
// Recorded first: the event is routed. Void first: it is not routed; an audit record
// of kind received with the flag not-acknowledged is written (backfill
// skips the copies such records name), and the event is acknowledged to the
// subscription. The argument that an acknowledged event is always routed
// is in package dedup's doc.
//
// Limits: an event whose void would be written (at the end of its wait, or
// now if later) more than the duplicate window less Margin after its
// acceptance time is routed unchecked (records and voids older than the
// window are not applied; for an event seen on time: its age > Window −
// timeout − 2 × Margin), and so is an event without an attempt header
// (written by a hub from before attempts, which wrote no per-attempt
// records). A router that far behind has other problems; the readiness and
// lag metrics say so. Events without records hold their partition for
// about as long as they took to land plus one wait (and up to two polls),
// however many of them there are. An event near the window's edge may be
// routed after its void was written (unchecked): a duplicate, never a
// loss. A broker that rejects old timestamps (message.timestamp.*.max.ms)
// would refuse voids, which carry the acceptance time (package dedup):
// the message is retried until its event is old enough to be routed
// unchecked (README, "What a 503 promises").
package ackgate

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// DefaultMargin is Config.Margin's default: how far the clocks of the hub
// processes (the one whose ingest accepted an event, the one routing it)
// may disagree.
const DefaultMargin = 30 * time.Second

// Memory is the memory of accepted events (*dedup.Store).
type Memory interface {
	Acknowledged(ctx context.Context, source, id, attempt string, digest dedup.Digest, accepted, until time.Time) (bool, error)
}

// Config is what a Gate is built from.
type Config struct {
	Memory Memory
	// Publisher writes the audit record of an event not routed, with acks
	// from every in-sync replica.
	Publisher message.Publisher
	// Next routes an acknowledged event (route.Router.Handle).
	Next message.NoPublishHandlerFunc
	// Timeout is the ingest's wait (kafka.publishTimeout): after an
	// event's acceptance time plus Timeout, its ingest no longer writes
	// its record.
	Timeout time.Duration
	// Window is the duplicate window (ingest.duplicateWindow).
	Window time.Duration
	// Margin is added for clock skew (DefaultMargin when zero).
	Margin time.Duration
	// Dropped, if set, is told of each event not routed (a metric).
	Dropped func()
	// EndOffset, if set, returns the end offset (high-water mark) of a
	// partition of carehub.events (ListOffsets latest): EndOffsetFirstPoll
	// after a wait starts (most events find their record sooner, and need
	// no lookup), then every EndOffsetPoll while it lasts, the gate records
	// that every offset below it had landed by then, so the events that
	// land while one waits are known to have landed from then, not from
	// when the gate is handed them (one by one, after the wait).
	EndOffset func(ctx context.Context, partition int) (int64, error)
	// After is time.After (tests replace it).
	After func(time.Duration) <-chan time.Time
	Log   *zap.Logger
	Now   func() time.Time
}

// Gate is the router's handler, gated. Concurrency: mu guards seen and
// landed.
type Gate struct {
	cfg Config

	mu     sync.Mutex
	seen   map[string]time.Time // attempt → when this gate first saw it, until decided (events without a high-water mark)
	landed map[int][]mark       // partition → high-water marks observed, in increasing order of mark and time
}

// mark is an observation: at time t (this process's monotonic clock) a
// fetch of the partition reported high-water mark hwm, so every offset
// below hwm had landed by t.
type mark struct {
	hwm int64
	t   time.Time
}

// EndOffsetPoll is how often the gate asks the broker for the end offset of
// the partition whose event it is waiting for (Config.EndOffset). An event
// that had landed by time T is known to have landed by the first poll
// after T, so a run of events without records that land one by one holds
// their partition about as long as they took to land, plus one wait and
// EndOffsetPoll, not one wait each.
const EndOffsetPoll = 5 * time.Second

// EndOffsetFirstPoll is how long a wait lasts before the first poll: an
// event whose record is there (nearly every one) is decided sooner and
// costs no round trip to the broker.
const EndOffsetFirstPoll = time.Second

// maxSeen bounds Gate.seen: past it, the entries seen longest ago are
// forgotten (an attempt forgotten and seen again only waits longer).
// maxMarks bounds each partition's list of marks the same way.
const (
	maxSeen  = 4096
	maxMarks = 4096
)

// New builds a Gate.
func New(cfg Config) (*Gate, error) {
	if cfg.Memory == nil || cfg.Publisher == nil || cfg.Next == nil || cfg.Timeout <= 0 || cfg.Window <= 0 {
		return nil, errors.New("ackgate: memory, publisher, next handler, a positive timeout and a positive window are required")
	}
	if cfg.Margin <= 0 {
		cfg.Margin = DefaultMargin
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	return &Gate{cfg: cfg, seen: map[string]time.Time{}, landed: map[int][]mark{}}, nil
}

// Handle is the watermill handler for carehub.events: it routes msg (Next)
// if its publisher was told it was accepted, and records it as not
// acknowledged if not. An error (the memory or the audit cannot be reached)
// has the message retried.
func (g *Gate) Handle(msg *message.Message) error {
	source, id := msg.Metadata.Get(topic.MetaSource), msg.Metadata.Get(topic.MetaEventID)
	at, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(topic.MetaAccepted))
	if source == "" || id == "" || err != nil {
		// Not written by the ingest (every event it publishes carries
		// these): the router decides, and retries what is no event.
		return g.cfg.Next(msg)
	}
	attempt := msg.Metadata.Get(topic.MetaAttempt)
	if attempt == "" {
		return g.cfg.Next(msg) // from a hub before attempts: no record to look for
	}
	until := g.until(msg, attempt)
	if g.unchecked(at, until) {
		g.decided(attempt)
		return g.cfg.Next(msg) // its void could come too late to count: unchecked
	}
	ctx := msg.Context()
	stop := g.watchEnd(ctx, msg)
	ok, err := g.cfg.Memory.Acknowledged(ctx, source, id, attempt, dedup.DigestOf(msg.Payload), at, until)
	stop()
	if err != nil {
		return problem.Wrap(problem.Unavailable, "checking that the event was acknowledged to its publisher", err)
	}
	g.decided(attempt)
	if ok {
		return g.cfg.Next(msg)
	}
	return g.drop(msg, source, id)
}

// unchecked is THE rule for events too old to check: an event is routed
// unchecked when the gate would write its void (until, or now if later)
// more than Window − Margin after its acceptance time. Records and voids
// older than the window are not applied (package dedup): such a void could
// be ignored, and the event retried and routed anyway. When the gate sees
// the event on time (until = now + timeout + Margin) this is: age >
// Window − timeout − 2 × Margin.
func (g *Gate) unchecked(at, until time.Time) bool {
	void := g.cfg.Now()
	if until.After(void) {
		void = until
	}
	return void.Sub(at) > g.cfg.Window-g.cfg.Margin
}

// timeout is the wait of the ingest that published msg: the larger of its
// header carehub_publish_timeout (milliseconds) and this hub's Timeout, so
// that a router configured with a shorter timeout than the ingest (a
// rolling change) never voids an event the ingest acknowledged.
func (g *Gate) timeout(msg *message.Message) time.Duration {
	t := g.cfg.Timeout
	if ms, err := strconv.ParseInt(msg.Metadata.Get(topic.MetaPublishTimeout), 10, 64); err == nil && ms > 0 && ms <= int64(maxHeaderTimeout/time.Millisecond) {
		t = max(t, time.Duration(ms)*time.Millisecond)
	}
	return t
}

// maxHeaderTimeout bounds the timeout a header may ask for (a day): a
// corrupt header must not hold a partition for ever.
const maxHeaderTimeout = 24 * time.Hour

// until is when the ingest that published an attempt had surely stopped
// waiting for its record, plus Margin: landed + timeout + Margin, landed
// being when the event had surely landed in carehub.events by this
// process's clock. That needs no agreement of clocks: the ingest started
// its deadline timer before it published, so its deadline is at most the
// event's landing + its timeout (real time), and the landing was no later
// than landed (this process saw it). A void written after until therefore
// comes after any record the ingest acknowledged.
//
// The event's acceptance time (at, the ingest's clock) plays no part. An
// earlier version waited until the later of at + timeout and landed +
// timeout: the at term only ever lengthened the wait, and an ingest whose
// clock was ahead of the router's held the partition by that much. Nor
// would min(at + timeout, landed + timeout) be sound: with the ingest's
// clock behind, at + timeout comes before its real deadline, and a void
// written then could precede a record the ingest still acknowledged.
//
// landed is the earliest time at which a fetch of the event's partition
// reported a high-water mark above its offset (landedAt): events that
// landed together are waited for together, not one after another (the
// subscriber hands a partition's events one at a time, so waiting from
// when each was first handed out made K events without records hold the
// partition K waits). A message without a high-water mark (not from
// kafkawm) falls back to when this gate first saw its attempt, kept across
// retries. A rebalance or restart only makes landed later: a longer wait.
func (g *Gate) until(msg *message.Message, attempt string) time.Time {
	now := g.cfg.Now()
	landed, ok := g.landedAt(msg, now)
	if !ok {
		g.mu.Lock()
		first, seen := g.seen[attempt]
		if !seen {
			if len(g.seen) >= maxSeen {
				g.forgetOldestLocked()
			}
			first = now
			g.seen[attempt] = first
		}
		g.mu.Unlock()
		landed = first
	}
	return landed.Add(g.timeout(msg) + g.cfg.Margin)
}

// landedAt records that a fetch of msg's partition reported its high-water
// mark by now, and returns the earliest time at which a high-water mark
// above msg's offset was observed. ok is false when msg carries no
// partition, offset or high-water mark.
func (g *Gate) landedAt(msg *message.Message, now time.Time) (time.Time, bool) {
	p, err1 := strconv.Atoi(msg.Metadata.Get(kafkawm.PartitionMetadata))
	o, err2 := strconv.ParseInt(msg.Metadata.Get(kafkawm.OffsetMetadata), 10, 64)
	h, err3 := strconv.ParseInt(msg.Metadata.Get(kafkawm.HighWaterMarkMetadata), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || h <= o {
		return time.Time{}, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	marks := g.landed[p]
	// Marks at or below o tell nothing about o or any later offset (the
	// partition's events are handled in order; one handled again after a
	// rebalance is only found later: a longer wait).
	i, _ := slices.BinarySearchFunc(marks, o+1, func(m mark, o int64) int { return cmpInt(m.hwm, o) })
	g.landed[p] = marks[i:]
	g.addMarkLocked(p, h, now)
	return g.landed[p][0].t, true // its hwm > o, the earliest such
}

// addMarkLocked records that every offset of partition p below h had
// landed by t. Marks stay increasing in both: a mark no higher than the
// last tells nothing new, and a time earlier than the last mark's (two
// goroutines' clocks read in another order) is taken as the last's, which
// only makes later offsets wait longer. Lock held.
func (g *Gate) addMarkLocked(p int, h int64, t time.Time) {
	marks := g.landed[p]
	n := len(marks)
	if n > 0 && h <= marks[n-1].hwm {
		return
	}
	if n > 0 && t.Before(marks[n-1].t) {
		t = marks[n-1].t
	}
	if n >= maxMarks {
		marks = marks[n/2:] // drops the earliest: their offsets only wait longer
	}
	g.landed[p] = append(marks, mark{hwm: h, t: t})
}

// watchEnd, while the gate waits for msg's record, asks the broker for the
// end offset of msg's partition after EndOffsetFirstPoll and then every
// EndOffsetPoll, and records
// each answer as a mark (the time it came back): the events that land
// during the wait are then waited for from about when they landed. A
// failed lookup is logged and changes nothing (the waits only rest on
// what is known; none is shortened). stop ends the watch and returns once
// it has.
func (g *Gate) watchEnd(ctx context.Context, msg *message.Message) (stop func()) {
	p, err := strconv.Atoi(msg.Metadata.Get(kafkawm.PartitionMetadata))
	if g.cfg.EndOffset == nil || err != nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait := EndOffsetFirstPoll
		for {
			select {
			case <-ctx.Done():
				return
			case <-g.cfg.After(wait):
			}
			wait = EndOffsetPoll
			h, err := g.cfg.EndOffset(ctx, p)
			if err == nil {
				t := g.cfg.Now()
				g.mu.Lock()
				g.addMarkLocked(p, h, t)
				g.mu.Unlock()
			} else if ctx.Err() == nil {
				g.cfg.Log.Warn("looking up the end offset of the partition whose event the gate waits for; waiting on what is known",
					zap.Int("partition", p), zap.Error(err))
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// forgetOldestLocked forgets the older half of seen. Lock held.
func (g *Gate) forgetOldestLocked() {
	times := make([]time.Time, 0, len(g.seen))
	for _, t := range g.seen {
		times = append(times, t)
	}
	slices.SortFunc(times, time.Time.Compare)
	cut := times[len(times)/2]
	for a, t := range g.seen {
		if t.Before(cut) {
			delete(g.seen, a)
		}
	}
}

// decided forgets when an attempt was first seen, once it is decided.
func (g *Gate) decided(attempt string) {
	g.mu.Lock()
	delete(g.seen, attempt)
	g.mu.Unlock()
}

// drop records msg as not acknowledged and does not route it.
func (g *Gate) drop(msg *message.Message, source, id string) error {
	key := msg.Metadata.Get(topic.MetaKey)
	pos := position(msg)
	rec := audit.Record{Time: g.cfg.Now().UTC(), Kind: audit.KindReceived, EventID: id, EventType: msg.Metadata.Get(topic.MetaEventType),
		Publisher: strings.TrimPrefix(source, event.SourcePrefix), Patient: key, Flags: []string{audit.FlagNotAcknowledged}, Position: pos,
		Reason: "not routed: the publisher was answered that the event was not accepted (the broker wrote it after the hub stopped waiting); it resends it with the same id"}
	am := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	am.Metadata.Set(topic.MetaKey, key)
	am.Metadata.Set(topic.MetaEventID, id)
	am.SetContext(msg.Context())
	if err := g.cfg.Publisher.Publish(topic.Audit, am); err != nil {
		return problem.Wrap(problem.Unavailable, "recording an event not acknowledged to its publisher", err)
	}
	if g.cfg.Dropped != nil {
		g.cfg.Dropped()
	}
	g.cfg.Log.Warn("event not routed: its publisher was told it was not accepted, and will resend it",
		zap.String("source", source), zap.String("event_id", id), zap.String("position", pos))
	return nil
}

// position is the event's record in carehub.events, from the subscriber's
// metadata ("" when it has none).
func position(msg *message.Message) string {
	p, err1 := strconv.Atoi(msg.Metadata.Get(kafkawm.PartitionMetadata))
	o, err2 := strconv.ParseInt(msg.Metadata.Get(kafkawm.OffsetMetadata), 10, 64)
	if err1 != nil || err2 != nil {
		return ""
	}
	return audit.EventPosition(p, o)
}
