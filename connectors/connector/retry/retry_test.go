package retry_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
	"github.com/carehub/carehub/schemas/problem"
)

const canary = "9990000018"

var delivery = connector.Delivery{EventID: "ev-1", EventSource: "urn:ods:RX1", EventType: "org.carehub.discharge.v1",
	Recipient: "A81001", PatientRef: "p1_test", Body: []byte(`{"data":{"patient":{"nhsNumber":"` + canary + `"}}}`)}

var fast = connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}

func TestDelay(t *testing.T) {
	r := connector.Retry{MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second}
	tests := []struct {
		attempts int
		lo, hi   time.Duration
	}{
		{0, 10 * time.Millisecond, 10 * time.Millisecond}, // before any attempt: as after the first
		{1, 10 * time.Millisecond, 10 * time.Millisecond},
		{2, 10 * time.Millisecond, 20 * time.Millisecond},
		{4, 10 * time.Millisecond, 80 * time.Millisecond},
		{8, 10 * time.Millisecond, time.Second},
		{1 << 20, 10 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		for range 200 {
			if got := retry.Delay(r, tt.attempts); got < tt.lo || got > tt.hi {
				t.Fatalf("Delay(%v, %d):\n\tgot  %v\n\twant within [%v, %v]", r, tt.attempts, got, tt.lo, tt.hi)
			}
		}
	}
	if got := retry.Delay(connector.Retry{}, 1); got != connector.DefaultMinBackoff {
		t.Errorf("Delay with zero bounds:\n\tgot  %v\n\twant the default minimum %v", got, connector.DefaultMinBackoff)
	}
}

// consent answers re-checks with verdict (permit by default) and counts them.
type consent struct {
	mu      sync.Mutex
	calls   int
	verdict func(d connector.Delivery) (connector.Verdict, error)
}

func (c *consent) Recheck(_ context.Context, d connector.Delivery) (connector.Verdict, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.verdict == nil {
		return connector.Verdict{Permit: true, Body: d.Body, Rule: "test-permit"}, nil
	}
	return c.verdict(d)
}

func (c *consent) count() int { c.mu.Lock(); defer c.mu.Unlock(); return c.calls }

func TestRecheck(t *testing.T) {
	tests := []struct {
		name    string
		verdict connector.Verdict
		err     error
		want    func(error) bool
	}{
		{"permitted as it is", connector.Verdict{Permit: true, Body: delivery.Body}, nil, func(err error) bool { return err == nil }},
		{"withheld", connector.Verdict{Rule: "deny"}, nil, func(err error) bool { r, ok := connector.IsWithheld(err); return ok && r == "deny" }},
		{"narrower", connector.Verdict{Permit: true, Body: []byte(`{}`)}, nil, func(err error) bool { return errors.Is(err, connector.ErrConsentChanged) }},
		{"no answer", connector.Verdict{}, problem.New(problem.Unavailable, "the consent store is away"), func(err error) bool {
			_, perm := connector.IsPermanent(err)
			return err != nil && !perm && problem.KindOf(err) == problem.Unavailable
		}},
	}
	for _, tt := range tests {
		c := connector.ConsentFunc(func(context.Context, connector.Delivery) (connector.Verdict, error) { return tt.verdict, tt.err })
		if got := retry.Recheck(context.Background(), c, delivery); !tt.want(got) {
			t.Errorf("Recheck(%s): got %v", tt.name, got)
		}
	}
}

// TestLoop drives Loop.Do with scripted attempts.
func TestLoop(t *testing.T) {
	transient := problem.New(problem.Unavailable, "the feed is unavailable")
	tests := []struct {
		name         string
		answers      []error // the n-th attempt's answer; the last repeats
		maxAttempts  int
		verdict      func(n int) connector.Verdict // the n-th re-check's (1-based)
		wantAttempts int
		wantRechecks int
		want         func(error) bool
	}{
		{name: "first time", answers: []error{nil}, wantAttempts: 1, want: isNil},
		{name: "after transient failures", answers: []error{transient, transient, nil}, wantAttempts: 3, wantRechecks: 2, want: isNil},
		{name: "permanent at once", answers: []error{connector.Permanent("refused", nil)}, wantAttempts: 1, want: isPermanent},
		{name: "permanent after a retry", answers: []error{transient, connector.Permanent("refused", nil)}, wantAttempts: 2, wantRechecks: 1, want: isPermanent},
		{name: "gives up at MaxAttempts", answers: []error{transient}, maxAttempts: 3, wantAttempts: 3, wantRechecks: 2, want: func(err error) bool {
			_, perm := connector.IsPermanent(err)
			return err != nil && !perm && strings.Contains(err.Error(), "gave up after 3 attempts") && errors.Is(err, transient)
		}},
		{name: "withheld before a retry", answers: []error{transient}, verdict: func(n int) connector.Verdict {
			if n == 2 {
				return connector.Verdict{Rule: "deny"}
			}
			return connector.Verdict{Permit: true, Body: delivery.Body}
		}, wantAttempts: 2, wantRechecks: 2, want: func(err error) bool { r, ok := connector.IsWithheld(err); return ok && r == "deny" }},
		{name: "narrower before a retry", answers: []error{transient}, verdict: func(int) connector.Verdict {
			return connector.Verdict{Permit: true, Body: []byte(`{"thin":true}`)}
		}, wantAttempts: 1, wantRechecks: 1, want: func(err error) bool { return errors.Is(err, connector.ErrConsentChanged) }},
		{name: "the sink's own consent answer", answers: []error{connector.ErrConsentChanged}, wantAttempts: 1, want: func(err error) bool {
			return errors.Is(err, connector.ErrConsentChanged)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &consent{}
			if tt.verdict != nil {
				c.verdict = func(connector.Delivery) (connector.Verdict, error) { return tt.verdict(c.calls), nil }
			}
			r := fast
			r.MaxAttempts = tt.maxAttempts
			attempts := 0
			n, err := retry.Loop{Retry: r, Consent: c}.Do(context.Background(), delivery, func(context.Context, connector.Delivery) error {
				attempts++
				return tt.answers[min(attempts, len(tt.answers))-1]
			})
			if n != tt.wantAttempts || attempts != tt.wantAttempts {
				t.Errorf("attempts:\n\tgot  %d (reported %d)\n\twant %d", attempts, n, tt.wantAttempts)
			}
			if got := c.count(); got != tt.wantRechecks {
				t.Errorf("re-checks:\n\tgot  %d\n\twant %d (one before each retry, none before the first attempt)", got, tt.wantRechecks)
			}
			if !tt.want(err) {
				t.Errorf("Do: unexpected error %v", err)
			}
			if err != nil && strings.Contains(err.Error(), canary) {
				t.Errorf("the error holds the payload: %v", err)
			}
		})
	}
}

func isNil(err error) bool { return err == nil }

func isPermanent(err error) bool { _, ok := connector.IsPermanent(err); return ok }

func isStopped(err error) bool {
	_, perm := connector.IsPermanent(err)
	return errors.Is(err, retry.ErrStopped) && errors.Is(err, context.Canceled) && !perm
}

// TestLoopStop: a stop lets the attempt under way finish (its ctx does not
// end) and counts its answer, starts no other, and ends a wait at once.
func TestLoopStop(t *testing.T) {
	t.Run("during an attempt that then succeeds", func(t *testing.T) {
		ctx, stop := context.WithCancel(context.Background())
		n, err := retry.Loop{Retry: fast, Consent: &consent{}}.Do(ctx, delivery, func(actx context.Context, _ connector.Delivery) error {
			stop()
			if actx.Err() != nil {
				return actx.Err() // the stop reached the attempt: it would be cut short
			}
			return nil
		})
		if n != 1 || err != nil {
			t.Errorf("Do:\n\tgot  %d attempts, %v\n\twant 1 attempt, delivered", n, err)
		}
	})
	t.Run("during an attempt that then fails", func(t *testing.T) {
		ctx, stop := context.WithCancel(context.Background())
		attempts := 0
		n, err := retry.Loop{Retry: fast, Consent: &consent{}}.Do(ctx, delivery, func(context.Context, connector.Delivery) error {
			attempts++
			stop()
			return problem.New(problem.Unavailable, "away")
		})
		if n != 1 || attempts != 1 || !isStopped(err) {
			t.Errorf("Do:\n\tgot  %d attempts (%d made), %v\n\twant 1 attempt, a non-permanent error wrapping ErrStopped and context.Canceled", n, attempts, err)
		}
	})
	t.Run("during a wait", func(t *testing.T) {
		ctx, stop := context.WithCancel(context.Background())
		failed := make(chan struct{})
		done := make(chan error, 1)
		slow := connector.Retry{MinBackoff: time.Hour, MaxBackoff: time.Hour}
		go func() {
			_, err := retry.Loop{Retry: slow, Consent: &consent{}}.Do(ctx, delivery, func(context.Context, connector.Delivery) error {
				close(failed)
				return problem.New(problem.Unavailable, "away")
			})
			done <- err
		}()
		<-failed
		stop()
		select {
		case err := <-done:
			if !isStopped(err) {
				t.Errorf("Do: got %v, want a non-permanent error wrapping ErrStopped and context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Do did not return after the stop: the hour's wait went on")
		}
	})
	t.Run("before the first attempt", func(t *testing.T) {
		ctx, stop := context.WithCancel(context.Background())
		stop()
		n, err := retry.Loop{Retry: fast, Consent: &consent{}}.Do(ctx, delivery, func(context.Context, connector.Delivery) error {
			t.Error("an attempt started after the stop")
			return nil
		})
		if n != 0 || !isStopped(err) {
			t.Errorf("Do:\n\tgot  %d attempts, %v\n\twant none, stopped", n, err)
		}
	})
	t.Run("an attempt is bounded by AttemptTimeout", func(t *testing.T) {
		var ended atomic.Bool
		_, err := retry.Loop{Retry: connector.Retry{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, MaxAttempts: 1},
			Consent: &consent{}, AttemptTimeout: 10 * time.Millisecond}.Do(context.Background(), delivery,
			func(actx context.Context, _ connector.Delivery) error {
				<-actx.Done()
				ended.Store(true)
				return problem.Wrap(problem.Unavailable, "appending", actx.Err())
			})
		if !ended.Load() || err == nil {
			t.Errorf("Do: got %v; want the attempt's context to end after AttemptTimeout", err)
		}
	})
}
