package ackgate

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// canary is the NHS number in the test event (the 999 test range): it
// must reach neither the audit record nor the log.
const canary = "9990500002"

// memory answers Acknowledged as told, and notes what it was asked.
type memory struct {
	ok       bool
	err      error
	asked    int
	until    time.Time
	accepted time.Time
	attempt  string
	digest   dedup.Digest
}

func (m *memory) Acknowledged(_ context.Context, source, id, attempt string, d dedup.Digest, accepted, until time.Time) (bool, error) {
	m.asked++
	m.until, m.digest, m.attempt, m.accepted = until, d, attempt, accepted
	return m.ok, m.err
}

// pub keeps what is published, or fails.
type pub struct {
	got map[string][]*message.Message
	err error
}

func (p *pub) Publish(t string, msgs ...*message.Message) error {
	if p.err != nil {
		return p.err
	}
	if p.got == nil {
		p.got = map[string][]*message.Message{}
	}
	p.got[t] = append(p.got[t], msgs...)
	return nil
}

func (p *pub) Close() error { return nil }

var now = time.Date(2026, 3, 21, 12, 0, 0, 0, time.UTC)

// eventMessage is an event as the router's subscription hands it over.
func eventMessage(accepted time.Time, withAccepted, withAttempt bool) *message.Message {
	m := message.NewMessage("u", []byte(`{"id":"e-1","source":"urn:ods:RX1","type":"discharge","data":{"patient":{"nhsNumber":"`+canary+`"}}}`))
	m.Metadata.Set(topic.MetaSource, "urn:ods:RX1")
	m.Metadata.Set(topic.MetaEventID, "e-1")
	m.Metadata.Set(topic.MetaEventType, "discharge")
	m.Metadata.Set(topic.MetaKey, "pseudo-1")
	m.Metadata.Set(kafkawm.PartitionMetadata, "2")
	m.Metadata.Set(kafkawm.OffsetMetadata, "17")
	if withAccepted {
		m.Metadata.Set(topic.MetaAccepted, accepted.Format(time.RFC3339Nano))
	}
	if withAttempt {
		m.Metadata.Set(topic.MetaAttempt, "att-1")
	}
	return m
}

