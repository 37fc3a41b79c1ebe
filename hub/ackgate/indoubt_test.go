package ackgate_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/ackgate"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/ingest"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap/zaptest"
)

// TestAnEventAnsweredUnavailableIsNeverRoutedEvenIfItLandsLater pins issue 14's
// in-doubt bug: with the broker stalled, the ingest gave up at
// kafka.publishTimeout and answered 503 (HL7 AR), but the Kafka client kept
// sending, the event landed in carehub.events later, and the router routed
// and delivered an event whose sender was told it was not accepted (and
// would resend it). Now the router's handler is gated: the event that
// landed after the 503 is not routed, a received record flagged
// not-acknowledged names it in the audit, and the sender's resend with the
// same id is accepted (202) and routed exactly once.
//
// The embedded broker (kfake, over TCP) stalls every Produce until
// released, then processes it normally: a broker that resumes.
func TestAnEventAnsweredUnavailableIsNeverRoutedEvenIfItLandsLater(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic.Accepted, topic.Events, topic.Audit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var hang atomic.Bool
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if hang.Load() {
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	brokers := c.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const timeout = 500 * time.Millisecond // kafka.publishTimeout
	mem, err := dedup.Open(brokers, topic.Accepted, time.Hour, 5*time.Second, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if err := mem.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	// The publisher's own timeout is long: the write the ingest gave up
	// on goes on, as kafka-go's does, and lands once the broker resumes.
	publisher, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers, WriteTimeout: time.Hour, KeyMetadata: topic.MetaKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { publisher.Close() })
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	ps, err := nhs.NewPseudonymiser([]byte("ackgate-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := ingest.New(v, ps, publisher, ingest.Options{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	in.WithMemory(mem, zaptest.NewLogger(t))
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}

	var routed []*message.Message
	gate, err := ackgate.New(ackgate.Config{Memory: mem, Publisher: publisher, Timeout: timeout, Window: time.Hour,
		Margin: time.Second, // the test's processes share a clock
		Next:   func(m *message.Message) error { routed = append(routed, m); return nil }, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := kafkawm.NewSubscriber(kafkawm.SubscriberConfig{Brokers: brokers, ConsumerGroup: topic.GroupRouter}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	events, err := sub.Subscribe(ctx, topic.Events)
	if err != nil {
		t.Fatal(err)
	}
	// handleNext hands the next event of carehub.events to the gate, as
	// the hub's router does.
	handleNext := func(what string) *message.Message {
		t.Helper()
		select {
		case m := <-events:
			if err := gate.Handle(m); err != nil {
				t.Fatalf("the gate's handler, %s: %v", what, err)
			}
			m.Ack()
			return m
		case <-ctx.Done():
			t.Fatalf("%s never reached carehub.events", what)
		}
		return nil
	}

	hang.Store(true)
	_, err = in.Accept(context.Background(), "RX1", raw)
	if problem.KindOf(err) != problem.Unavailable {
		t.Fatalf("Accept with the broker stalled: got %v, want unavailable", err)
	}
	hang.Store(false)
	close(release)

	first := handleNext("the event answered 503")
	if len(routed) != 0 {
		t.Fatalf("the event answered 503 was routed (%d times)", len(routed))
	}
	pos := first.Metadata.Get(kafkawm.PartitionMetadata) + "/" + first.Metadata.Get(kafkawm.OffsetMetadata)
	rec := findAudit(t, ctx, brokers, func(r audit.Record) bool {
		return r.Kind == audit.KindReceived && slices.Contains(r.Flags, audit.FlagNotAcknowledged)
	})
	if rec.Position != pos || rec.EventID != first.Metadata.Get(topic.MetaEventID) || rec.Publisher != "RX1" {
		t.Errorf("the not-acknowledged record: got %+v, want event %s at %s from RX1", rec, first.Metadata.Get(topic.MetaEventID), pos)
	}

	acc, err := in.Accept(context.Background(), "RX1", raw)
	if err != nil || acc.Duplicate {
		t.Fatalf("the resend with the same id: got %+v, %v; want accepted", acc, err)
	}
	second := handleNext("the resend")
	if len(routed) != 1 || routed[0] != second {
		t.Fatalf("after the resend: routed %d events, want the resend once", len(routed))
	}
}

// findAudit reads carehub.audit from its start until a record matches.
func findAudit(t *testing.T, ctx context.Context, brokers []string, match func(audit.Record) bool) audit.Record {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic.Audit, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	for {
		km, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("no matching audit record: %v", err)
		}
		if strings.Contains(string(km.Value), "9990500002") {
			t.Errorf("an audit record holds the NHS number: %s", km.Value)
		}
		rec, err := audit.Unmarshal(km.Value)
		if err == nil && match(rec) {
			return rec
		}
	}
}
