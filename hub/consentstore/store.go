// Package consentstore keeps every patient's consent directives in memory,
// loaded from and following the compacted carehub.consent topic, and writes
// changes to it.
//
// Records are keyed by the patient's keyed pseudonym; the value is the
// patient's whole consent.PatientConsent as JSON, and a tombstone (no value)
// withdraws every directive. Every hub process reads every partition from the
// beginning (no consumer group): each router holds all directives.
//
// Freshness: Sync returns once the store has applied every record that was
// in the topic when Sync was called. The router calls Sync before routing
// each event, so once a Put has returned (the write is acknowledged), no event
// accepted after that moment is routed under the old directives, in this
// process or any other. Sync calls share end-offset lookups: a call joins
// the next lookup to start (one starts at once when none is running, else as
// soon as the running one ends), so each call's lookup starts after the call
// and under load the cost is about one lookup per round trip, however many
// events are routed meanwhile. topic.Specs creates the topic with one
// partition, so a lookup is one request (kafka-go sends one per partition: a
// topic created with more, by an earlier version, costs one each).
//
// Until the initial load is complete, For and Sync fail: the router fails
// closed, and readiness stays false.
package consentstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/internal/logging"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// ErrNotLoaded is returned before the initial load completes.
var ErrNotLoaded = errors.New("consent directives are not loaded yet")

// Store is the in-memory view of carehub.consent.
//
// Concurrency: mu guards patients, applied and loaded; changed is closed and
// replaced (under mu) whenever applied advances, to wake waiters. fetchMu
// guards fetch.
type Store struct {
	brokers []string
	topic   string
	log     *zap.Logger
	writer  *kafka.Writer
	client  *kafka.Client

	mu       sync.Mutex
	patients map[string]consent.PatientConsent
	applied  map[int]int64 // next offset to apply, per partition
	loaded   bool
	changed  chan struct{}

	lookup   func(context.Context) (map[int]int64, error) // lookupEnds; tests replace it
	fetchMu  sync.Mutex
	fetching bool      // a lookup is running
	next     *endFetch // the lookup to start when the running one ends; nil: none asked for

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

// Open starts following topic and returns at once; use WaitLoaded to know
// when the initial load is complete.
func Open(brokers []string, topic string, log *zap.Logger) (*Store, error) {
	if len(brokers) == 0 || topic == "" || log == nil {
		return nil, errors.New("consentstore: brokers, topic and logger are required")
	}
	s := &Store{
		brokers: brokers, topic: topic, log: log,
		client:   &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second},
		patients: map[string]consent.PatientConsent{},
		applied:  map[int]int64{},
		changed:  make(chan struct{}),
		writer: &kafka.Writer{
			Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 5,
		},
	}
	s.lookup = s.lookupEnds
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx, s.cancel = ctx, cancel
	s.wg.Add(1)
	go s.run(ctx)
	return s, nil
}

func (s *Store) run(ctx context.Context) {
	defer s.wg.Done()
	var parts []int
	for ctx.Err() == nil {
		md, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			for _, p := range md.Topics[0].Partitions {
				parts = append(parts, p.ID)
			}
			break
		}
		s.log.Warn("consent topic metadata not available yet; retrying", logging.Err(err))
		sleep(ctx, time.Second)
	}
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	for _, p := range parts {
		s.applied[p] = 0
	}
	s.mu.Unlock()
	for _, p := range parts {
		s.wg.Add(1)
		go s.follow(ctx, p)
	}
	// Initial load: caught up with the end offsets seen now.
	for ctx.Err() == nil {
		if err := s.waitApplied(ctx, nil); err == nil {
			break
		}
		sleep(ctx, 100*time.Millisecond)
	}
	s.mu.Lock()
	s.loaded = true
	n := len(s.patients)
	s.mu.Unlock()
	s.log.Info("consent directives loaded", zap.Int("patients", n), zap.Int("partitions", len(parts)))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (s *Store) follow(ctx context.Context, partition int) {
	defer s.wg.Done()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: s.brokers, Topic: s.topic, Partition: partition,
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
			s.log.Warn("reading consent directives; retrying", zap.Int("partition", partition), logging.Err(err))
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		s.apply(partition, m)
	}
}

func (s *Store) apply(partition int, m kafka.Message) {
	key := string(m.Key)
	var pc consent.PatientConsent
	var bad bool
	if m.Value != nil {
		if err := json.Unmarshal(m.Value, &pc); err != nil || pc.Validate() != nil {
			// Written by something other than Put. Fail closed for this
			// patient: keep a confidential directive so nothing is shared
			// except what the policy names, and say so.
			bad = true
			pc = consent.PatientConsent{Directives: []consent.Directive{{
				ID: "invalid-record", Kind: consent.KindConfidential, RecordedBy: "carehub",
			}}}
		}
	}
	s.mu.Lock()
	if m.Value == nil {
		delete(s.patients, key)
	} else {
		s.patients[key] = pc
	}
	s.applied[partition] = m.Offset + 1
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if bad {
		s.log.Error("invalid consent record: the patient is treated as confidential",
			zap.Int("partition", partition), zap.Int64("offset", m.Offset))
	}
}

