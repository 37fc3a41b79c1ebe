// Package directory is the hub's recipient directory: every recipient,
// with its delivery section and subscriptions, whether it is paused, and
// its patient list. Every hub process holds all of it in memory, loaded
// from and following the compacted carehub.subscriptions topic (through
// package ktable), and changes made through any process's admin API reach
// every process within the time it takes to read one record (well under a
// second on one broker).
//
// # Records
//
// The topic has one partition (every process reads all of it, and the
// router looks up its end offset before each event) and four kinds of
// record, by key:
//
//	recipient/<ODS>                the recipient's entry, versioned, sealed; a deleted recipient is a marker, not a tombstone
//	paused/<ODS>                   the recipient is paused (since, by whom, why); a tombstone resumes it
//	patient/<ODS>/<pseudonym>      a patient on the recipient's list (since, by whom); a tombstone removes them
//	listseed/<ODS>                 a digest of the list file the configuration last gave the recipient
//
// A recipient's entry is its configuration entry (ods, name, role, apiKey,
// its delivery section, subscriptions) as a JSON tree. It is sealed with
// AES-256-GCM under a key derived from the pseudonym key: a delivery
// section holds secrets (a webhook's signing secret, a FHIR server's token,
// a feed's API key), and anyone who can read the topic must not read them.
// Patient lists hold pseudonyms only, never NHS numbers.
//
// # Validation
//
// An entry written through the admin API is decoded and checked by the
// code that decodes and checks the configuration file's entries
// (config.DecodeRecipient, config.Recipient.Check), and against the rest of
// the directory (one recipient per ODS code, one subscription per id, one
// owner per API key).
//
// # Versions and conflicts
//
// Every change to a recipient raises its version by one (a deletion too,
// so versions never repeat). As in package consentstore, a change names the
// version it was made against; every process applies a record only if its
// version is above the one it holds, so all agree on the winner of two
// changes made at once against one version, and the loser is told (412).
//
// # Audit
//
// Every change to the directory (a recipient's entry, a subscription, a
// pause or resume, a patient put on or taken off a list, by an operator,
// a recipient or the configuration file) is audited in carehub.audit, and
// its audit record is written, and acknowledged, before the change: no
// Kafka produce spans two topics atomically, so a change in force always
// has its audit record. A record whose change was never written (its
// write failed, or the process stopped between the two) records an
// attempt; Applied tells the two apart, as the consent store's does
// (audit.Applied). For that each change record names the state it was
// made against (Follows), and each state carries the identity of the
// change that wrote it: a recipient's updated time, a pause's since, a
// list member's added time, a tombstone (a resume, a patient taken off)
// its carehub-change header. Deleting a recipient audits its pause's end
// and each patient taken off its list. If removing them fails after the
// deletion is written, they are removed (and audited again) before the
// recipient is created again, which is refused while they cannot be, and
// at the next start (Seed): a recipient created again inherits nothing.
//
// # The configuration file
//
// The file seeds the directory (Seed): a recipient in the file that the
// directory does not hold is created; one whose entry in the file changed
// since the hub last applied it is replaced by the file's entry; one whose
// entry did not change keeps the changes made through the admin API since.
// A recipient deleted through the API stays deleted while its entry in the
// file is unchanged. The same holds for patient list files (SeedList).
//
// # Freshness
//
// Sync returns once every record in the topic when it was called is
// applied; the router calls it before deciding each event, so a change
// acknowledged by the admin API applies to every event accepted after it,
// in every process.
package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/ktable"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// Record key prefixes.
const (
	prefixRecipient = "recipient/"
	prefixPaused    = "paused/"
	prefixPatient   = "patient/"
	prefixListSeed  = "listseed/"
)

// Config is what a Directory is built from.
type Config struct {
	Brokers    []string
	Topic      string // topic.Subscriptions
	AuditTopic string // topic.Audit
	// Registry decodes recipients' delivery sections.
	Registry *connector.Registry
	// PseudonymKey is the deployment's pseudonym key: entries are sealed
	// under a key derived from it.
	PseudonymKey []byte
	// Pseudonym pseudonymises an NHS number (patient lists).
	Pseudonym func(nhs.Number) string
	// Reserved reports whether an API key is already given by the
	// configuration file (a source's, the admin's, an operator's), and by
	// what; nil means none is.
	Reserved func(key string) (string, bool)
	// Prepare, when set, is called before a recipient's entry is written
	// through the admin API: the hub creates the recipient's topics there,
	// so that no copy is ever routed to an outbox that does not exist.
	Prepare func(ctx context.Context, r *config.Recipient) error
	Log     *zap.Logger
}

