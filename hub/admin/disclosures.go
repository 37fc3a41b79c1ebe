package admin

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/carehub/carehub/hub/audit"
	"github.com/segmentio/kafka-go"
)

// Disclosure is one line of a patient's disclosure report: an event and a
// recipient, whether it was shared or withheld and why, and what became of
// the delivery.
type Disclosure struct {
	EventID      string    `json:"eventId"`
	EventType    string    `json:"eventType"`
	Publisher    string    `json:"publisher,omitempty"`
	Recipient    string    `json:"recipient"`
	Basis        string    `json:"basis,omitempty"`
	Decision     string    `json:"decision"` // permit or deny
	Rule         string    `json:"rule"`
	Directive    string    `json:"directive,omitempty"`
	Obligations  []string  `json:"obligations,omitempty"`
	DecidedAt    time.Time `json:"decidedAt"`
	Outcome      string    `json:"outcome,omitempty"` // delivered, dead-lettered, or empty while pending
	OutcomeAt    time.Time `json:"outcomeAt,omitzero"`
	OutcomeNote  string    `json:"outcomeReason,omitempty"`
	Withheld     bool      `json:"withheld"`
	Subscription string    `json:"subscription,omitempty"`
}

// AuditReader builds disclosure reports from the carehub.audit topic. Audit
// records are keyed by the patient pseudonym with the murmur2 partitioner,
// so one patient's records sit in one partition: the reader scans only that
// partition. (At scale this wants an index; the scan is linear in the
// partition's size.)
type AuditReader struct {
	Brokers []string
	Topic   string
}

// For implements Disclosures.
func (a *AuditReader) For(ctx context.Context, patient string) ([]Disclosure, error) {
	client := &kafka.Client{Addr: kafka.TCP(a.Brokers...), Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{a.Topic}})
	if err != nil || len(md.Topics) != 1 || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("reading audit metadata: %w", err)
	}
	var parts []int
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
	}
	sort.Ints(parts)
	part := (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(patient)}, parts...)
	res, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		a.Topic: {kafka.FirstOffsetOf(part), kafka.LastOffsetOf(part)}}})
	if err != nil {
		return nil, fmt.Errorf("reading audit offsets: %w", err)
	}
	var first, last int64
	for _, p := range res.Topics[a.Topic] {
		if p.Partition == part {
			first, last = p.FirstOffset, p.LastOffset
		}
	}
	if last <= first {
		return nil, nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: a.Brokers, Topic: a.Topic, Partition: part, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return nil, err
	}
	var recs []audit.Record
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading audit records: %w", err)
		}
		if string(m.Key) == patient {
			if rec, err := audit.Unmarshal(m.Value); err == nil && rec.Patient == patient {
				recs = append(recs, rec)
			}
		}
		if m.Offset >= last-1 {
			break
		}
	}
	return Report(recs), nil
}

// Report joins decision and delivery records into disclosure lines, in the
// order of the decisions. An event is identified by its publisher and id
// together (two publishers may use one id), so a delivery is joined to the
// permit for the same publisher, event id and recipient. A delivery record
// written before delivery records named their publisher is joined on event
// id and recipient only when a single permit fits.
func Report(recs []audit.Record) []Disclosure {
	var out []Disclosure
	index := map[string]int{}    // publisher + event id + recipient → line of the permit that produced the copy
	legacy := map[string][]int{} // event id + recipient → lines of such permits, for records without a publisher
	for _, r := range recs {
		switch r.Kind {
		case audit.KindDecision:
			d := Disclosure{
				EventID: r.EventID, EventType: r.EventType, Publisher: r.Publisher, Recipient: r.Recipient,
				Basis: r.Basis, Decision: r.Effect, Rule: r.Rule, Directive: r.Directive,
				Obligations: r.Obligations, DecidedAt: r.Time, Withheld: r.Effect != "permit",
				Subscription: r.Subscription,
			}
			k := r.Publisher + "\x00" + r.EventID + "\x00" + r.Recipient
			if _, seen := index[k]; !seen && !d.Withheld {
				index[k] = len(out)
				lk := r.EventID + "\x00" + r.Recipient
				legacy[lk] = append(legacy[lk], len(out))
			}
			out = append(out, d)
		case audit.KindDelivery:
			i, ok := index[r.Publisher+"\x00"+r.EventID+"\x00"+r.Recipient]
			if !ok && r.Publisher == "" {
				if lines := legacy[r.EventID+"\x00"+r.Recipient]; len(lines) == 1 {
					i, ok = lines[0], true
				}
			}
			if ok {
				out[i].Outcome, out[i].OutcomeAt, out[i].OutcomeNote = r.Outcome, r.Time, r.Reason
			}
		}
	}
	return out
}
