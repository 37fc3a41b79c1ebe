// Package patientindex is the router's durable memory of each patient:
// which recipients received, and which were withheld, events about each
// encounter and care plan; the patient's last registered GP practice named
// by an event; and which NHS numbers were merged into which. It is what
// lets a correction follow the original (to everyone who received it, to
// nobody who was withheld it), a change of GP tell the previous practice,
// and a merge (or an NHS number correction, linked as a merge of the old
// number into the new) carry both numbers' wishes, without scanning the
// audit trail per event.
//
// Records live in the compacted topic carehub.patients, keyed by the
// patient's keyed pseudonym; every hub process loads them all (package
// ktable) and follows the topic. The router writes a patient's record in
// the same produce as the event's outbox copies and audit records, and
// then applies it here at once (Commit), so the patient's next event sees
// it; another process, after a rebalance, sees it once Sync returns.
// Every record carries a sequence number: a record older than the one held
// is never applied, so a write seen late cannot undo a newer one.
//
// # What the recipient has, not what it was routed
//
// The router records a receipt per copy it routes (Ref.Receive), naming
// the copy by its event's identity (CopyID: the event's source and id
// together, as the webhook-id and the feeds name it), so that two
// publishers' events with one id stay two copies. A copy can turn out to reach its recipient as less: withheld at
// delivery, at a pull feed's read or at a dead letter's replay, or
// delivered in the notification-only form. Whoever finds that out settles
// the copy (Index.Settle): one record per copy, keyed
// "<patient>/<recipient>/<CopyID>" in the same topic, written once, so
// writers in several processes never overwrite one another, and acknowledged
// before the copy is committed past. Get applies a patient's outcomes to
// its record (Ref.Settle): a recipient left with no copy on a reference
// counts as withheld it; a narrowed copy counts in its narrower form.
//
// # Records written before copies were named by identity
//
// Receipts and outcomes written before carehub named copies by CopyID name
// them by bare event id. They are read as they are, not migrated: a copy
// named by bare id is taken to be the copy of any source's event with that
// id (Receipt.Find), and an outcome with no source settles only such a
// copy. That is what those records meant when they were written (the
// index could not tell two publishers' copies apart then); every copy
// recorded since is named by its identity and matches its own event only.
//
// # How long it is kept
//
// A reference (an encounter, a care plan) is kept for the retention given
// to Open (retention.followUps, two years by default) after the last event
// on it: a correction arriving later goes to nobody, and is audited so.
// Expired references are dropped when the record is next written and are
// never read; Sweep deletes the records of patients whose references have
// all expired and whose GP practice was last seen as long ago. Merges are
// kept as long as the records of both numbers are: the record of a number
// merged into another, or that absorbed one, is never swept.
//
// # Cost
//
// Every process holds every record in memory: about 200 bytes per
// reference, 50 per recipient that received an event on it and 110 per
// copy (its 64-digit CopyID), and 250 per settled copy.
package patientindex

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/ktable"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// Record is one patient number's entry.
type Record struct {
	// Seq increases by one with every write of the record.
	Seq int64 `json:"seq"`
	// MergedInto is the pseudonym of the record this number was merged
	// into (retired by an A40 merge, or replaced by an A47 NHS number
	// correction, which the router links alike); "" if it was not.
	MergedInto string `json:"mergedInto,omitempty"`
	// Merged are the pseudonyms of the numbers merged into this one, in
	// the order of the merges.
	Merged []string `json:"merged,omitempty"`
	// GP is the registered GP practice the patient's latest event named,
	// and GPSeen when.
	GP     string    `json:"gp,omitempty"`
	GPSeen time.Time `json:"gpSeen,omitzero"`
	// Refs are the patient's encounters and care plans, by event.Event.Ref.
	Refs map[string]*Ref `json:"refs,omitempty"`
}

// Ref is what events on one reference did.
type Ref struct {
	// Last is when the last event on the reference was routed.
	Last time.Time `json:"last"`
	// Labels are the sensitivity categories of every event on it.
	Labels []string `json:"labels,omitempty"`
	// Recipients are the recipients that received at least one event on
	// it, by ODS code.
	Recipients map[string]*Receipt `json:"recipients,omitempty"`
	// Withheld are the recipients that were denied an event on it and
	// received none, by ODS code, with the rule of the last deny; and
	// those with a copy settled withheld (Settle) though they hold others
	// (Recipients names them too: they count as received).
	Withheld map[string]string `json:"withheld,omitempty"`
	// Routed counts the copies routed on it (Copy.N).
	Routed int64 `json:"routed,omitempty"`
}

