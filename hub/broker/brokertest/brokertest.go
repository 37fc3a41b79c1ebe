// Package brokertest starts the embedded broker for a test: real Kafka
// protocol over TCP on a free port, with a temporary data directory, never a
// mock.
package brokertest

import (
	"context"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
)

// Start starts an embedded broker, creates the topics of specs, and closes
// the broker when the test ends. It returns the broker's addresses.
func Start(t testing.TB, specs ...broker.TopicSpec) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("starting the embedded broker: %v", err)
	}
	t.Cleanup(func() { _ = emb.Close() })
	if len(specs) > 0 {
		if err := broker.EnsureTopics(ctx, emb.Addrs(), specs); err != nil {
			t.Fatalf("creating topics: %v", err)
		}
	}
	return emb.Addrs()
}
