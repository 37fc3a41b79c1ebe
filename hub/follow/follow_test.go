package follow

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

// table is what a test follower applies: the last value of each key.
type table struct {
	mu sync.Mutex
	m  map[string]string
}

func (tb *table) apply(_ int, m kafka.Message) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.m[string(m.Key)] = string(m.Value)
}

func (tb *table) get(k string) string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.m[k]
}

// TestLoadThenSyncSeesEveryAcknowledgedWrite: the initial load holds every
// record written before Start; after it, Sync makes every record
// acknowledged before the call visible, whoever wrote it, on a topic of
// several partitions.
func TestLoadThenSyncSeesEveryAcknowledgedWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const topic = "follow.test"
	brokers := brokertest.Start(t, broker.TopicSpec{Name: topic, Partitions: 3, ReplicationFactor: 1})
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	var before []kafka.Message
	for i := 0; i < 30; i++ {
		before = append(before, kafka.Message{Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte("v0")})
	}
	if err := w.WriteMessages(ctx, before...); err != nil {
		t.Fatal(err)
	}

	tb := &table{m: map[string]string{}}
	f := Start(brokers, topic, tb.apply, zaptest.NewLogger(t))
	defer f.Close()
	if err := f.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		if got := tb.get(fmt.Sprintf("k%d", i)); got != "v0" {
			t.Fatalf("after the load, k%d = %q, want v0", i, got)
		}
	}
	for i := 1; i <= 100; i++ {
		k, v := fmt.Sprintf("k%d", i%30), fmt.Sprintf("v%d", i)
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(k), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := tb.get(k); got != v {
			t.Fatalf("after Sync, %s = %q, want %q (written and acknowledged before the call)", k, got, v)
		}
	}
}

// TestSyncSharesLookupsThatStartAfterIt: a Sync never uses a lookup that
// started before it was called (freshness), and the calls that arrive while
// a lookup runs share the next one instead of each making their own.
func TestSyncSharesLookupsThatStartAfterIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := Start(brokertest.Start(t, broker.TopicSpec{Name: "follow.lookups", Partitions: 1, ReplicationFactor: 1}), "follow.lookups", func(int, kafka.Message) {}, zaptest.NewLogger(t))
	t.Cleanup(s.Close)
	if err := s.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	started := make(chan int, 10)
	release := make(chan struct{}, 10)
	var n atomic.Int32
	s.lookup = func(context.Context) (map[int]int64, error) {
		i := int(n.Add(1))
		started <- i
		<-release
		return map[int]int64{-i: 0}, nil // the lookup's number, in a partition nobody applies
	}
	type result struct {
		caller string
		ends   map[int]int64
		err    error
	}
	results := make(chan result, 4)
	call := func(caller string) { e, err := s.endOffsets(ctx); results <- result{caller, e, err} }

	go call("a")
	if got := <-started; got != 1 {
		t.Fatalf("first lookup: got %d", got)
	}
	for _, c := range []string{"b", "c", "d"} {
		go call(c)
	}
	time.Sleep(50 * time.Millisecond) // b, c and d are waiting for the next lookup
	release <- struct{}{}
	got := map[string]int{}
	r := <-results
	if r.caller != "a" || r.err != nil {
		t.Fatalf("after the first lookup: got %s (%v), want a", r.caller, r.err)
	}
	got[r.caller] = -firstKey(r.ends)
	if i := <-started; i != 2 {
		t.Fatalf("second lookup: got %d", i)
	}
	release <- struct{}{}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		got[r.caller] = -firstKey(r.ends)
	}
	if want := map[string]int{"a": 1, "b": 2, "c": 2, "d": 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("lookup used by each caller: got %v, want %v", got, want)
	}
	select {
	case i := <-started:
		t.Errorf("lookup %d started with nobody waiting", i)
	case <-time.After(50 * time.Millisecond):
	}
}

func firstKey(m map[int]int64) int {
	for k := range m {
		return k
	}
	return 0
}
