package directory

import (
	"context"
	"strings"

	"github.com/carehub/carehub/hub/audit"
)

// pauseID is the identity of the recipient's pause state (audit.None when
// not known). d.mu must be held.
func (d *Directory) pauseID(ods string) string {
	if p, ok := d.paused[ods]; ok {
		return audit.ChangeID(p.Since)
	}
	return orNone(d.gone[prefixPaused+ods])
}

// memberID is the identity of the patient's place on the recipient's
// list. d.mu must be held.
func (d *Directory) memberID(ods, patient string) string {
	if l := d.lists[ods]; l != nil {
		if m, ok := l.members[patient]; ok {
			return audit.ChangeID(m.Added)
		}
	}
	return orNone(d.gone[prefixPatient+ods+"/"+patient])
}

// entryID is the identity of the recipient's entry. d.mu must be held.
func (d *Directory) entryID(ods string) string {
	if st := d.recipients[ods]; st != nil {
		return audit.ChangeID(st.updated)
	}
	return audit.None
}

func orNone(id string) string {
	if id == "" {
		return audit.None
	}
	return id
}

// Applied reports, for each of recs (audit records in the order they were
// written, such as the disclosures report reads), whether it is a change
// to the directory that took effect: false for an attempt, whose audit
// record was written and its change not. Records of other kinds, conflict
// records, and records written before changes named what they followed,
// are reported true.
//
// A state whose identity is not known (audit.None: a place on a list, or a
// pause, whose tombstone compaction has since removed) is taken to be the
// one the last earlier removal of it wrote (a patient taken off, a resume):
// once one took effect no other could be made until the state changed
// again, so the attempts among them came first.
func (d *Directory) Applied(ctx context.Context, recs []audit.Record) ([]bool, error) {
	if err := d.Sync(ctx); err != nil {
		return nil, err
	}
	changes := make([]*audit.Change, len(recs))
	lastRemoval := map[string]string{} // key → After of its last removal so far
	for i, r := range recs {
		c, removal, ok := directoryChange(r)
		if !ok {
			continue
		}
		if c.Before == audit.None && lastRemoval[c.Key] != "" {
			c.Before = lastRemoval[c.Key]
		}
		if removal {
			lastRemoval[c.Key] = c.After
		}
		changes[i] = &c
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return audit.Applied(changes, func(key string) string {
		kind, rest, _ := strings.Cut(key, "/")
		var id string
		switch kind {
		case "recipient":
			id = d.entryID(rest)
		case "paused":
			id = d.pauseID(rest)
		case "patient":
			ods, p, _ := strings.Cut(rest, "/")
			id = d.memberID(ods, p)
		}
		if id == audit.None && lastRemoval[key] != "" {
			id = lastRemoval[key]
		}
		return id
	}), nil
}

// directoryChange is the change a directory audit record made: the key of
// the state it changed (as the directory's topic keys it), whether it
// removed that state (a resume, a patient taken off), and ok false for a
// record that is no such change (or a conflict record, or one written
// before records named what they followed).
func directoryChange(r audit.Record) (c audit.Change, removal, ok bool) {
	if r.Follows == "" || r.Outcome != "" {
		return audit.Change{}, false, false
	}
	c = audit.Change{Before: r.Follows, After: audit.ChangeID(r.Time)}
	switch {
	case r.Kind == audit.KindListChange:
		c.Key = prefixPatient + r.Recipient + "/" + r.Patient
		removal = r.Action == audit.ActionListRemove
	case r.Kind == audit.KindRecipientChange && (r.Action == audit.ActionRecipientPause || r.Action == audit.ActionRecipientResume):
		c.Key = prefixPaused + r.Recipient
		removal = r.Action == audit.ActionRecipientResume
	case r.Kind == audit.KindRecipientChange:
		c.Key = prefixRecipient + r.Recipient
	default:
		return audit.Change{}, false, false
	}
	return c, removal, true
}
