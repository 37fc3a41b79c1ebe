// Package connectortest is the conformance suite every source and sink
// connector passes (like watermill's pubsub/tests.TestPubSub or
// testing/fstest.TestFS). It runs a connector from its factory alone, through
// the factory's probe, so connectors/all can run it on every registered
// connector: a connector cannot skip it.
//
// Sources: RunSource starts the source from its probe's configuration
// against a fake connector.Ingest that the suite controls, sends it real
// messages of its protocol through the probe, and checks the ack contract
// of package connector: a positive answer only after Accept returned nil,
// never before; a negative answer when Accept fails (and no report of it to
// Env.Refusals: Ingest counts its own refusals); nothing accepted from an
// unauthenticated sender, and its refusal reported to Env.Refusals. A probe with a HeldDocument (a message the
// protocol acknowledges without sharing) is held to the same contract
// through Hold.
//
// Sinks: RunSink starts the probe's receiver, whose answers the suite sets,
// builds the sink from the configuration the probe returns, and checks the
// delivery contract: nil once delivered; transient failures retried until
// delivered; a rejection reported as connector.Permanent; no payload in
// errors; consent re-checked before every retry (SinkEnv.Consent): a copy
// the re-check withholds, or makes narrower, is never handed over; and the
// stop (Deliver's context ends): a wait between attempts ends at once with a
// non-permanent error, and an attempt under way is let finish (the probe's
// receiver holds it while the suite cancels) and its answer counts, with no
// attempt after it.
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
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Canary is placed in every payload the suite sends; it must never appear
// in an error string.
const Canary = "9990000018"

// Organisation is the source organisation the suite publishes as, and
// Stranger one it never authenticates.
const (
	Organisation = "RX1"
	Stranger     = "RX9"
	key          = "conformance-key-1"
)

// Answer is what a sender got back.
type Answer = connector.Answer

// keys authenticates the suite's one key as Organisation.
type keys struct{}

func (keys) Organisation(r *http.Request) (string, error) {
	if r.Header.Get("Authorization") != "Bearer "+key {
		return "", problem.New(problem.Unauthenticated, "an API key is required")
	}
	return Organisation, nil
}

// refusals records what a source reports to Env.Refusals.
type refusals struct {
	mu    sync.Mutex
	kinds []problem.Kind
}

func (r *refusals) Refused(_ context.Context, _ string, kind problem.Kind) {
	r.mu.Lock()
	r.kinds = append(r.kinds, kind)
	r.mu.Unlock()
}

func (r *refusals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.kinds)
}

// startSource builds the source from its factory's probe and runs it
// against in, with its HTTP routes (if any) on a test server. What it
// refuses before Ingest is reported to refused (nil: nobody listens).
func startSource(t *testing.T, f connector.SourceFactory, in connector.Ingest, refused ...*refusals) func(ctx context.Context, doc []byte, key string) (Answer, error) {
	t.Helper()
	cfg := f.Probe.Config(Organisation)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("%s: the probe's configuration does not validate: %v", f.Type, err)
	}
	src, err := f.New(cfg)
	if err != nil {
		t.Fatalf("%s: New: %v", f.Type, err)
	}
	mux := http.NewServeMux()
	env := connector.Env{Ingest: in, Auth: keys{}, Mux: mux, MaxBodyBytes: 1 << 20, Log: zap.NewNop()}
	if len(refused) > 0 {
		env.Refusals = refused[0]
	}
	if err := src.Register(env); err != nil {
		t.Fatalf("%s: Register: %v", f.Type, err)
	}
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, env) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s: Run did not return after its context ended", f.Type)
		}
		srv.Close()
	})
	return func(ctx context.Context, doc []byte, key string) (Answer, error) {
		return f.Probe.Send(ctx, src, srv.URL, key, doc)
	}
}

// Ingest is the suite's controllable connector.Ingest. Its fail and block
// settings apply to Accept and Hold alike.
type Ingest struct {
	mu       sync.Mutex
	accepted []string
	held     []connector.Held
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

// Hold implements connector.Ingest.
func (in *Ingest) Hold(ctx context.Context, org string, h connector.Held) error {
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
			return problem.Wrap(problem.Unavailable, "stopped", ctx.Err())
		}
	}
	if fail != nil {
		return fail
	}
	in.mu.Lock()
	in.held = append(in.held, h)
	in.mu.Unlock()
	return nil
}