// Pause says a recipient is paused: its deliverers have stopped, and its
// copies wait in its outbox.
type Pause struct {
	Since  time.Time `json:"since"`
	Actor  string    `json:"actor"`
	Reason string    `json:"reason,omitempty"`
}

// Recipient is one recipient as this process holds it.
type Recipient struct {
	ODS     string
	Version int64
	Updated time.Time
	// Actor last changed it: an operator's id, a recipient's principal,
	// or audit.ActorConfig.
	Actor string
	// Config is the decoded entry; nil when this process cannot decode
	// it (Err says why).
	Config *config.Recipient
	// Err says why this process cannot use the entry (it does not open
	// with this hub's key, a secret's file or variable is missing here),
	// in text safe to show; nil when it can.
	Err error
	// Paused is set while the recipient is paused.
	Paused *Pause
}

// Entry is the recipient's entry as JSON, in its configuration form, with
// every default filled in and every secret given inline hidden.
func (r Recipient) Entry() json.RawMessage {
	if r.Config == nil {
		return nil
	}
	return redacted(r.Config)
}

// Member is one patient on a recipient's list.
type Member struct {
	Patient string    `json:"patient"` // the keyed pseudonym of the NHS number
	Added   time.Time `json:"added"`
	Actor   string    `json:"actor"`
}

// state is what the directory holds of one recipient.
type state struct {
	version   int64
	updated   time.Time
	actor     string
	deleted   bool
	tree      map[string]any // the entry, unsealed; nil when deleted or unopenable
	seed      string         // digest of the configuration file's entry it was last written from
	recipient *config.Recipient
	err       error
}

// list is one recipient's patient list. set is handed to the router's
// subscriptions; once shared it is copied before it changes.
type list struct {
	set     patientlist.Set
	members map[string]Member
	shared  bool
}

// Directory is the recipient directory.
//
// Concurrency: mu guards every map, subs, dirty and changed. apply runs on
// the table's goroutine; the heavy part of applying a recipient (opening
// and decoding its entry) runs before mu is taken. writeMu serialises the
// changes made through this Directory.
type Directory struct {
	cfg  Config
	t    *ktable.Table
	seal *sealer
	now  func() time.Time

	mu         sync.Mutex
	recipients map[string]*state
	raw        map[string][]byte // the applied value of each recipient key
	last       map[string][]byte // the last value of each recipient key in the topic, applied or not
	paused     map[string]Pause
	lists      map[string]*list
	listSeeds  map[string]string
	// gone holds the ChangeID of the tombstone of each pause and list
	// place that is not in force (resumed, taken off), by key, as its
	// carehub-change header says: the identity of that state (Applied).
	gone    map[string]string
	subs    *route.Subscriptions
	dirty   bool
	changed chan struct{} // closed when a recipient or a pause changes

	writeMu sync.Mutex

	// write produces records (the table's writer); tests replace it to
	// inject failures.
	write func(ctx context.Context, msgs ...kafka.Message) error
}

// Open starts following the topic and returns at once; WaitLoaded tells
// when every record is loaded.
func Open(cfg Config) (*Directory, error) {
	if len(cfg.Brokers) == 0 || cfg.Topic == "" || cfg.AuditTopic == "" || cfg.Registry == nil || cfg.Pseudonym == nil || cfg.Log == nil {
		return nil, errors.New("directory: brokers, topics, registry, pseudonymiser and logger are required")
	}
	s, err := newSealer(cfg.PseudonymKey)
	if err != nil {
		return nil, err
	}
	if cfg.Reserved == nil {
		cfg.Reserved = func(string) (string, bool) { return "", false }
	}
	d := &Directory{cfg: cfg, seal: s, now: time.Now,
		recipients: map[string]*state{}, raw: map[string][]byte{}, last: map[string][]byte{},
		paused: map[string]Pause{}, lists: map[string]*list{}, listSeeds: map[string]string{}, gone: map[string]string{},
		dirty: true, changed: make(chan struct{})}
	t, err := ktable.Open(ktable.Config{Brokers: cfg.Brokers, Topic: cfg.Topic, Log: cfg.Log, Apply: d.apply})
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	d.t = t
	d.write = t.Write
	return d, nil
}

// WaitLoaded blocks until every record there was at the start is applied.
func (d *Directory) WaitLoaded(ctx context.Context) error { return d.t.WaitLoaded(ctx) }

// Loaded reports whether the initial load is complete.
func (d *Directory) Loaded() bool { return d.t.Loaded() }

