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
// recipient, whether it was shared or withheld and why, in which form, and
// what became of the delivery.
type Disclosure struct {
	EventID     string   `json:"eventId"`
	EventType   string   `json:"eventType"`
	Publisher   string   `json:"publisher,omitempty"`
	Recipient   string   `json:"recipient"`
	Basis       string   `json:"basis,omitempty"`
	Decision    string   `json:"decision"` // permit or deny
	Rule        string   `json:"rule"`
	Directive   string   `json:"directive,omitempty"`
	Obligations []string `json:"obligations,omitempty"`
	// Form is the form of the copy (full, notification, notice): the form
	// delivered once there is an outcome.
	Form string `json:"form,omitempty"`
	// Relation is how the event follows earlier events on its encounter.
	Relation string `json:"relation,omitempty"`
	// About names the event a notice was issued about.
	About string `json:"about,omitempty"`
	// DirectiveVersions are the versions of the patient's directives that
	// decided (of each number, for a merged patient).
	DirectiveVersions []audit.DirectiveVersion `json:"directiveVersions,omitempty"`
	// RoutedDirectiveVersions are, for a copy withheld at delivery, the
	// versions that routed it (DirectiveVersions then names those that
	// withheld it): a change of directives between the two shows as a
	// newer version here than there.
	RoutedDirectiveVersions []audit.DirectiveVersion `json:"routedDirectiveVersions,omitempty"`
	DecidedAt               time.Time                `json:"decidedAt"`
	// Outcome: delivered, withheld (by the re-check at the moment of
	// delivery), dead-lettered; sending while the copy is being handed
	// over (or when the hub stopped before it could record the outcome:
	// the recipient may have it); empty while pending. Once delivered, a
	// line stays delivered: a later redelivery of the same copy that ends
	// otherwise (withheld, rejected as a duplicate) does not undo a
	// disclosure.
	Outcome     string    `json:"outcome,omitempty"`
	OutcomeAt   time.Time `json:"outcomeAt,omitzero"`
	OutcomeNote string    `json:"outcomeReason,omitempty"`
	// OutcomeRule is the rule of a withholding at delivery.
	OutcomeRule string `json:"outcomeRule,omitempty"`
	// SentAt is when the copy was first handed to the recipient's
	// connector (its first sending record). A line with SentAt may have
	// reached the recipient whatever its outcome says: a copy withheld
	// after a first attempt that timed out, say.
	SentAt   time.Time `json:"sentAt,omitzero"`
	Withheld bool      `json:"withheld"`
	// Patient is the pseudonym of the number the event was about (one of
	// the patient's numbers, after a merge).
	Patient      string `json:"patient,omitempty"`
	Subscription string `json:"subscription,omitempty"`
}

// ConsentChange is one change of a patient's directives: who, when, before
// and after.
type ConsentChange struct {
	Time    time.Time           `json:"time"`
	Patient string              `json:"patient"`
	Actor   string              `json:"actor"`
	Action  string              `json:"action"`
	Before  *audit.ConsentState `json:"before,omitempty"`
	After   *audit.ConsentState `json:"after,omitempty"`
	// Outcome is "conflict" for a change that lost to another made at the
	// same time, and "not-applied" for a change recorded but never written
	// (its write failed, or the hub stopped first): neither took effect.
	// A change being made at the moment of the report may show
	// "not-applied" until it completes.
	Outcome string `json:"outcome,omitempty"`
}

// Access is one look at the patient's record through the admin API.
type Access struct {
	Time    time.Time `json:"time"`
	Patient string    `json:"patient"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	// Publisher and EventID name the event looked at, when the look was
	// about one (two publishers may use one id).
	Publisher string `json:"publisher,omitempty"`
	EventID   string `json:"eventId,omitempty"`
}

// Received is an accepted event the hub flagged (an event time long past).
type Received struct {
	Time      time.Time `json:"time"`
	Patient   string    `json:"patient"`
	Publisher string    `json:"publisher,omitempty"`
	EventID   string    `json:"eventId"`
	EventType string    `json:"eventType"`
	Flags     []string  `json:"flags"`
}

// History is everything the audit holds about a patient's numbers.
type History struct {
	Disclosures    []Disclosure    `json:"disclosures"`
	ConsentChanges []ConsentChange `json:"consentChanges"`
	Accesses       []Access        `json:"accesses"`
	Received       []Received      `json:"received"`
	// ListChanges say who put the patient on a recipient's patient list,
	// or took them off it (a care home's residents, a team's caseload):
	// the reason such a recipient received the patient's events.
	ListChanges []ListChange `json:"listChanges"`
}

// ListChange is the patient added to or removed from a recipient's list.
type ListChange struct {
	Time      time.Time `json:"time"`
	Patient   string    `json:"patient"`
	Recipient string    `json:"recipient"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"` // patient-list-add or patient-list-remove
	// Reason says why, when the hub says: "the recipient was deleted".
	Reason string `json:"reason,omitempty"`
	// Outcome is "not-applied" for a change recorded but never made (its
	// write failed, or the hub stopped first): the patient's place on the
	// list did not change. A change being made at the moment of the
	// report may show "not-applied" until it completes.
	Outcome string `json:"outcome,omitempty"`
}

// AuditReader builds disclosure reports from the carehub.audit topic. Audit
// records are keyed by the patient pseudonym with the murmur2 partitioner,
// so one number's records sit in one partition: the reader scans only the
// partitions of the numbers asked for. (At scale this wants an index; the
// scan is linear in the partition's size.)
type AuditReader struct {
	Brokers []string
	Topic   string
}

