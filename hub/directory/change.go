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
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// Precondition is the version a change was made against: the admin API's
// If-Match.
type Precondition struct {
	// Version is the version read (nil: none given).
	Version *int64
	// Any is If-Match: *: the change applies to whatever version exists.
	Any bool
}

// RuleEntry is the rule of every problem found in a recipient's entry:
// the configuration file's rules, applied by the same code.
const RuleEntry = "recipient-entry"

// Create adds a recipient from its entry as JSON (a recipients[] entry of
// the configuration file), with its subscriptions, made by actor.
func (d *Directory) Create(ctx context.Context, body []byte, actor string) (Recipient, error) {
	tree, err := parseTree(body)
	if err != nil {
		return Recipient{}, err
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return Recipient{}, unavailable(err)
	}
	ods, _ := tree["ods"].(string)
	prev := d.state(ods)
	if prev != nil && !prev.deleted {
		return Recipient{}, problem.New(problem.Conflict, "recipient "+ods+" exists: change it with PUT /v1/recipients/"+ods+" and If-Match")
	}
	r, err := d.prepare(ctx, tree, nil, ods)
	if err != nil {
		return Recipient{}, err
	}
	// A recipient of the configuration file deleted and created again
	// through the API keeps the digest of the file's entry: the file,
	// unchanged, does not replace it at the next start.
	seed := ""
	if prev != nil {
		seed = prev.seed
	}
	return d.commit(ctx, change{ods: r.ODS, prev: prev, tree: tree, r: r, seed: seed, actor: actor, action: audit.ActionRecipientCreate})
}

// Replace replaces a recipient's entry (PUT), made against pre. A secret
// given as {"value": "(hidden)"}, as GET shows it, keeps the secret stored
// at that place.
func (d *Directory) Replace(ctx context.Context, ods string, body []byte, pre Precondition, actor string) (Recipient, error) {
	tree, err := parseTree(body)
	if err != nil {
		return Recipient{}, err
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	prev, err := d.existing(ctx, ods, pre)
	if err != nil {
		return Recipient{}, err
	}
	r, err := d.prepare(ctx, tree, prev, ods)
	if err != nil {
		return Recipient{}, err
	}
	return d.commit(ctx, change{ods: ods, prev: prev, tree: tree, r: r, seed: prev.seed, actor: actor, action: audit.ActionRecipientUpdate})
}

// Delete deletes a recipient, its pause and its patient list. Copies
// still in its outbox stay there (an outbox is never cut by time), and are
// delivered if the recipient is created again.
//
// The deletion is in force once its record is written; the pause and the
// list are removed after it. If that removal fails the deletion still
// stands (and is answered as made): what was left behind is removed before
// the recipient is created again (commit), and by the next start (Seed).
func (d *Directory) Delete(ctx context.Context, ods string, pre Precondition, actor string) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	prev, err := d.existing(ctx, ods, pre)
	if err != nil {
		return err
	}
	_, err = d.commit(ctx, change{ods: ods, prev: prev, actor: actor, action: audit.ActionRecipientDelete, seed: prev.seed})
	return err
}

// existing syncs and returns the recipient a change is made to, checking
// the change's precondition. d.writeMu must be held.
func (d *Directory) existing(ctx context.Context, ods string, pre Precondition) (*state, error) {
	if err := d.Sync(ctx); err != nil {
		return nil, unavailable(err)
	}
	prev := d.state(ods)
	switch {
	case prev == nil || prev.deleted:
		return nil, problem.New(problem.NotFound, "there is no recipient "+ods)
	case pre.Any:
	case pre.Version == nil:
		return nil, problem.New(problem.PreconditionRequired,
			"read the recipient first and send If-Match with the ETag read, so that no other change is lost")
	case *pre.Version != prev.version:
		return nil, problem.New(problem.Precondition, "the recipient changed since the version given in If-Match: read it again and reapply the change")
	}
	if prev.tree == nil {
		return nil, problem.Wrap(problem.Conflict, "this hub cannot open the recipient's stored entry: "+safe(prev.err)+"; delete it and create it again", prev.err)
	}
	return prev, nil
}

func (d *Directory) state(ods string) *state {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.recipients[ods]
}

func unavailable(err error) error {
	return problem.Wrap(problem.Unavailable, "the recipient directory could not be read; retry", err)
}

func safe(err error) string {
	if err == nil {
		return ""
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe.Error()
	}
	return err.Error() // errors of this package and of config: field names and rules only
}

