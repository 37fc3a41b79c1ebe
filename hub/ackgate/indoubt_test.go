package ackgate_test

import (
	"bytes"
	"context"
	"encoding/json"
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
	var hang atomic.Bool
	release := make(chan struct{})
	r := newRig(t, func(c *kfake.Cluster, _ *kmsg.ProduceRequest) {
		if hang.Load() {
			c.SleepControl(func() { <-release })
		}
	})

	hang.Store(true)
	_, err := r.in.Accept(context.Background(), "RX1", r.raw)
	if problem.KindOf(err) != problem.Unavailable {
		t.Fatalf("Accept with the broker stalled: got %v, want unavailable", err)
	}
	hang.Store(false)
	close(release)

	first := r.handleNext("the event answered 503")
	if len(r.routed) != 0 {
		t.Fatalf("the event answered 503 was routed (%d times)", len(r.routed))
	}
	pos := first.Metadata.Get(kafkawm.PartitionMetadata) + "/" + first.Metadata.Get(kafkawm.OffsetMetadata)
	rec := findAudit(t, r.ctx, r.brokers, func(r audit.Record) bool {
		return r.Kind == audit.KindReceived && slices.Contains(r.Flags, audit.FlagNotAcknowledged)
	})
	if rec.Position != pos || rec.EventID != first.Metadata.Get(topic.MetaEventID) || rec.Publisher != "RX1" {
		t.Errorf("the not-acknowledged record: got %+v, want event %s at %s from RX1", rec, first.Metadata.Get(topic.MetaEventID), pos)
	}

	acc, err := r.in.Accept(context.Background(), "RX1", r.raw)
	if err != nil || acc.Duplicate {
		t.Fatalf("the resend with the same id: got %+v, %v; want accepted", acc, err)
	}
	second := r.handleNext("the resend")
	if len(r.routed) != 1 || r.routed[0] != second {
		t.Fatalf("after the resend: routed %d events, want the resend once", len(r.routed))
	}
}

// TestAnEventWhoseRecordLandsAfterTheVoidIsNotRoutedAndItsResendIs pins
// review bug (1) of the ack gate end to end: the event was durable but its
// record in carehub.accepted was cut short (503); the router voided the
// attempt, then the Kafka client completed the record's write. The late
// record must neither route the event nor make the resend a duplicate
// (which would answer it 202 and publish nothing: a loss): the resend is
// published and routed, once. The broker holds every record write (not the
// router's void) until released.
func TestAnEventWhoseRecordLandsAfterTheVoidIsNotRoutedAndItsResendIs(t *testing.T) {
	var hold atomic.Bool
	release := make(chan struct{})
	held := make(chan struct{}, 16)
	r := newRig(t, func(c *kfake.Cluster, req *kmsg.ProduceRequest) {
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == topic.Accepted && hold.Load() && !bytes.Contains(rp.Records, []byte(`"void":true`)) {
					held <- struct{}{}
					c.SleepControl(func() { <-release })
					return
				}
			}
		}
	})

	hold.Store(true)
	_, err := r.in.Accept(context.Background(), "RX1", r.raw)
	if problem.KindOf(err) != problem.Unavailable {
		t.Fatalf("Accept with the record held: got %v, want unavailable", err)
	}
	<-held // the record's write is at the broker, not yet written
	first := r.handleNext("the event answered 503")
	if len(r.routed) != 0 {
		t.Fatalf("the event whose record was cut short was routed")
	}
	hold.Store(false)
	close(release)                        // the late record lands, after the void
	if err := r.mem.Close(); err != nil { // waits for the held write to end
		t.Logf("closing the ingest's memory: %v", err)
	}
	if !r.recordLanded(first.Metadata.Get(topic.MetaAttempt)) {
		t.Fatal("the late record never landed: the test proves nothing")
	}
	mem := r.openMemory()
	r.in.WithMemory(mem, zaptest.NewLogger(t))
	acc, err := r.in.Accept(context.Background(), "RX1", r.raw)
	if err != nil || acc.Duplicate {
		t.Fatalf("the resend after the late record: got %+v, %v; want accepted as new (a duplicate would publish nothing)", acc, err)
	}
	second := r.handleNext("the resend")
	if len(r.routed) != 1 || r.routed[0] != second || second.Metadata.Get(topic.MetaAttempt) == first.Metadata.Get(topic.MetaAttempt) {
		t.Fatalf("after the resend: routed %d events, want the resend, once", len(r.routed))
	}
}

// rig is an ingest and a gated router on an embedded broker whose Produce
// requests control sees first (it may hold them with c.SleepControl). The
// ingest and the router have each their memory, as two processes.
type rig struct {
	t          *testing.T
	ctx        context.Context
	brokers    []string
	in         *ingest.Ingest
	mem        *dedup.Store
	raw        []byte
	routed     []*message.Message
	handleNext func(what string) *message.Message
}

func newRig(t *testing.T, control func(*kfake.Cluster, *kmsg.ProduceRequest)) *rig {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic.Accepted, topic.Events, topic.Audit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		control(c, req.(*kmsg.ProduceRequest))
		return nil, nil, false
	})
	r := &rig{t: t, brokers: c.ListenAddrs()}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	r.ctx = ctx

	const timeout = 500 * time.Millisecond // kafka.publishTimeout
	r.mem = r.openMemory()
	// The publisher's own timeout is long: the write the ingest gave up
	// on goes on, as kafka-go's does, and lands once the broker resumes.
	publisher, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: r.brokers, WriteTimeout: time.Hour, KeyMetadata: topic.MetaKey}, nil)
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
	r.in, err = ingest.New(v, ps, publisher, ingest.Options{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	r.in.WithMemory(r.mem, zaptest.NewLogger(t))
	r.raw, err = os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}

	gate, err := ackgate.New(ackgate.Config{Memory: r.openMemory(), Publisher: publisher, Timeout: timeout, Window: time.Hour,
		Margin: time.Second, // the test's processes share a clock
		Next:   func(m *message.Message) error { r.routed = append(r.routed, m); return nil }, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := kafkawm.NewSubscriber(kafkawm.SubscriberConfig{Brokers: r.brokers, ConsumerGroup: topic.GroupRouter}, nil)
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
	r.handleNext = func(what string) *message.Message {
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
	return r
}

// recordLanded reads carehub.accepted to its end and says whether the
// attempt's record (not a void) is there, after a void of it.
func (r *rig) recordLanded(attempt string) bool {
	kr := kafka.NewReader(kafka.ReaderConfig{Brokers: r.brokers, Topic: topic.Accepted, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer kr.Close()
	voided := false
	for {
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
		km, err := kr.FetchMessage(ctx)
		cancel()
		if err != nil {
			return false
		}
		var rec dedup.Record
		if json.Unmarshal(km.Value, &rec) != nil || rec.Attempt != attempt {
			continue
		}
		if rec.Void {
			voided = true
		} else {
			return voided
		}
	}
}

// openMemory opens a memory of accepted events: its writes are bounded
// only by the test (a held write waits for the broker's answer).
func (r *rig) openMemory() *dedup.Store {
	mem, err := dedup.Open(r.brokers, topic.Accepted, time.Hour, time.Hour, zaptest.NewLogger(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { mem.Close() })
	if err := mem.WaitLoaded(r.ctx); err != nil {
		r.t.Fatal(err)
	}
	return mem
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
