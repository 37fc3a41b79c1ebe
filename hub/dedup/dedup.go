// Package dedup is the hub's memory of the events it accepted: for each
// (source, id) accepted within a window, the publish attempts it saw and the
// digest of each one's canonical content. It is how a publisher's retry is
// answered positively without publishing the event twice, how the same id
// reused for different content is refused, across processes and restarts,
// and how the router tells an event its publisher was told was accepted
// from one it was told was not (package ackgate).
//
// The memory is kept in Kafka, in the topic carehub.accepted (ONE partition:
// its log order is the order every process applies), and in memory: every
// hub process loads the topic before it serves (WaitLoaded) and follows it
// afterwards (package follow). Records older than the window are not
// loaded, and the topic deletes them: each record's Kafka timestamp is its
// attempt's acceptance time (on records and voids alike), and the topic's
// retention.ms is the window plus topic.AcceptedSlack, so the topic deletes
// only what every process already ignores (see topic.AcceptedConfigs).
//
// # Attempts, records and voids
//
// Each publish of an event by the ingest is an attempt, with a random id
// (Claim.Attempt) that the ingest sets on the event's Kafka record (header
// carehub_attempt). Once the event is durable the ingest writes the
// attempt's record (a Record naming the attempt, key event.Identity(source,
// id) + "/" + attempt, and the attempt's acceptance time), and it
// answers the publisher "accepted" only once that record is acknowledged,
// within kafka.publishTimeout of the attempt's acceptance time. A router
// that finds no record for an attempt, after catching up and after waiting
// until publishTimeout + a margin after the event had surely landed in
// carehub.events, by its own clock (publishTimeout being the ingest's, from
// the event's header carehub_publish_timeout, when longer: package
// ackgate), writes
// a void for it (key "void/" + identity + "/" + attempt), catches up until
// it has applied it, and then
// decides by log order: whichever of the attempt's record and void came
// first wins, in every process, and late ones are ignored (Acknowledged).
//
// Why an acknowledged event is always routed: the ingest answers 202 only
// if the attempt's record was acknowledged before its deadline, which it
// started before publishing the event, so the deadline is at most the
// event's landing + publishTimeout (real time, no clock compared); a void
// is written only after the router saw the event had landed +
// publishTimeout + margin, and after a catch-up to the committed end
// offsets found no record. The acknowledged record was therefore in the
// log before that catch-up, so it is found and no void is written; and a
// void, when one is written,
// always comes before any record of the attempt that lands after it. A
// record cut short at the ingest (answered 503) that lands later is either
// before the void (the event is routed: a 503 that was in fact durable) or
// after it (not routed, ever). Claim answers from the same states, so a
// resend is a Duplicate only if an attempt with its content is recorded and
// not voided: it is then routed, and the resend is not published again.
//
// Upgrade: records without an attempt (written by hubs before attempts,
// keyed by the identity alone) count as recorded attempts for Claim, and
// events without an attempt header are routed unchecked (package ackgate).
//
// # Use
//
//	c, err := s.Claim(ctx, source, id, digest)  // after catching up with the topic
//	switch c.State {
//	case dedup.New:       publish the event with header carehub_attempt = c.Attempt; then s.Record(ctx, c) (or s.Abandon(c) if it failed)
//	case dedup.Duplicate: accepted before with the same content: answer as for the first time
//	case dedup.Conflict:  accepted before with other content: refuse (409)
//	}
//
// # What it promises
//
// Within one process, exactly once: a Claim for a (source, id) that another
// request of the process holds waits until that request records or
// abandons it. Across processes, a retry that arrives after the first
// request was answered is always seen as a Duplicate: the record is written,
// with acknowledgement from every in-sync replica, before the first answer,
// and Claim catches up with the topic's end offsets before it looks (the
// freshness barrier of package follow). Records of other processes are
// always applied, even while this process holds a claim of the same
// identity. Two processes that take the same event at the same moment (a
// retry sent while the first attempt is still being published, by a load
// balancer to another process) may both publish and record it: delivery is
// at least once, and recipients drop the second copy by its webhook-id,
// which is the same (event.DeliveryID). The event is always published
// before its record is written, so a record never stands for an event that
// was not made durable.
package dedup

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/carehub/carehub/hub/follow"
	"github.com/carehub/carehub/schemas/event"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// DefaultWindow is how long an accepted event is remembered when the