// TestGate: the gate routes what the memory says was acknowledged, records
// and drops what it says was not, retries what it cannot tell, and routes
// unchecked what it cannot check (older than the window, not from the
// ingest).
func TestGate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mem       memory
		accepted  time.Time
		noStamp   bool
		noAttempt bool
		pubErr    error
		wantAsked int
		wantNext  int
		wantAudit int
		wantErr   bool
	}{
		{name: "acknowledged", mem: memory{ok: true}, accepted: now.Add(-time.Second), wantAsked: 1, wantNext: 1},
		{name: "not acknowledged", mem: memory{}, accepted: now.Add(-time.Second), wantAsked: 1, wantAudit: 1},
		{name: "the memory cannot tell: retried", mem: memory{err: errors.New("broker unreachable")}, accepted: now.Add(-time.Second), wantAsked: 1, wantErr: true},
		{name: "not acknowledged, the audit unreachable: retried", mem: memory{}, accepted: now.Add(-time.Second), pubErr: errors.New("down"), wantAsked: 1, wantErr: true},
		// The void is written at the end of the wait (now + timeout +
		// margin here) and must be younger than the window less the
		// margin: checked up to an age of window − timeout − 2 × margin.
		{name: "older than window − timeout − 2 × margin: unchecked", mem: memory{}, accepted: now.Add(-time.Hour + 10*time.Second + 2*DefaultMargin - time.Second), wantNext: 1},
		{name: "just within window − timeout − 2 × margin: checked", mem: memory{}, accepted: now.Add(-time.Hour + 10*time.Second + 2*DefaultMargin), wantAsked: 1, wantAudit: 1},
		// Gate review bug (4): seen at an age between window − 40 s and
		// window − 30 s, the event was checked; its void, written 40 s
		// later, was older than the window, ignored by the memory, and
		// the event, retried, was routed unchecked.
		{name: "seen at window − 35 s (its void would be ignored): unchecked", mem: memory{}, accepted: now.Add(-time.Hour + 35*time.Second), wantNext: 1},
		{name: "not written by the ingest: the router decides", mem: memory{}, noStamp: true, wantNext: 1},
		// Upgrade: a hub from before attempts wrote no per-attempt
		// record; its events are routed unchecked.
		{name: "no attempt (an older hub's event): unchecked", mem: memory{}, accepted: now.Add(-time.Second), noAttempt: true, wantNext: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := tc.mem
			p := &pub{err: tc.pubErr}
			next, dropped := 0, 0
			core, logs := observer.New(zap.DebugLevel)
			g, err := New(Config{Memory: &mem, Publisher: p, Next: func(*message.Message) error { next++; return nil },
				Timeout: 10 * time.Second, Window: time.Hour, Dropped: func() { dropped++ }, Log: zap.New(core), Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			msg := eventMessage(tc.accepted, !tc.noStamp, !tc.noAttempt)
			err = g.Handle(msg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Handle: got error %v, want error %v", err, tc.wantErr)
			}
			if mem.asked != tc.wantAsked || next != tc.wantNext || len(p.got[topic.Audit]) != tc.wantAudit || dropped != tc.wantAudit {
				t.Fatalf("asked %d, routed %d, audited %d, counted %d; want %d, %d, %d, %d",
					mem.asked, next, len(p.got[topic.Audit]), dropped, tc.wantAsked, tc.wantNext, tc.wantAudit, tc.wantAudit)
			}
			if mem.asked > 0 {
				if want := now.Add(10*time.Second + DefaultMargin); !mem.until.Equal(want) {
					t.Errorf("waits until %v, want %v (first seen + publish timeout + margin)", mem.until, want)
				}
				if mem.attempt != "att-1" || !mem.accepted.Equal(tc.accepted) {
					t.Errorf("asked for attempt %q accepted %v, want att-1 accepted %v", mem.attempt, mem.accepted, tc.accepted)
				}
				if want := dedup.DigestOf(msg.Payload); mem.digest != want {
					t.Errorf("asked for digest %x, want the digest of the published bytes %x", mem.digest, want)
				}
			}
			for _, am := range p.got[topic.Audit] {
				if strings.Contains(string(am.Payload), canary) {
					t.Errorf("the audit record holds the NHS number: %s", am.Payload)
				}
				rec, err := audit.Unmarshal(am.Payload)
				if err != nil {
					t.Fatal(err)
				}
				want := audit.Record{Kind: audit.KindReceived, EventID: "e-1", EventType: "discharge", Publisher: "RX1", Patient: "pseudo-1",
					Flags: []string{audit.FlagNotAcknowledged}, Position: "2/17"}
				reason := rec.Reason
				rec.Time, rec.Reason = time.Time{}, ""
				if !reflect.DeepEqual(rec, want) || reason == "" {
					t.Errorf("audit record:\n\tgot  %+v (reason %q)\n\twant %+v and a reason", rec, reason, want)
				}
				if k := am.Metadata.Get(topic.MetaKey); k != "pseudo-1" {
					t.Errorf("audit record keyed %q, want the patient's pseudonym", k)
				}
			}
			for _, e := range logs.All() {
				line := e.Message
				for k, v := range e.ContextMap() {
					line += " " + k + "=" + strings.TrimSpace(fmtAny(v))
				}
				if strings.Contains(line, canary) {
					t.Errorf("the log holds the NHS number: %s", line)
				}
			}
		})
	}
}