// Receipt is what one recipient received on a reference.
type Receipt struct {
	Basis string   `json:"basis"`
	Types []string `json:"types"`
	// Form is the fullest form it received (full or notification).
	Form string `json:"form"`
	// Copies are the copies behind Types and Form, by CopyID (by bare
	// event id in receipts written before: Find reads both): a copy
	// that turns out not to have reached the recipient (Settle) leaves
	// them, and Types and Form are what the rest say. Receipts written
	// before copies were kept have none.
	Copies map[string]Copy `json:"copies,omitempty"`
}

// Copy is one copy of an event a recipient was sent on a reference.
type Copy struct {
	Type string `json:"type"`
	Form string `json:"form"`
	// N is the copy's place in the order copies were routed on the
	// reference (Ref.Routed when it was).
	N int64 `json:"n,omitempty"`
}

// CopyID names a copy in a receipt: the identity of its event,
// event.Identity(source, id), where source is the event's CloudEvents
// source attribute as published ("urn:ods:" and the publisher's ODS code)
// and id its id. It is the one name for a copy in the index, whoever
// records or settles it.
func CopyID(source, id string) string { return event.Identity(source, id) }

// Find returns the name in Copies of the copy of the event (source, id),
// and the copy: the copy named CopyID(source, id) or, failing that, a copy
// named by the bare id (recorded before copies were named by identity,
// which matches any source's event with that id). ok is false when the
// receipt holds neither.
func (rc *Receipt) Find(source, id string) (name string, c Copy, ok bool) {
	if source != "" {
		name = CopyID(source, id)
		if c, ok = rc.Copies[name]; ok {
			return name, c, true
		}
	}
	c, ok = rc.Copies[id]
	return id, c, ok
}

// Receive records that ods received the copy of the event (source, id), of
// type typ, on the reference, on basis, in form: its receipt gains the
// type, keeps the fullest form it was sent (a later full copy makes it
// full), and it is no longer counted as withheld. Live routing and
// backfills record receipts this one way, which corrections then follow.
func (f *Ref) Receive(ods, basis, form, typ, source, id string) {
	rc := f.Recipients[ods]
	if rc == nil {
		rc = &Receipt{Basis: basis, Form: form}
		if f.Recipients == nil {
			f.Recipients = map[string]*Receipt{}
		}
		f.Recipients[ods] = rc
	}
	if !slices.Contains(rc.Types, typ) {
		rc.Types = append(rc.Types, typ)
	}
	if form == string(event.FormFull) {
		rc.Form = string(event.FormFull)
	}
	if id != "" {
		if rc.Copies == nil {
			rc.Copies = map[string]Copy{}
		}
		name, c, ok := rc.Find(source, id)
		if !ok {
			f.Routed++
			name, c = CopyID(source, id), Copy{Type: typ, Form: form, N: f.Routed}
		} else if form == string(event.FormFull) {
			c.Form = form
		}
		rc.Copies[name] = c
	}
	delete(f.Withheld, ods)
}

// Outcome is what became of one copy routed to a recipient, when that is
// less than the router recorded (Receive): it was withheld (at delivery,
// at a pull feed's read, at a dead letter's replay), or it was delivered
// in a narrower form than it was routed in.
type Outcome struct {
	// Patient is the pseudonym whose record holds the receipt.
	Patient   string `json:"patient"`
	Ref       string `json:"ref"`
	Recipient string `json:"recipient"`
	// Source and EventID are the copy's event (CopyID): its CloudEvents
	// source as published, and its id. An outcome without a source (its
	// copy's source unknown, or written before outcomes carried one)
	// settles only a copy named by bare id (Receipt.Find).
	Source  string `json:"source,omitempty"`
	EventID string `json:"eventId"`
	// Rule is the rule that withheld the copy; "" if it was delivered.
	Rule string `json:"rule,omitempty"`
	// Form is the form it was delivered in ("" when withheld).
	Form string `json:"form,omitempty"`
	// Time is when it was settled.
	Time time.Time `json:"time"`
}