func (in *Ingest) heldCount() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.held)
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

// RunSource runs the source conformance suite on a source connector type.
func RunSource(t *testing.T, f connector.SourceFactory) {
	t.Helper()
	if f.Probe == nil {
		t.Fatalf("source connector %s has no probe: the conformance suite cannot run it", f.Type)
	}
	ctx := func(t *testing.T) context.Context {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return c
	}
	seq := 0
	doc := func() []byte {
		seq++
		return f.Probe.Document(Organisation, fmt.Sprintf("conformance-%d", seq), Canary)
	}

	t.Run("positive answer once accepted", func(t *testing.T) {
		in := newIngest()
		send := startSource(t, f, in)
		a, err := send(ctx(t), doc(), key)
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
			var refused refusals
			send := startSource(t, f, in, &refused)
			a, err := send(ctx(t), doc(), key)
			if err != nil {
				t.Fatalf("Send: %v; want a negative answer, not a broken connection", err)
			}
			if a.Positive {
				t.Errorf("got a positive answer (%s) though Accept failed with %s", a.Detail, kind)
			}
			if n := refused.count(); n != 0 {
				t.Errorf("reported %d refusals to Env.Refusals for a message Ingest refused (Ingest counts its own), want 0", n)
			}
		})
	}

	t.Run("no positive answer before Accept returns", func(t *testing.T) {
		in := newIngest()
		release := make(chan struct{})
		in.set(nil, release)
		send := startSource(t, f, in)
		answered := make(chan Answer, 1)
		d := doc()
		go func() {
			a, _ := send(context.Background(), d, key)
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

	if f.Probe.HeldDocument != nil {
		runHeld(t, f, ctx)
	}

	t.Run("unauthenticated sender: nothing accepted", func(t *testing.T) {
		in := newIngest()
		var refused refusals
		send := startSource(t, f, in, &refused)
		seq++
		a, err := send(ctx(t), f.Probe.Document(Stranger, fmt.Sprintf("conformance-%d", seq), Canary), "")
		if err == nil && a.Positive {
			t.Errorf("an unauthenticated sender got a positive answer (%s)", a.Detail)
		}
		if n := in.count(); n != 0 {
			t.Errorf("Accept succeeded %d times for an unauthenticated sender", n)
		}
		if err == nil && !a.Positive && in.count() == 0 {
			if n := refused.count(); n != 1 {
				t.Errorf("refusals of the unauthenticated sender reported to Env.Refusals: got %d, want 1", n)
			}
		}
	})
}

// runHeld checks the ack contract for messages a source acknowledges
// without sharing: Hold, not Accept; a positive answer only once Hold
// returned nil; a negative one when it failed.
func runHeld(t *testing.T, f connector.SourceFactory, ctx func(*testing.T) context.Context) {
	seq := 0
	doc := func() []byte {
		seq++
		return f.Probe.HeldDocument(Organisation, fmt.Sprintf("conformance-held-%d", seq), Canary)
	}
	t.Run("held: positive answer once held, nothing accepted", func(t *testing.T) {
		in := newIngest()
		send := startSource(t, f, in)
		a, err := send(ctx(t), doc(), key)
		if err != nil || !a.Positive {
			t.Fatalf("Send: got %+v, %v; want a positive answer", a, err)
		}
		if n, m := in.heldCount(), in.count(); n != 1 || m != 0 {
			t.Errorf("Hold calls %d, Accept calls %d: want 1 and 0", n, m)
		}
		in.mu.Lock()
		h := in.held[0]
		in.mu.Unlock()
		if h.ID == "" || h.Reason == "" || len(h.Original) == 0 {
			t.Errorf("the held record lacks its id, reason or original: id %q reason %q, %d bytes", h.ID, h.Reason, len(h.Original))
		}
		for _, s := range []string{h.ID, h.Trigger, h.Reason, h.Detail} {
			if strings.Contains(s, Canary) {
				t.Errorf("held metadata carries the patient's NHS number: %q", s)
			}
		}
	})
	t.Run("held: negative answer when Hold fails", func(t *testing.T) {
		in := newIngest()
		in.set(problem.New(problem.Unavailable, "refused by the suite"), nil)
		send := startSource(t, f, in)
		a, err := send(ctx(t), doc(), key)
		if err != nil {
			t.Fatalf("Send: %v; want a negative answer, not a broken connection", err)
		}
		if a.Positive {
			t.Errorf("got a positive answer (%s) though Hold failed", a.Detail)
		}
	})
	t.Run("held: no positive answer before Hold returns", func(t *testing.T) {
		in := newIngest()
		release := make(chan struct{})
		in.set(nil, release)
		send := startSource(t, f, in)
		answered := make(chan Answer, 1)
		d := doc()
		go func() {
			a, _ := send(context.Background(), d, key)
			answered <- a
		}()
		select {
		case <-in.entered:
		case a := <-answered:
			close(release)
			t.Fatalf("answered %+v before Hold was called", a)
		case <-time.After(20 * time.Second):
			close(release)
			t.Fatalf("Hold was never called")
		}
		select {
		case a := <-answered:
			close(release)
			t.Fatalf("answered %+v while Hold had not returned", a)
		case <-time.After(300 * time.Millisecond):
		}
		close(release)
		select {
		case a := <-answered:
			if !a.Positive {
				t.Errorf("after Hold returned nil: got %+v, want positive", a)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no answer after Hold returned")
		}
	})
}

// Behaviour is how the probe's receiver answers.
type Behaviour = connector.Behaviour

// The behaviours.
const (
	Accept    = connector.Accept
	Transient = connector.Transient
	Reject    = connector.Reject
)

// receiver is the probe's receiver as the suite sees it.
type receiver struct {
	mu    sync.Mutex
	b     Behaviour
	got   [][]byte
	calls int           // attempts that reached the receiver
	hold  chan struct{} // when set, an attempt waits for it to close before it is answered
	held  chan struct{} // signalled when an attempt starts to wait on hold
}

func (r *receiver) Behave(b Behaviour) { r.mu.Lock(); r.b = b; r.mu.Unlock() }

func (r *receiver) Received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.got...)
}

// Calls is the number of attempts that reached the receiver.
func (r *receiver) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// Hold makes every attempt wait, once it has reached the receiver, until
// the returned channel is closed; Held is signalled as each starts to wait.
func (r *receiver) Hold() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold, r.held = make(chan struct{}), make(chan struct{}, 16)
	return r.hold
}

