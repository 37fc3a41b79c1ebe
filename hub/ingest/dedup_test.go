package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap/zaptest"
)

// memory opens a dedup store on a fresh embedded broker.
func memory(t *testing.T) *dedup.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brokers := brokertest.Start(t, topic.AcceptedSpec(1, time.Hour))
	s, err := dedup.Open(brokers, topic.Accepted, time.Hour, 10*time.Second, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// edit returns raw with its JSON changed by f.
func edit(t *testing.T, raw []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRetryPublishesOnce: a publisher that retries after a timeout gets its
// positive answer again and nothing is published twice; the same id with
// other content is a conflict; the same id from another source is another
// event.
func TestRetryPublishesOnce(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	in.WithMemory(memory(t), zaptest.NewLogger(t))
	ctx := context.Background()

	first, err := in.Accept(ctx, "RX1", raw)
	if err != nil || first.Duplicate {
		t.Fatalf("Accept (first): got %+v, %v", first, err)
	}
	// The retry: the same event, written differently (whitespace, member
	// order): the canonical event is the same.
	retry := edit(t, raw, func(map[string]any) {})
	again, err := in.Accept(ctx, "RX1", retry)
	if err != nil || !again.Duplicate || again.ID != first.ID {
		t.Fatalf("Accept (retry): got %+v, %v; want the same id, duplicate", again, err)
	}
	if len(p.sent) != 1 {
		t.Fatalf("published %d messages for one event sent twice, want 1", len(p.sent))
	}
	changed := edit(t, raw, func(m map[string]any) { m["time"] = "2025-03-18T15:05:00Z" })
	_, err = in.Accept(ctx, "RX1", changed)
	if problem.KindOf(err) != problem.Conflict || problem.DetailsOf(err).Status != 409 {
		t.Fatalf("Accept (same id, other content): got %v, want a 409 conflict", err)
	}
	var pe *problem.Error
	if !errors.As(err, &pe) || len(pe.Violations) != 1 || pe.Violations[0].Pointer != "/id" || pe.Violations[0].Rule != RuleIDReused {
		t.Errorf("conflict violations: got %+v, want one at /id, rule %s", err, RuleIDReused)
	}
	if strings.Contains(err.Error(), "9990500002") {
		t.Errorf("the conflict names the NHS number: %v", err)
	}
	if len(p.sent) != 1 {
		t.Fatalf("published %d messages after a conflict, want 1", len(p.sent))
	}
}

// TestFailedPublishIsNotRemembered: an event the broker did not take was
// not accepted: its retry is published.
func TestFailedPublishIsNotRemembered(t *testing.T) {
	p := &pub{err: errors.New("down")}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	in.WithMemory(memory(t), zaptest.NewLogger(t))
	if _, err := in.Accept(context.Background(), "RX1", raw); problem.KindOf(err) != problem.Unavailable {
		t.Fatalf("Accept with the broker down: got %v, want unavailable", err)
	}
	p.err = nil
	acc, err := in.Accept(context.Background(), "RX1", raw)
	if err != nil || acc.Duplicate || len(p.sent) != 1 {
		t.Fatalf("the retry once the broker is back: got %+v, %v and %d published; want one new event published", acc, err, len(p.sent))
	}
}

func TestBatchRetriesAndRepeats(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	in.WithMemory(memory(t), zaptest.NewLogger(t))
	ctx := context.Background()
	if _, err := in.Accept(ctx, "RX1", raw); err != nil {
		t.Fatal(err)
	}
	other := edit(t, raw, func(m map[string]any) { m["id"] = "batch-2" })
	otherChanged := edit(t, other, func(m map[string]any) { m["time"] = "2025-03-18T15:05:00Z" })
	res := in.AcceptBatch(ctx, "RX1", []json.RawMessage{raw, other, other, otherChanged})
	type got struct {
		dup  bool
		kind problem.Kind
	}
	want := []got{
		{true, problem.Other},     // accepted before
		{false, problem.Other},    // new
		{true, problem.Other},     // listed twice: once published
		{false, problem.Conflict}, // listed again with other content
	}
	for i, r := range res {
		if g := (got{r.Duplicate, problem.KindOf(r.Err)}); g != want[i] {
			t.Errorf("result %d:\n\tgot  %+v (%v)\n\twant %+v", i, g, r.Err, want[i])
		}
	}
	if len(p.sent) != 2 {
		t.Errorf("published %d messages, want 2 (the first Accept and batch-2 once)", len(p.sent))
	}
}

// unrecorded is a memory whose records are never written (the write to
// carehub.accepted fails, as dedup.Store.Record then does: the claims are
// abandoned and an error returned).
type unrecorded struct{ *dedup.Store }

func (u unrecorded) Record(_ context.Context, cs ...dedup.Claim) error {
	for _, c := range cs {
		u.Abandon(c)
	}
	return errors.New("recording accepted events: broker unreachable")
}

// partlyRecorded is a memory whose broker writes the records of some
// claims of a batch and refuses the others (as kafka-go's per-message
// errors tell dedup.Store.Record).
type partlyRecorded struct {
	*dedup.Store
	refuse func(i int) bool // by index in Record's arguments
}

type partialRecordErr struct{ failed func(int) bool }

func (e partialRecordErr) Error() string       { return "recording accepted events: the broker refused some" }
func (e partialRecordErr) FailedAt(i int) bool { return e.failed(i) }

func (p partlyRecorded) Record(ctx context.Context, cs ...dedup.Claim) error {
	for i, c := range cs {
		if p.refuse(i) {
			p.Abandon(c)
		} else if err := p.Store.Record(ctx, c); err != nil {
			return err
		}
	}
	return partialRecordErr{p.refuse}
}

// TestPartlyRecordedBatchIsAnsweredPerEvent pins review bug (4) of the ack
// gate: when some records of a batch failed, every event of the batch was
// answered 503 and its claim abandoned, though the others' records had
// landed (their events routed, their resends duplicates). Now only the
// events whose record failed are answered Unavailable; and each published
// event carries its own attempt id.
func TestPartlyRecordedBatchIsAnsweredPerEvent(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	mem := memory(t)
	in.WithMemory(partlyRecorded{mem, func(i int) bool { return i == 1 }}, zaptest.NewLogger(t))
	ctx := context.Background()
	second := edit(t, raw, func(m map[string]any) { m["id"] = "partly-2" })
	third := edit(t, raw, func(m map[string]any) { m["id"] = "partly-3" })
	res := in.AcceptBatch(ctx, "RX1", []json.RawMessage{raw, second, third, second})
	for i, wantUnavailable := range []bool{false, true, false, true} {
		if got := res[i].Err != nil && problem.KindOf(res[i].Err) == problem.Unavailable; got != wantUnavailable || (res[i].Err != nil) != wantUnavailable {
			t.Errorf("result %d: got %v, want unavailable %v", i, res[i].Err, wantUnavailable)
		}
	}
	attempts := map[string]bool{}
	for _, m := range p.sent {
		attempts[m.Metadata.Get(topic.MetaAttempt)] = true
	}
	if len(p.sent) != 3 || len(attempts) != 3 || attempts[""] {
		t.Errorf("published %d events with attempts %v: want 3, each with its own", len(p.sent), attempts)
	}
	in.WithMemory(mem, nil)
	for i, want := range []bool{true, false, true} {
		acc, err := in.Accept(ctx, "RX1", [][]byte{raw, second, third}[i])
		if err != nil || acc.Duplicate != want {
			t.Errorf("resend %d: got %+v, %v; want duplicate %v", i, acc, err, want)
		}
	}
}

// slowRecord is a memory whose records are acknowledged only after the
// ingest's deadline has passed.
type slowRecord struct{ *dedup.Store }

func (m slowRecord) Record(ctx context.Context, cs ...dedup.Claim) error {
	err := m.Store.Record(context.WithoutCancel(ctx), cs...)
	<-ctx.Done()
	return err
}

// TestARecordAcknowledgedAfterTheDeadlineIsNotA202: the router voids an
// attempt once acceptance + publishTimeout (+ a margin) has passed with no
// record, so a 202 must mean the record was acknowledged before the
// deadline; one acknowledged later is answered 503 (it may still be routed,
// having landed before any void: the resend is then a duplicate).
func TestARecordAcknowledgedAfterTheDeadlineIsNotA202(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Timeout = 300 * time.Millisecond
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	mem := memory(t)
	in.WithMemory(slowRecord{mem}, zaptest.NewLogger(t))
	if _, err := in.Accept(context.Background(), "RX1", raw); problem.KindOf(err) != problem.Unavailable {
		t.Fatalf("a record acknowledged after the deadline: got %v, want unavailable", err)
	}
	in.WithMemory(mem, nil)
	if acc, err := in.Accept(context.Background(), "RX1", raw); err != nil || !acc.Duplicate {
		t.Errorf("the resend: got %+v, %v; want a duplicate (the record is there, before any void)", acc, err)
	}
}

// slowPartlyRecorded is a memory whose broker writes the records of some
// claims and refuses the others, and answers only after the ingest's
// deadline has passed.
type slowPartlyRecorded struct{ partlyRecorded }

func (m slowPartlyRecorded) Record(ctx context.Context, cs ...dedup.Claim) error {
	err := m.partlyRecorded.Record(context.WithoutCancel(ctx), cs...)
	<-ctx.Done()
	return err
}

// TestAPartialRecordErrorAfterTheDeadlineIsNotA202 pins the review's nit
// on the ack gate: the deadline was checked only when Record succeeded, so
// a partial record error returned after the deadline still gave 202 to the
// events whose records were acknowledged (late, perhaps after a router
// voided them). Now every event of the batch is answered 503.
func TestAPartialRecordErrorAfterTheDeadlineIsNotA202(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Timeout = 300 * time.Millisecond
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	mem := memory(t)
	in.WithMemory(slowPartlyRecorded{partlyRecorded{mem, func(i int) bool { return i == 1 }}}, zaptest.NewLogger(t))
	second := edit(t, raw, func(m map[string]any) { m["id"] = "late-partly-2" })
	res := in.AcceptBatch(context.Background(), "RX1", []json.RawMessage{raw, second})
	for i := range res {
		if got := problem.KindOf(res[i].Err); got != problem.Unavailable {
			t.Errorf("result %d, its record answered after the deadline: got %v (%v), want %v", i, got, res[i].Err, problem.Unavailable)
		}
	}
}

// TestARecordCarriesTheAttemptsAcceptanceTime pins review bug (4) of the
// ack gate's rework: a record's time was when Record ran, its void's the
// event's carehub_accepted, so the record outlived the void by the gap and
// a process started in it loaded the record alone (the resend a
// Duplicate, the event never routed). The ingest now gives each claim the
// time in its event's header, and the record carries it.
func TestARecordCarriesTheAttemptsAcceptanceTime(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	d := &deadlines{mem: memory(t)}
	var got []dedup.Claim
	in.WithMemory(recorded{d, &got}, zaptest.NewLogger(t))
	before := time.Now()
	if _, err := in.Accept(context.Background(), "RX1", raw); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(p.sent) != 1 {
		t.Fatalf("recorded %d claims, published %d events; want 1 and 1", len(got), len(p.sent))
	}
	header, err := time.Parse(time.RFC3339Nano, p.sent[0].Metadata.Get(topic.MetaAccepted))
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Accepted.Equal(header) || header.Before(before.Truncate(time.Microsecond)) || header.After(time.Now()) {
		t.Errorf("the claim recorded carries %v, want the event's carehub_accepted %v (the ingest's clock during the call)", got[0].Accepted, header)
	}
}

// recorded notes the claims given to Record.
type recorded struct {
	*deadlines
	got *[]dedup.Claim
}

func (r recorded) Record(ctx context.Context, cs ...dedup.Claim) error {
	*r.got = append(*r.got, cs...)
	return r.deadlines.Record(ctx, cs...)
}

// TestUnrecordedEventIsAnsweredUnavailable pins issue 14's in-doubt bug
// (an event answered 202 whose record in carehub.accepted failed was
// logged and acknowledged; answered 503 it was routed anyway): the record
// is the acknowledgement the router requires (package ackgate), so an
// event published but not recorded is answered Unavailable, per event and
// with its repeat in the batch, and a resend with the same id is a new
// event, published and accepted once the memory records again.
func TestUnrecordedEventIsAnsweredUnavailable(t *testing.T) {
	p := &pub{}
	in, raw := setup(t, p)
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	mem := memory(t)
	in.WithMemory(unrecorded{mem}, zaptest.NewLogger(t))
	ctx := context.Background()
	other := edit(t, raw, func(m map[string]any) { m["id"] = "unrecorded-2" })
	res := in.AcceptBatch(ctx, "RX1", []json.RawMessage{raw, other, other, []byte(`{}`)})
	for i, want := range []problem.Kind{problem.Unavailable, problem.Unavailable, problem.Unavailable, problem.Invalid} {
		if got := problem.KindOf(res[i].Err); got != want {
			t.Errorf("result %d with the record failing: got %v (%v), want %v", i, got, res[i].Err, want)
		}
	}
	if d := problem.DetailsOf(res[0].Err); d.Status != 503 || !strings.Contains(d.Detail, "same id") {
		t.Errorf("the answer: got %d %q, want 503 asking for a retry with the same id", d.Status, d.Detail)
	}
	if len(p.sent) != 2 {
		t.Fatalf("published %d events, want 2 (each once, before the record failed)", len(p.sent))
	}
	in.WithMemory(mem, nil)
	acc, err := in.Accept(ctx, "RX1", raw)
	if err != nil || acc.Duplicate {
		t.Fatalf("the resend with the same id: got %+v, %v; want accepted as new", acc, err)
	}
	if len(p.sent) != 3 {
		t.Errorf("published %d events after the resend, want 3", len(p.sent))
	}
}
