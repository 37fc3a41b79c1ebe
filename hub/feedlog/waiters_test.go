package feedlog_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestWaitingReadersCostNoFetchOrGoroutine: readers waiting for new entries
// cost neither a broker fetch per reader per poll nor a goroutine per
// waiting reader (issue 12: "100 concurrent long-polling clients cost
// little"). The feed runs on an embedded kfake cluster of its own whose
// every Fetch request is counted as it arrives over TCP; readers long-poll
// as the feed API does (Read; when there is nothing new, wait on Changed;
// Read again) across several appends, once with one reader and once with
// 100. The feed's tailer fetches the same in both runs (records appended,
// and its own empty long-polls of the broker); a Read or a wait that went
// to the broker would add at least one fetch per reader per append, and a
// goroutine per waiter would add 100 goroutines while they wait.
func TestWaitingReadersCostNoFetchOrGoroutine(t *testing.T) {
	const (
		feedTopic = "carehub.feed.b82005"
		appends   = 5
		// Goroutines beyond the readers' own that may come and go while
		// they wait: the embedded broker's request handlers and kafka-go's
		// connection loops. A goroutine per waiter would be 100 more.
		slack = 20
	)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, feedTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var fetches atomic.Int64
	c.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		fetches.Add(1)
		return nil, nil, false // counted, then handled by the broker as usual
	})
	l := open(t, c.ListenAddrs())
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// One append first, so that connections the first append opens are
	// open before goroutines are counted.
	if _, err := l.Append(ctx, delivery(0)); err != nil {
		t.Fatal(err)
	}
	latest := int64(1)

	// longPoll runs readers that each read every entry after latest as
	// they are appended, and returns the broker fetches made meanwhile.
	longPoll := func(readers int) int64 {
		t.Helper()
		from, to := latest, latest+appends
		base := runtime.NumGoroutine()
		start := fetches.Load()
		waiting := make(chan struct{}, readers) // a reader is about to wait on Changed
		errs := make(chan error, readers)
		var wg sync.WaitGroup
		for range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for after := from; after < to; {
					p, err := l.Read(ctx, after, 10)
					if err != nil {
						errs <- err
						return
					}
					if len(p.Entries) > 0 {
						after = p.Entries[len(p.Entries)-1].Number
						continue
					}
					select {
					case waiting <- struct{}{}:
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					}
					select {
					case <-l.Changed(after):
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					}
				}
			}()
		}
		for i := int64(1); i <= appends; i++ {
			// Every reader has read everything so far and waits.
			for range readers {
				select {
				case <-waiting:
				case err := <-errs:
					t.Fatalf("%d readers: %v", readers, err)
				case <-ctx.Done():
					t.Fatalf("%d readers: not all waiting before append %d", readers, i)
				}
			}
			if got, limit := runtime.NumGoroutine(), base+readers+slack; got > limit {
				t.Errorf("%d readers waiting for entry %d: %d goroutines, want at most %d (%d before the readers, %d readers, %d slack)",
					readers, from+i, got, limit, base, readers, slack)
			}
			if n, err := l.Append(ctx, delivery(int(from+i))); err != nil || n != from+i {
				t.Fatalf("Append: got %d, %v; want %d", n, err, from+i)
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("%d readers: %v", readers, err)
		}
		latest = to
		return fetches.Load() - start
	}

	one := longPoll(1)
	many := longPoll(100)
	t.Logf("broker fetches across %d appends: %d with 1 reader, %d with 100 readers", appends, one, many)
	// Reading from the broker would add at least 99 readers × 5 appends.
	if extra := many - one; extra >= 50 {
		t.Errorf("100 long-polling readers cost %d broker fetches more than one reader does; want the same as one (the tailer's), give or take its own empty long-polls", extra)
	}
}