// behave is what the probe's receiver asks, once per attempt that reaches
// it (after it has read the request): it blocks while the suite holds
// attempts.
func (r *receiver) behave() Behaviour {
	r.mu.Lock()
	r.calls++
	hold, held := r.hold, r.held
	r.mu.Unlock()
	if hold != nil {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.b
}

// sinkOptions are how the suite builds a sink: the consent re-check
// (default connector.AlwaysPermit) and the retry bounds (default: retries
// within milliseconds).
type sinkOptions struct {
	consent connector.Consent
	retry   connector.Retry
}

// startSink starts the probe's receiver and builds a sink delivering to it.
func startSink(t *testing.T, f connector.SinkFactory, o sinkOptions) (connector.Sink, *receiver) {
	t.Helper()
	r := &receiver{}
	got := func(b []byte) { r.mu.Lock(); r.got = append(r.got, append([]byte(nil), b...)); r.mu.Unlock() }
	cfg, stop, err := f.Probe.Receiver(r.behave, got)
	if err != nil {
		t.Fatalf("%s: starting the probe's receiver: %v", f.Type, err)
	}
	t.Cleanup(stop)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("%s: the probe's configuration does not validate: %v", f.Type, err)
	}
	var env connector.SinkEnv
	if f.Probe.Env != nil {
		env = f.Probe.Env(r.behave, got)
	}
	env.Consent = connector.AlwaysPermit
	if o.consent != nil {
		env.Consent = o.consent
	}
	env.Recipient, env.Log = "A81001", zap.NewNop()
	env.Retry = connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}
	if o.retry != (connector.Retry{}) {
		env.Retry = o.retry
	}
	s, err := f.New(cfg, env)
	if err != nil {
		t.Fatalf("%s: New: %v", f.Type, err)
	}
	return s, r
}