// For implements Disclosures: the records of every number in patients,
// in time order.
func (a *AuditReader) For(ctx context.Context, patients ...string) ([]audit.Record, error) {
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
	want := map[string]bool{}
	byPart := map[int]bool{}
	for _, p := range patients {
		want[p] = true
		byPart[(kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(p)}, parts...)] = true
	}
	var recs []audit.Record
	for part := range byPart {
		rs, err := a.scan(ctx, client, part, want)
		if err != nil {
			return nil, err
		}
		recs = append(recs, rs...)
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	return recs, nil
}

func (a *AuditReader) scan(ctx context.Context, client *kafka.Client, part int, want map[string]bool) ([]audit.Record, error) {
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
		if want[string(m.Key)] {
			if rec, err := audit.Unmarshal(m.Value); err == nil && want[rec.Patient] {
				recs = append(recs, rec)
			}
		}
		if m.Offset >= last-1 {
			break
		}
	}
	return recs, nil
}

// Histories sorts a patient's audit records into the report: disclosure
// lines (decisions joined with their delivery outcomes), consent changes,
// accesses and flagged events. A delivery joins its decision by publisher,
// event id and recipient (events are identified by source and id); a
// delivery record without a publisher (written before the hub recorded one)
// joins by event id and recipient only when a single permit fits.
func Histories(recs []audit.Record) History {
	h := History{Disclosures: []Disclosure{}, ConsentChanges: []ConsentChange{}, Accesses: []Access{}, Received: []Received{}, ListChanges: []ListChange{}}
	index := map[string]int{}    // publisher + event id + recipient → line of the permit that produced the copy
	legacy := map[string][]int{} // event id + recipient → lines of such permits, for records without a publisher
	for _, r := range recs {
		switch r.Kind {
		case audit.KindDecision:
			d := Disclosure{
				EventID: r.EventID, EventType: r.EventType, Publisher: r.Publisher, Recipient: r.Recipient,
				Basis: r.Basis, Decision: r.Effect, Rule: r.Rule, Directive: r.Directive,
				Obligations: r.Obligations, DecidedAt: r.Time, Withheld: r.Effect != "permit",
				Subscription: r.Subscription, Form: r.Form, Relation: r.Relation, About: r.About,
				DirectiveVersions: r.DirectiveVersions, Patient: r.Patient,
			}
			k := r.Publisher + "\x00" + r.EventID + "\x00" + r.Recipient
			if _, seen := index[k]; !seen && !d.Withheld {
				index[k] = len(h.Disclosures)
				lk := r.EventID + "\x00" + r.Recipient
				legacy[lk] = append(legacy[lk], len(h.Disclosures))
			}
			h.Disclosures = append(h.Disclosures, d)
		case audit.KindDelivery:
			i, ok := index[r.Publisher+"\x00"+r.EventID+"\x00"+r.Recipient]
			if !ok && r.Publisher == "" {
				if lines := legacy[r.EventID+"\x00"+r.Recipient]; len(lines) == 1 {
					i, ok = lines[0], true
				}
			}
			if !ok {
				break
			}
			d := &h.Disclosures[i]
			switch {
			case r.Outcome == audit.Sending:
				if d.SentAt.IsZero() {
					d.SentAt = r.Time
				}
				if d.Outcome == "" {
					d.Outcome, d.OutcomeAt = r.Outcome, r.Time
				}
				continue
			case d.Outcome == audit.Delivered:
				continue // a disclosure is not undone by a later redelivery's outcome
			}
			d.Outcome, d.OutcomeAt, d.OutcomeNote = r.Outcome, r.Time, r.Reason
			if r.Form != "" {
				d.Form = r.Form
			}
			if r.Outcome == audit.Withheld {
				d.Withheld, d.OutcomeRule = true, r.Rule
				if r.Directive != "" {
					d.Directive = r.Directive
				}
				if len(r.DirectiveVersions) > 0 {
					if d.RoutedDirectiveVersions == nil {
						d.RoutedDirectiveVersions = d.DirectiveVersions
					}
					d.DirectiveVersions = r.DirectiveVersions
				}
			}
		case audit.KindConsentChange:
			h.ConsentChanges = append(h.ConsentChanges, ConsentChange{Time: r.Time, Patient: r.Patient, Actor: r.Actor,
				Action: r.Action, Before: r.Before, After: r.After, Outcome: r.Outcome})
		case audit.KindAccess:
			h.Accesses = append(h.Accesses, Access{Time: r.Time, Patient: r.Patient, Actor: r.Actor, Action: r.Action, Publisher: r.Publisher, EventID: r.EventID})
		case audit.KindListChange:
			h.ListChanges = append(h.ListChanges, ListChange{Time: r.Time, Patient: r.Patient, Recipient: r.Recipient, Actor: r.Actor,
				Action: r.Action, Reason: r.Reason})
		case audit.KindReceived:
			h.Received = append(h.Received, Received{Time: r.Time, Patient: r.Patient, Publisher: r.Publisher, EventID: r.EventID, EventType: r.EventType, Flags: r.Flags})
		}
	}
	return h
}

// markNotApplied marks the consent changes and list changes of h (made by
// Histories from recs) that applied (consentstore.Applied and
// directory.Directory.Applied of recs, together) says did not take effect.
func markNotApplied(h *History, recs []audit.Record, applied []bool) {
	c, l := 0, 0
	for i, rec := range recs {
		switch rec.Kind {
		case audit.KindConsentChange:
			if !applied[i] && h.ConsentChanges[c].Outcome == "" {
				h.ConsentChanges[c].Outcome = audit.NotApplied
			}
			c++
		case audit.KindListChange:
			if !applied[i] {
				h.ListChanges[l].Outcome = audit.NotApplied
			}
			l++
		}
	}
}