// configuration does not say: MLLP's duplicate window.
const DefaultWindow = 24 * time.Hour

// Digest is the SHA-256 of an event's content: its canonical form
// (event.Event.Marshal) with the members of every object in name order, so
// that a retry serialised with its members in another order (or in the other
// HTTP content mode) is the same content.
type Digest [sha256.Size]byte

// DigestOf returns the digest of a canonical event. Input that is not JSON
// (never the case for a canonical event) is digested as it is.
func DigestOf(canonical []byte) Digest {
	dec := json.NewDecoder(bytes.NewReader(canonical))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return sha256.Sum256(canonical)
	}
	b, err := json.Marshal(v) // objects' members in name order
	if err != nil {
		return sha256.Sum256(canonical)
	}
	return sha256.Sum256(b)
}

// Record is the value of a carehub.accepted record. It names the event by
// source and id (metadata, as the ce_ headers of carehub.events do) and
// holds no patient data. A record without Attempt was written by a hub
// from before attempts; a Void record says the attempt was never
// acknowledged (its Digest is empty).
type Record struct {
	Source   string    `json:"source"`
	ID       string    `json:"id"`
	Digest   string    `json:"digest,omitempty"` // hex SHA-256 of the canonical event
	Accepted time.Time `json:"accepted"`
	Attempt  string    `json:"attempt,omitempty"`
	Void     bool      `json:"void,omitempty"`
}

// RecordKey is the Kafka key of an attempt's record; VoidKey the key of its
// void. The topic is never compacted (a void may be written twice, and
// compaction would keep only the later copy, after a record that came
// before it: topic.AcceptedConfigs).
func RecordKey(source, id, attempt string) string {
	if attempt == "" {
		return event.Identity(source, id)
	}
	return event.Identity(source, id) + "/" + attempt
}

// VoidKey is the Kafka key of an attempt's void.
func VoidKey(source, id, attempt string) string {
	return "void/" + event.Identity(source, id) + "/" + attempt
}

