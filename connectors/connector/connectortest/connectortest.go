// Package connectortest is the conformance suite every source and sink
// connector runs, in about ten lines of its own test (like watermill's
// pubsub/tests.TestPubSub or testing/fstest.TestFS).
//
// Sources: RunSource drives the source with a real client of its protocol
// (given by the connector's test) against a fake connector.Ingest that the
// suite controls, and checks the ack contract of package connector: a
// positive answer only after Accept returned nil, never before; a negative
// answer when Accept fails; nothing accepted for an unauthenticated sender.
//
// Sinks: RunSink drives the sink against a receiver of its protocol (given
// by the connector's test) whose behaviour the suite sets, and checks the
// delivery contract: nil once delivered; transient failures retried until
// delivered; a rejection reported as connector.Permanent; a cancelled
// context ends the retries with a non-permanent error; no payload in errors.
//
// The suite is tested itself: feeding it broken fakes must make it fail
// (connectortest_test.go).
package connectortest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/problem"
)

// Canary is placed in every payload the suite sends; it must never appear
// in an error string.
const Canary = "9990000018"

// Answer is what a sender got back.
type Answer struct {
	Positive bool   // 202, AA
	Detail   string // the status or code, for messages
}

// SourceClient sends documents to the source under test, as the
// authenticated organisation.
type SourceClient interface {
	// Send sends one document and returns the answer, or an error if no
	// answer came (connection failed).
	Send(ctx context.Context, doc []byte) (Answer, error)
	// SendUnauthenticated sends one document without (or with wrong)
	// credentials.
	SendUnauthenticated(ctx context.Context, doc []byte) (Answer, error)
}

// SourceHarness starts the source under test.
type SourceHarness struct {
	// Start starts the source with in as its Ingest, authenticating the
	// sender as org, and returns a client. Cleanup via t.Cleanup.
	Start func(t *testing.T, in connector.Ingest, org string) SourceClient
	// Document returns a document of the source's protocol that carries
	// Canary and, once mapped, the given event id. Each call's id differs.
	Document func(id string) []byte
}

// Ingest is the suite's controllable connector.Ingest.
type Ingest struct {
	mu       sync.Mutex
	accepted []string
	fail     error
	block    chan struct{} // when set, Accept waits for it to close
	entered  chan struct{} // signalled when Accept is entered
}

func newIngest() *Ingest { return &Ingest{entered: make(chan struct{}, 16)} }

func (in *Ingest) set(fail error, block chan struct{}) {
	in.mu.Lock()
	in.fail, in.block = fail, block
	in.mu.Unlock()
}

func (in *Ingest) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.accepted)
}

// Accept implements connector.Ingest.
func (in *Ingest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	in.mu.Lock()
	fail, block := in.fail, in.block
	in.mu.Unlock()
	select {
	case in.entered <- struct{}{}:
	default:
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return connector.Accepted{}, problem.Wrap(problem.Unavailable, "stopped", ctx.Err())
		}
	}
	if fail != nil {
		return connector.Accepted{}, fail
	}
	var ce struct{ ID, Type string }
	_ = json.Unmarshal(raw, &ce)
	in.mu.Lock()
	in.accepted = append(in.accepted, org)
	in.mu.Unlock()
	return connector.Accepted{ID: ce.ID, Type: ce.Type}, nil
}

// AcceptBatch implements connector.Ingest.
func (in *Ingest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	out := make([]connector.Result, len(raws))
	for i, r := range raws {
		acc, err := in.Accept(ctx, org, r)
		out[i] = connector.Result{Accepted: acc, Err: err}
	}
	return out
}