func fmtAny(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

// TestTheWaitNeedsNoAgreementOfClocks pins review bug (2) of the ack
// gate's rework: the gate waited for a record until acceptance +
// publishTimeout + margin, acceptance being the ingest's clock; an ingest
// whose clock was behind the router's by more than that had its events
// voided as soon as the router read them, before their records landed, and
// 202'd events were dropped en masse. The gate now waits at least until
// publishTimeout + margin after it first saw the event (its own clock),
// and keeps that first sighting across the message's retries.
func TestTheWaitNeedsNoAgreementOfClocks(t *testing.T) {
	const timeout = 10 * time.Second
	for _, tc := range []struct {
		name     string
		accepted time.Time // the ingest's clock
		want     time.Time
	}{
		{"the ingest's clock ten minutes behind", now.Add(-10 * time.Minute), now.Add(timeout + DefaultMargin)},
		{"the ingest's clock in step", now.Add(-time.Second), now.Add(timeout + DefaultMargin)},
		// Gate review 5 (2): the wait ran to the later of the acceptance
		// time (the ingest's clock) and the landing, plus the wait: an
		// ingest's clock ahead held the partition by as much. The
		// acceptance time now plays no part in the wait.
		{"the ingest's clock ahead", now.Add(time.Minute), now.Add(timeout + DefaultMargin)},
		{"the ingest's clock an hour ahead", now.Add(time.Hour), now.Add(timeout + DefaultMargin)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := now
			mem := &memory{err: errors.New("broker unreachable")}
			g, err := New(Config{Memory: mem, Publisher: &pub{}, Next: func(*message.Message) error { return nil },
				Timeout: timeout, Window: time.Hour, Now: func() time.Time { return clock }})
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Handle(eventMessage(tc.accepted, true, true)); err == nil {
				t.Fatal("Handle with the memory unreachable: got no error, want a retry")
			}
			if !mem.until.Equal(tc.want) {
				t.Errorf("first delivery waits until %v, want %v", mem.until, tc.want)
			}
			clock = now.Add(20 * time.Second) // the retry, later
			mem.err = nil
			if err := g.Handle(eventMessage(tc.accepted, true, true)); err != nil {
				t.Fatal(err)
			}
			if !mem.until.Equal(tc.want) {
				t.Errorf("the retry waits until %v, want %v (from the first sighting)", mem.until, tc.want)
			}
			// Decided: forgotten; a later sighting (another delivery)
			// counts from then.
			clock = now.Add(time.Hour / 2)
			if err := g.Handle(eventMessage(tc.accepted, true, true)); err != nil {
				t.Fatal(err)
			}
			if want := clock.Add(timeout + DefaultMargin); !mem.until.Equal(want) {
				t.Errorf("after the decision, a new sighting waits until %v, want %v", mem.until, want)
			}
		})
	}
}

// fifo is a memory that finds no record for any attempt: each call waits
// (moves the clock) until the time it is given, as dedup.Store does, and
// says the attempt was voided.
type fifo struct {
	clock  *time.Time
	untils []time.Time
}

func (f *fifo) Acknowledged(_ context.Context, _, _, _ string, _ dedup.Digest, _, until time.Time) (bool, error) {
	f.untils = append(f.untils, until)
	if until.After(*f.clock) {
		*f.clock = until
	}
	return false, nil
}

// partitionMessage is an event at offset o of partition 0, fetched when
// the partition's high-water mark was hwm.
func partitionMessage(accepted time.Time, attempt string, o, hwm int64) *message.Message {
	m := eventMessage(accepted, true, false)
	m.Metadata.Set(topic.MetaAttempt, attempt)
	m.Metadata.Set(kafkawm.PartitionMetadata, "0")
	m.Metadata.Set(kafkawm.OffsetMetadata, strconv.FormatInt(o, 10))
	m.Metadata.Set(kafkawm.HighWaterMarkMetadata, strconv.FormatInt(hwm, 10))
	return m
}

