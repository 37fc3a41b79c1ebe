package directory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
)

// Backlog is what waits in a recipient's outbox for its deliverers: the
// copies past the offsets its consumer group has committed.
type Backlog struct {
	Events int64 `json:"events"`
	// Oldest is when the oldest copy waiting was written to the outbox;
	// zero when none waits.
	Oldest time.Time `json:"oldest,omitzero"`
}

// ReadBacklog measures a recipient's backlog on the broker: one metadata,
// one offsets and one committed-offsets request, and one fetch per
// partition that has copies waiting (for the oldest's time).
func ReadBacklog(ctx context.Context, brokers []string, ods string) (Backlog, error) {
	t := topic.Outbox(ods)
	first, end, err := broker.Offsets(ctx, brokers, t)
	if err != nil {
		return Backlog{}, err
	}
	parts := make([]int, 0, len(end))
	for p := range end {
		parts = append(parts, p)
	}
	committed, err := broker.Committed(ctx, brokers, topic.DeliverGroup(ods), t, parts)
	switch {
	case errors.Is(err, kafka.GroupIdNotFound):
		committed = broker.PartitionOffsets{} // no deliverer has committed yet
	case err != nil:
		return Backlog{}, err
	}
	var b Backlog
	for p, e := range end {
		from, ok := committed[p]
		if !ok || from < first[p] {
			from = first[p]
		}
		if e <= from {
			continue
		}
		b.Events += e - from
		at, err := recordTime(ctx, brokers, t, p, from)
		if err != nil {
			return Backlog{}, err
		}
		if b.Oldest.IsZero() || at.Before(b.Oldest) {
			b.Oldest = at
		}
	}
	return b, nil
}

// recordTime reads the time of the record at offset of a partition.
func recordTime(ctx context.Context, brokers []string, t string, partition int, offset int64) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: t, Partition: partition, MinBytes: 1, MaxBytes: 1 << 20,
		MaxWait: 100 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		return time.Time{}, err
	}
	m, err := r.FetchMessage(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the oldest copy waiting in %s: %w", t, err)
	}
	return m.Time, nil
}
