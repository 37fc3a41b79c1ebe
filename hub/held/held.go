// Package held defines the records of the carehub.held topic and reads
// them back for operators.
//
// A source acknowledges some well-formed messages without publishing an
// event (connector.Held: a trigger carehub does not share, a patient
// without a verified NHS number, ...). Ingest writes each one here, keyed
// like the events (the patient's pseudonym, or the pseudonym of the
// sender's local identifier when there is no NHS number), with the reason
// and the original message, before the sender gets its positive answer.
// Nothing held reaches a recipient.
//
// Reader lists and counts the records for the admin API (GET /v1/held,
// GET /v1/held/counts). It scans the topic on each call: the held topic is
// an operator's work queue, small next to the events; at scale it wants an
// index.
//
// An operator closes a held message by releasing it (its original was
// taken in again and published) or resolving it (a decision, with a
// reason, not to share it). Either way a resolution record is appended to
// the topic under the same key (so in the same partition), naming the
// message by (source, id) and the operator: the topic stays the one
// account of what was held and what became of it.
package held

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
)

// Record is one held message, the value of a carehub.held record.
type Record struct {
	ID          string    `json:"id"`
	Source      string    `json:"source"` // ODS code of the sender
	Time        time.Time `json:"time,omitzero"`
	Received    time.Time `json:"received"`
	Trigger     string    `json:"trigger"`
	Reason      string    `json:"reason"`
	Detail      string    `json:"detail,omitempty"`
	Patient     string    `json:"patient"` // the record's key: a pseudonym, never an identifier
	ContentType string    `json:"contentType"`
	Original    []byte    `json:"original"` // the message as received (base64 in JSON)
	// Resolution, on a resolution record, closes the held message with
	// the same Source and ID (Original is then empty; Received is when it
	// was closed).
	Resolution *Resolution `json:"resolution,omitempty"`
}

// Actions of a resolution.
const (
	Released = "released" // taken in again and published
	Resolved = "resolved" // an operator decided not to share it, with a reason
)

// Resolution says what became of a held message, and who decided.
type Resolution struct {
	Action string `json:"action"`
	Actor  string `json:"actor"`
	// Reason is the operator's, for Resolved.
	Reason string `json:"reason,omitempty"`
	// Events are the ids of the events a release published.
	Events []string `json:"events,omitempty"`
	// NHSNumberGiven: the operator gave the patient's NHS number on
	// release (the number itself is in no record).
	NHSNumberGiven bool `json:"nhsNumberGiven,omitempty"`
}

// Closing is the resolution record closing the held message r.
func Closing(r Record, res Resolution, now time.Time) Record {
	return Record{ID: r.ID, Source: r.Source, Time: r.Time, Received: now.UTC(), Trigger: r.Trigger, Reason: r.Reason,
		Patient: r.Patient, ContentType: r.ContentType, Resolution: &res}
}

// Marshal encodes r.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r) // a Record always encodes
	return b
}

// Unmarshal decodes a record.
func Unmarshal(b []byte) (Record, error) {
	var r Record
	err := json.Unmarshal(b, &r)
	return r, err
}

// Item is one line of a listing: a record's metadata and where it is, and
// the original message only when it was asked for.
type Item struct {
	ID          string    `json:"id"`
	Source      string    `json:"source"`
	Time        time.Time `json:"time,omitzero"`
	Received    time.Time `json:"received"`
	Trigger     string    `json:"trigger"`
	Reason      string    `json:"reason"`
	Detail      string    `json:"detail,omitempty"`
	Patient     string    `json:"patient"`
	ContentType string    `json:"contentType"`
	Size        int       `json:"size"`
	Partition   int       `json:"partition"`
	Offset      int64     `json:"offset"`
	// Message is the original message as text (when it is UTF-8), or
	// MessageBase64 its bytes; set only when the query asks for it.
	Message       string `json:"message,omitempty"`
	MessageBase64 string `json:"messageBase64,omitempty"`
	// State is open, released or resolved; Closed says by whom and when.
	State  string  `json:"state"`
	Closed *Closed `json:"closed,omitempty"`
}

// Closed is how a held message was closed.
type Closed struct {
	Resolution
	Time time.Time `json:"time"`
}

// States of a held message, as a listing selects them.
const (
	StateOpen = "open"
	StateAll  = "all"
)