// RunSource runs the source conformance suite.
func RunSource(t *testing.T, h SourceHarness) {
	t.Helper()
	ctx := func(t *testing.T) context.Context {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return c
	}
	seq := 0
	doc := func() []byte { seq++; return h.Document(fmt.Sprintf("conformance-%d", seq)) }

	t.Run("positive answer once accepted", func(t *testing.T) {
		in := newIngest()
		c := h.Start(t, in, "RX1")
		a, err := c.Send(ctx(t), doc())
		if err != nil || !a.Positive {
			t.Fatalf("Send: got %+v, %v; want a positive answer", a, err)
		}
		if n := in.count(); n != 1 {
			t.Errorf("Accept calls: got %d, want 1", n)
		}
	})

	for _, kind := range []problem.Kind{problem.Invalid, problem.Unavailable, problem.Forbidden} {
		t.Run("negative answer when Accept fails: "+kind.String(), func(t *testing.T) {
			in := newIngest()
			in.set(problem.New(kind, "refused by the suite"), nil)
			c := h.Start(t, in, "RX1")
			a, err := c.Send(ctx(t), doc())
			if err != nil {
				t.Fatalf("Send: %v; want a negative answer, not a broken connection", err)
			}
			if a.Positive {
				t.Errorf("got a positive answer (%s) though Accept failed with %s", a.Detail, kind)
			}
		})
	}

	t.Run("no positive answer before Accept returns", func(t *testing.T) {
		in := newIngest()
		release := make(chan struct{})
		in.set(nil, release)
		c := h.Start(t, in, "RX1")
		answered := make(chan Answer, 1)
		go func() {
			a, _ := c.Send(context.Background(), doc())
			answered <- a
		}()
		select {
		case <-in.entered:
		case a := <-answered:
			close(release)
			t.Fatalf("answered %+v before Accept was called", a)
		case <-time.After(20 * time.Second):
			close(release)
			t.Fatalf("Accept was never called")
		}
		// Accept is blocked: no answer may arrive. Give a broken source
		// a bounded chance to show itself.
		select {
		case a := <-answered:
			close(release)
			t.Fatalf("answered %+v while Accept had not returned", a)
		case <-time.After(300 * time.Millisecond):
		}
		close(release)
		select {
		case a := <-answered:
			if !a.Positive {
				t.Errorf("after Accept returned nil: got %+v, want positive", a)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no answer after Accept returned")
		}
	})

	t.Run("unauthenticated sender: nothing accepted", func(t *testing.T) {
		in := newIngest()
		c := h.Start(t, in, "RX1")
		a, err := c.SendUnauthenticated(ctx(t), doc())
		if err == nil && a.Positive {
			t.Errorf("an unauthenticated sender got a positive answer (%s)", a.Detail)
		}
		if n := in.count(); n != 0 {
			t.Errorf("Accept succeeded %d times for an unauthenticated sender", n)
		}
	})
}

// Behaviour is how the suite's receiver answers.
type Behaviour int

// The behaviours.
const (
	Accept    Behaviour = iota // take the delivery
	Transient                  // fail in a way worth retrying (a 503, a dropped connection)
	Reject                     // refuse the delivery for good (a 400, an AR)
)

// Receiver is the far end of a sink, run by the connector's test.
type Receiver interface {
	// Behave sets how the following deliveries are answered.
	Behave(b Behaviour)
	// Received returns the bodies accepted so far.
	Received() [][]byte
}

// SinkHarness starts the sink under test.
type SinkHarness struct {
	// Start returns a sink that delivers to a receiver it also returns.
	// The sink must retry quickly (millisecond backoff) in tests.
	Start func(t *testing.T) (connector.Sink, Receiver)
	// Body returns a deliverable document carrying Canary and the id.
	Body func(id string) []byte
}

// RunSink runs the sink conformance suite.
func RunSink(t *testing.T, h SinkHarness) {
	t.Helper()
	delivery := func(id string) connector.Delivery {
		return connector.Delivery{EventID: id, EventType: "org.carehub.discharge.v1", Recipient: "A81001",
			PatientRef: "p1_conformance", Body: h.Body(id)}
	}
	noCanary := func(t *testing.T, err error) {
		if err != nil && strings.Contains(err.Error(), Canary) {
			t.Errorf("the error carries payload data: %q", err.Error())
		}
	}

	t.Run("delivered", func(t *testing.T) {
		s, r := h.Start(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := s.Deliver(ctx, delivery("ok-1"))
		if err != nil {
			t.Fatalf("Deliver: %v", err)
		}
		if out.Attempts < 1 {
			t.Errorf("Outcome.Attempts: got %d, want at least 1", out.Attempts)
		}
		if got := r.Received(); len(got) != 1 || !bytes.Contains(got[0], []byte("ok-1")) {
			t.Errorf("received: got %d bodies, want the one delivered", len(got))
		}
	})

	t.Run("transient failures are retried until delivered", func(t *testing.T) {
		s, r := h.Start(t)
		r.Behave(Transient)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := s.Deliver(ctx, delivery("retry-1")); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("Deliver returned (%v) while the receiver was failing transiently", err)
		case <-time.After(300 * time.Millisecond):
		}
		r.Behave(Accept)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Deliver after recovery: %v", err)
			}
		case <-ctx.Done():
			t.Fatalf("not delivered after the receiver recovered")
		}
		if got := r.Received(); len(got) != 1 {
			t.Errorf("received: got %d bodies, want 1", len(got))
		}
	})

	t.Run("a rejection is permanent", func(t *testing.T) {
		s, r := h.Start(t)
		r.Behave(Reject)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := s.Deliver(ctx, delivery("reject-1"))
		reason, permanent := connector.IsPermanent(err)
		if !permanent || reason == "" {
			t.Fatalf("Deliver to a rejecting receiver: got %v, want connector.Permanent with a reason", err)
		}
		noCanary(t, err)
		if strings.Contains(reason, Canary) {
			t.Errorf("the dead-letter reason carries payload data: %q", reason)
		}
	})

	t.Run("cancelling ends retries, not permanently", func(t *testing.T) {
		s, r := h.Start(t)
		r.Behave(Transient)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := s.Deliver(ctx, delivery("cancel-1")); done <- err }()
		time.AfterFunc(200*time.Millisecond, cancel)
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("Deliver succeeded against a failing receiver")
			}
			if _, permanent := connector.IsPermanent(err); permanent {
				t.Errorf("a cancelled delivery was reported permanent: it would be dead-lettered")
			}
			noCanary(t, err)
		case <-time.After(20 * time.Second):
			t.Fatalf("Deliver did not return after its context was cancelled")
		}
	})
}

// errBroken is used by the suite's own tests.
var errBroken = errors.New("broken")
