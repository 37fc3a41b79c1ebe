// Package consentstore keeps every patient's consent directives in memory,
// loaded from and following the compacted carehub.consent topic (through
// package ktable), and writes changes to it with their history.
//
// Records are keyed by the patient's keyed pseudonym; the value is the
// patient's whole consent.PatientConsent as JSON. Every hub process reads
// every record (no consumer group): each router holds all directives.
//
// # Versions and conflicts
//
// Every accepted change raises the patient's Version by one; a withdrawal
// is a change to an empty set (a record, not a tombstone), so versions
// never repeat and an ETag read before a withdrawal never matches after
// it. Put and Delete take the version the change was made against (the
// admin API's If-Match): a change against another version is refused with
// problem.Precondition (412), and a change to a patient who already has a
// record, made against no version at all, with problem.PreconditionRequired
// (428), so that one operator's change never silently removes another's.
//
// Within one process changes to the store are serialised. Between
// processes the topic decides: every process applies a record only if its
// version is above the one it holds, so all agree on the winner of two
// changes made against the same version; the loser sees, after Sync, that
// its record did not win, writes the winner's record again (so that
// compaction, which keeps a key's last record, keeps the winner) and
// answers 412.
//
// # History
//
// The compacted topic keeps only each patient's latest set. Every change
// is also recorded as an audit.KindConsentChange record in carehub.audit
// (append-only, kept for years): who (the authenticated operator), when,
// the directives before and after and both versions, keyed by the
// patient's pseudonym. A change that lost a race between processes is
// followed by a record of the same kind with Outcome "conflict": it did
// not take effect.
//
// The history record is written, and acknowledged, before the change: two
// topics are two partitions, and no Kafka produce spans them atomically.
// So a change in force always has its history; the reverse does not hold:
// a history record whose change was never written (its write failed, or
// the process stopped between the two) records an attempt. Applied tells
// the two apart from what later records and the record in force say, and
// the disclosures report marks the attempts.
//
// # Freshness
//
// Sync returns once the store has applied every record that was in the
// topic when Sync was called (ktable). The router calls Sync before routing
// each event, so once a Put has returned, no event accepted after that
// moment is routed under the old directives, in this process or any other.
// Until the initial load is complete, For and Sync fail: the router fails
// closed, and readiness stays false.
package consentstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/ktable"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// ErrNotLoaded is returned before the initial load completes.
var ErrNotLoaded = ktable.ErrNotLoaded

// Store is the in-memory view of carehub.consent.
//
// Concurrency: mu guards patients and raw; putMu serialises changes made
// through this Store.
type Store struct {
	t          *ktable.Table
	auditTopic string
	log        *zap.Logger
	now        func() time.Time

	mu       sync.Mutex
	patients map[string]consent.PatientConsent
	raw      map[string][]byte // the applied record's value, by patient
	last     map[string][]byte // the last record's value in the topic, applied or not

	putMu sync.Mutex

	// write produces records (the table's writer); tests replace it to
	// inject failures.
	write func(ctx context.Context, msgs ...kafka.Message) error
}

// Open starts following topic and returns at once; use WaitLoaded to know
// when the initial load is complete. Consent changes are recorded in
// auditTopic.
func Open(brokers []string, topic, auditTopic string, log *zap.Logger) (*Store, error) {
	if auditTopic == "" {
		return nil, errors.New("consentstore: the audit topic is required")
	}
	s := &Store{auditTopic: auditTopic, log: log, now: time.Now,
		patients: map[string]consent.PatientConsent{}, raw: map[string][]byte{}, last: map[string][]byte{}}
	t, err := ktable.Open(ktable.Config{Brokers: brokers, Topic: topic, Log: log, Apply: s.apply})
	if err != nil {
		return nil, fmt.Errorf("consentstore: %w", err)
	}
	s.t = t
	s.write = t.Write
	return s, nil
}