// Settle records o on the reference: a withheld copy leaves its receipt,
// and the recipient is named withheld (by o.Rule): withheld the reference
// if it is left with no copy on it; a copy delivered narrower keeps the narrower form. A receipt
// written before copies were kept loses a withheld copy only if it names
// no other type. Settling the same outcome twice changes nothing more.
func (f *Ref) Settle(o Outcome) {
	rc := f.Recipients[o.Recipient]
	if rc == nil {
		return
	}
	name, c, ok := rc.Find(o.Source, o.EventID)
	if o.Rule == "" {
		switch {
		case o.Form == "":
		case ok:
			c.Form = string(event.Narrower(event.Form(c.Form), event.Form(o.Form)))
			rc.Copies[name] = c
			rc.summarise()
		case len(rc.Copies) == 0 && len(rc.Types) <= 1:
			rc.Form = string(event.Narrower(event.Form(rc.Form), event.Form(o.Form)))
		}
		return
	}
	switch {
	case ok:
		delete(rc.Copies, name)
		if len(rc.Copies) > 0 {
			rc.summarise()
			// Remembered for what it had before its other copies (AsOf).
			f.Withhold(o.Recipient, o.Rule)
			return
		}
	case len(rc.Copies) == 0 && len(rc.Types) <= 1:
		// A receipt from before copies were kept, of this copy alone.
	default:
		return
	}
	delete(f.Recipients, o.Recipient)
	f.Withhold(o.Recipient, o.Rule)
}

// AsOf makes ods's receipt what it was just before the copy of the event
// (source, id) was routed:
// without that copy and every copy routed after it (a receipt left with
// none goes, and is not counted as withheld). A receipt that does not
// know the copy is left as it is. The re-check at delivery uses it: what
// the recipient had when the copy was routed, less what has since been
// settled as not delivered.
func (f *Ref) AsOf(ods, source, id string) {
	rc := f.Recipients[ods]
	if rc == nil {
		return
	}
	name, c, ok := rc.Find(source, id)
	if !ok {
		return
	}
	for k, o := range rc.Copies {
		if k == name || (c.N > 0 && o.N >= c.N) {
			delete(rc.Copies, k)
		}
	}
	if len(rc.Copies) == 0 {
		delete(f.Recipients, ods)
		return
	}
	rc.summarise()
}

