// Package deadletter reads and resolves the dead letters of carehub.dlq:
// copies a recipient rejected for good. An operator lists them (List:
// filtered by recipient, publisher, time, reason and state, a page at a
// time), replays them (Replay: each is decided again with the patient's
// directives as they are now, and only a copy still permitted goes back
// to the recipient's outbox, where the deliverer re-checks it once more; a
// copy now denied is audited as withheld and not sent), or resolves one
// without delivery, with a reason (Resolve). Each closes the dead letter
// with a resolution record, appended to the same partition and naming the
// operator; each is audited with the operator's id and names the event by
// its publisher and id. Package retention deletes dead letters once
// resolved and a window has passed.
//
// Dead letters and their resolutions are keyed by the recipient's ODS
// code, so one recipient's are in one partition, in the order they were
// dead-lettered; a resolution names the offset of the dead letter it
// closes. A dead letter's ID is "<partition>-<offset>".
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
)

// Actions of a resolution.
const (
	Replayed  = "replayed"  // put back in the outbox by an operator
	Withheld  = "withheld"  // an operator's replay found consent now denies it: not sent
	Dismissed = "dismissed" // resolved by an operator without delivery, with a reason
)

// Entry is one record of the dead-letter topic: a dead letter, or a
// resolution of one.
type Entry struct {
	Partition int
	Offset    int64
	audit.DeadLetter
}

