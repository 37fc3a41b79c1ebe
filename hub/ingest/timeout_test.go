package ingest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap/zaptest"
)

// deadlines records the context deadline each step of an accept was given.
type deadlines struct {
	mu   sync.Mutex
	seen map[string]time.Time
	mem  *dedup.Store // answers the claims
}

func (d *deadlines) note(step string, ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[string]time.Time{}
	}
	dl, _ := ctx.Deadline() // zero when there is none
	d.seen[step] = dl
}

func (d *deadlines) ClaimAll(ctx context.Context, sources, ids []string, digests []dedup.Digest) ([]dedup.Claim, error) {
	d.note("claim", ctx)
	return d.mem.ClaimAll(ctx, sources, ids, digests)
}

func (d *deadlines) Abandon(c dedup.Claim) { d.mem.Abandon(c) }

func (d *deadlines) Record(ctx context.Context, cs ...dedup.Claim) error {
	d.note("record", ctx)
	return d.mem.Record(ctx, cs...)
}

// deadlinePub notes the deadline of the messages it is given.
type deadlinePub struct{ d *deadlines }

func (p deadlinePub) Publish(t string, msgs ...*message.Message) error {
	for _, m := range msgs {
		p.d.note("publish "+t, m.Context())
	}
	return nil
}

func (deadlinePub) Close() error { return nil }

// TestOneDeadlineFromTheCallThroughClaimPublishAndRecord pins the audit's
// gap in issue 14 ("a publish waits at most a configured time"): the
// duplicate memory was caught up with under a client's own 10 s timeout and
// the record written with none, so a POST waited about 10 s with
// kafka.publishTimeout 2s. Now the call gets one deadline,
// Options.Timeout from its start, and the catch-up, the publish (through
// the messages' contexts, which the publisher honours) and the record all
// get that same deadline; a hold gets it too.
func TestOneDeadlineFromTheCallThroughClaimPublishAndRecord(t *testing.T) {
	const timeout = 7 * time.Minute // distinct from every default
	d := &deadlines{mem: memory(t)}
	in, raw := setup(t, &pub{})
	in.opts.Now = time.Now // the memory's clock: a record carries the ingest's time
	in.pub = deadlinePub{d}
	in.opts.Timeout = timeout
	in.WithMemory(d, zaptest.NewLogger(t))

	before := time.Now()
	if _, err := in.Accept(context.Background(), "RX1", raw); err != nil {
		t.Fatal(err)
	}
	if err := in.Hold(context.Background(), "RX1", connector.Held{ID: "held-1", Time: now, Trigger: "A31",
		Reason: connector.HeldReasons()[0], ContentType: media.HL7v2, Original: []byte("MSH|...")}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()

	for _, step := range []string{"claim", "publish " + topic.Events, "record", "publish " + topic.Held} {
		got, ok := d.seen[step]
		switch {
		case !ok:
			t.Errorf("%s: not reached", step)
		case got.IsZero():
			t.Errorf("%s: got no deadline, want the call's start + %v", step, timeout)
		case got.Before(before.Add(timeout)) || got.After(after.Add(timeout)):
			t.Errorf("%s: got deadline %v, want between %v and %v (the call's start + Options.Timeout)", step, got, before.Add(timeout), after.Add(timeout))
		}
	}
	if d.seen["claim"] != d.seen["record"] || d.seen["claim"] != d.seen["publish "+topic.Events] {
		t.Errorf("claim, publish and record got different deadlines: %v", d.seen)
	}
}

// hangingBroker starts a broker whose answers to requests of key stop while
// hang is set (the request is read and never answered: a broker that
// accepts connections and never replies).
func hangingBroker(t *testing.T, key kmsg.Key, hang *atomic.Bool) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic.Accepted, topic.Events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if hang.Load() {
			return nil, nil, true // never answered
		}
		return nil, nil, false
	})
	return c.ListenAddrs()
}

// TestAHangingBrokerIsAnsweredUnavailableByTheTimeout pins the audit's gap
// in issue 14: a broker that accepts connections and never answers held a
// publish for about 10 s whatever kafka.publishTimeout said. Against a
// broker that stops answering while the duplicate memory catches up, or while the
// event is produced, Accept answers Unavailable (HTTP 503 with
// Retry-After) once Options.Timeout has passed, though every client below
// it (the memory's requests, the publisher's WriteTimeout) would wait an
// hour: the call's deadline is what bounds it. (Recovery once the broker
// answers again, with the hub's own wiring, is TestBrokerOutageIsVisibleAndBounded's.)
func TestAHangingBrokerIsAnsweredUnavailableByTheTimeout(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  kmsg.Key
	}{
		{"catching up with the accepted events", kmsg.ListOffsets},
		{"producing the event", kmsg.Produce},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hang atomic.Bool
			brokers := hangingBroker(t, tc.key, &hang)
			mem, err := dedup.Open(brokers, topic.Accepted, time.Hour, time.Hour, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { mem.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := mem.WaitLoaded(ctx); err != nil {
				t.Fatal(err)
			}
			publisher, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers, WriteTimeout: time.Hour, KeyMetadata: topic.MetaKey}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { publisher.Close() })
			in, raw := setup(t, &pub{})
			in.pub = publisher
			in.opts.Timeout = 500 * time.Millisecond
			in.WithMemory(mem, zaptest.NewLogger(t))

			hang.Store(true)
			done := make(chan error, 1)
			go func() {
				_, err := in.Accept(context.Background(), "RX1", raw)
				done <- err
			}()
			select {
			case err := <-done:
				if problem.KindOf(err) != problem.Unavailable {
					t.Errorf("Accept with the broker hanging: got %v (kind %v), want %v", err, problem.KindOf(err), problem.Unavailable)
				}
			case <-time.After(30 * time.Second): // far above the 500 ms bound, far below the clients' hour
				t.Fatal("Accept with the broker hanging did not return: Options.Timeout does not bound it")
			}
		})
	}
}