// parseTree reads a JSON object into a tree.
func parseTree(body []byte) (map[string]any, error) {
	if !json.Valid(body) {
		return nil, problem.New(problem.Malformed, "the body is not JSON")
	}
	var tree map[string]any
	if err := yaml.Unmarshal(body, &tree); err != nil || tree == nil {
		return nil, problem.Violated("", RuleEntry, "the body must be one JSON object, without a member given twice")
	}
	return tree, nil
}

// prepare checks an entry as the configuration file's entries are checked,
// and against the rest of the directory. A secret given as (hidden) takes
// the secret stored at its place in prev's entry. ods is the recipient the
// request addresses. d.writeMu must be held.
func (d *Directory) prepare(ctx context.Context, tree map[string]any, prev *state, ods string) (*config.Recipient, error) {
	var errs []config.FieldError
	// Secrets kept as they are stored.
	for k, v := range tree {
		f, ok := d.cfg.Registry.Sink(k)
		visit := func(path []string, s map[string]any) {
			if s["value"] != hidden {
				return
			}
			old, _ := at(treeOf(prev), path).(map[string]any)
			if old == nil || len(s) != 1 {
				errs = append(errs, config.FieldError{Field: field(path),
					Text: ": (hidden) keeps the secret stored here, and there is none: give the secret (value, file or env)"})
				return
			}
			clear(s)
			maps.Copy(s, old)
		}
		switch {
		case k == "apiKey":
			walkSecrets(secretType, v, []string{k}, visit)
		case ok:
			walkSecrets(reflect.TypeOf(f.Default()), v, []string{k}, visit)
		}
	}
	// A file on the hub's disk is the configuration file's business.
	if subs, ok := tree["subscriptions"].([]any); ok {
		for j, s := range subs {
			if m, ok := s.(map[string]any); ok && m["patientList"] != nil {
				errs = append(errs, config.FieldError{Field: fmt.Sprintf(".subscriptions[%d].patientList", j),
					Text: ": a file on the hub's disk is for the configuration file; through the API, send the list to PUT /v1/recipients/{ods}/patients"})
			}
		}
	}
	if len(errs) > 0 {
		return nil, invalid(errs)
	}
	b, _ := json.Marshal(tree)
	r, err := config.DecodeRecipient(b, d.cfg.Registry)
	if err != nil {
		var fe []config.FieldError
		collect(err, &fe)
		return nil, invalid(fe)
	}
	errs = append(errs, r.Check()...)
	if ods != "" && r.ODS != ods {
		errs = append(errs, config.FieldError{Field: ".ods", Text: ": the ODS code is the recipient's identity and the request's path: it cannot change"})
	}
	if len(errs) > 0 {
		return nil, invalid(errs)
	}
	if conflicts := d.crossCheck(r); len(conflicts) > 0 {
		e := invalid(conflicts)
		e.Kind = problem.Conflict
		return nil, e
	}
	if d.cfg.Prepare != nil {
		if err := d.cfg.Prepare(ctx, r); err != nil {
			return nil, problem.Wrap(problem.Unavailable, "the recipient's topics could not be created; retry", err)
		}
	}
	return r, nil
}

func treeOf(s *state) any {
	if s == nil {
		return nil
	}
	return s.tree
}

// field is a tree path as a FieldError's field.
func field(path []string) string {
	var b strings.Builder
	for _, p := range path {
		if _, err := strconv.Atoi(p); err == nil {
			b.WriteString("[" + p + "]")
			continue
		}
		b.WriteString("." + p)
	}
	return b.String()
}

func collect(err error, out *[]config.FieldError) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			collect(e, out)
		}
		return
	}
	var fe config.FieldError
	if errors.As(err, &fe) {
		*out = append(*out, fe)
		return
	}
	*out = append(*out, config.FieldError{Text: ": " + safe(err)})
}

// invalid is the problem of an entry's FieldErrors, each a violation at
// its JSON pointer.
func invalid(errs []config.FieldError) *problem.Error {
	e := &problem.Error{Kind: problem.Invalid, Message: "the recipient is not valid: " + errs[0].Detail()}
	if len(errs) > 1 {
		e.Message += fmt.Sprintf(" (and %d more)", len(errs)-1)
	}
	for _, fe := range errs {
		e.Violations = append(e.Violations, problem.Violation{Pointer: fe.Pointer(), Rule: RuleEntry, Detail: fe.Detail()})
	}
	return e
}