// TestEventsThatLandedTogetherAreWaitedForTogether pins gate review bug
// (1): the wait for a missing record ran from when the gate first SAW an
// event, and the subscriber hands a partition's events one at a time, so K
// events without records (503s that landed) held the partition K waits
// (100 such events stalled routing over an hour). The wait now runs from
// when a fetch first reported a high-water mark above the event's offset:
// K events that landed together are decided within one wait.
func TestEventsThatLandedTogetherAreWaitedForTogether(t *testing.T) {
	const (
		timeout = 10 * time.Second
		k       = 100
	)
	clock := now
	mem := &fifo{clock: &clock}
	g, err := New(Config{Memory: mem, Publisher: &pub{}, Next: func(*message.Message) error { return nil },
		Timeout: timeout, Window: 24 * time.Hour, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	for o := range int64(k) {
		if err := g.Handle(partitionMessage(now.Add(-time.Second), "att-"+strconv.FormatInt(o, 10), o, k)); err != nil {
			t.Fatal(err)
		}
	}
	want := now.Add(timeout + DefaultMargin)
	for i, u := range mem.untils {
		if !u.Equal(want) {
			t.Fatalf("event %d waits until %v, want %v (one wait from when all %d had landed)", i, u, want, k)
		}
	}
	if got := clock.Sub(now); got != timeout+DefaultMargin {
		t.Errorf("%d events without records held the partition %v, want one wait (%v)", k, got, timeout+DefaultMargin)
	}

	// An event that landed later (a later fetch, a higher mark) waits
	// from when that mark was first seen; one handled again after a
	// rebalance (the marks at or below the offsets since handled are
	// dropped) waits from the earliest mark still kept above its offset:
	// later than it landed, a longer wait, never a shorter one.
	later := clock
	if err := g.Handle(partitionMessage(later, "att-late", k, k+1)); err != nil {
		t.Fatal(err)
	}
	if got, want := mem.untils[len(mem.untils)-1], later.Add(timeout+DefaultMargin); !got.Equal(want) {
		t.Errorf("the event landed later waits until %v, want %v", got, want)
	}
	if err := g.Handle(partitionMessage(now.Add(-time.Second), "att-again", 5, k+1)); err != nil {
		t.Fatal(err)
	}
	if got, want := mem.untils[len(mem.untils)-1], later.Add(timeout+DefaultMargin); !got.Equal(want) {
		t.Errorf("an event handled again after a rebalance waits until %v, want %v", got, want)
	}
}

// TestTheWaitIsTheIngestsPublishTimeout pins gate review bug (2): the
// router waited with ITS publishTimeout; rolling an increase process by
// process let a router on 10 s void an event an ingest on 60 s
// acknowledged at 55 s. The gate now waits with the larger of the event's
// header carehub_publish_timeout and its own.
func TestTheWaitIsTheIngestsPublishTimeout(t *testing.T) {
	const own = 10 * time.Second
	for _, tc := range []struct {
		name   string
		header string
		want   time.Duration
	}{
		{"the ingest's longer", "60000", 60 * time.Second},
		{"the ingest's shorter", "5000", own},
		{"no header (an older hub)", "", own},
		{"a corrupt header", "soon", own},
		{"an absurd header", "999999999999", own},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := &memory{}
			g, err := New(Config{Memory: mem, Publisher: &pub{}, Next: func(*message.Message) error { return nil },
				Timeout: own, Window: time.Hour, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			m := eventMessage(now.Add(-time.Second), true, true)
			if tc.header != "" {
				m.Metadata.Set(topic.MetaPublishTimeout, tc.header)
			}
			if err := g.Handle(m); err != nil {
				t.Fatal(err)
			}
			if want := now.Add(tc.want + DefaultMargin); !mem.until.Equal(want) {
				t.Errorf("waits until %v, want %v", mem.until, want)
			}
		})
	}
}

// trickle is a memory that finds no record for any attempt and, while the
// gate waits, lets time pass in the steps the gate's end-offset watch asks
// for (Config.After), one at a time, so that each poll sees the clock of
// its step.
type trickle struct {
	clock  *time.Time
	asked  chan time.Duration // the watch's After(d) calls
	ticks  chan time.Time
	untils []time.Time
}

func (m *trickle) after(d time.Duration) <-chan time.Time {
	m.asked <- d
	return m.ticks
}

func (m *trickle) Acknowledged(ctx context.Context, _, _, _ string, _ dedup.Digest, _, until time.Time) (bool, error) {
	m.untils = append(m.untils, until)
	for {
		d := <-m.asked // the watch is waiting for its next poll
		if !m.clock.Add(d).Before(until) {
			*m.clock = until
			return false, nil // the wait ends first: the gate stops the watch
		}
		*m.clock = m.clock.Add(d)
		m.ticks <- *m.clock
	}
}

// TestEventsThatTrickleInHoldThePartitionAboutOneWait pins gate review 5
// (1): a mark's time was taken when the gate was handed an event, not when
// it landed. 20 events without records landing 1 s apart, each fetched on
// its own (high-water mark = offset + 1) while the gate waited for the
// first, were each waited for from when the gate was handed it: 20 waits
// in a row (13m20s). The gate now asks the broker for the partition's end
// offset while it waits, so each is waited for from the first poll after
// it landed: the partition is held about the 20 s they took to land plus
// one wait.
func TestEventsThatTrickleInHoldThePartitionAboutOneWait(t *testing.T) {
	const (
		timeout = 10 * time.Second
		k       = 20
	)
	clock := now
	mem := &trickle{clock: &clock, asked: make(chan time.Duration), ticks: make(chan time.Time)}
	landed := func(o int64) time.Time { return now.Add(time.Duration(o) * time.Second) }
	polls, failures := 0, 0
	core, logs := observer.New(zap.DebugLevel)
	g, err := New(Config{Memory: mem, Publisher: &pub{}, Next: func(*message.Message) error { return nil },
		Timeout: timeout, Window: 24 * time.Hour, Now: func() time.Time { return clock }, After: mem.after, Log: zap.New(core),
		EndOffset: func(_ context.Context, partition int) (int64, error) {
			if partition != 0 {
				t.Errorf("end offset asked of partition %d, want 0", partition)
			}
			polls++
			if polls%4 == 0 { // a lookup fails now and then: logged, nothing shortened
				failures++
				return 0, errors.New("broker unreachable")
			}
			var end int64
			for end < k && !landed(end).After(clock) {
				end++
			}
			return end, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	for o := range int64(k) {
		if clock.Before(landed(o)) {
			clock = landed(o) // the gate is idle until it lands
		}
		if err := g.Handle(partitionMessage(landed(o), "att-"+strconv.FormatInt(o, 10), o, o+1)); err != nil {
			t.Fatal(err)
		}
	}
	wait := timeout + DefaultMargin
	for o, u := range mem.untils {
		// Never shorter than one wait from its landing; never longer
		// than one wait from the poll after it (failed polls skipped).
		if lo, hi := landed(int64(o)).Add(wait), landed(int64(o)).Add(wait+EndOffsetFirstPoll+2*EndOffsetPoll); u.Before(lo) || u.After(hi) {
			t.Errorf("event %d (landed at +%v) waits until +%v, want between +%v and +%v", o, landed(int64(o)).Sub(now), u.Sub(now), lo.Sub(now), hi.Sub(now))
		}
	}
	if got, limit := clock.Sub(now), k*time.Second+wait+2*EndOffsetPoll; got > limit {
		t.Errorf("%d events landing 1 s apart held the partition %v, want at most %v (their landing, one wait and two polls)", k, got, limit)
	}
	if failures == 0 || logs.FilterMessageSnippet("end offset").Len() != failures {
		t.Errorf("%d failed lookups, %d logged; want some, each logged", failures, logs.FilterMessageSnippet("end offset").Len())
	}
}
