package ktable

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

const testTopic = "carehub.test-table"

func startBroker(t *testing.T) []string {
	return brokertest.Start(t, broker.TopicSpec{Name: testTopic, Partitions: 3, ReplicationFactor: 1,
		Configs: map[string]string{"cleanup.policy": "compact"}})
}

// kv is a table's owner: the latest value by key.
type kv struct {
	mu sync.Mutex
	m  map[string]string
}

func (k *kv) apply(m kafka.Message) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if m.Value == nil {
		delete(k.m, string(m.Key))
		return
	}
	k.m[string(m.Key)] = string(m.Value)
}

func (k *kv) get(key string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[key]
}

func open(t *testing.T, brokers []string) (*Table, *kv) {
	t.Helper()
	k := &kv{m: map[string]string{}}
	tb, err := Open(Config{Brokers: brokers, Topic: testTopic, Log: zaptest.NewLogger(t), Apply: k.apply})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tb.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return tb, k
}

// TestSyncSeesEveryAcknowledgedWriteOfAnotherProcess pins the freshness
// guarantee at its source: a record acknowledged by the broker before Sync
// is called is visible to the owner once Sync returns, even when another
// writer (another carehub process) wrote it and this table has not fetched
// it yet.
func TestSyncSeesEveryAcknowledgedWriteOfAnotherProcess(t *testing.T) {
	brokers := startBroker(t)
	tb, k := open(t, brokers)
	other, _ := open(t, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("p1_patient%03d", i%7)
		want := fmt.Sprintf("v-%d", i)
		if err := other.Write(ctx, kafka.Message{Key: []byte(key), Value: []byte(want)}); err != nil {
			t.Fatal(err)
		}
		if err := tb.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := k.get(key); got != want {
			t.Fatalf("write %d: after Sync:\n\tgot  %q\n\twant %q", i, got, want)
		}
	}
}

// TestReloadAppliesEverythingBeforeLoaded: a table opened on a topic with
// records has applied them all, tombstones included, when WaitLoaded
// returns.
func TestReloadAppliesEverythingBeforeLoaded(t *testing.T) {
	brokers := startBroker(t)
	w, _ := open(t, brokers)
	ctx := context.Background()
	if err := w.Write(ctx, kafka.Message{Key: []byte("a"), Value: []byte("1")}, kafka.Message{Key: []byte("b"), Value: []byte("2")},
		kafka.Message{Key: []byte("a"), Value: nil}); err != nil {
		t.Fatal(err)
	}
	_, k := open(t, brokers)
	if k.get("a") != "" || k.get("b") != "2" {
		t.Errorf("reloaded: got a=%q b=%q, want a removed and b=2", k.get("a"), k.get("b"))
	}
}

func TestNotLoadedFailsClosed(t *testing.T) {
	// No broker listens here: the table can never load.
	tb, err := Open(Config{Brokers: []string{"127.0.0.1:1"}, Topic: testTopic, Log: zaptest.NewLogger(t), Apply: func(kafka.Message) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	if err := tb.Sync(context.Background()); err != ErrNotLoaded {
		t.Errorf("Sync before load: got %v, want ErrNotLoaded", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := tb.WaitLoaded(ctx); err == nil {
		t.Errorf("WaitLoaded succeeded without a broker")
	}
}
