package main

import (
	"context"
	"testing"
	"time"
)

// TestWatchdog: after the signal (ctx ends), a drain that has not finished
// within the limit ends the process (expire is called); a drain that
// finished in time does not.
func TestWatchdog(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	expired := make(chan struct{})
	defer watchdog(ctx, 50*time.Millisecond, func() { close(expired) })()
	select {
	case <-expired:
		t.Fatal("expired before the signal")
	case <-time.After(100 * time.Millisecond): // a bounded chance for a broken watchdog to fire early
	}
	cancel()
	select {
	case <-expired:
	case <-time.After(10 * time.Second):
		t.Fatal("the watchdog did not fire after the signal and the limit")
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	fired := make(chan struct{}, 1)
	stop := watchdog(ctx2, 50*time.Millisecond, func() { fired <- struct{}{} })
	cancel2()
	stop() // the drain finished within the limit
	select {
	case <-fired:
		t.Fatal("the watchdog fired after the drain finished")
	case <-time.After(200 * time.Millisecond):
	}
}