// crossCheck finds what r shares with other recipients of the directory
// or the file: subscription ids and API keys. d.writeMu must be held.
func (d *Directory) crossCheck(r *config.Recipient) []config.FieldError {
	var errs []config.FieldError
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := map[string]string{}
	keys := map[string]string{}
	for ods, st := range d.recipients {
		if ods == r.ODS || st.deleted || st.recipient == nil {
			continue
		}
		for _, s := range st.recipient.Subscriptions {
			ids[s.ID] = ods
		}
		for _, k := range st.recipient.Keys() {
			if v, err := k.Reveal(); err == nil {
				keys[v] = "recipient " + ods
			}
		}
	}
	for j, s := range r.Subscriptions {
		if other, ok := ids[s.ID]; ok {
			errs = append(errs, config.FieldError{Field: fmt.Sprintf(".subscriptions[%d].id", j), Text: fmt.Sprintf(" %q: used by recipient %s", s.ID, other)})
		}
	}
	own := r.Keys()
	for _, f := range slices.Sorted(maps.Keys(own)) {
		v, err := own[f].Reveal()
		if err != nil {
			continue
		}
		who, taken := keys[v]
		if !taken {
			who, taken = d.cfg.Reserved(v)
		}
		if taken {
			errs = append(errs, config.FieldError{Field: f, Text: ": the same API key is already used by " + who})
		}
	}
	return errs
}

// change is one write of a recipient record.
type change struct {
	ods          string
	prev         *state            // nil when the directory never held it
	tree         map[string]any    // nil: a deletion
	r            *config.Recipient // the decoded tree
	seed         string
	actor        string
	action       string
	subscription string
}

// commit writes a recipient's audit record and then its record, waits
// until it is applied, and checks that it won against changes made at once
// by other processes. A deletion then removes the recipient's pause and
// patient list. d.writeMu must be held.
//
// The audit record is written, and acknowledged, first: no produce spans
// two topics atomically, so a change in force always has its audit record;
// one whose own write then fails is an attempt, which Applied reports.
//
// A recipient created again after a deletion whose removal of its pause
// and list failed has them removed first: it never inherits them. If they
// cannot be removed, it is not created.
func (d *Directory) commit(ctx context.Context, c change) (Recipient, error) {
	if c.tree != nil && c.prev != nil && c.prev.deleted {
		if err := d.removeLeftovers(ctx, c.ods, c.prev.actor); err != nil {
			return Recipient{}, problem.Wrap(problem.Unavailable,
				"the pause and patient list of the recipient deleted before could not be removed, and the recipient was not created; retry", err)
		}
	}
	var from int64
	follows := audit.None
	if c.prev != nil {
		from, follows = c.prev.version, audit.ChangeID(c.prev.updated)
	}
	version, now, key := from+1, d.now().UTC(), prefixRecipient+c.ods
	plain, err := json.Marshal(sealedEntry{Entry: c.tree, Seed: c.seed})
	if err != nil {
		return Recipient{}, err
	}
	sealed, err := d.seal.seal(plain, key, version)
	if err != nil {
		return Recipient{}, err
	}
	val, _ := json.Marshal(storedRecipient{ODS: c.ods, Version: version, Updated: now, Actor: c.actor, Deleted: c.tree == nil, Sealed: sealed})
	rc := &audit.RecipientChange{FromVersion: from, ToVersion: version}
	if c.prev != nil && !c.prev.deleted && c.prev.recipient != nil {
		rc.Before = redacted(c.prev.recipient)
	}
	if c.r != nil {
		rc.After = redacted(c.r)
	}
	hist := audit.Record{Time: now, Kind: audit.KindRecipientChange, Recipient: c.ods, Subscription: c.subscription,
		Actor: c.actor, Action: c.action, RecipientChange: rc, Follows: follows}
	if err := d.write(ctx, kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(audit.RecipientKey(c.ods)), Value: hist.Marshal()}); err != nil {
		return Recipient{}, problem.Wrap(problem.Unavailable, "the change could not be audited, and was not made; retry", err)
	}
	if err := d.write(ctx, kafka.Message{Key: []byte(key), Value: val}); err != nil {
		// The write may have landed all the same (an answer lost): if the
		// record is in the topic, the change was made.
		if !d.landed(ctx, func() bool { return bytes.Equal(d.last[key], val) || bytes.Equal(d.raw[key], val) }) {
			return Recipient{}, problem.Wrap(problem.Unavailable, "the change could not be made durable; retry", err)
		}
	}
	if err := d.Sync(ctx); err != nil {
		return Recipient{}, unavailable(err)
	}
	d.mu.Lock()
	won := bytes.Equal(d.raw[key], val)
	d.mu.Unlock()
	if !won {
		lost := hist
		lost.Outcome, lost.Time = "conflict", d.now().UTC()
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := d.write(wctx, kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(audit.RecipientKey(c.ods)), Value: lost.Marshal()}); err != nil {
			d.cfg.Log.Error("recording a lost recipient change", logging.Err(err))
		}
		d.keepLast(wctx, key)
		return Recipient{}, problem.New(problem.Precondition,
			"another change to the recipient was made at the same time: read it again and reapply the change")
	}
	d.cfg.Log.Info("recipient changed", zap.String("recipient", c.ods), zap.String("action", c.action), zap.Int64("version", version),
		zap.String("actor", c.actor))
	if c.tree == nil {
		if err := d.removeAll(ctx, c.ods, c.actor); err != nil {
			d.cfg.Log.Error("removing a deleted recipient's pause and patient list", zap.String("recipient", c.ods), logging.Err(err))
		}
		return Recipient{ODS: c.ods, Version: version, Updated: now, Actor: c.actor}, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.view(c.ods, d.recipients[c.ods]), nil
}