// summarise makes Types and Form what the copies say, Types in the order
// the copies were routed (Copy.N).
func (rc *Receipt) summarise() {
	rc.Types, rc.Form = nil, string(event.FormNotification)
	names := slices.SortedFunc(maps.Keys(rc.Copies), func(a, b string) int {
		if n := cmp.Compare(rc.Copies[a].N, rc.Copies[b].N); n != 0 {
			return n
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		c := rc.Copies[name]
		if !slices.Contains(rc.Types, c.Type) {
			rc.Types = append(rc.Types, c.Type)
		}
		if c.Form == string(event.FormFull) {
			rc.Form = string(event.FormFull)
		}
	}
}

// Withhold records that an event on the reference was denied to ods by
// rule (callers record it only for a recipient that received none).
func (f *Ref) Withhold(ods, rule string) {
	if f.Withheld == nil {
		f.Withheld = map[string]string{}
	}
	f.Withheld[ods] = rule
}

// Clone returns a deep copy of r.
func (r Record) Clone() Record {
	out := r
	out.Merged = slices.Clone(r.Merged)
	if r.Refs != nil {
		out.Refs = make(map[string]*Ref, len(r.Refs))
		for k, v := range r.Refs {
			out.Refs[k] = v.clone()
		}
	}
	return out
}

func (f *Ref) clone() *Ref {
	c := &Ref{Last: f.Last, Labels: slices.Clone(f.Labels), Routed: f.Routed}
	if f.Recipients != nil {
		c.Recipients = make(map[string]*Receipt, len(f.Recipients))
		for k, v := range f.Recipients {
			r := *v
			r.Types = slices.Clone(v.Types)
			r.Copies = maps.Clone(v.Copies)
			c.Recipients[k] = &r
		}
	}
	if f.Withheld != nil {
		c.Withheld = make(map[string]string, len(f.Withheld))
		for k, v := range f.Withheld {
			c.Withheld[k] = v
		}
	}
	return c
}

// MetaSeq is the header of a tombstone written by Sweep: the sequence
// number of the record it deletes. A tombstone older than the record held
// is ignored.
const MetaSeq = "carehub_seq"

// Index is the in-memory view of carehub.patients. mu guards recs.
type Index struct {
	t         *ktable.Table
	log       *zap.Logger
	retention time.Duration
	now       func() time.Time

	mu   sync.Mutex
	recs map[string]*Record
	// outcomes are the settled copies (Settle), by the pseudonym whose
	// record holds their receipts, then by their record's key.
	outcomes map[string]map[string]Outcome
}

// outcomeKey is the key of o's record in the topic: one record per copy,
// written once, so that writers in different processes (the deliverer of
// each recipient, a feed's reads, a replay) never overwrite each other's.
// A patient's key never holds a "/". The copy is named by CopyID, so two
// publishers' copies with one event id are two records (and the key holds
// no event id in clear). An outcome without a source (a copy whose source
// is unknown, or written before outcomes carried one) is keyed by its bare
// event id, as every outcome was before.
func outcomeKey(o Outcome) string {
	if o.Source == "" {
		return o.Patient + "/" + o.Recipient + "/" + o.EventID
	}
	return o.Patient + "/" + o.Recipient + "/" + CopyID(o.Source, o.EventID)
}

// Open starts following topic and returns at once; WaitLoaded tells when
// everything is loaded. References with no event for retention are
// forgotten.
func Open(brokers []string, topic string, retention time.Duration, log *zap.Logger) (*Index, error) {
	if retention <= 0 {
		return nil, errors.New("patientindex: the retention must be positive")
	}
	x := &Index{log: log, retention: retention, now: time.Now, recs: map[string]*Record{}, outcomes: map[string]map[string]Outcome{}}
	t, err := ktable.Open(ktable.Config{Brokers: brokers, Topic: topic, Log: log, Apply: x.apply})
	if err != nil {
		return nil, fmt.Errorf("patientindex: %w", err)
	}
	x.t = t
	return x, nil
}

// NewMemory returns an index that keeps records in memory only, for tests
// and tools: Sync does nothing and Message's records are never read back.
func NewMemory(retention time.Duration) *Index {
	return &Index{retention: retention, now: time.Now, recs: map[string]*Record{}, outcomes: map[string]map[string]Outcome{}, log: zap.NewNop()}
}

func (x *Index) apply(m kafka.Message) {
	key := string(m.Key)
	x.mu.Lock()
	defer x.mu.Unlock()
	if strings.Contains(key, "/") {
		x.applyOutcome(key, m)
		return
	}
	cur := x.recs[key]
	if m.Value == nil {
		seq := int64(-1)
		for _, h := range m.Headers {
			if h.Key == MetaSeq {
				seq, _ = strconv.ParseInt(string(h.Value), 10, 64)
			}
		}
		if cur == nil || seq < 0 || cur.Seq <= seq {
			delete(x.recs, key)
		}
		return
	}
	var r Record
	if err := json.Unmarshal(m.Value, &r); err != nil {
		x.log.Error("unreadable patient index record: ignored", zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset))
		return
	}
	if cur != nil && r.Seq <= cur.Seq {
		return
	}
	x.recs[key] = &r
}

func (x *Index) applyOutcome(key string, m kafka.Message) {
	patient, _, _ := strings.Cut(key, "/")
	if m.Value == nil {
		delete(x.outcomes[patient], key)
		if len(x.outcomes[patient]) == 0 {
			delete(x.outcomes, patient)
		}
		return
	}
	var o Outcome
	if err := json.Unmarshal(m.Value, &o); err != nil || o.Patient != patient {
		x.log.Error("unreadable patient index outcome: ignored", zap.Int("partition", m.Partition), zap.Int64("offset", m.Offset))
		return
	}
	x.addOutcome(key, o)
}

func (x *Index) addOutcome(key string, o Outcome) {
	if x.outcomes[o.Patient] == nil {
		x.outcomes[o.Patient] = map[string]Outcome{}
	}
	x.outcomes[o.Patient][key] = o
}

// Settle records durably what became of a copy when that is less than its
// receipt says (Outcome), and applies it at once: Get answers with it from
// now on, in this process, and in every other once Sync returns. It
// returns once the record is acknowledged by every in-sync replica, so a
// deliverer that commits past the copy afterwards cannot lose it.
func (x *Index) Settle(ctx context.Context, o Outcome) error {
	if o.Patient == "" || o.Ref == "" || o.Recipient == "" || o.EventID == "" || strings.Contains(o.Patient, "/") {
		return errors.New("patientindex: an outcome needs a patient, a reference, a recipient and an event id")
	}
	key := outcomeKey(o)
	if x.t != nil {
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		if err := x.t.Write(ctx, kafka.Message{Key: []byte(key), Value: b}); err != nil {
			return err
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.addOutcome(key, o)
	return nil
}

// WaitLoaded blocks until every record is loaded or ctx ends.
func (x *Index) WaitLoaded(ctx context.Context) error {
	if x.t == nil {
		return nil
	}
	return x.t.WaitLoaded(ctx)
}

// Loaded reports whether every record there was when the index opened is
// loaded.
func (x *Index) Loaded() bool { return x.t == nil || x.t.Loaded() }

// Sync returns once every record written before the call is applied.
func (x *Index) Sync(ctx context.Context) error {
	if x.t == nil {
		return nil
	}
	return x.t.Sync(ctx)
}

// Get returns a copy of the record of key (the zero Record when none),
// without references that have expired.
func (x *Index) Get(key string) Record {
	x.mu.Lock()
	defer x.mu.Unlock()
	r := x.recs[key]
	if r == nil {
		return Record{}
	}
	out := r.Clone()
	for _, k := range slices.Sorted(maps.Keys(x.outcomes[key])) {
		o := x.outcomes[key][k]
		if f := out.Refs[o.Ref]; f != nil {
			f.Settle(o)
		}
	}
	x.prune(&out)
	return out
}

// prune drops expired references from r.
func (x *Index) prune(r *Record) {
	cut := x.now().Add(-x.retention)
	for k, f := range r.Refs {
		if f.Last.Before(cut) {
			delete(r.Refs, k)
		}
	}
}

// Family returns key's merged family: the surviving number (following
// MergedInto) first, then every number merged into it, directly or through
// another, in the order of the merges. A number never merged is its own
// family.
func (x *Index) Family(key string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	root := key
	seen := map[string]bool{root: true}
	for {
		r := x.recs[root]
		if r == nil || r.MergedInto == "" || seen[r.MergedInto] {
			break
		}
		root = r.MergedInto
		seen[root] = true
	}
	out := []string{root}
	in := map[string]bool{root: true}
	for i := 0; i < len(out); i++ {
		if r := x.recs[out[i]]; r != nil {
			for _, m := range r.Merged {
				if !in[m] {
					in[m] = true
					out = append(out, m)
				}
			}
		}
	}
	if !in[key] { // a cycle or a stale pointer: keep the asked number in
		out = append(out, key)
	}
	return out
}

// Message returns the watermill message that writes rec as key's record
// (rec.Seq must already be the next sequence number); the router publishes
// it with the event's copies.
func (x *Index) Message(key string, rec Record) (*message.Message, error) {
	x.prune(&rec)
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	m := message.NewMessage(key+"/"+strconv.FormatInt(rec.Seq, 10), b)
	m.Metadata.Set(topic.MetaKey, key)
	return m, nil
}

// Commit applies rec as key's record now, once the router's produce that
// wrote it was acknowledged. A record older than the one held is ignored.
func (x *Index) Commit(key string, rec Record) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if cur := x.recs[key]; cur != nil && rec.Seq <= cur.Seq {
		return
	}
	c := rec.Clone()
	x.recs[key] = &c
}

// Sweep deletes the records of patients with nothing left to remember:
// every reference expired, the GP practice seen longer ago than the
// retention, and no merge; and the outcomes (Settle) of references expired
// or gone. It returns how many records it deleted.
func (x *Index) Sweep(ctx context.Context) (int, error) {
	if x.t == nil {
		return 0, nil
	}
	cut := x.now().Add(-x.retention)
	var msgs []kafka.Message
	x.mu.Lock()
	for key, r := range x.recs {
		if r.MergedInto != "" || len(r.Merged) > 0 || (r.GP != "" && !r.GPSeen.Before(cut)) {
			continue
		}
		live := false
		for _, f := range r.Refs {
			if !f.Last.Before(cut) {
				live = true
				break
			}
		}
		if !live {
			msgs = append(msgs, kafka.Message{Key: []byte(key), Headers: []kafka.Header{{Key: MetaSeq, Value: []byte(strconv.FormatInt(r.Seq, 10))}}})
		}
	}
	// An outcome is kept while the reference it settles is.
	for patient, os := range x.outcomes {
		for key, o := range os {
			r := x.recs[patient]
			if o.Time.Before(cut) && (r == nil || r.Refs[o.Ref] == nil || r.Refs[o.Ref].Last.Before(cut)) {
				msgs = append(msgs, kafka.Message{Key: []byte(key)})
			}
		}
	}
	x.mu.Unlock()
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := x.t.Write(ctx, msgs...); err != nil {
		return 0, err
	}
	return len(msgs), nil
}

// Len returns how many records are held.
func (x *Index) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.recs)
}

// Close stops following the topic.
func (x *Index) Close() error {
	if x.t == nil {
		return nil
	}
	return x.t.Close()
}
