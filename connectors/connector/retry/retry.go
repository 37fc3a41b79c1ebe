// Package retry is how a sink retries: the connector contract's rules for
// the attempts of one delivery (package connector, "Sinks"), written once,
// for every sink to use.
//
//   - Delay is the wait between attempts: capped exponential backoff with
//     full jitter within the hub's connector.Retry bounds.
//   - Loop runs the attempts of a delivery over any protocol (a feed
//     append, a frame over a socket): an attempt is a function.
//   - HTTP is a go-retryablehttp client for sinks that POST over HTTP: it
//     adds the answers' rules (Retryable, Retry-After), redirects refused,
//     and a hook to sign each attempt afresh.
//
// Both follow the contract the same way:
//
//   - Consent holds until the moment of delivery: before every retry (not
//     before the first attempt, which the hub has just re-checked) the
//     patient's directives are asked again (SinkEnv.Consent, through
//     Recheck). A copy now withheld is not sent again
//     (connector.Withheld); one that must now go narrower is not sent as
//     it is (connector.ErrConsentChanged). No answer ends the delivery with
//     a transient error: the hub redelivers it later.
//   - Stopping: when Deliver's context ends, an attempt already under way
//     finishes (bounded by the attempt's own timeout, never cut short: a
//     receiver that has read the request must get to answer, and its answer
//     must count), no further attempt starts, a backoff wait ends at once,
//     and the delivery ends with an error wrapping ErrStopped and the
//     context's error: not permanent, so the hub delivers the copy again
//     later. An attempt that finished with the recipient's acceptance is a
//     delivery, stop or no stop.
//   - Transient failures are retried without end unless
//     connector.Retry.MaxAttempts bounds them; permanent ones
//     (connector.Permanent) end the delivery at once.
//
// Errors returned hold no payload and no URL: what an attempt returns must
// be safe to show, and HTTP errors are reduced to their class
// (logging.Class) or the recipient's status.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/carehub/carehub/connectors/connector"
)

// ErrStopped is wrapped by the error of a delivery that ended because its
// context ended before the recipient had the copy. It is not permanent:
// the hub delivers the copy again later.
var ErrStopped = errors.New("stopped before the recipient had it")

// stopped is the error of a delivery that stopped after attempts attempts.
func stopped(ctx context.Context, attempts int) error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	return fmt.Errorf("%w (after %d attempts): %w", ErrStopped, attempts, cause)
}

// Delay is the wait before the next attempt of a delivery that has made
// attempts attempts (1 after the first): capped exponential backoff with
// full jitter, uniform between r.MinBackoff and the smaller of
// r.MaxBackoff and MinBackoff·2^(attempts-1). Zero bounds take the
// defaults.
func Delay(r connector.Retry, attempts int) time.Duration {
	r = r.WithDefaults()
	lo, hi := r.MinBackoff, r.MaxBackoff
	if lo > hi {
		lo = hi
	}
	if attempts < 1 {
		attempts = 1
	}
	bound := float64(lo) * math.Pow(2, float64(attempts-1))
	if bound > float64(hi) || math.IsInf(bound, 0) || math.IsNaN(bound) {
		bound = float64(hi)
	}
	span := int64(bound) - int64(lo)
	if span <= 0 {
		return lo
	}
	return lo + time.Duration(rand.Int64N(span+1))
}

// clamp bounds d to [lo, hi].
func clamp(d, lo, hi time.Duration) time.Duration {
	return max(lo, min(d, hi))
}

// wait waits d, or until ctx ends; it reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Recheck asks c whether d may still be handed over as it is (see "Consent
// holds until the moment of delivery" in package connector): nil if it may;
// connector.Withheld with the rule if the patient's directives now deny it;
// connector.ErrConsentChanged if they now allow a narrower body only; a
// transient error if consent cannot answer.
func Recheck(ctx context.Context, c connector.Consent, d connector.Delivery) error {
	v, err := c.Recheck(ctx, d)
	switch {
	case err != nil:
		return fmt.Errorf("re-checking consent: %w", err)
	case !v.Permit:
		return connector.Withheld(v.Rule)
	case string(v.Body) != string(d.Body):
		return connector.ErrConsentChanged
	}
	return nil
}

// final reports whether err ends a delivery without a retry.
func final(err error) bool {
	if _, ok := connector.IsPermanent(err); ok {
		return true
	}
	if _, ok := connector.IsWithheld(err); ok {
		return true
	}
	return errors.Is(err, connector.ErrConsentChanged)
}

// DefaultAttemptTimeout bounds one attempt of a Loop without its own.
const DefaultAttemptTimeout = 30 * time.Second

// Loop runs the attempts of one delivery over any protocol.
type Loop struct {
	// Retry bounds the backoff and, if MaxAttempts is set, the attempts.
	Retry connector.Retry
	// Consent is asked before every retry. Required.
	Consent connector.Consent
	// AttemptTimeout bounds one attempt (default DefaultAttemptTimeout).
	// A stop does not cut an attempt short: this does.
	AttemptTimeout time.Duration
}

// Attempt makes one attempt to hand d over. It returns nil once the
// recipient has it; an error marked connector.Permanent when it never
// will; any other error (safe to show: it is returned wrapped) when a
// retry may help. Its ctx does not end when the delivery's does: it ends
// when the attempt has taken the Loop's AttemptTimeout.
type Attempt func(ctx context.Context, d connector.Delivery) error

// Do makes attempts until one hands d over, one fails for good, consent
// withholds or narrows the copy before a retry, Retry.MaxAttempts is
// reached, or ctx ends (see the package comment: an attempt under way
// finishes; none starts after). It returns the number of attempts made.
func (l Loop) Do(ctx context.Context, d connector.Delivery, attempt Attempt) (int, error) {
	if l.Consent == nil {
		return 0, errors.New("retry: Loop.Consent is required")
	}
	r := l.Retry.WithDefaults()
	timeout := l.AttemptTimeout
	if timeout <= 0 {
		timeout = DefaultAttemptTimeout
	}
	for n := 1; ; n++ {
		if n > 1 {
			if err := Recheck(ctx, l.Consent, d); err != nil {
				if ctx.Err() != nil {
					return n - 1, stopped(ctx, n-1)
				}
				return n - 1, err
			}
		}
		if ctx.Err() != nil {
			return n - 1, stopped(ctx, n-1)
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		err := attempt(actx, d)
		cancel()
		switch {
		case err == nil:
			return n, nil
		case final(err):
			return n, err
		case r.MaxAttempts > 0 && n >= r.MaxAttempts:
			return n, fmt.Errorf("gave up after %d attempts: %w", n, err)
		}
		if !wait(ctx, Delay(r, n)) {
			return n, stopped(ctx, n)
		}
	}
}
