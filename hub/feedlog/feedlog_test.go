package feedlog_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/feedlog"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

func startBroker(t testing.TB) []string {
	return brokertest.Start(t, broker.TopicSpec{Name: "carehub.feed.b82005", Partitions: 1, ReplicationFactor: 1})
}

func open(t testing.TB, brokers []string) *feedlog.Log {
	t.Helper()
	l := feedlog.New("B82005", "carehub.feed.b82005", zap.NewNop())
	l.Start(brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return l
}

func delivery(i int) connector.Delivery {
	return connector.Delivery{EventID: fmt.Sprintf("ev-%d", i), EventType: "org.carehub.admission.v1", Recipient: "B82005",
		PatientRef: "p1_x", Body: []byte(fmt.Sprintf(`{"id":"ev-%d"}`, i))}
}

// TestNumbersAreGaplessDeduplicatedAndSurviveARestart: numbers 1..n in
// order; appending an event again returns its number and appends nothing;
// a second log over the same topic (another process, or this one after a
// restart) sees the same numbers and keeps deduplicating.
func TestNumbersAreGaplessDeduplicatedAndSurviveARestart(t *testing.T) {
	brokers := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := open(t, brokers)
	for i := 1; i <= 5; i++ {
		n, err := l.Append(ctx, delivery(i))
		if err != nil || n != int64(i) {
			t.Fatalf("Append %d: got %d, %v; want %d", i, n, err, i)
		}
	}
	if n, err := l.Append(ctx, delivery(3)); err != nil || n != 3 {
		t.Errorf("appending ev-3 again: got %d, %v; want its number 3", n, err)
	}
	l.Close()

	l2 := open(t, brokers)
	defer l2.Close()
	if n, err := l2.Append(ctx, delivery(2)); err != nil || n != 2 {
		t.Errorf("after a restart, appending ev-2 again: got %d, %v; want 2", n, err)
	}
	if n, err := l2.Append(ctx, delivery(6)); err != nil || n != 6 {
		t.Errorf("after a restart, a new event: got %d, %v; want 6", n, err)
	}
	page, err := l2.Read(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if page.Latest != 6 || page.Oldest != 1 || len(page.Entries) != 6 {
		t.Fatalf("Read(0): latest %d oldest %d, %d entries; want 6, 1, 6", page.Latest, page.Oldest, len(page.Entries))
	}
	for i, e := range page.Entries {
		if want := fmt.Sprintf("ev-%d", i+1); e.Number != int64(i+1) || e.Delivery.EventID != want || e.Delivery.PatientRef != "p1_x" {
			t.Errorf("entry %d: got %d %s %q, want %d %s", i, e.Number, e.Delivery.EventID, e.Delivery.PatientRef, i+1, want)
		}
	}
	page, _ = l2.Read(ctx, 4, 1)
	if len(page.Entries) != 1 || page.Entries[0].Number != 5 {
		t.Errorf("Read(4, max 1): got %+v, want number 5 only", page.Entries)
	}
	page, _ = l2.Read(ctx, 6, 10)
	if len(page.Entries) != 0 || page.Latest != 6 {
		t.Errorf("Read(latest): got %d entries, latest %d; want none, 6", len(page.Entries), page.Latest)
	}
}

// TestChangedWakesEveryWaiter: many readers wait on one channel, and an
// append in another "process" (a second Log) wakes them all.
func TestChangedWakesEveryWaiter(t *testing.T) {
	brokers := startBroker(t)
	reader := open(t, brokers)
	defer reader.Close()
	writer := open(t, brokers)
	defer writer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	woke := make(chan int64, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-reader.Changed(0):
				p, err := reader.Read(ctx, 0, 10)
				if err == nil && len(p.Entries) == 1 {
					woke <- p.Entries[0].Number
				}
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-reader.Changed(0):
		t.Fatal("Changed(0) is closed on an empty feed")
	default:
	}
	if _, err := writer.Append(ctx, delivery(1)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(woke) != 100 {
		t.Errorf("woken readers that read number 1: got %d, want 100", len(woke))
	}
}

// TestDrainReleasesWaiters: Drain closes Done and every Changed channel.
func TestDrainReleasesWaiters(t *testing.T) {
	l := open(t, startBroker(t))
	defer l.Close()
	ch := l.Changed(0)
	l.Drain()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter was not released by Drain")
	}
	select {
	case <-l.Done():
	default:
		t.Error("Done is open after Drain")
	}
}

// TestReadBeforeLoadIsUnavailable: a log that has not started answers
// Unavailable, never a wrong "latest".
func TestReadBeforeLoadIsUnavailable(t *testing.T) {
	l := feedlog.New("B82005", "carehub.feed.b82005", zap.NewNop())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Read(ctx, 0, 1); problem.KindOf(err) != problem.Unavailable {
		t.Errorf("Read before start: got %v, want Unavailable", err)
	}
}
