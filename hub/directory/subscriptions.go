package directory

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/schemas/problem"
)

// Subscription is one subscription and the recipient it belongs to. A
// subscription is part of its recipient's entry: its version is the
// recipient's, and every change to it is a change to the recipient.
type Subscription struct {
	Recipient string
	Version   int64
	config.Subscription
}

// AllSubscriptions returns every subscription, by recipient then in the
// recipient's order, after Sync.
func (d *Directory) AllSubscriptions(ctx context.Context) ([]Subscription, error) {
	if err := d.Sync(ctx); err != nil {
		return nil, unavailable(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []Subscription{}
	for _, ods := range slices.Sorted(maps.Keys(d.recipients)) {
		st := d.recipients[ods]
		if st.deleted || st.recipient == nil {
			continue
		}
		for _, s := range st.recipient.Subscriptions {
			out = append(out, Subscription{Recipient: ods, Version: st.version, Subscription: s})
		}
	}
	return out, nil
}

// FindSubscription returns the subscription with id, after Sync.
func (d *Directory) FindSubscription(ctx context.Context, id string) (Subscription, bool, error) {
	all, err := d.AllSubscriptions(ctx)
	if err != nil {
		return Subscription{}, false, err
	}
	for _, s := range all {
		if s.ID == id {
			return s, true, nil
		}
	}
	return Subscription{}, false, nil
}

// owner returns the recipient holding subscription id and its index.
// d.mu must not be held.
func (d *Directory) owner(id string) (string, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ods, st := range d.recipients {
		if st.deleted || st.recipient == nil {
			continue
		}
		for j, s := range st.recipient.Subscriptions {
			if s.ID == id {
				return ods, j
			}
		}
	}
	return "", -1
}

// PutSubscription creates a subscription (id "": POST, its recipient named
// by the body's "recipient") or replaces subscription id (PUT, made
// against pre: the recipient's version). The body is the subscription as
// in the configuration file, and its recipient's ODS code:
//
//	{"recipient": "VM123", "id": "vm123-residents", "basis": "patient-list", "types": ["discharge"]}
//
// The recipient's whole entry is then checked, as any change to it is.
func (d *Directory) PutSubscription(ctx context.Context, id string, body []byte, pre Precondition, actor string) (Subscription, error) {
	tree, err := parseTree(body)
	if err != nil {
		return Subscription{}, err
	}
	ods, _ := tree["recipient"].(string)
	delete(tree, "recipient")
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return Subscription{}, unavailable(err)
	}
	index := -1
	action := audit.ActionSubscriptionCreate
	if id != "" {
		owner, j := d.owner(id)
		if owner == "" {
			return Subscription{}, problem.New(problem.NotFound, "there is no subscription "+id)
		}
		switch {
		case ods == "":
			ods = owner
		case ods != owner:
			return Subscription{}, problem.Violated("/recipient", RuleEntry,
				"a subscription stays with its recipient: delete it and create another for "+ods)
		}
		if given, ok := tree["id"]; ok && given != id {
			return Subscription{}, problem.Violated("/id", RuleEntry, "the id is the subscription's identity and the request's path: it cannot change")
		}
		tree["id"] = id
		index, action = j, audit.ActionSubscriptionUpdate
	} else if ods == "" {
		return Subscription{}, problem.Violated("/recipient", RuleEntry, "name the subscription's recipient by its ODS code")
	}
	var prev *state
	if index >= 0 {
		if prev, err = d.existing(ctx, ods, pre); err != nil {
			return Subscription{}, err
		}
	} else if prev, err = d.existing(ctx, ods, Precondition{Any: true}); err != nil {
		return Subscription{}, err
	}
	next := cloneTree(prev.tree).(map[string]any)
	subs, _ := next["subscriptions"].([]any)
	if index < 0 {
		index = len(subs)
		subs = append(subs, tree)
	} else {
		subs[index] = tree
	}
	next["subscriptions"] = subs
	r, err := d.prepare(ctx, next, prev, ods)
	if err != nil {
		return Subscription{}, withinSubscription(err, index)
	}
	sub := r.Subscriptions[index]
	if _, err := d.commit(ctx, change{ods: ods, prev: prev, tree: next, r: r, actor: actor, action: action, subscription: sub.ID, seed: prev.seed}); err != nil {
		return Subscription{}, err
	}
	return Subscription{Recipient: ods, Version: prev.version + 1, Subscription: sub}, nil
}

// DeleteSubscription deletes subscription id, made against pre (its
// recipient's version). A recipient keeps at least one subscription:
// delete or pause the recipient instead.
func (d *Directory) DeleteSubscription(ctx context.Context, id string, pre Precondition, actor string) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return unavailable(err)
	}
	ods, index := d.owner(id)
	if ods == "" {
		return problem.New(problem.NotFound, "there is no subscription "+id)
	}
	prev, err := d.existing(ctx, ods, pre)
	if err != nil {
		return err
	}
	next := cloneTree(prev.tree).(map[string]any)
	subs, _ := next["subscriptions"].([]any)
	if len(subs) <= 1 {
		return problem.New(problem.Conflict, "a recipient has at least one subscription: delete or pause recipient "+ods+" instead")
	}
	next["subscriptions"] = slices.Delete(subs, index, index+1)
	r, err := d.prepare(ctx, next, prev, ods)
	if err != nil {
		return err
	}
	_, err = d.commit(ctx, change{ods: ods, prev: prev, tree: next, r: r, actor: actor, action: audit.ActionSubscriptionDelete, subscription: id, seed: prev.seed})
	return err
}

// withinSubscription points the violations about subscription index into
// the subscription's own body.
func withinSubscription(err error, index int) error {
	pe, ok := err.(*problem.Error)
	if !ok {
		return err
	}
	out := *pe
	out.Violations = nil
	prefix := "/subscriptions/" + strconv.Itoa(index)
	for _, v := range pe.Violations {
		if v.Pointer == prefix || strings.HasPrefix(v.Pointer, prefix+"/") {
			v.Pointer = strings.TrimPrefix(v.Pointer, prefix)
			v.Detail = strings.TrimPrefix(strings.TrimPrefix(v.Detail, "subscriptions["+strconv.Itoa(index)+"]"), ".")
			v.Detail = strings.TrimPrefix(v.Detail, ": ")
		}
		out.Violations = append(out.Violations, v)
	}
	if len(out.Violations) > 0 {
		out.Message = "the subscription is not valid: " + out.Violations[0].Detail
	}
	return &out
}

// cloneTree copies a tree of maps, lists and scalars.
func cloneTree(v any) any {
	switch t := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(t))
		for k, x := range t {
			m[k] = cloneTree(x)
		}
		return m
	case []any:
		l := make([]any, len(t))
		for i, x := range t {
			l[i] = cloneTree(x)
		}
		return l
	}
	return v
}