// apply applies one record: a newer version replaces the patient's set; an
// older or equal one (a change that lost a race, or an old record read
// again) is ignored; a tombstone (written by earlier versions of carehub)
// removes the patient's record.
func (s *Store) apply(m kafka.Message) {
	key := string(m.Key)
	var pc consent.PatientConsent
	bad := false
	if m.Value != nil {
		if err := json.Unmarshal(m.Value, &pc); err != nil || pc.Validate() != nil {
			// Written by something other than Put. Fail closed for this
			// patient: keep a confidential directive so nothing is shared
			// except what the policy names, and say so.
			bad = true
			v := pc.Version
			pc = consent.PatientConsent{Version: v, Directives: []consent.Directive{{
				ID: "invalid-record", Kind: consent.KindConfidential, RecordedBy: "carehub",
			}}}
		}
	}
	s.mu.Lock()
	cur, have := s.patients[key]
	s.last[key] = m.Value
	switch {
	case m.Value == nil:
		delete(s.patients, key)
		delete(s.raw, key)
		delete(s.last, key)
	case have && !bad && pc.Version <= cur.Version:
		// stale: not applied
	default:
		s.patients[key] = pc
		s.raw[key] = m.Value
	}
	s.mu.Unlock()
	if bad {
		s.log.Error("invalid consent record: the patient is treated as confidential",
			zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset))
	}
}

// WaitLoaded blocks until the initial load completes or ctx ends.
func (s *Store) WaitLoaded(ctx context.Context) error { return s.t.WaitLoaded(ctx) }

// Loaded reports whether the initial load is complete.
func (s *Store) Loaded() bool { return s.t.Loaded() }

// Sync returns once every record in the topic when Sync was called is
// applied.
func (s *Store) Sync(ctx context.Context) error { return s.t.Sync(ctx) }

