// Package dedup is the hub's memory of the events it accepted: for each
// (source, id) accepted within a window, a digest of its canonical content.
// It is how a publisher's retry is answered positively without publishing
// the event twice, and how the same id reused for different content is
// refused, across processes and restarts.
//
// The memory is kept in Kafka, in the topic carehub.accepted (one partition;
// key event.Identity(source, id), a digest that holds neither in clear;
// value a Record), and in memory: every hub process loads the topic before
// it serves (WaitLoaded) and follows it afterwards (package follow). Records
// older than the window are not loaded, and the topic deletes them (its
// retention.ms is the window).
//
// # Use
//
//	c, err := s.Claim(ctx, source, id, digest)  // after catching up with the topic
//	switch c.State {
//	case dedup.New:       publish the event; then s.Record(ctx, c) (or s.Abandon(c) if it failed)
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
// freshness barrier of package follow). Two processes that take the same
// event at the same moment (a retry sent while the first attempt is still
// being published, by a load balancer to another process) may both publish
// it: delivery is at least once, and recipients drop the second copy by its
// webhook-id, which is the same (event.DeliveryID). The event is always
// published before its record is written, so a record never stands for an
// event that was not made durable; and the record is the event's
// acknowledgement: the publisher is told the event was accepted only once
// both are durable, and the router routes only events it finds recorded
// (Acknowledged; package ackgate).
package dedup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
// holds no patient data.
type Record struct {
	Source   string    `json:"source"`
	ID       string    `json:"id"`
	Digest   string    `json:"digest"` // hex SHA-256 of the canonical event
	Accepted time.Time `json:"accepted"`
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
	State    State
	Accepted time.Time // for Duplicate and Conflict: when the first was accepted
	// RepeatOf, in ClaimAll's answer, is 1 + the index of the earlier
	// listing of the same (source, id) in the same call, or 0: such a
	// repeat is published only as its first listing is, and shares its fate.
	RepeatOf int
	key      key
	source   string
	id       string
	digest   Digest
	e        *entry
}

// key is the first half of event.Identity: 128 bits are plenty to tell the
// events of a window apart, and halve the memory.
type key [16]byte

// entry is one remembered event. Concurrency: guarded by Store.mu.
type entry struct {
	digest  Digest
	at      time.Time
	pending bool          // a request of this process is publishing it
	done    chan struct{} // closed when it stops being pending
}

// Store is the memory. Concurrency: mu guards m, order, head, now and
// changed; changed is closed and replaced whenever an entry is added or
// stops being pending, to wake Acknowledged.
type Store struct {
	window time.Duration
	topic  string
	log    *zap.Logger
	writer *kafka.Writer
	f      *follow.Follower
	now    func() time.Time

	mu      sync.Mutex
	m       map[key]*entry
	order   []aged // in the order entries were added, for expiry
	head    int    // order[head:] may still be live
	changed chan struct{}

	waiting func() // tests: told when Acknowledged starts waiting
}

