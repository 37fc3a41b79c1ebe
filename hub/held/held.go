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
package held

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
}

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

// Counts is how many messages are held, by reason and by source.
type Counts struct {
	Total    int            `json:"total"`
	ByReason map[string]int `json:"byReason"`
	BySource map[string]int `json:"bySource"`
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
	var sel []Located
	for _, r := range unique(recs) {
		if (q.Source == "" || r.Source == q.Source) && (q.Reason == "" || r.Reason == q.Reason) {
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
		p.Items = append(p.Items, r.item(q.WithMessage))
	}
	return p, nil
}

// Count counts the records, each (source, id) once.
func Count(recs []Located) Counts {
	c := Counts{ByReason: map[string]int{}, BySource: map[string]int{}}
	for _, r := range unique(recs) {
		c.Total++
		c.ByReason[r.Reason]++
		c.BySource[r.Source]++
	}
	return c
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

// unique keeps the first record of each (source, id), in topic order.
func unique(recs []Located) []Located {
	seen := make(map[string]bool, len(recs))
	out := make([]Located, 0, len(recs))
	for _, r := range recs {
		k := r.Source + "\x00" + r.ID
		if seen[k] {
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
	s := strconv.FormatInt(it.Received.UnixNano(), 10) + "." + strconv.Itoa(it.Partition) + "." + strconv.FormatInt(it.Offset, 10)
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

// ErrCursor is returned for a cursor that List did not make.
var ErrCursor = fmt.Errorf("held: the cursor is not one this listing returned")

func parseCursor(c string) (*Located, error) {
	if c == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, ErrCursor
	}
	parts := strings.Split(string(b), ".")
	if len(parts) != 3 {
		return nil, ErrCursor
	}
	ns, err1 := strconv.ParseInt(parts[0], 10, 64)
	p, err2 := strconv.Atoi(parts[1])
	o, err3 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || p < 0 || o < 0 {
		return nil, ErrCursor
	}
	return &Located{Record: Record{Received: time.Unix(0, ns).UTC()}, Partition: p, Offset: o}, nil
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
		dec := json.NewDecoder(bytes.NewReader(m.Value))
		var rec Record
		if dec.Decode(&rec) == nil && rec.ID != "" {
			out = append(out, Located{Record: rec, Partition: part, Offset: m.Offset})
		}
		if m.Offset >= last-1 {
			return out, nil
		}
	}
}