// Query selects held records.
type Query struct {
	Source string // ODS code; "" for all
	Reason string // a reason code; "" for all
	Limit  int    // at most this many items (1 to MaxLimit)
	// After is the cursor of the previous page (Page.Next); "" for the
	// first page.
	After string
	// WithMessage includes the original messages.
	WithMessage bool
	// State is StateOpen (the default: the operator's work queue),
	// Released, Resolved or StateAll.
	State string
}

// Limits of a listing.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Page is one page of a listing, newest received first.
type Page struct {
	Items []Item `json:"items"`
	// Next is the cursor of the following page; empty on the last.
	Next string `json:"next,omitempty"`
	// Total is how many records match the query, over every page.
	Total int `json:"total"`
}

// Counts is how many messages are held and still open, by reason and by
// source, and how many were closed.
type Counts struct {
	Total    int            `json:"total"`
	ByReason map[string]int `json:"byReason"`
	BySource map[string]int `json:"bySource"`
	Released int            `json:"released"`
	Resolved int            `json:"resolved"`
}

// List pages through the records selected by q. Records are identified by
// (source, id): a message held twice (resent after a restart) is listed
// once, at its first record.
func List(recs []Located, q Query) (Page, error) {
	after, err := parseCursor(q.After)
	if err != nil {
		return Page{}, err
	}
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	state := q.State
	if state == "" {
		state = StateOpen
	}
	closed := closings(recs)
	var sel []Located
	for _, r := range unique(recs) {
		st := stateOf(closed, r.Record)
		if (q.Source == "" || r.Source == q.Source) && (q.Reason == "" || r.Reason == q.Reason) && (state == StateAll || state == st) {
			sel = append(sel, r)
		}
	}
	sort.Slice(sel, func(i, j int) bool { return sel[i].before(sel[j]) })
	p := Page{Items: []Item{}, Total: len(sel)}
	for _, r := range sel {
		if after != nil && !after.before(r) {
			continue
		}
		if len(p.Items) == limit {
			p.Next = cursorOf(p.Items[len(p.Items)-1])
			break
		}
		it := r.item(q.WithMessage)
		it.State = stateOf(closed, r.Record)
		it.Closed = closed[key(r.Record)]
		p.Items = append(p.Items, it)
	}
	return p, nil
}

// Count counts the records, each (source, id) once: the open ones by
// reason and by source, the closed ones by how.
func Count(recs []Located) Counts {
	c := Counts{ByReason: map[string]int{}, BySource: map[string]int{}}
	closed := closings(recs)
	for _, r := range unique(recs) {
		switch stateOf(closed, r.Record) {
		case Released:
			c.Released++
		case Resolved:
			c.Resolved++
		default:
			c.Total++
			c.ByReason[r.Reason]++
			c.BySource[r.Source]++
		}
	}
	return c
}