type aged struct {
	k  key
	at time.Time
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
		m: map[key]*entry{}, changed: make(chan struct{}),
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

// apply loads one record from the topic.
func (s *Store) apply(_ int, m kafka.Message) {
	if m.Value == nil {
		return
	}
	var r Record
	if err := json.Unmarshal(m.Value, &r); err != nil || r.Source == "" || r.ID == "" {
		s.log.Error("an invalid record in the accepted-events topic is ignored", zap.Int64("offset", m.Offset))
		return
	}
	raw, err := hex.DecodeString(r.Digest)
	if err != nil || len(raw) != sha256.Size {
		s.log.Error("an invalid record in the accepted-events topic is ignored", zap.Int64("offset", m.Offset))
		return
	}
	var d Digest
	copy(d[:], raw)
	k := keyOf(r.Source, r.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(r.Accepted) > s.window {
		return
	}
	s.expireLocked(now)
	if e, ok := s.m[k]; ok {
		if e.pending {
			return // this process is publishing it; its own Record will settle it
		}
		if e.digest == d {
			return
		}
	}
	s.addLocked(k, &entry{digest: d, at: r.Accepted})
}

// addLocked remembers e under k. Lock held.
func (s *Store) addLocked(k key, e *entry) {
	s.m[k] = e
	s.order = append(s.order, aged{k, e.at})
	if !e.pending {
		s.wakeLocked()
	}
}

// wakeLocked wakes the callers of Acknowledged waiting for a change. Lock
// held.
func (s *Store) wakeLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// expireLocked forgets entries older than the window. Lock held.
func (s *Store) expireLocked(now time.Time) {
	cutoff := now.Add(-s.window)
	for s.head < len(s.order) && s.order[s.head].at.Before(cutoff) {
		a := s.order[s.head]
		s.order[s.head] = aged{}
		s.head++
		if e, ok := s.m[a.k]; ok && !e.pending && e.at.Equal(a.at) {
			delete(s.m, a.k)
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
func (s *Store) claimLoaded(ctx context.Context, source, id string, digest Digest) (Claim, error) {
	k := keyOf(source, id)
	for {
		s.mu.Lock()
		s.expireLocked(s.now())
		e, ok := s.m[k]
		switch {
		case !ok:
			e = &entry{digest: digest, at: s.now(), pending: true, done: make(chan struct{})}
			s.addLocked(k, e)
			s.mu.Unlock()
			return Claim{State: New, key: k, source: source, id: id, digest: digest, e: e}, nil
		case e.pending:
			done := e.done
			s.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return Claim{}, ctx.Err()
			}
		case e.digest == digest:
			at := e.at
			s.mu.Unlock()
			return Claim{State: Duplicate, Accepted: at}, nil
		default:
			at := e.at
			s.mu.Unlock()
			return Claim{State: Conflict, Accepted: at}, nil
		}
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

// Abandon gives back a New claim whose event was not published: the next
// Claim of it is New again. It does nothing for other claims.
func (s *Store) Abandon(c Claim) {
	if c.State != New || c.e == nil {
		return
	}
	s.mu.Lock()
	if s.m[c.key] == c.e {
		delete(s.m, c.key)
	}
	if c.e.pending {
		c.e.pending = false
		close(c.e.done)
	}
	s.mu.Unlock()
}

// Record remembers the published events of New claims (others are
// skipped): it writes their records to the topic, acknowledged by every
// in-sync replica, then releases the claims. The record is the event's
// acknowledgement: the router routes only events whose record it finds
// (package ackgate). If the write fails the claims are abandoned, the error
// says so, and the caller must not answer the events as accepted: a retry
// with the same id is New again (unless the record, written after all,
// reached the topic first: then it is a Duplicate, and the event routed).
func (s *Store) Record(ctx context.Context, cs ...Claim) error {
	var msgs []kafka.Message
	var held []Claim
	s.mu.Lock()
	now := s.now().UTC()
	s.mu.Unlock()
	for _, c := range cs {
		if c.State != New || c.e == nil {
			continue
		}
		b, _ := json.Marshal(Record{Source: c.source, ID: c.id, Digest: hex.EncodeToString(c.digest[:]), Accepted: now})
		msgs = append(msgs, kafka.Message{Key: []byte(event.Identity(c.source, c.id)), Value: b})
		held = append(held, c)
	}
	if len(msgs) == 0 {
		return nil
	}
	err := s.writer.WriteMessages(ctx, msgs...)
	if err != nil {
		for _, c := range held {
			s.Abandon(c)
		}
		return fmt.Errorf("recording accepted events: %w", err)
	}
	s.mu.Lock()
	for _, c := range held {
		if c.e.pending {
			c.e.at = now
			c.e.pending = false
			close(c.e.done)
			s.order = append(s.order, aged{c.key, now})
		}
	}
	s.wakeLocked()
	s.mu.Unlock()
	return nil
}

// Acknowledged reports whether the event (source, id) with digest was
// recorded (Record returned without error, in this process or another):
// whether its publisher was told it was accepted. It looks in the memory;
// if the event is not there, it catches up with the topic (Sync) and looks
// again; if it is still not there and until (when the ingest that
// published it had stopped waiting for its record, plus a margin for
// clocks) is in the future, it waits for the record until then, catches
// up once more and gives its answer. While a request of this process
// holds the claim, it waits for that request to record or abandon it. An
// error means it cannot tell (ctx ended, brokers unreachable): ask again.
//
// Most calls answer from the memory at once, or after one catch-up;
// concurrent catch-ups share their end-offset lookups (package follow).
func (s *Store) Acknowledged(ctx context.Context, source, id string, digest Digest, until time.Time) (bool, error) {
	k := keyOf(source, id)
	found, _, err := s.recorded(ctx, k, digest)
	if found || err != nil {
		return found, err
	}
	if err := s.f.Sync(ctx); err != nil {
		return false, fmt.Errorf("catching up with accepted events: %w", err)
	}
	found, changed, err := s.recorded(ctx, k, digest)
	if found || err != nil {
		return found, err
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
		if found, changed, err = s.recorded(ctx, k, digest); found || err != nil {
			return found, err
		}
	}
	if err := s.f.Sync(ctx); err != nil {
		return false, fmt.Errorf("catching up with accepted events: %w", err)
	}
	found, _, err = s.recorded(ctx, k, digest)
	return found, err
}

// recorded looks k up, waiting while it is pending, and returns whether it
// is recorded with digest and the channel that the next change closes.
func (s *Store) recorded(ctx context.Context, k key, digest Digest) (bool, <-chan struct{}, error) {
	for {
		s.mu.Lock()
		s.expireLocked(s.now())
		e, ok := s.m[k]
		if ok && e.pending {
			done := e.done
			s.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return false, nil, ctx.Err()
			}
		}
		changed := s.changed
		s.mu.Unlock()
		return ok && e.digest == digest, changed, nil
	}
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