// Sync returns once every record in the topic when Sync was called is
// applied (ktable.ErrNotLoaded before the initial load).
func (d *Directory) Sync(ctx context.Context) error { return d.t.Sync(ctx) }

// Close stops following the topic.
func (d *Directory) Close() error { return d.t.Close() }

// storedRecipient is the value of a recipient/<ODS> record.
type storedRecipient struct {
	ODS     string    `json:"ods"`
	Version int64     `json:"version"`
	Updated time.Time `json:"updated"`
	Actor   string    `json:"actor"`
	Deleted bool      `json:"deleted,omitempty"`
	// Sealed is the sealed sealedEntry.
	Sealed string `json:"sealed"`
}

// sealedEntry is what a recipient record seals.
type sealedEntry struct {
	Entry map[string]any `json:"entry,omitempty"`
	Seed  string         `json:"seed,omitempty"`
}

type storedMember struct {
	Added time.Time `json:"added"`
	Actor string    `json:"actor"`
}

type storedListSeed struct {
	Seed string    `json:"seed"`
	Time time.Time `json:"time"`
}

func (d *Directory) apply(m kafka.Message) {
	key := string(m.Key)
	switch {
	case strings.HasPrefix(key, prefixRecipient):
		d.applyRecipient(key, strings.TrimPrefix(key, prefixRecipient), m.Value)
	case strings.HasPrefix(key, prefixPaused):
		d.applyPause(strings.TrimPrefix(key, prefixPaused), m)
	case strings.HasPrefix(key, prefixPatient):
		ods, patient, ok := strings.Cut(strings.TrimPrefix(key, prefixPatient), "/")
		if ok {
			d.applyMember(ods, patient, m)
		}
	case strings.HasPrefix(key, prefixListSeed):
		var s storedListSeed
		if m.Value != nil {
			_ = json.Unmarshal(m.Value, &s)
		}
		d.mu.Lock()
		d.listSeeds[strings.TrimPrefix(key, prefixListSeed)] = s.Seed
		d.mu.Unlock()
	default:
		d.cfg.Log.Warn("a record of an unknown kind in the recipient directory is ignored", zap.Int64("offset", m.Offset))
	}
}

// applyRecipient applies a recipient record: a newer version replaces the
// one held; an older or equal one (a change that lost a race) is ignored.
func (d *Directory) applyRecipient(key, ods string, value []byte) {
	if value == nil {
		d.mu.Lock()
		delete(d.recipients, ods)
		delete(d.raw, key)
		delete(d.last, key)
		d.touch(true)
		d.mu.Unlock()
		return
	}
	var rec storedRecipient
	st := &state{}
	if err := json.Unmarshal(value, &rec); err != nil || rec.ODS != ods {
		d.cfg.Log.Error("a recipient record that is not readable is ignored", zap.String("recipient", ods))
		return
	}
	st.version, st.updated, st.actor, st.deleted = rec.Version, rec.Updated, rec.Actor, rec.Deleted
	d.mu.Lock()
	cur := d.recipients[ods]
	d.last[key] = value
	stale := cur != nil && rec.Version <= cur.version
	d.mu.Unlock()
	if stale {
		return
	}
	// Open and decode outside the lock: it may read secret files.
	plain, err := d.seal.open(rec.Sealed, key, rec.Version)
	var se sealedEntry
	if err == nil {
		if err = json.Unmarshal(plain, &se); err != nil {
			err = errSealed
		}
	}
	switch {
	case err != nil:
		st.err = err
	default:
		st.seed = se.Seed
		if !st.deleted {
			st.tree = se.Entry
			st.recipient, st.err = decodeStored(se.Entry, d.cfg.Registry)
		}
	}
	if st.err != nil {
		d.cfg.Log.Error("a recipient's entry cannot be used by this process", zap.String("recipient", ods), zap.Int64("version", rec.Version),
			zap.String("reason", st.err.Error()))
	}
	d.mu.Lock()
	if cur := d.recipients[ods]; cur == nil || rec.Version > cur.version {
		d.recipients[ods] = st
		d.raw[key] = value
		d.touch(true)
	}
	d.mu.Unlock()
}

// decodeStored decodes and checks a stored entry. The recipient is
// returned even when the check fails here (a secret file missing on this
// machine), so that its subscriptions are routed to, with the reason.
func decodeStored(tree map[string]any, reg *connector.Registry) (*config.Recipient, error) {
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, err
	}
	r, err := config.DecodeRecipient(b, reg)
	if err != nil {
		return nil, fmt.Errorf("decoding the entry: %w", err)
	}
	if errs := r.Check(); len(errs) > 0 {
		all := make([]error, len(errs))
		for i, e := range errs {
			all[i] = e
		}
		return r, errors.Join(all...)
	}
	return r, nil
}