// Letter is a dead letter and, once resolved, its resolution. It never
// holds the copy itself (the payload) in JSON.
type Letter struct {
	ID        string    `json:"id"`
	Partition int       `json:"partition"`
	Offset    int64     `json:"offset"`
	Time      time.Time `json:"time"`
	Recipient string    `json:"recipient"`
	// Publisher is the ODS code of the event's publisher: with EventID,
	// the event (two publishers may use one id). A dead letter written
	// before carehub recorded it takes it from the copy it holds (the
	// CloudEvents source); one with neither has none.
	Publisher  string    `json:"publisher,omitempty"`
	EventID    string    `json:"eventId"`
	EventType  string    `json:"eventType,omitempty"`
	Patient    string    `json:"patient,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Status     int       `json:"status,omitempty"`
	Attempts   int       `json:"attempts,omitempty"`
	Form       string    `json:"form,omitempty"`
	Resolution *Resolved `json:"resolution,omitempty"`

	dl audit.DeadLetter
}

// Resolved says how, by whom and when a dead letter was closed.
type Resolved struct {
	Action string `json:"action"` // replayed, withheld or dismissed
	Actor  string `json:"actor"`
	// Reason is the operator's reason for a dismissal.
	Reason string `json:"reason,omitempty"`
	// Rule is the consent rule that withheld it at replay.
	Rule string    `json:"rule,omitempty"`
	Time time.Time `json:"time"`
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
// only that recipient's. They are in topic order: by partition, then
// offset (one recipient's in the order they were dead-lettered).
func Letters(entries []Entry, recipient string) []Letter {
	res := map[[2]int64]Resolved{}
	for _, e := range entries {
		if r := e.Resolution; r != nil {
			res[[2]int64{int64(e.Partition), r.Offset}] = Resolved{Action: r.Action, Actor: r.Actor, Reason: r.Note, Rule: r.Rule, Time: e.Time}
		}
	}
	var out []Letter
	for _, e := range entries {
		if e.Resolution != nil || (recipient != "" && e.Recipient != recipient) {
			continue
		}
		l := Letter{ID: ID(e.Partition, e.Offset), Partition: e.Partition, Offset: e.Offset, Time: e.Time, Recipient: e.Recipient,
			Publisher: publisherOf(e.DeadLetter), EventID: e.EventID, EventType: e.EventType, Patient: e.Patient, Reason: e.Reason, Status: e.Status,
			Attempts: e.Attempts, Form: e.Form, dl: e.DeadLetter}
		if r, ok := res[[2]int64{int64(e.Partition), e.Offset}]; ok {
			l.Resolution = &r
		}
		out = append(out, l)
	}
	return out
}

// publisherOf is the publisher of a dead letter's event: the one it
// records or, for a dead letter written before carehub recorded it, the
// source of the copy it holds, in the form delivery records name it (the
// ODS code after urn:ods:). "" when it has neither.
func publisherOf(dl audit.DeadLetter) string {
	if dl.Publisher != "" {
		return dl.Publisher
	}
	return strings.TrimPrefix(sourceOf(dl.Event), event.SourcePrefix)
}

// ID names the dead letter at partition and offset of carehub.dlq, as the
// API shows it: "<partition>-<offset>".
func ID(partition int, offset int64) string {
	return strconv.Itoa(partition) + "-" + strconv.FormatInt(offset, 10)
}

// ParseID reads an ID.
func ParseID(s string) (partition int, offset int64, ok bool) {
	p, o, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	pn, err1 := strconv.Atoi(p)
	on, err2 := strconv.ParseInt(o, 10, 64)
	if err1 != nil || err2 != nil || pn < 0 || on < 0 || ID(pn, on) != s {
		return 0, 0, false
	}
	return pn, on, true
}

// Find returns the dead letter with the given ID.
func Find(entries []Entry, id string) (Letter, error) {
	part, off, ok := ParseID(id)
	if !ok {
		return Letter{}, problem.Violated("/path/id", "dead-letter-id", "a dead letter's id is <partition>-<offset>, as the list gives it")
	}
	for _, l := range Letters(entries, "") {
		if l.Partition == part && l.Offset == off {
			return l, nil
		}
	}
	return Letter{}, problem.New(problem.NotFound, "no dead letter with that id")
}

// States a listing selects.
const (
	StateOpen     = "open"     // not yet resolved (the default)
	StateResolved = "resolved" // replayed, withheld at replay, or resolved by an operator
	StateAll      = "all"
)

// Limits of a listing.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Query selects dead letters.
type Query struct {
	Recipient string // an ODS code; "" for every recipient
	// Publisher selects the dead letters of one publisher's events (an
	// ODS code); "" for all. A dead letter with no publisher (written
	// before carehub recorded it, without a copy) matches only "".
	Publisher string
	// Reason selects the dead letters whose reason contains it, ignoring
	// case ("HTTP 400", "OperationOutcome"); "" for all.
	Reason string
	// Since and Until bound when the letters were dead-lettered
	// (Since <= time < Until); zero for no bound.
	Since, Until time.Time
	State        string // StateOpen (default), StateResolved or StateAll
	Limit        int    // 1 to MaxLimit; DefaultLimit when 0
	After        string // the cursor of the previous page (Page.Next)
}

// Page is one page of a listing, oldest first.
type Page struct {
	Items []Letter `json:"items"`
	// Next is the cursor of the following page; empty on the last.
	Next string `json:"next,omitempty"`
	// Total is how many dead letters match the query, over every page.
	Total int `json:"total"`
}

// ErrCursor is returned for a cursor that List did not make.
var ErrCursor = errors.New("deadletter: the cursor is not one this listing returned")

// List pages through the dead letters q selects, oldest first (by the time
// they were dead-lettered, then by place in the topic).
func List(entries []Entry, q Query) (Page, error) {
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
	reason := strings.ToLower(q.Reason)
	var sel []Letter
	for _, l := range Letters(entries, q.Recipient) {
		switch {
		case state == StateOpen && l.Resolution != nil, state == StateResolved && l.Resolution == nil:
		case q.Publisher != "" && l.Publisher != q.Publisher:
		case reason != "" && !strings.Contains(strings.ToLower(l.Reason), reason):
		case !q.Since.IsZero() && l.Time.Before(q.Since), !q.Until.IsZero() && !l.Time.Before(q.Until):
		default:
			sel = append(sel, l)
		}
	}
	sort.SliceStable(sel, func(i, j int) bool { return sel[i].before(sel[j]) })
	p := Page{Items: []Letter{}, Total: len(sel)}
	for _, l := range sel {
		if after != nil && !after.before(l) {
			continue
		}
		if len(p.Items) == limit {
			last := p.Items[len(p.Items)-1]
			p.Next = cursorOf(last)
			break
		}
		p.Items = append(p.Items, l)
	}
	return p, nil
}

func (l Letter) before(m Letter) bool {
	if !l.Time.Equal(m.Time) {
		return l.Time.Before(m.Time)
	}
	if l.Partition != m.Partition {
		return l.Partition < m.Partition
	}
	return l.Offset < m.Offset
}

func cursorOf(l Letter) string {
	return topic.Place{Time: l.Time, Partition: l.Partition, Offset: l.Offset}.Cursor()
}

func parseCursor(c string) (*Letter, error) {
	p, err := topic.ParseCursor(c)
	if err != nil {
		return nil, ErrCursor
	}
	if p == nil {
		return nil, nil
	}
	return &Letter{Time: p.Time, Partition: p.Partition, Offset: p.Offset}, nil
}

// Rechecker decides a copy again with the patient's directives as they
// are now (route.Router implements it): the same decision function,
// freshness barrier and follow-up context as routing and delivery.
type Rechecker interface {
	Recheck(ctx context.Context, key, sealed string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error)
}

// Settler records in the patient index that a copy did not reach its
// recipient (route.Router implements it): a Rechecker that is also a
// Settler is told of every copy a replay withholds, so that no update or
// correction follows it to the recipient.
type Settler interface {
	Settle(ctx context.Context, s route.Settlement) error
}

// RuleUndecidable is the rule of a dead letter withheld at replay because
// it carries no routing decision to re-check.
const RuleUndecidable = "recheck:no-routing-decision"

// Outcomes of a replay.
const (
	// Requeued: consent as of now permits the copy; it is back in the
	// recipient's outbox (and is re-checked once more when delivered).
	Requeued = "requeued"
	// WithheldNow: consent as of now denies the copy; it was not put back,
	// and the dead letter is closed (Resolution.Action Withheld).
	WithheldNow = "withheld"
)

// Outcome is what a replay did with one dead letter.
type Outcome struct {
	ID        string `json:"id"`
	Publisher string `json:"publisher,omitempty"`
	EventID   string `json:"eventId"`
	EventType string `json:"eventType,omitempty"`
	Recipient string `json:"recipient"`
	Outcome   string `json:"outcome"`
	// Form is the form the copy will be delivered in: narrower than when
	// it was dead-lettered if a directive recorded since says so.
	Form      string `json:"form,omitempty"`
	Rule      string `json:"rule,omitempty"`
	Directive string `json:"directive,omitempty"`
}

// Replay re-decides each dead letter of ls with the patient's directives
// as they are now, then, in the order given: puts every copy still
// permitted back in its recipient's outbox (with its sealed routing
// decision, so the deliverer re-checks it once more), and audits each copy
// now denied as withheld (not sent); then audits the operator's action on
// each (kind access, action dead-letter-replay, the actor); then closes
// each dead letter with a resolution naming the actor (Replayed, or
// Withheld with the rule). Copies are written before the audit and the
// audit before the resolutions, so that no dead letter is closed without
// its replay or its audit; a failure part-way leaves the letters open (a
// second replay may then put a copy back twice: recipients drop it by its
// webhook-id). Letters already resolved are refused (problem.Conflict)
// before anything is written.
func Replay(ctx context.Context, pub message.Publisher, rc Rechecker, ls []Letter, actor string, now time.Time) ([]Outcome, error) {
	now = now.UTC()
	for _, l := range ls {
		if l.Resolution != nil {
			return nil, problem.New(problem.Conflict, "the dead letter "+l.ID+" is already resolved")
		}
		if len(l.dl.Event) == 0 {
			return nil, problem.New(problem.Conflict, "the dead letter "+l.ID+" holds no copy to replay")
		}
	}
	out := make([]Outcome, 0, len(ls))
	outboxes := map[string][]*message.Message{}
	var order []string // outbox topics in the order first written
	var audits, resolutions []*message.Message
	var settle []route.Settlement
	for _, l := range ls {
		r := Outcome{ID: l.ID, Publisher: l.Publisher, EventID: l.EventID, EventType: l.EventType, Recipient: l.Recipient}
		permit, form, rule, directive, versions, err := decide(ctx, rc, l)
		if err != nil {
			return nil, err
		}
		res := audit.Resolution{Offset: l.Offset, Action: Replayed, Actor: actor}
		if permit {
			r.Outcome, r.Form = Requeued, form
			t := topic.Outbox(l.Recipient)
			if _, ok := outboxes[t]; !ok {
				order = append(order, t)
			}
			outboxes[t] = append(outboxes[t], requeue(l))
		} else {
			r.Outcome, r.Rule, r.Directive = WithheldNow, rule, directive
			res.Action, res.Rule = Withheld, rule
			settle = append(settle, route.Settlement{Key: l.Patient, Recipient: l.Recipient, Source: l.source(), EventID: l.EventID, Sealed: l.dl.Decision, Rule: rule})
			rec := audit.Record{Time: now, Kind: audit.KindDelivery, Publisher: l.Publisher, EventID: l.EventID, EventType: l.EventType, Patient: l.Patient,
				Recipient: l.Recipient, Basis: l.dl.Basis, Outcome: audit.Withheld, Effect: string(consent.Deny), Rule: rule,
				Directive: directive, DirectiveVersions: versions, Actor: actor, Action: audit.ActionDeadLetterReplay,
				Reason: "re-checked when an operator replayed the dead letter " + l.ID}
			audits = append(audits, auditMessage(rec))
		}
		audits = append(audits, auditMessage(audit.Record{Time: now, Kind: audit.KindAccess, Patient: l.Patient, Publisher: l.Publisher, EventID: l.EventID,
			EventType: l.EventType, Recipient: l.Recipient, Actor: actor, Action: audit.ActionDeadLetterReplay, Outcome: r.Outcome}))
		resolutions = append(resolutions, resolution(l, res, now))
		out = append(out, r)
	}
	// The index learns first: a replay that fails after this leaves the
	// letters open, and a second replay settles the same copies again,
	// which changes nothing more.
	if st, ok := rc.(Settler); ok {
		for _, s := range settle {
			if s.Sealed == "" {
				continue // not a copy the router recorded
			}
			if err := st.Settle(ctx, s); err != nil {
				return nil, problem.Wrap(problem.Unavailable, "the patient index could not be told of a withheld copy; retry", err)
			}
		}
	}
	for _, t := range order {
		if err := pub.Publish(t, outboxes[t]...); err != nil {
			return nil, problem.Wrap(problem.Unavailable, "the copies could not be put back in the outbox; retry", err)
		}
	}
	if err := pub.Publish(topic.Audit, audits...); err != nil {
		return nil, problem.Wrap(problem.Unavailable, "the replay could not be audited; retry", err)
	}
	if err := pub.Publish(topic.DLQ, resolutions...); err != nil {
		return nil, problem.Wrap(problem.Unavailable, "the resolutions could not be recorded; retry", err)
	}
	return out, nil
}

// decide re-checks a dead letter's copy as of now.
func decide(ctx context.Context, rc Rechecker, l Letter) (permit bool, form, rule, directive string, versions []audit.DirectiveVersion, err error) {
	form = l.Form
	if form == "" {
		form = string(event.FormFull)
	}
	if l.dl.Decision == "" {
		if form == string(event.FormNotice) {
			// A content-free notice: nothing about a patient to withhold.
			return true, form, "", "", nil, nil
		}
		return false, form, RuleUndecidable, "", nil, nil
	}
	d, _, versions, err := rc.Recheck(ctx, l.Patient, l.dl.Decision)
	if err != nil {
		if problem.KindOf(err) == problem.Other {
			err = problem.Wrap(problem.Unavailable, "consent could not be re-checked; retry", err)
		}
		return false, form, "", "", nil, err
	}
	if !d.Permitted() {
		return false, form, d.Rule, d.DirectiveID, versions, nil
	}
	if d.Has(consent.NotificationOnly) && form == string(event.FormFull) {
		form = string(event.FormNotification)
	}
	return true, form, d.Rule, d.DirectiveID, versions, nil
}

// requeue is the outbox copy of a dead letter, as the router wrote it.
func requeue(l Letter) *message.Message {
	m := message.NewMessage(l.EventID, []byte(l.dl.Event))
	key := l.Patient
	if l.EventType == event.TypeWithheldNotice || key == "" {
		key = l.EventID
	}
	m.Metadata.Set(topic.MetaKey, key)
	m.Metadata.Set(topic.MetaSpecVersion, event.SpecVersion)
	m.Metadata.Set(topic.MetaEventID, l.EventID)
	m.Metadata.Set(topic.MetaEventType, l.EventType)
	if src := sourceOf(l.dl.Event); src != "" {
		m.Metadata.Set(topic.MetaSource, src)
	}
	m.Metadata.Set("content-type", media.CloudEvent)
	m.Metadata.Set(topic.MetaRecipient, l.Recipient)
	m.Metadata.Set(topic.MetaBasis, l.dl.Basis)
	m.Metadata.Set(topic.MetaForm, l.Form)
	if l.dl.Decision != "" {
		m.Metadata.Set(topic.MetaDecision, l.dl.Decision)
	}
	return m
}

// source is the CloudEvents source of the letter's event, as it was
// published (with EventID, the event's identity, which names its copy in
// the patient index): the source of the copy the letter holds or, for a
// letter that holds none, "urn:ods:" and its Publisher. "" when it has
// neither.
func (l Letter) source() string {
	if src := sourceOf(l.dl.Event); src != "" {
		return src
	}
	if l.Publisher != "" {
		return event.SourcePrefix + l.Publisher
	}
	return ""
}

// sourceOf reads the CloudEvents source of a copy.
func sourceOf(body []byte) string {
	var ce struct {
		Source string `json:"source"`
	}
	_ = json.Unmarshal(body, &ce)
	return ce.Source
}

// RuleResolved is the rule a dead letter resolved without delivery is
// settled with in the patient index: the recipient never had the copy.
const RuleResolved = "dead-letter:resolved"

// Resolve closes a dead letter without delivering it: an operator's
// decision, with the operator's reason (required). It audits the action
// (kind access, action dead-letter-resolve, the actor and the reason),
// tells the patient index that the recipient never had the copy (when st
// is not nil and the letter carries a routing decision: corrections and
// updates then follow what the recipient has), and then appends the
// resolution.
func Resolve(ctx context.Context, pub message.Publisher, st Settler, l Letter, actor, reason string, now time.Time) error {
	if l.Resolution != nil {
		return problem.New(problem.Conflict, "the dead letter is already resolved")
	}
	now = now.UTC()
	rec := audit.Record{Time: now, Kind: audit.KindAccess, Patient: l.Patient, Publisher: l.Publisher, EventID: l.EventID, EventType: l.EventType,
		Recipient: l.Recipient, Actor: actor, Action: audit.ActionDeadLetterClose, Reason: reason}
	if err := pub.Publish(topic.Audit, auditMessage(rec)); err != nil {
		return problem.Wrap(problem.Unavailable, "the resolution could not be audited; retry", err)
	}
	if st != nil && l.dl.Decision != "" {
		s := route.Settlement{Key: l.Patient, Recipient: l.Recipient, Source: l.source(), EventID: l.EventID, Sealed: l.dl.Decision, Rule: RuleResolved}
		if err := st.Settle(ctx, s); err != nil {
			return problem.Wrap(problem.Unavailable, "the patient index could not be told of the resolved copy; retry", err)
		}
	}
	m := resolution(l, audit.Resolution{Offset: l.Offset, Action: Dismissed, Actor: actor, Note: reason}, now)
	if err := pub.Publish(topic.DLQ, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the resolution could not be recorded; retry", err)
	}
	return nil
}

func resolution(l Letter, r audit.Resolution, now time.Time) *message.Message {
	b, _ := json.Marshal(audit.DeadLetter{Time: now, Recipient: l.Recipient, Publisher: l.Publisher, EventID: l.EventID, Resolution: &r})
	m := message.NewMessage(watermill.NewUUID(), b)
	m.Metadata.Set(topic.MetaKey, l.Recipient)
	m.Metadata.Set(topic.MetaEventID, l.EventID)
	return m
}

func auditMessage(rec audit.Record) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, rec.Patient)
	m.Metadata.Set(topic.MetaEventID, rec.EventID)
	return m
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