// For returns the patient's current consent record (the zero record, version
// 0, when none). It fails before the initial load.
func (s *Store) For(patient string) (consent.PatientConsent, error) {
	if !s.t.Loaded() {
		return consent.PatientConsent{}, ErrNotLoaded
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.patients[patient], nil
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

// Change is one change to a patient's directives.
type Change struct {
	// Directives is the new set (empty: withdraw every directive).
	Directives []consent.Directive
	// IfVersion is the version the change was made against (the
	// If-Match of the request); nil when the caller gave none.
	IfVersion *int64
	// IfExists is If-Match: *: the change applies to whatever record
	// exists, and is refused when there is none.
	IfExists bool
	// Actor is who makes the change: the authenticated operator.
	Actor string
	// Action is audit.ActionConsentChange or audit.ActionConsentWithdraw.
	Action string
}

// Put records the patient's directives, replacing the previous set, and
// returns the stored record once the change and its history record are
// acknowledged by every in-sync replica and applied here. Version and
// Updated are set by Put.
func (s *Store) Put(ctx context.Context, patient string, ch Change) (consent.PatientConsent, error) {
	next := consent.PatientConsent{Directives: ch.Directives}
	if next.Directives == nil {
		next.Directives = []consent.Directive{}
	}
	if err := next.Validate(); err != nil {
		return consent.PatientConsent{}, err
	}
	if ch.Action == "" {
		ch.Action = audit.ActionConsentChange
	}
	s.putMu.Lock()
	defer s.putMu.Unlock()
	prev, exists, err := s.Get(ctx, patient)
	if err != nil {
		return consent.PatientConsent{}, err
	}
	switch {
	case ch.IfExists && !exists:
		return consent.PatientConsent{}, problem.New(problem.Precondition, "If-Match: * but the patient has no directives recorded")
	case ch.IfExists:
	case ch.IfVersion != nil && *ch.IfVersion != prev.Version:
		return consent.PatientConsent{}, problem.New(problem.Precondition,
			"the patient's directives changed since the version given in If-Match: read them again and reapply the change")
	case ch.IfVersion == nil && exists:
		return consent.PatientConsent{}, problem.New(problem.PreconditionRequired,
			"the patient has directives: read them first and send If-Match with the ETag read, so that no other change is lost")
	}
	next.Version = prev.Version + 1
	next.Updated = s.now().UTC()
	b, err := json.Marshal(next)
	if err != nil {
		return consent.PatientConsent{}, err
	}
	hist := audit.Record{Time: next.Updated, Kind: audit.KindConsentChange, Patient: patient, Actor: ch.Actor, Action: ch.Action,
		Before: &audit.ConsentState{Version: prev.Version, Directives: nonNil(prev.Directives)},
		After:  &audit.ConsentState{Version: next.Version, Directives: next.Directives}}
	// History first: a change in force always has its history (see
	// History in the package documentation).
	if err := s.write(ctx, kafka.Message{Topic: s.auditTopic, Key: []byte(patient), Value: hist.Marshal()}); err != nil {
		return consent.PatientConsent{}, fmt.Errorf("recording the consent change: %w", err)
	}
	if err := s.write(ctx, kafka.Message{Key: []byte(patient), Value: b}); err != nil {
		// The write may have landed all the same (an answer lost): if the
		// change is in force, it succeeded.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if s.Sync(sctx) != nil || !s.inForce(patient, b) {
			return consent.PatientConsent{}, fmt.Errorf("writing consent directives: %w", err)
		}
	}
	if err := s.Sync(ctx); err != nil {
		return consent.PatientConsent{}, err
	}
	won := s.inForce(patient, b)
	if !won {
		// Another process's change to the same version was applied
		// first: record that this change did not take effect, and keep
		// the record in force last in the topic for compaction.
		lost := hist
		lost.Outcome, lost.Time = "conflict", s.now().UTC()
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := s.write(wctx, kafka.Message{Topic: s.auditTopic, Key: []byte(patient), Value: lost.Marshal()}); err != nil {
			s.log.Error("recording a lost consent change", logging.Err(err))
		}
		s.keepLast(wctx, patient)
		return consent.PatientConsent{}, problem.New(problem.Precondition,
			"another change to the patient's directives was recorded at the same time: read them again and reapply the change")
	}
	return next, nil
}

// NotApplied is the outcome the disclosures report gives a consent-change
// record whose change never took effect (Applied).
const NotApplied = audit.NotApplied

// inForce reports whether value is the patient's record in force here.
func (s *Store) inForce(patient string, value []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Equal(s.raw[patient], value)
}

// Applied reports, for each of recs (audit records in the order they were
// written), whether it is a consent change that took effect. Records of
// other kinds, and conflict records, are reported true: they are not
// attempts. current returns a patient's record in force (Get).
//
// A change from version b to a took effect if the state it wrote, version
// a with its directives, was ever in force: the Before of a later change,
// or the record in force now (audit.Applied, which the recipient directory
// shares).
func Applied(recs []audit.Record, current func(patient string) (consent.PatientConsent, bool)) []bool {
	changes := make([]*audit.Change, len(recs))
	for i, r := range recs {
		if r.Kind == audit.KindConsentChange && r.Outcome == "" && r.After != nil {
			changes[i] = &audit.Change{Key: r.Patient, Before: stateID(r.Before), After: stateID(r.After)}
		}
	}
	return audit.Applied(changes, func(patient string) string {
		pc, ok := current(patient)
		if !ok {
			return ""
		}
		return stateID(&audit.ConsentState{Version: pc.Version, Directives: pc.Directives})
	})
}

// stateID is a consent state's identity for audit.Applied: its version and
// directives, in one canonical form.
func stateID(cs *audit.ConsentState) string {
	if cs == nil {
		return ""
	}
	return strconv.FormatInt(cs.Version, 10) + " " + directivesJSON(cs.Directives)
}

// directivesJSON is a set of directives in one canonical form, to compare
// one read from the audit with one read from the consent topic.
func directivesJSON(ds []consent.Directive) string {
	b, _ := json.Marshal(nonNil(ds))
	return string(b)
}

// keepLast writes the patient's record in force again until it is the
// last record of the patient's key in the topic, so that compaction, which
// keeps a key's last record, keeps it and not a change that lost.
func (s *Store) keepLast(ctx context.Context, patient string) {
	for range 5 {
		s.mu.Lock()
		cur, last := s.raw[patient], s.last[patient]
		s.mu.Unlock()
		if cur == nil || bytes.Equal(cur, last) {
			return
		}
		if err := s.write(ctx, kafka.Message{Key: []byte(patient), Value: cur}); err != nil {
			s.log.Error("rewriting the consent record in force", logging.Err(err))
			return
		}
		if err := s.Sync(ctx); err != nil {
			return
		}
	}
}

// Delete withdraws every directive of the patient: a change to an empty
// set, with the same preconditions as Put.
func (s *Store) Delete(ctx context.Context, patient string, ifVersion *int64, actor string) error {
	_, err := s.Put(ctx, patient, Change{Directives: []consent.Directive{}, IfVersion: ifVersion, Actor: actor,
		Action: audit.ActionConsentWithdraw})
	return err
}

func nonNil(ds []consent.Directive) []consent.Directive {
	if ds == nil {
		return []consent.Directive{}
	}
	return ds
}

// Close stops following and closes the writer.
func (s *Store) Close() error { return s.t.Close() }
