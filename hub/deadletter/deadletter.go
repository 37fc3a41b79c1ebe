// Package deadletter reads and resolves the dead letters of carehub.dlq:
// copies a recipient rejected for good. An operator replays one (it goes
// back to the recipient's outbox, and is re-checked against the patient's
// consent when it is delivered, like any copy) or dismisses it; either way
// a resolution record, appended to the same partition, closes it. Package
// retention deletes dead letters once resolved and a window has passed.
//
// Dead letters and their resolutions are keyed by the recipient's ODS
// code, so one recipient's are in one partition, in order. A resolution
// names the offset of the dead letter it closes.
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
)

// Actions of a resolution.
const (
	Replayed  = "replayed"
	Dismissed = "dismissed"
)

// Entry is one record of the dead-letter topic: a dead letter, or a
// resolution of one.
type Entry struct {
	Partition int
	Offset    int64
	audit.DeadLetter
}

// Letter is a dead letter and, once resolved, its resolution.
type Letter struct {
	Partition  int       `json:"partition"`
	Offset     int64     `json:"offset"`
	Time       time.Time `json:"time"`
	Recipient  string    `json:"recipient"`
	EventID    string    `json:"eventId"`
	EventType  string    `json:"eventType,omitempty"`
	Patient    string    `json:"patient,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Status     int       `json:"status,omitempty"`
	Form       string    `json:"form,omitempty"`
	Resolution *Resolved `json:"resolution,omitempty"`

	dl audit.DeadLetter
}

// Resolved says how and when a dead letter was closed.
type Resolved struct {
	Action string    `json:"action"`
	Actor  string    `json:"actor"`
	Note   string    `json:"note,omitempty"`
	Time   time.Time `json:"time"`
}

// Read returns every record of the topic from each partition's log start,
// in offset order per partition.
func Read(ctx context.Context, brokers []string, name string) ([]Entry, error) {
	first, end, err := broker.Offsets(ctx, brokers, name)
	if err != nil {
		return nil, err
	}
	parts := make([]int, 0, len(end))
	for p := range end {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	var out []Entry
	for _, p := range parts {
		if end[p] <= first[p] {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: name, Partition: p, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
		if err := r.SetOffset(first[p]); err != nil {
			r.Close()
			return nil, err
		}
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("reading dead letters: %w", err)
			}
			var dl audit.DeadLetter
			if json.Unmarshal(m.Value, &dl) == nil {
				out = append(out, Entry{Partition: p, Offset: m.Offset, DeadLetter: dl})
			}
			if m.Offset >= end[p]-1 {
				break
			}
		}
		r.Close()
	}
	return out, nil
}

// Letters joins dead letters with their resolutions. With recipient set,
// only that recipient's.
func Letters(entries []Entry, recipient string) []Letter {
	res := map[[2]int64]Resolved{}
	for _, e := range entries {
		if r := e.Resolution; r != nil {
			res[[2]int64{int64(e.Partition), r.Offset}] = Resolved{Action: r.Action, Actor: r.Actor, Note: r.Note, Time: e.Time}
		}
	}
	var out []Letter
	for _, e := range entries {
		if e.Resolution != nil || (recipient != "" && e.Recipient != recipient) {
			continue
		}
		l := Letter{Partition: e.Partition, Offset: e.Offset, Time: e.Time, Recipient: e.Recipient, EventID: e.EventID,
			EventType: e.EventType, Patient: e.Patient, Reason: e.Reason, Status: e.Status, Form: e.Form, dl: e.DeadLetter}
		if r, ok := res[[2]int64{int64(e.Partition), e.Offset}]; ok {
			l.Resolution = &r
		}
		out = append(out, l)
	}
	return out
}

// Find returns the dead letter at partition and offset.
func Find(entries []Entry, partition int, offset int64) (Letter, error) {
	for _, l := range Letters(entries, "") {
		if l.Partition == partition && l.Offset == offset {
			return l, nil
		}
	}
	return Letter{}, problem.New(problem.NotFound, "no dead letter at that partition and offset")
}

// Resolve closes l: for Replayed it first puts the copy back in the
// recipient's outbox, with its sealed routing decision, so that it is
// re-checked against the patient's consent when it is delivered. Both are
// published with pub; the resolution last, so that a dead letter is never
// closed without its replay.
func Resolve(pub message.Publisher, l Letter, action, actor, note string, now time.Time) error {
	if l.Resolution != nil {
		return problem.New(problem.Conflict, "the dead letter is already resolved")
	}
	switch action {
	case Replayed:
		if len(l.dl.Event) == 0 {
			return problem.New(problem.Conflict, "the dead letter holds no copy to replay")
		}
		m := message.NewMessage(l.EventID, []byte(l.dl.Event))
		key := l.Patient
		if l.EventType == event.TypeWithheldNotice || key == "" {
			key = l.EventID
		}
		m.Metadata.Set(topic.MetaKey, key)
		m.Metadata.Set(topic.MetaEventID, l.EventID)
		m.Metadata.Set(topic.MetaEventType, l.EventType)
		m.Metadata.Set(topic.MetaRecipient, l.Recipient)
		m.Metadata.Set(topic.MetaBasis, l.dl.Basis)
		m.Metadata.Set(topic.MetaForm, l.Form)
		m.Metadata.Set(topic.MetaDecision, l.dl.Decision)
		if err := pub.Publish(topic.Outbox(l.Recipient), m); err != nil {
			return problem.Wrap(problem.Unavailable, "the copy could not be put back in the outbox; retry", err)
		}
	case Dismissed:
	default:
		return errors.New("deadletter: unknown action")
	}
	r := audit.DeadLetter{Time: now.UTC(), Recipient: l.Recipient, EventID: l.EventID,
		Resolution: &audit.Resolution{Offset: l.Offset, Action: action, Actor: actor, Note: note}}
	b, _ := json.Marshal(r)
	m := message.NewMessage(watermill.NewUUID(), b)
	m.Metadata.Set(topic.MetaKey, l.Recipient)
	m.Metadata.Set(topic.MetaEventID, l.EventID)
	if err := pub.Publish(topic.DLQ, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the resolution could not be recorded; retry", err)
	}
	return nil
}

// Deletable returns, per partition, the offset below which every record
// may be deleted: dead letters resolved at least window before now, and
// the resolutions that closed them. A dead letter not yet resolved, or
// resolved too recently, keeps itself and everything after it.
func Deletable(entries []Entry, now time.Time, window time.Duration) broker.PartitionOffsets {
	resolvedAt := map[[2]int64]time.Time{}
	for _, e := range entries {
		if e.Resolution != nil {
			resolvedAt[[2]int64{int64(e.Partition), e.Resolution.Offset}] = e.Time
		}
	}
	out := broker.PartitionOffsets{}
	blocked := map[int]bool{}
	for _, e := range entries {
		if blocked[e.Partition] {
			continue
		}
		target := e.Offset
		if e.Resolution != nil {
			target = e.Resolution.Offset
		}
		t, ok := resolvedAt[[2]int64{int64(e.Partition), target}]
		if !ok || now.Sub(t) < window {
			blocked[e.Partition] = true
			continue
		}
		out[e.Partition] = e.Offset + 1
	}
	return out
}