// keepLast writes the record in force again until it is the last of its
// key, so that compaction keeps it and not a change that lost.
func (d *Directory) keepLast(ctx context.Context, key string) {
	for range 5 {
		d.mu.Lock()
		cur, last := d.raw[key], d.last[key]
		d.mu.Unlock()
		if cur == nil || bytes.Equal(cur, last) {
			return
		}
		if err := d.write(ctx, kafka.Message{Key: []byte(key), Value: cur}); err != nil {
			d.cfg.Log.Error("rewriting the recipient record in force", logging.Err(err))
			return
		}
		if err := d.Sync(ctx); err != nil {
			return
		}
	}
}

// landed reports whether a record whose write failed is in the topic all
// the same (its answer was lost): in force reports it, with d.mu held,
// once the directory has caught up.
func (d *Directory) landed(ctx context.Context, inForce func() bool) bool {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if d.Sync(sctx) != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return inForce()
}

// leftovers reports whether the recipient has what its deletion removes:
// a pause, a patient on its list, the digest of a list file. d.mu must be
// held.
func (d *Directory) leftovers(ods string) bool {
	_, paused := d.paused[ods]
	l := d.lists[ods]
	return paused || (l != nil && len(l.members) > 0) || d.listSeeds[ods] != ""
}

// removeLeftovers removes what the deletion of a recipient left behind
// when its removeAll failed, audited as removeAll audits it (made by the
// actor who deleted it). d.writeMu must be held and the directory synced.
func (d *Directory) removeLeftovers(ctx context.Context, ods, deletedBy string) error {
	d.mu.Lock()
	left := d.leftovers(ods)
	d.mu.Unlock()
	if !left {
		return nil
	}
	d.cfg.Log.Warn("removing the pause and patient list a deleted recipient left behind", zap.String("recipient", ods))
	return d.removeAll(ctx, ods, deletedBy)
}

// sweep removes what deleted recipients left behind (see Delete). Each
// one that cannot be removed now is logged, and removed before the
// recipient is created again.
func (d *Directory) sweep(ctx context.Context) {
	d.mu.Lock()
	var deleted []string
	for _, ods := range slices.Sorted(maps.Keys(d.recipients)) {
		if d.recipients[ods].deleted && d.leftovers(ods) {
			deleted = append(deleted, ods)
		}
	}
	d.mu.Unlock()
	for _, ods := range deleted {
		err := func() error {
			d.writeMu.Lock()
			defer d.writeMu.Unlock()
			if err := d.Sync(ctx); err != nil {
				return err
			}
			st := d.state(ods)
			if st == nil || !st.deleted {
				return nil // created again meanwhile, by another process
			}
			return d.removeLeftovers(ctx, ods, st.actor)
		}()
		if err != nil {
			d.cfg.Log.Error("removing a deleted recipient's pause and patient list", zap.String("recipient", ods), logging.Err(err))
		}
	}
}

