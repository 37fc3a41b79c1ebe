package held

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/segmentio/kafka-go"
)

// TestReaderAll reads a held topic on the embedded broker: records written
// by Marshal come back with their place, in partition and offset order;
// values that are not records (not JSON, JSON with trailing bytes, no id)
// are skipped.
func TestReaderAll(t *testing.T) {
	const name = "carehub.held"
	brokers := brokertest.Start(t, broker.TopicSpec{Name: name, Partitions: 2, ReplicationFactor: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	a := rec("a", "RX1", "no-nhs-number", 1, 0, 0).Record
	b := rec("b", "RX2", "trigger-not-shared", 2, 0, 0).Record
	c := Closing(a, Resolution{Action: Resolved, Actor: "ig-lead", Reason: "duplicate"}, t0.Add(time.Hour))
	msgs := []kafka.Message{
		{Partition: 0, Value: a.Marshal()},
		{Partition: 0, Value: []byte("not json")},
		{Partition: 0, Value: append(b.Marshal(), []byte(`{"id":"x"}`)...)},
		{Partition: 0, Value: []byte(`{"source":"RX1"}`)},
		{Partition: 1, Value: b.Marshal()},
		{Partition: 0, Value: c.Marshal()},
	}
	for i, m := range msgs {
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: name, Balancer: fixed(m.Partition), RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
		m.Partition = 0
		if err := w.WriteMessages(ctx, m); err != nil {
			t.Fatalf("writing record %d: %v", i, err)
		}
		_ = w.Close()
	}

	got, err := (&Reader{Brokers: brokers, Topic: name}).All(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var places []string
	for _, l := range got {
		places = append(places, fmt.Sprintf("%s@%d/%d", l.ID, l.Partition, l.Offset))
	}
	if want := "[a@0/0 a@0/4 b@1/0]"; fmt.Sprint(places) != want {
		t.Fatalf("All read %v, want %s", places, want)
	}
	if r := got[0].Record; r.Source != "RX1" || string(r.Original) != "MSH|a" || !r.Received.Equal(a.Received) || r.Resolution != nil {
		t.Errorf("held record read back as %+v", r)
	}
	if r := got[1].Record; r.Resolution == nil || r.Resolution.Action != Resolved || r.Resolution.Reason != "duplicate" {
		t.Errorf("resolution record read back as %+v", r)
	}
}

// fixed sends every message to one partition.
type fixed int

func (f fixed) Balance(_ kafka.Message, partitions ...int) int { return int(f) }