// Body returns the event the suite delivers: a valid discharge carrying
// the event id and Canary as the patient's NHS number.
func Body(id string) []byte {
	return []byte(`{"specversion":"1.0","id":"` + id + `","source":"urn:ods:RX1","type":"org.carehub.discharge.v1",` +
		`"time":"2026-11-24T10:00:00Z","datacontenttype":"application/json","data":{"patient":{"nhsNumber":"` + Canary + `",` +
		`"gpPractice":"A81001","name":{"family":"CONFORMANCE","given":["Test"]},"birthDate":"1940-01-01","gender":"female"},` +
		`"encounter":{"id":"ENC-CONFORMANCE","class":"inpatient","period":{"start":"2026-11-20T09:00:00Z","end":"2026-11-24T09:45:00Z"},` +
		`"serviceProvider":{"ods":"RX1"}},"discharge":{"destination":{"type":"care-home","ods":"VM123"},` +
		`"summary":{"contentType":"text/plain","title":"Discharge summary","creation":"2026-11-24T09:30:00Z","text":"SYNTHETIC TEST DATA"}}}}`)
}

// RunSink runs the sink conformance suite on a sink connector type.
func RunSink(t *testing.T, f connector.SinkFactory) {
	t.Helper()
	if f.Probe == nil {
		t.Fatalf("sink connector %s has no probe: the conformance suite cannot run it", f.Type)
	}
	delivery := func(id string) connector.Delivery {
		return connector.Delivery{EventID: id, EventType: "org.carehub.discharge.v1", Recipient: "A81001",
			PatientRef: "p1_conformance", Body: Body(id)}
	}
	noCanary := func(t *testing.T, err error) {
		if err != nil && strings.Contains(err.Error(), Canary) {
			t.Errorf("the error carries payload data: %q", err.Error())
		}
	}

	t.Run("delivered", func(t *testing.T) {
		s, r := startSink(t, f, sinkOptions{})
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
		s, r := startSink(t, f, sinkOptions{})
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
		s, r := startSink(t, f, sinkOptions{})
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

	// A patient withholds the copy while the recipient is down: when it
	// is back, the copy must not be handed over.
	t.Run("consent is re-checked before a retry", func(t *testing.T) {
		for _, change := range []string{"withheld", "narrower"} {
			var mu sync.Mutex
			verdict := func(d connector.Delivery) connector.Verdict {
				return connector.Verdict{Permit: true, Body: d.Body, Rule: "test-permit"}
			}
			rechecks := 0
			c := connector.ConsentFunc(func(_ context.Context, d connector.Delivery) (connector.Verdict, error) {
				mu.Lock()
				defer mu.Unlock()
				rechecks++
				return verdict(d), nil
			})
			s, r := startSink(t, f, sinkOptions{consent: c})
			r.Behave(Transient)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			done := make(chan error, 1)
			go func() { _, err := s.Deliver(ctx, delivery("recheck-1")); done <- err }()
			time.Sleep(100 * time.Millisecond) // a few failed attempts
			mu.Lock()
			if change == "withheld" {
				verdict = func(connector.Delivery) connector.Verdict {
					return connector.Verdict{Permit: false, Rule: "test-deny"}
				}
			} else {
				verdict = func(connector.Delivery) connector.Verdict {
					return connector.Verdict{Permit: true, Body: []byte(`{"thin":true}`), Rule: "test-thin"}
				}
			}
			at := rechecks
			mu.Unlock()
			// An attempt re-checked before the change may still be in
			// flight (the one race no re-check can close); once a
			// re-check has run since, none is: the recipient comes back.
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
				mu.Lock()
				n := rechecks
				mu.Unlock()
				if n > at || time.Now().After(deadline) {
					break
				}
			}
			r.Behave(Accept)
			var err error
			select {
			case err = <-done:
			case <-ctx.Done():
				t.Fatalf("%s: Deliver did not return", change)
			}
			cancel()
			if got := r.Received(); len(got) != 0 {
				t.Errorf("%s: the receiver got the copy after the re-check changed it (%d bodies)", change, len(got))
			}
			if change == "withheld" {
				if rule, ok := connector.IsWithheld(err); !ok || rule != "test-deny" {
					t.Errorf("withheld: Deliver returned %v, want connector.Withheld with the rule", err)
				}
			} else if !errors.Is(err, connector.ErrConsentChanged) {
				t.Errorf("narrower: Deliver returned %v, want connector.ErrConsentChanged", err)
			}
			mu.Lock()
			if rechecks == 0 {
				t.Errorf("%s: the sink never called SinkEnv.Consent.Recheck", change)
			}
			mu.Unlock()
		}
	})

	// The hub stops while the recipient is down: the sink is waiting to
	// retry. The wait ends at once, no attempt starts, and the copy is not
	// dead-lettered: it is delivered after the restart.
	t.Run("cancelling ends retries, not permanently", func(t *testing.T) {
		s, r := startSink(t, f, sinkOptions{retry: connector.Retry{MinBackoff: time.Minute, MaxBackoff: time.Minute}})
		r.Behave(Transient)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := s.Deliver(ctx, delivery("cancel-1")); done <- err }()
		for deadline := time.Now().Add(20 * time.Second); r.Calls() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no attempt reached the receiver")
			}
		}
		cancel()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("Deliver succeeded against a failing receiver")
			}
			if _, permanent := connector.IsPermanent(err); permanent {
				t.Errorf("a cancelled delivery was reported permanent: it would be dead-lettered")
			}
			noCanary(t, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("Deliver did not return after its context was cancelled: a wait between attempts (here a minute) must end at once")
		}
		if n := r.Calls(); n != 1 {
			t.Errorf("attempts that reached the receiver: got %d, want 1 (none after the cancel)", n)
		}
	})

	// The hub stops while an attempt is on the wire: the recipient has
	// read it and is about to answer. Cutting the attempt short would lose
	// the answer, and the copy would be sent again after the restart (a
	// duplicate). The attempt finishes and its answer counts; no other
	// starts.
	t.Run("a stop lets the attempt under way finish", func(t *testing.T) {
		for _, then := range []Behaviour{Accept, Transient} {
			name := map[Behaviour]string{Accept: "accepted", Transient: "failed"}[then]
			s, r := startSink(t, f, sinkOptions{})
			release := r.Hold()
			ctx, cancel := context.WithCancel(context.Background())
			type result struct {
				out connector.Outcome
				err error
			}
			done := make(chan result, 1)
			go func() { out, err := s.Deliver(ctx, delivery("stop-"+name)); done <- result{out, err} }()
			select {
			case <-r.held:
			case res := <-done:
				cancel()
				t.Fatalf("%s: Deliver returned (%v) before its attempt reached the receiver", name, res.err)
			case <-time.After(20 * time.Second):
				cancel()
				t.Fatalf("%s: no attempt reached the receiver", name)
			}
			cancel()
			// A sink that aborts its attempt returns now: give it a
			// bounded chance to show itself.
			select {
			case res := <-done:
				close(release)
				t.Fatalf("%s: Deliver returned (%v) while its attempt was held by the receiver: a stop must let an attempt under way finish", name, res.err)
			case <-time.After(300 * time.Millisecond):
			}
			r.Behave(then)
			close(release)
			var res result
			select {
			case res = <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("%s: Deliver did not return once the held attempt was answered", name)
			}
			noCanary(t, res.err)
			if then == Accept {
				if res.err != nil {
					t.Errorf("accepted: Deliver returned %v; want nil: the recipient accepted the attempt under way", res.err)
				}
				if got := r.Received(); len(got) != 1 {
					t.Errorf("accepted: received %d bodies, want 1", len(got))
				}
			} else {
				if res.err == nil {
					t.Errorf("failed: Deliver returned nil though the recipient failed the attempt")
				} else if _, permanent := connector.IsPermanent(res.err); permanent {
					t.Errorf("failed: the stopped delivery was reported permanent (%v): it would be dead-lettered", res.err)
				}
			}
			if n := r.Calls(); n != 1 {
				t.Errorf("%s: attempts that reached the receiver: got %d, want 1 (none after the stop)", name, n)
			}
		}
	})
}
