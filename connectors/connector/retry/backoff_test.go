package retry_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector/retry"
)

func TestRetryable(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "http://x", Err: syscall.ECONNREFUSED}
	tests := []struct {
		status int
		err    error
		want   bool
	}{
		// An error means no answer: retry.
		{0, refused, true},
		{0, context.DeadlineExceeded, true},
		{0, errors.New("EOF"), true},
		{200, errors.New("EOF"), true}, // the error wins over the status
		// 1xx: not a final answer; never reaches here in practice.
		{100, nil, false},
		// 2xx: delivered.
		{200, nil, false},
		{201, nil, false},
		{202, nil, false},
		{204, nil, false},
		{299, nil, false},
		// 3xx: redirects are a configuration error, not followed.
		{301, nil, false},
		{302, nil, false},
		{303, nil, false},
		{304, nil, false},
		{307, nil, false},
		{308, nil, false},
		// 4xx: rejected, except the two that ask to come back.
		{400, nil, false},
		{401, nil, false},
		{403, nil, false},
		{404, nil, false},
		{408, nil, true},
		{409, nil, false},
		{410, nil, false},
		{413, nil, false},
		{415, nil, false},
		{422, nil, false},
		{429, nil, true},
		{499, nil, false},
		// 5xx: the receiver's fault, usually passing.
		{500, nil, true},
		{501, nil, true},
		{502, nil, true},
		{503, nil, true},
		{504, nil, true},
		{599, nil, true},
	}
	for _, tt := range tests {
		if got := retry.Retryable(tt.status, tt.err); got != tt.want {
			t.Errorf("Retryable(%d, %v):\n\tgot  %v\n\twant %v", tt.status, tt.err, got, tt.want)
		}
	}
}

func TestBackoffBoundsAndGrowth(t *testing.T) {
	const (
		lo      = 10 * time.Millisecond
		hi      = 1 * time.Second
		samples = 300
	)
	if got := retry.Backoff(lo, hi, 0, nil); got != lo {
		t.Errorf("Backoff(%v, %v, 0, nil):\n\tgot  %v\n\twant %v", lo, hi, got, lo)
	}
	prevHigh := time.Duration(0)
	for _, attempt := range []int{0, 1, 2, 3, 4, 5, 6, 7, 10, 30, 62, 63, 64, 1000, math.MaxInt32} {
		bound := hi
		if attempt < 20 {
			bound = time.Duration(math.Min(float64(lo)*math.Pow(2, float64(attempt)), float64(hi)))
		}
		high := time.Duration(0)
		for range samples {
			got := retry.Backoff(lo, hi, attempt, nil)
			if got < lo || got > bound {
				t.Fatalf("Backoff(%v, %v, %d, nil):\n\tgot  %v\n\twant within [%v, %v]", lo, hi, attempt, got, lo, bound)
			}
			high = max(high, got)
		}
		// Grows: the largest of many draws rises with the attempt until the cap.
		// Each bound is at least twice the last, so a draw above the last
		// bound is all but certain (the odds against are below 2^-300).
		if attempt >= 1 && attempt <= 6 && high <= prevHigh {
			t.Errorf("Backoff(%v, %v, %d, nil): the largest of %d draws, %v, is not above attempt %d's, %v",
				lo, hi, attempt, samples, high, attempt-1, prevHigh)
		}
		prevHigh = high
	}
}

func TestBackoffMinEqualsMax(t *testing.T) {
	for _, attempt := range []int{0, 1, 5, 100} {
		if got := retry.Backoff(time.Second, time.Second, attempt, nil); got != time.Second {
			t.Errorf("Backoff(1s, 1s, %d, nil):\n\tgot  %v\n\twant 1s", attempt, got)
		}
	}
}

func resp(status int, retryAfter string) *http.Response {
	r := &http.Response{StatusCode: status, Header: http.Header{}}
	if retryAfter != "" {
		r.Header.Set("Retry-After", retryAfter)
	}
	return r
}

func TestBackoffRetryAfter(t *testing.T) {
	const (
		min = 10 * time.Millisecond
		max = 10 * time.Second
	)
	date := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(http.TimeFormat) }
	tests := []struct {
		name     string
		resp     *http.Response
		lo, hi   time.Duration // the answer must be within [lo, hi]
		attempts int
	}{
		{"429 seconds", resp(429, "3"), 3 * time.Second, 3 * time.Second, 0},
		{"503 seconds", resp(503, "2"), 2 * time.Second, 2 * time.Second, 0},
		{"seconds with spaces", resp(429, " 4 "), 4 * time.Second, 4 * time.Second, 0},
		{"zero is min", resp(429, "0"), min, min, 0},
		{"seconds capped at max", resp(429, "3600"), max, max, 0},
		{"seconds capped at max (late attempt)", resp(503, "86400"), max, max, 9},
		{"HTTP-date in 5s", resp(503, date(5*time.Second)), 4 * time.Second, 5 * time.Second, 0},
		{"HTTP-date capped at max", resp(429, date(time.Hour)), max, max, 0},
		{"HTTP-date past is min", resp(429, date(-time.Hour)), min, min, 0},
		// Not honoured: other statuses, negative or unreadable values.
		{"500 ignores Retry-After", resp(500, "5"), min, min, 0},
		{"negative ignored", resp(429, "-5"), min, min, 0},
		{"garbage ignored", resp(429, "tomorrow"), min, min, 0},
		{"no header", resp(429, ""), min, min, 0},
		{"garbage ignored, exponential", resp(503, "soon"), min, 8 * min, 3},
	}
	for _, tt := range tests {
		got := retry.Backoff(min, max, tt.attempts, tt.resp)
		if got < tt.lo || got > tt.hi {
			t.Errorf("Backoff(%s):\n\tgot  %v\n\twant within [%v, %v]", tt.name, got, tt.lo, tt.hi)
		}
	}
}