// NewAttempt returns a fresh attempt id: 16 random bytes, hex.
func NewAttempt() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("dedup: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// State is what a Claim found.
type State int

// The states.
const (
	New       State = iota // not accepted within the window: publish, then Record or Abandon
	Duplicate              // accepted with the same content: do not publish again
	Conflict               // accepted with different content: refuse
)

func (s State) String() string {
	switch s {
	case New:
		return "new"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	}
	return "unknown"
}

// Claim is the outcome of Store.Claim. A New claim must be given back, by
// Record or Abandon, exactly once.
type Claim struct {
	State State
	// Accepted, for Duplicate and Conflict, is when the first was
	// accepted. For a New claim the caller sets it, before Record, to the
	// attempt's acceptance time (the event's header carehub_accepted): the
	// record carries it, as the attempt's void does, so that both expire
	// together (zero: when Record is called).
	Accepted time.Time
	// Attempt, for a New claim, is the id of this publish attempt: the
	// ingest sets it on the event's record (header carehub_attempt).
	Attempt string
	// RepeatOf, in ClaimAll's answer, is 1 + the index of the earlier
	// listing of the same (source, id) in the same call, or 0: such a
	// repeat is published only as its first listing is, and shares its fate.
	RepeatOf int
	key      key
	source   string
	id       string
	digest   Digest
	done     chan struct{} // this claim's pending marker
}

// key is the first half of event.Identity: 128 bits are plenty to tell the
// events of a window apart, and halve the memory.
type key [16]byte

// attempt is what the memory knows of one publish attempt.
type attempt struct {
	id     string // "" for records from before attempts
	void   bool
	digest Digest
	at     time.Time
	// logged: the state was applied from the topic, in log order, and is
	// final. Not logged: this process's Record was acknowledged and the
	// topic not yet applied that far (its first entry for the attempt
	// replaces it).
	logged bool
}

// entry is one remembered event: its attempts (usually one; a slice is
// smaller than a map). Concurrency: guarded by Store.mu.
type entry struct {
	attempts []*attempt
}

// find returns the attempt with id, or nil.
func (e *entry) find(id string) (int, *attempt) {
	for i, a := range e.attempts {
		if a.id == id {
			return i, a
		}
	}
	return -1, nil
}

// Store is the memory. Concurrency: mu guards m, pending, order, head and
// changed; changed is closed and replaced whenever an attempt's state is
// set, to wake Acknowledged.
type Store struct {
	window time.Duration
	topic  string
	log    *zap.Logger
	writer *kafka.Writer
	f      *follow.Follower
	now    func() time.Time

	mu      sync.Mutex
	m       map[key]*entry
	pending map[key]chan struct{} // claims this process holds: closed when given back
	order   []aged                // in the order attempts were added, for expiry
	head    int                   // order[head:] may still be live
	changed chan struct{}

	waiting func() // tests: told when Acknowledged starts waiting
}

type aged struct {
	k       key
	attempt string
	at      time.Time
}

// Open starts loading topic and returns at once; WaitLoaded says when the
// memory is complete. timeout bounds each request to the brokers (the
// catch-up's end-offset lookup, the write of a record): the hub passes
// kafka.publishTimeout, since a publish waits on both. Callers bound their
// own wait with their context.
func Open(brokers []string, topic string, window, timeout time.Duration, log *zap.Logger) (*Store, error) {
	if len(brokers) == 0 || topic == "" || window <= 0 || timeout <= 0 {
		return nil, errors.New("dedup: brokers, topic, a positive window and a positive timeout are required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		window: window, topic: topic, log: log, now: time.Now,
		m: map[key]*entry{}, pending: map[key]chan struct{}{}, changed: make(chan struct{}),
		writer: &kafka.Writer{
			Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 5,
			// A write Record gave up on goes on in the writer's
			// background: bound it too, so that Close does not wait for
			// five attempts of kafka-go's default ten seconds.
			WriteTimeout: timeout, ReadTimeout: timeout,
		},
	}
	s.f = follow.Start(brokers, topic, s.apply, log, follow.RequestTimeout(timeout))
	return s, nil
}

// WaitLoaded blocks until every record there was when the store opened is
// loaded, or ctx ends. Nothing may be accepted before.
func (s *Store) WaitLoaded(ctx context.Context) error {
	if err := s.f.WaitLoaded(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	n := len(s.m)
	s.mu.Unlock()
	s.log.Info("accepted events loaded", zap.Int("events", n), zap.Duration("window", s.window))
	return nil
}

func keyOf(source, id string) key {
	var k key
	sum := sha256.Sum256([]byte(source + "\n" + id))
	copy(k[:], sum[:])
	return k
}

// apply loads one record (or void) from the topic, in log order: the first
// entry for an attempt sets its state for good.
func (s *Store) apply(_ int, m kafka.Message) {
	if m.Value == nil {
		return
	}
	var r Record
	if err := json.Unmarshal(m.Value, &r); err != nil || r.Source == "" || r.ID == "" || (r.Void && r.Attempt == "") {
		s.log.Error("an invalid record in the accepted-events topic is ignored", zap.Int64("offset", m.Offset))
		return
	}
	var d Digest
	if !r.Void {
		raw, err := hex.DecodeString(r.Digest)
		if err != nil || len(raw) != sha256.Size {
			s.log.Error("an invalid record in the accepted-events topic is ignored", zap.Int64("offset", m.Offset))
			return
		}
		copy(d[:], raw)
	}
	k := keyOf(r.Source, r.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(r.Accepted) > s.window {
		return
	}
	s.expireLocked(now)
	if a := s.attemptLocked(k, r.Attempt); a != nil && a.logged {
		return // the first entry of the attempt in the log decided it
	}
	s.setLocked(k, r.Attempt, &attempt{void: r.Void, digest: d, at: r.Accepted, logged: true})
}

// attemptLocked returns what is known of an attempt, or nil. Lock held.
func (s *Store) attemptLocked(k key, id string) *attempt {
	if e, ok := s.m[k]; ok {
		_, a := e.find(id)
		return a
	}
	return nil
}

// setLocked sets an attempt's state and wakes Acknowledged. Lock held.
func (s *Store) setLocked(k key, id string, a *attempt) {
	e, ok := s.m[k]
	if !ok {
		e = &entry{}
		s.m[k] = e
	}
	a.id = id
	if i, _ := e.find(id); i >= 0 {
		e.attempts[i] = a
	} else {
		e.attempts = append(e.attempts, a)
	}
	s.order = append(s.order, aged{k, id, a.at})
	close(s.changed)
	s.changed = make(chan struct{})
}

// expireLocked forgets attempts older than the window. Lock held.
func (s *Store) expireLocked(now time.Time) {
	cutoff := now.Add(-s.window)
	for s.head < len(s.order) && s.order[s.head].at.Before(cutoff) {
		o := s.order[s.head]
		s.order[s.head] = aged{}
		s.head++
		if e, ok := s.m[o.k]; ok {
			if i, a := e.find(o.attempt); a != nil && a.at.Equal(o.at) {
				e.attempts = slices.Delete(e.attempts, i, i+1)
				if len(e.attempts) == 0 {
					delete(s.m, o.k)
				}
			}
		}
	}
	if s.head > 1024 && s.head > len(s.order)/2 {
		s.order = append(s.order[:0:0], s.order[s.head:]...)
		s.head = 0
	}
}

// Claim catches up with the topic, then looks (source, id) up. When another
// request of this process holds it, Claim waits for that request to record or
// abandon it, and looks again. An error means the memory cannot answer now
// (not loaded, broker unreachable, ctx ended): accept nothing.
func (s *Store) Claim(ctx context.Context, source, id string, digest Digest) (Claim, error) {
	if err := s.f.Sync(ctx); err != nil {
		return Claim{}, fmt.Errorf("catching up with accepted events: %w", err)
	}
	return s.claimLoaded(ctx, source, id, digest)
}

// claimLoaded is Claim without the barrier: for a batch, after one Sync.
// Duplicate iff an attempt with this content is recorded (and not void);
// Conflict iff an attempt with other content is and none with this one;
// else New.
func (s *Store) claimLoaded(ctx context.Context, source, id string, digest Digest) (Claim, error) {
	k := keyOf(source, id)
	for {
		s.mu.Lock()
		s.expireLocked(s.now())
		if done, ok := s.pending[k]; ok {
			s.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return Claim{}, ctx.Err()
			}
		}
		var same, other *attempt
		if e, ok := s.m[k]; ok {
			for _, a := range e.attempts {
				switch {
				case a.void:
				case a.digest == digest:
					if same == nil || a.at.Before(same.at) {
						same = a
					}
				case other == nil || a.at.Before(other.at):
					other = a
				}
			}
		}
		switch {
		case same != nil:
			at := same.at
			s.mu.Unlock()
			return Claim{State: Duplicate, Accepted: at}, nil
		case other != nil:
			at := other.at
			s.mu.Unlock()
			return Claim{State: Conflict, Accepted: at}, nil
		}
		done := make(chan struct{})
		s.pending[k] = done
		s.mu.Unlock()
		return Claim{State: New, Attempt: NewAttempt(), key: k, source: source, id: id, digest: digest, done: done}, nil
	}
}

// ClaimAll claims several events after one catch-up with the topic. An
// event listed twice is claimed once: the second is Duplicate of the first
// if the content is the same, Conflict if not (and the caller must treat the
// first's fate as the second's). On error, no claim is held.
func (s *Store) ClaimAll(ctx context.Context, sources, ids []string, digests []Digest) ([]Claim, error) {
	if err := s.f.Sync(ctx); err != nil {
		return nil, fmt.Errorf("catching up with accepted events: %w", err)
	}
	out := make([]Claim, len(ids))
	first := map[key]int{}
	for i := range ids {
		k := keyOf(sources[i], ids[i])
		if j, ok := first[k]; ok {
			st := Duplicate
			if digests[j] != digests[i] {
				st = Conflict
			}
			out[i] = Claim{State: st, RepeatOf: j + 1}
			continue
		}
		first[k] = i
		c, err := s.claimLoaded(ctx, sources[i], ids[i], digests[i])
		if err != nil {
			for _, h := range out[:i] {
				s.Abandon(h)
			}
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// Abandon gives back a New claim whose event was not published (or whose
// record failed): the next Claim of it is New again, unless a record of
// another attempt was applied meanwhile. It removes only this claim's
// pending marker, never a record. It does nothing for other claims.
func (s *Store) Abandon(c Claim) {
	if c.State != New || c.done == nil {
		return
	}
	s.mu.Lock()
	s.releaseLocked(c)
	s.mu.Unlock()
}

// releaseLocked removes c's pending marker. Lock held.
func (s *Store) releaseLocked(c Claim) {
	if s.pending[c.key] == c.done {
		delete(s.pending, c.key)
		close(c.done)
	}
}

// RecordError is Record's error: which of its claims were not recorded.
type RecordError struct {
	failed []bool
	err    error
}

func (e *RecordError) Error() string { return "recording accepted events: " + e.err.Error() }
func (e *RecordError) Unwrap() error { return e.err }

// FailedAt says whether the claim at index i of Record's arguments was not
// recorded (its event must be answered as not accepted).
func (e *RecordError) FailedAt(i int) bool { return i < len(e.failed) && e.failed[i] }

// Record remembers the published events of New claims (others are
// skipped): it writes one record per attempt to the topic, acknowledged by
// every in-sync replica, then releases the claims. The record is the
// event's acknowledgement: the router routes only attempts whose record
// came before any void (package ackgate). When some records fail (kafka-go
// tells which, per message), the error is a *RecordError naming them; their
// claims are given back and the caller must not answer those events as
// accepted. The others are recorded.
func (s *Store) Record(ctx context.Context, cs ...Claim) error {
	var msgs []kafka.Message
	var at []int // index in cs of each message
	s.mu.Lock()
	now := s.now().UTC()
	s.mu.Unlock()
	for i, c := range cs {
		if c.State != New || c.done == nil {
			continue
		}
		acc := acceptedAt(c, now)
		b, _ := json.Marshal(Record{Source: c.source, ID: c.id, Digest: hex.EncodeToString(c.digest[:]), Accepted: acc, Attempt: c.Attempt})
		// The Kafka timestamp is the acceptance time, as on the void: the
		// topic deletes by it, so an attempt's record and void expire by
		// the same time (topic.AcceptedConfigs).
		msgs = append(msgs, kafka.Message{Key: []byte(RecordKey(c.source, c.id, c.Attempt)), Value: b, Time: acc})
		at = append(at, i)
	}
	if len(msgs) == 0 {
		return nil
	}
	err := s.writer.WriteMessages(ctx, msgs...)
	var rerr *RecordError
	if err != nil {
		rerr = &RecordError{failed: make([]bool, len(cs)), err: err}
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(msgs) {
			for j, e := range werrs {
				if e != nil {
					rerr.failed[at[j]] = true
					rerr.err = e
				}
			}
		} else {
			for _, i := range at {
				rerr.failed[i] = true
			}
		}
	}
	s.mu.Lock()
	for _, i := range at {
		c := cs[i]
		if rerr == nil || !rerr.failed[i] {
			if s.attemptLocked(c.key, c.Attempt) == nil {
				s.setLocked(c.key, c.Attempt, &attempt{digest: c.digest, at: acceptedAt(c, now)})
			}
		}
		s.releaseLocked(c)
	}
	s.mu.Unlock()
	if rerr != nil {
		return rerr
	}
	return nil
}

// acceptedAt is the time a New claim's record carries: the attempt's
// acceptance time, the same as its void's (Acknowledged's accepted), so
// that a restart never loads the one without the other. A record stamped
// later than its void (when Record ran) outlived it by that gap, and a
// process started in the gap loaded the record alone: the resend was a
// Duplicate of an attempt that was never routed.
func acceptedAt(c Claim, now time.Time) time.Time {
	if c.Accepted.IsZero() {
		return now
	}
	return c.Accepted.UTC()
}

// Acknowledged reports whether the attempt (source, id, attempt) of an
// event with digest was acknowledged to its publisher, and decides it for
// good: its record is in the topic before any void of it. It looks in the
// memory (states applied from the topic only); if the attempt is not
// there, it catches up with the topic (Sync) and looks again; if it is
// still not there and until (when the ingest that published it had
// stopped waiting for its record, plus a margin for clocks) is in the
// future, it waits for the record until then and catches up once more.
// Still no record: it writes a void for the attempt (accepted is the
// event's acceptance time, for the void's expiry), catches up until the
// void is applied, and answers by log order: the record, if it landed
// first, wins. An error means it cannot tell (ctx ended, brokers
// unreachable): ask again.
//
// Most calls answer from the memory at once, or after one catch-up;
// concurrent catch-ups share their end-offset lookups (package follow).
func (s *Store) Acknowledged(ctx context.Context, source, id, attemptID string, digest Digest, accepted, until time.Time) (bool, error) {
	k := keyOf(source, id)
	if ok, decided, _ := s.decided(k, attemptID, digest); decided {
		return ok, nil
	}
	if err := s.f.Sync(ctx); err != nil {
		return false, fmt.Errorf("catching up with accepted events: %w", err)
	}
	ok, decided, changed := s.decided(k, attemptID, digest)
	if decided {
		return ok, nil
	}
	if s.waiting != nil && time.Until(until) > 0 {
		s.waiting()
	}
	for {
		wait := time.Until(until)
		if wait <= 0 {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		}
		if ok, decided, changed = s.decided(k, attemptID, digest); decided {
			return ok, nil
		}
	}
	if err := s.f.Sync(ctx); err != nil {
		return false, fmt.Errorf("catching up with accepted events: %w", err)
	}
	if ok, decided, _ = s.decided(k, attemptID, digest); decided {
		return ok, nil
	}
	b, _ := json.Marshal(Record{Source: source, ID: id, Accepted: accepted.UTC(), Attempt: attemptID, Void: true})
	if err := s.writer.WriteMessages(ctx, kafka.Message{Key: []byte(VoidKey(source, id, attemptID)), Value: b, Time: accepted.UTC()}); err != nil {
		return false, fmt.Errorf("voiding an attempt never recorded: %w", err)
	}
	if err := s.f.Sync(ctx); err != nil {
		return false, fmt.Errorf("catching up with accepted events: %w", err)
	}
	if ok, decided, _ = s.decided(k, attemptID, digest); decided {
		return ok, nil
	}
	return false, errors.New("the void written for an attempt was not applied (older than the duplicate window?)")
}

// decided looks the attempt up: whether its state was applied from the
// topic, and if so whether it is recorded with digest; and the channel the
// next change closes.
func (s *Store) decided(k key, id string, digest Digest) (ok, decided bool, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	changed = s.changed
	a := s.attemptLocked(k, id)
	if a == nil || !a.logged {
		return false, false, changed
	}
	if !a.void && a.digest != digest {
		s.log.Error("an attempt's record names other content than its event: not routed")
	}
	return !a.void && a.digest == digest, true, changed
}

// Window is how long an event is remembered: an event accepted longer ago
// cannot be told acknowledged or not.
func (s *Store) Window() time.Duration { return s.window }

// Len is the number of events remembered (for tests and metrics).
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	return len(s.m)
}

// Close stops following and closes the writer.
func (s *Store) Close() error {
	s.f.Close()
	return s.writer.Close()
}