func (d *Directory) applyPause(ods string, m kafka.Message) {
	value := m.Value
	d.mu.Lock()
	defer d.mu.Unlock()
	if value == nil {
		delete(d.paused, ods)
		d.gone[string(m.Key)] = changeHeader(m)
	} else {
		var p Pause
		if err := json.Unmarshal(value, &p); err != nil {
			p = Pause{Reason: "unreadable pause record"}
		}
		d.paused[ods] = p
	}
	d.touch(true)
}

func (d *Directory) applyMember(ods, patient string, m kafka.Message) {
	value := m.Value
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.writable(ods)
	if value == nil {
		delete(l.set, patient)
		delete(l.members, patient)
		d.gone[string(m.Key)] = changeHeader(m)
	} else {
		var sm storedMember
		_ = json.Unmarshal(value, &sm)
		l.set[patient] = struct{}{}
		l.members[patient] = Member{Patient: patient, Added: sm.Added, Actor: sm.Actor}
	}
	d.dirty = true
}

// changeHeader is a tombstone's carehub-change header ("" when it has
// none: written before carehub wrote one).
func changeHeader(m kafka.Message) string {
	for _, h := range m.Headers {
		if h.Key == audit.HeaderChange {
			return string(h.Value)
		}
	}
	return ""
}

// writable returns the recipient's list, ready to change: a list the
// router's subscriptions hold is copied first. d.mu must be held.
func (d *Directory) writable(ods string) *list {
	l := d.lists[ods]
	if l == nil {
		l = &list{set: patientlist.Set{}, members: map[string]Member{}}
		d.lists[ods] = l
	}
	if l.shared {
		l.set, l.shared = maps.Clone(l.set), false
	}
	return l
}

// touch marks the subscriptions for rebuilding and, when a recipient or a
// pause changed, wakes Changed's waiters. d.mu must be held.
func (d *Directory) touch(wake bool) {
	d.dirty = true
	if wake {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

// Changed returns a channel closed at the next change of a recipient or a
// pause (not of a patient list).
func (d *Directory) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// Subscriptions returns the router's subscriptions as the directory holds
// them now: every recipient's, with its patient list.
func (d *Directory) Subscriptions() *route.Subscriptions {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.dirty && d.subs != nil {
		return d.subs
	}
	var subs []route.Subscription
	for _, ods := range slices.Sorted(maps.Keys(d.recipients)) {
		st := d.recipients[ods]
		if st.deleted || st.recipient == nil {
			continue
		}
		r := st.recipient
		for _, s := range r.Subscriptions {
			types := map[string]bool{}
			for _, t := range s.Types {
				if typ, ok := event.TypeNamed(t); ok {
					types[typ] = true
				}
			}
			sub := route.Subscription{ID: s.ID, Recipient: consent.Recipient{ODS: r.ODS, Role: consent.Role(r.Role)},
				Basis: consent.Basis(s.Basis), Types: types}
			if sub.Basis == consent.BasisPatientList {
				if l := d.lists[ods]; l != nil {
					l.shared = true
					sub.Patients = l.set
				} else {
					sub.Patients = patientlist.Set{}
				}
			}
			subs = append(subs, sub)
		}
	}
	idx, err := route.NewSubscriptions(subs)
	if err != nil {
		d.cfg.Log.Error("subscriptions that cannot be matched are left out", zap.String("reason", err.Error()))
	}
	d.subs, d.dirty = idx, false
	return idx
}

// Recipients returns every recipient the directory holds (not the
// deleted), by ODS code.
func (d *Directory) Recipients() []Recipient {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Recipient
	for _, ods := range slices.Sorted(maps.Keys(d.recipients)) {
		if st := d.recipients[ods]; !st.deleted {
			out = append(out, d.view(ods, st))
		}
	}
	return out
}

// Known returns the ODS code of every recipient the directory has held,
// the deleted included (whose outboxes the retention sweep still visits).
func (d *Directory) Known() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.recipients))
}

// view is a recipient's snapshot. d.mu must be held.
func (d *Directory) view(ods string, st *state) Recipient {
	r := Recipient{ODS: ods, Version: st.version, Updated: st.updated, Actor: st.actor, Config: st.recipient, Err: st.err}
	if p, ok := d.paused[ods]; ok {
		r.Paused = &p
	}
	return r
}