// WaitLoaded blocks until the initial load completes or ctx ends.
func (s *Store) WaitLoaded(ctx context.Context) error {
	for {
		s.mu.Lock()
		loaded, ch := s.loaded, s.changed
		s.mu.Unlock()
		if loaded {
			return nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// Loaded reports whether the initial load is complete.
func (s *Store) Loaded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded
}

// Sync returns once every record in the topic when Sync was called is
// applied.
func (s *Store) Sync(ctx context.Context) error {
	if !s.Loaded() {
		return ErrNotLoaded
	}
	ends, err := s.endOffsets(ctx)
	if err != nil {
		return err
	}
	return s.waitApplied(ctx, ends)
}

// endOffsets returns end offsets from a lookup that started after the call:
// it joins the next lookup, which starts now when none is running, or when
// the running one ends. The lookup runs on the store's context, so one
// caller giving up does not fail the others.
func (s *Store) endOffsets(ctx context.Context) (map[int]int64, error) {
	s.fetchMu.Lock()
	f := s.next
	if f == nil {
		f = &endFetch{done: make(chan struct{})}
		s.next = f
	}
	start := !s.fetching
	if start {
		s.fetching = true
	}
	s.fetchMu.Unlock()
	if start {
		go s.fetchLoop()
	}
	select {
	case <-f.done:
		return f.ends, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetchLoop runs the next lookup until nobody asks for another.
func (s *Store) fetchLoop() {
	for {
		s.fetchMu.Lock()
		f := s.next
		if f == nil {
			s.fetching = false
			s.fetchMu.Unlock()
			return
		}
		s.next = nil
		s.fetchMu.Unlock()
		f.ends, f.err = s.lookup(s.ctx)
		close(f.done)
	}
}

func (s *Store) lookupEnds(ctx context.Context) (map[int]int64, error) {
	s.mu.Lock()
	var reqs []kafka.OffsetRequest
	for p := range s.applied {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	s.mu.Unlock()
	res, err := s.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{s.topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("looking up consent end offsets: %w", err)
	}
	ends := map[int]int64{}
	for _, p := range res.Topics[s.topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("looking up consent end offsets: %w", p.Error)
		}
		ends[p.Partition] = p.LastOffset
	}
	return ends, nil
}

// waitApplied waits until applied reaches ends (looked up now when nil).
func (s *Store) waitApplied(ctx context.Context, ends map[int]int64) error {
	if ends == nil {
		var err error
		if ends, err = s.lookupEnds(ctx); err != nil {
			return err
		}
	}
	for {
		s.mu.Lock()
		behind := false
		for p, end := range ends {
			if s.applied[p] < end {
				behind = true
				break
			}
		}
		ch := s.changed
		s.mu.Unlock()
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

// For returns the patient's directives. It fails before the initial load.
func (s *Store) For(patient string) ([]consent.Directive, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded {
		return nil, ErrNotLoaded
	}
	return s.patients[patient].Directives, nil
}

// Get returns the patient's current consent record, after Sync.
func (s *Store) Get(ctx context.Context, patient string) (consent.PatientConsent, bool, error) {
	if err := s.Sync(ctx); err != nil {
		return consent.PatientConsent{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pc, ok := s.patients[patient]
	return pc, ok, nil
}

// Put records the patient's directives, replacing the previous set, and
// returns once the write is acknowledged by every in-sync replica and
// applied here. Version and Updated are set by Put.
func (s *Store) Put(ctx context.Context, patient string, pc consent.PatientConsent) (consent.PatientConsent, error) {
	if err := pc.Validate(); err != nil {
		return consent.PatientConsent{}, err
	}
	prev, _, err := s.Get(ctx, patient)
	if err != nil {
		return consent.PatientConsent{}, err
	}
	pc.Version = prev.Version + 1
	pc.Updated = time.Now().UTC()
	b, err := json.Marshal(pc)
	if err != nil {
		return consent.PatientConsent{}, err
	}
	if err := s.writer.WriteMessages(ctx, kafka.Message{Key: []byte(patient), Value: b}); err != nil {
		return consent.PatientConsent{}, fmt.Errorf("writing consent directives: %w", err)
	}
	return pc, s.Sync(ctx)
}

// Delete withdraws every directive of the patient (a tombstone).
func (s *Store) Delete(ctx context.Context, patient string) error {
	if err := s.writer.WriteMessages(ctx, kafka.Message{Key: []byte(patient), Value: nil}); err != nil {
		return fmt.Errorf("withdrawing consent directives: %w", err)
	}
	return s.Sync(ctx)
}

// Close stops following and closes the writer.
func (s *Store) Close() error {
	s.cancel()
	s.wg.Wait()
	return s.writer.Close()
}
