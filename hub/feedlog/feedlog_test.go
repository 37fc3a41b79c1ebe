package feedlog_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/feedlog"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
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

// TestSameIDFromTwoSourcesIsTwoEntries pins a data loss found in the audit
// of issue 10: the feed de-duplicated on the event id alone, so a VM123
// care plan and an RX1 admission that both had id 0001 became one entry and
// the second was never served. An event is (source, id): both are entries,
// each with its source, and each is still appended once.
func TestSameIDFromTwoSourcesIsTwoEntries(t *testing.T) {
	brokers := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := open(t, brokers)
	carePlan := connector.Delivery{EventID: "0001", EventSource: "VM123", EventType: "org.carehub.careplan.v1", Recipient: "B82005",
		PatientRef: "p1_x", Body: []byte(`{"id":"0001","source":"VM123"}`)}
	admission := connector.Delivery{EventID: "0001", EventSource: "RX1", EventType: "org.carehub.admission.v1", Recipient: "B82005",
		PatientRef: "p1_x", Body: []byte(`{"id":"0001","source":"RX1"}`)}
	for _, c := range []struct {
		d    connector.Delivery
		want int64
	}{{carePlan, 1}, {admission, 2}, {carePlan, 1}, {admission, 2}} {
		if got, err := l.Append(ctx, c.d); err != nil || got != c.want {
			t.Errorf("Append(%s, %s): got %d, %v; want %d", c.d.EventSource, c.d.EventID, got, err, c.want)
		}
	}
	l.Close()
	l2 := open(t, brokers) // another process, or this one restarted: the index is rebuilt from the topic
	defer l2.Close()
	if got, err := l2.Append(ctx, admission); err != nil || got != 2 {
		t.Errorf("after a restart, Append(RX1, 0001): got %d, %v; want 2", got, err)
	}
	page, err := l2.Read(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range page.Entries {
		got = append(got, fmt.Sprintf("%d %s %s", e.Number, e.Delivery.EventSource, e.Delivery.EventID))
	}
	if want := []string{"1 VM123 0001", "2 RX1 0001"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("entries:\n\tgot  %q\n\twant %q", got, want)
	}
}

// TestAcknowledgeIsDurableAndNeverGoesBack: an acknowledgement is the
// feed group's committed offset, seen by every process; a lower one (a
// reader that re-reads from further back) leaves it, and one beyond the
// latest is taken as the latest.
func TestAcknowledgeIsDurableAndNeverGoesBack(t *testing.T) {
	brokers := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := open(t, brokers)
	defer l.Close()
	for i := 1; i <= 5; i++ {
		if _, err := l.Append(ctx, delivery(i)); err != nil {
			t.Fatal(err)
		}
	}
	other := open(t, brokers)
	defer other.Close()
	committed := func() int64 {
		t.Helper()
		got, err := broker.Committed(ctx, brokers, topic.FeedGroup("B82005"), "carehub.feed.b82005", []int{0})
		if errors.Is(err, kafka.GroupIdNotFound) {
			return -1
		}
		if err != nil {
			t.Fatal(err)
		}
		c, ok := got[0]
		if !ok {
			return -1
		}
		return c
	}
	if c := committed(); c != -1 {
		t.Fatalf("before any acknowledgement: committed %d, want none", c)
	}
	for _, c := range []struct {
		by   *feedlog.Log
		n    int64
		want int64
	}{{l, 3, 3}, {other, 2, 3}, {l, 1, 3}, {other, 4, 4}, {l, 99, 5}} {
		if err := c.by.Acknowledge(ctx, c.n); err != nil {
			t.Fatal(err)
		}
		if got := committed(); got != c.want {
			t.Errorf("Acknowledge(%d): committed %d, want %d", c.n, got, c.want)
		}
	}
}

// TestDeletedRecordsMoveOldestAndAreGone: once records are deleted (as
// the retention sweep does), Oldest is the first kept, a read from before it
// is refused with Gone (never silently skipped), and a read from it goes on.
// A process that starts after the deletion sees the same.
func TestDeletedRecordsMoveOldestAndAreGone(t *testing.T) {
	brokers := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := open(t, brokers)
	defer l.Close()
	for i := 1; i <= 5; i++ {
		if _, err := l.Append(ctx, delivery(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := broker.DeleteRecords(ctx, brokers, "carehub.feed.b82005", broker.PartitionOffsets{0: 3}); err != nil {
		t.Fatal(err)
	}
	if err := l.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	later := open(t, brokers)
	defer later.Close()
	for _, c := range []struct {
		name string
		f    *feedlog.Log
	}{{"running", l}, {"started after", later}} {
		name, f := c.name, c.f
		for _, after := range []int64{0, 2} {
			page, err := f.Read(ctx, after, 10)
			if problem.KindOf(err) != problem.Gone {
				t.Errorf("%s: Read(%d): got %d entries, %v; want Gone", name, after, len(page.Entries), err)
			}
			if page.Oldest != 4 || page.Latest != 5 {
				t.Errorf("%s: Read(%d): oldest %d latest %d, want 4, 5", name, after, page.Oldest, page.Latest)
			}
		}
		page, err := f.Read(ctx, 3, 10)
		if err != nil || len(page.Entries) != 2 || page.Entries[0].Number != 4 || page.Oldest != 4 {
			t.Errorf("%s: Read(3): got %+v, %v; want 4 and 5, oldest 4", name, page, err)
		}
	}
	if n, err := later.Append(ctx, delivery(6)); err != nil || n != 6 {
		t.Errorf("Append after the deletion: got %d, %v; want 6", n, err)
	}
	if n, err := l.Append(ctx, delivery(5)); err != nil || n != 5 {
		t.Errorf("Append of a kept event again after the deletion: got %d, %v; want 5", n, err)
	}
}
