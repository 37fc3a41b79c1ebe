package follow

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
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
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	const topic = "follow.test"
	if err := broker.EnsureTopics(ctx, emb.Addrs(), []broker.TopicSpec{{Name: topic, Partitions: 3, ReplicationFactor: 1}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(emb.Addrs()...), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
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
	f := Start(emb.Addrs(), topic, tb.apply, zaptest.NewLogger(t))
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