// removeAll removes a deleted recipient's pause, list and list seed: the
// pause's end and each patient taken off are audited first (made by
// actor, who deleted the recipient), as every change is.
func (d *Directory) removeAll(ctx context.Context, ods, actor string) error {
	now := d.now().UTC()
	id := audit.ChangeID(now)
	var hist []kafka.Message
	d.mu.Lock()
	if p, paused := d.paused[ods]; paused {
		r := audit.Record{Time: now, Kind: audit.KindRecipientChange, Recipient: ods, Actor: actor, Action: audit.ActionRecipientResume,
			Reason: "the recipient was deleted", Follows: audit.ChangeID(p.Since)}
		hist = append(hist, kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(audit.RecipientKey(ods)), Value: r.Marshal()})
	}
	msgs := []kafka.Message{tombstone(prefixPaused+ods, id), {Key: []byte(prefixListSeed + ods)}}
	if l := d.lists[ods]; l != nil {
		for _, p := range slices.Sorted(maps.Keys(l.members)) {
			r := audit.Record{Time: now, Kind: audit.KindListChange, Patient: p, Recipient: ods, Actor: actor, Action: audit.ActionListRemove,
				Reason: "the recipient was deleted", Follows: audit.ChangeID(l.members[p].Added)}
			hist = append(hist, kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(p), Value: r.Marshal()})
			msgs = append(msgs, tombstone(prefixPatient+ods+"/"+p, id))
		}
	}
	d.mu.Unlock()
	if len(hist) > 0 {
		if err := d.write(ctx, hist...); err != nil {
			return err
		}
	}
	if err := d.write(ctx, msgs...); err != nil {
		return err
	}
	return d.Sync(ctx)
}

// tombstone is the tombstone of key, with the ChangeID of the change that
// writes it in its carehub-change header: the identity of the state it
// leaves (Applied).
func tombstone(key, id string) kafka.Message {
	return kafka.Message{Key: []byte(key), Headers: []kafka.Header{{Key: audit.HeaderChange, Value: []byte(id)}}}
}

// Pause pauses a recipient: every process stops its deliverers (a
// delivery in flight is abandoned, not retried, and stays in the outbox),
// and copies routed to it wait in its outbox until Resume. Pausing a
// paused recipient changes nothing.
func (d *Directory) Pause(ctx context.Context, ods, actor, reason string) (Recipient, error) {
	return d.setPause(ctx, ods, actor, reason, true)
}

// Resume resumes a paused recipient: its deliverers start again, with the
// oldest copy waiting. Resuming a recipient that is not paused changes
// nothing.
func (d *Directory) Resume(ctx context.Context, ods, actor string) (Recipient, error) {
	return d.setPause(ctx, ods, actor, "", false)
}

func (d *Directory) setPause(ctx context.Context, ods, actor, reason string, pause bool) (Recipient, error) {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return Recipient{}, unavailable(err)
	}
	st := d.state(ods)
	if st == nil || st.deleted {
		return Recipient{}, problem.New(problem.NotFound, "there is no recipient "+ods)
	}
	if _, paused := d.Paused(ods); paused != pause {
		now := d.now().UTC()
		id, pkey := audit.ChangeID(now), prefixPaused+ods
		msg := tombstone(pkey, id)
		action := audit.ActionRecipientResume
		if pause {
			msg = kafka.Message{Key: []byte(pkey)}
			msg.Value, _ = json.Marshal(Pause{Since: now, Actor: actor, Reason: reason})
			action = audit.ActionRecipientPause
		}
		d.mu.Lock()
		follows := d.pauseID(ods)
		d.mu.Unlock()
		hist := audit.Record{Time: now, Kind: audit.KindRecipientChange, Recipient: ods, Actor: actor, Action: action, Reason: reason,
			Follows: follows}
		// The audit record first, as for every change (commit).
		if err := d.write(ctx, kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(audit.RecipientKey(ods)), Value: hist.Marshal()}); err != nil {
			return Recipient{}, problem.Wrap(problem.Unavailable, "the change could not be audited, and was not made; retry", err)
		}
		if err := d.write(ctx, msg); err != nil {
			if !d.landed(ctx, func() bool { return d.pauseID(ods) == id }) {
				return Recipient{}, problem.Wrap(problem.Unavailable, "the change could not be made durable; retry", err)
			}
		}
		if err := d.Sync(ctx); err != nil {
			return Recipient{}, unavailable(err)
		}
		d.cfg.Log.Info("recipient "+map[bool]string{true: "paused", false: "resumed"}[pause], zap.String("recipient", ods), zap.String("actor", actor))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.view(ods, d.recipients[ods]), nil
}