// Find returns the held message with the given id (and source, when
// given), its state, and how it was closed.
func Find(recs []Located, source, id string) (Located, string, *Closed, error) {
	closed := closings(recs)
	var found []Located
	for _, r := range unique(recs) {
		if r.ID == id && (source == "" || r.Source == source) {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return Located{}, "", nil, ErrNotFound
	case 1:
		return found[0], stateOf(closed, found[0].Record), closed[key(found[0].Record)], nil
	}
	return Located{}, "", nil, ErrAmbiguous
}

// Deletable returns, per partition, the offset below which every record
// may be deleted: held messages closed (released or resolved) at least
// window before now, and the records that closed them. A message still
// open, or closed too recently, keeps itself and everything after it in
// its partition. recs are in partition and offset order (Reader.All).
func Deletable(recs []Located, now time.Time, window time.Duration) map[int]int64 {
	closed := closings(recs)
	out := map[int]int64{}
	blocked := map[int]bool{}
	for _, r := range recs {
		if blocked[r.Partition] {
			continue
		}
		c := closed[key(r.Record)]
		if c == nil || now.Sub(c.Time) < window {
			blocked[r.Partition] = true
			continue
		}
		out[r.Partition] = r.Offset + 1
	}
	return out
}

// Errors of Find.
var (
	ErrNotFound  = fmt.Errorf("held: no held message with that id")
	ErrAmbiguous = fmt.Errorf("held: messages of two sources have that id")
)

func key(r Record) string { return r.Source + "\x00" + r.ID }

// closings are the resolutions of recs by (source, id): the first one
// recorded wins.
func closings(recs []Located) map[string]*Closed {
	out := map[string]*Closed{}
	for _, r := range recs {
		if r.Resolution != nil {
			if _, ok := out[key(r.Record)]; !ok {
				out[key(r.Record)] = &Closed{Resolution: *r.Resolution, Time: r.Received}
			}
		}
	}
	return out
}

func stateOf(closed map[string]*Closed, r Record) string {
	if c := closed[key(r)]; c != nil {
		return c.Action
	}
	return StateOpen
}

// Located is a record and where it sits in the topic.
type Located struct {
	Record
	Partition int
	Offset    int64
}

// before orders records newest received first, then by place in the topic.
func (a Located) before(b Located) bool {
	if !a.Received.Equal(b.Received) {
		return a.Received.After(b.Received)
	}
	if a.Partition != b.Partition {
		return a.Partition < b.Partition
	}
	return a.Offset < b.Offset
}

func (r Located) item(withMessage bool) Item {
	it := Item{ID: r.ID, Source: r.Source, Time: r.Time, Received: r.Received, Trigger: r.Trigger, Reason: r.Reason,
		Detail: r.Detail, Patient: r.Patient, ContentType: r.ContentType, Size: len(r.Original),
		Partition: r.Partition, Offset: r.Offset}
	if withMessage {
		if utf8.Valid(r.Original) {
			it.Message = string(r.Original)
		} else {
			it.MessageBase64 = base64.StdEncoding.EncodeToString(r.Original)
		}
	}
	return it
}

// unique keeps the first record of each (source, id), in topic order;
// resolution records are not held messages.
func unique(recs []Located) []Located {
	seen := make(map[string]bool, len(recs))
	out := make([]Located, 0, len(recs))
	for _, r := range recs {
		k := key(r.Record)
		if seen[k] || r.Resolution != nil {
			continue
		}
		seen[k] = true
		out = append(out, r)
	}
	return out
}

// A cursor is the position of the last item of a page: received time,
// partition and offset, base64url-encoded. It holds no patient data.
func cursorOf(it Item) string {
	return topic.Place{Time: it.Received, Partition: it.Partition, Offset: it.Offset}.Cursor()
}

// ErrCursor is returned for a cursor that List did not make.
var ErrCursor = fmt.Errorf("held: the cursor is not one this listing returned")

func parseCursor(c string) (*Located, error) {
	p, err := topic.ParseCursor(c)
	if err != nil {
		return nil, ErrCursor
	}
	if p == nil {
		return nil, nil
	}
	return &Located{Record: Record{Received: p.Time}, Partition: p.Partition, Offset: p.Offset}, nil
}

// Reader reads the held topic.
type Reader struct {
	Brokers []string
	Topic   string
}

// All reads every record of the topic, in partition and offset order.
// Records that do not decode are skipped (they were not written by Ingest).
func (r *Reader) All(ctx context.Context) ([]Located, error) {
	client := &kafka.Client{Addr: kafka.TCP(r.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{r.Topic}})
	if err != nil {
		return nil, fmt.Errorf("reading held metadata: %w", err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("reading held metadata: topic %s not found", r.Topic)
	}
	var parts []int
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
	}
	sort.Ints(parts)
	req := map[string][]kafka.OffsetRequest{}
	for _, p := range parts {
		req[r.Topic] = append(req[r.Topic], kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return nil, fmt.Errorf("reading held offsets: %w", err)
	}
	var out []Located
	for _, po := range res.Topics[r.Topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("reading held offsets: %w", po.Error)
		}
		recs, err := r.partition(ctx, po.Partition, po.FirstOffset, po.LastOffset)
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Partition != out[j].Partition {
			return out[i].Partition < out[j].Partition
		}
		return out[i].Offset < out[j].Offset
	})
	return out, nil
}

func (r *Reader) partition(ctx context.Context, part int, first, last int64) ([]Located, error) {
	if last <= first {
		return nil, nil
	}
	kr := kafka.NewReader(kafka.ReaderConfig{Brokers: r.Brokers, Topic: r.Topic, Partition: part, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
	defer kr.Close()
	if err := kr.SetOffset(first); err != nil {
		return nil, fmt.Errorf("reading held records: %w", err)
	}
	var out []Located
	for {
		m, err := kr.FetchMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading held records: %w", err)
		}
		if rec, err := Unmarshal(m.Value); err == nil && rec.ID != "" {
			out = append(out, Located{Record: rec, Partition: part, Offset: m.Offset})
		}
		if m.Offset >= last-1 {
			return out, nil
		}
	}
}