// Get returns one recipient after Sync; ok is false when there is none.
func (d *Directory) Get(ctx context.Context, ods string) (Recipient, bool, error) {
	if err := d.Sync(ctx); err != nil {
		return Recipient{}, false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.recipients[ods]
	if st == nil || st.deleted {
		return Recipient{}, false, nil
	}
	return d.view(ods, st), true, nil
}

// Paused reports whether the recipient is paused, and since when (for
// metrics and status pages; no broker call).
func (d *Directory) Paused(ods string) (Pause, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.paused[ods]
	return p, ok
}

// Members returns the recipient's patient list after Sync, oldest first.
func (d *Directory) Members(ctx context.Context, ods string) ([]Member, error) {
	if err := d.Sync(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.lists[ods]
	if l == nil {
		return []Member{}, nil
	}
	out := make([]Member, 0, len(l.members))
	for _, m := range l.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int {
		if c := a.Added.Compare(b.Added); c != 0 {
			return c
		}
		return strings.Compare(a.Patient, b.Patient)
	})
	return out, nil
}

// Keys returns the API keys recipients bring: each recipient's own key
// (recipients[].apiKey), and each pull recipient's reader key, by key, to
// the recipient's ODS code. A key that does not resolve on this process is
// left out.
func (d *Directory) Keys() (own, readers map[string]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	own, readers = map[string]string{}, map[string]string{}
	for ods, st := range d.recipients {
		if st.deleted || st.recipient == nil {
			continue
		}
		if st.recipient.APIKey.Set() {
			if v, err := st.recipient.APIKey.Reveal(); err == nil && len(v) >= 8 {
				own[v] = ods
			}
		}
		if pc, ok := st.recipient.Sink.Config.(connector.PullConfig); ok {
			if v, err := pc.ReaderKey().Reveal(); err == nil && len(v) >= 8 {
				readers[v] = ods
			}
		}
	}
	return own, readers
}

// redacted is a recipient's entry in its configuration form as JSON:
// defaults filled in, a secret given inline shown as (hidden), one given
// as a file or variable shown as that.
func redacted(r *config.Recipient) json.RawMessage {
	y, err := yaml.Marshal(r)
	if err != nil {
		return nil
	}
	var tree map[string]any
	if err := yaml.Unmarshal(y, &tree); err != nil {
		return nil
	}
	forSecrets(tree, r, func(_ []string, s map[string]any) {
		for k, v := range s {
			if v == "" || v == nil {
				delete(s, k)
			}
		}
	})
	var b bytes.Buffer
	if err := ordered(&b, tree, entryOrder); err != nil {
		return nil
	}
	return b.Bytes()
}

// entryOrder is the order an entry's members are shown in, as the
// configuration file's examples write them; the delivery section comes
// before the subscriptions, other members in name order.
var entryOrder = []string{"ods", "name", "role", "apiKey", "", "subscriptions"}

// subscriptionOrder is the order of a subscription's members.
var subscriptionOrder = []string{"id", "basis", "types", "patientList", ""}

// ordered writes an entry's tree as JSON, its members in order (the
// unnamed place "" holds the members order does not name, sorted).
func ordered(b *bytes.Buffer, m map[string]any, order []string) error {
	var keys []string
	named := map[string]bool{}
	for _, k := range order {
		named[k] = true
	}
	for _, k := range order {
		if k == "" {
			for _, other := range slices.Sorted(maps.Keys(m)) {
				if !named[other] {
					keys = append(keys, other)
				}
			}
			continue
		}
		if _, ok := m[k]; ok {
			keys = append(keys, k)
		}
	}
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		if subs, ok := m[k].([]any); ok && k == "subscriptions" && slices.Equal(order, entryOrder) {
			b.WriteByte('[')
			for j, s := range subs {
				if j > 0 {
					b.WriteByte(',')
				}
				sm, ok := s.(map[string]any)
				if !ok {
					return errors.New("a subscription is not an object")
				}
				if err := ordered(b, sm, subscriptionOrder); err != nil {
					return err
				}
			}
			b.WriteByte(']')
			continue
		}
		vb, err := json.Marshal(m[k])
		if err != nil {
			return err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return nil
}

// forSecrets calls visit with every secret of an entry's tree: the
// recipient's own key and those of its delivery section. r is the decoded
// entry (for the section's type); when nil, the section's type is found
// in the registry.
func forSecrets(tree map[string]any, r *config.Recipient, visit func(path []string, secret map[string]any)) {
	walkSecrets(secretType, tree["apiKey"], []string{"apiKey"}, visit)
	if r != nil && r.Sink.Config != nil {
		walkSecrets(reflect.TypeOf(r.Sink.Config), tree[r.Sink.Type], []string{r.Sink.Type}, visit)
	}
}
