package directory

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"
)

var errInjected = errors.New("injected produce failure")

// faultyWriter makes d's writes go through fail: write says whether the
// records are written all the same, err what the write answers.
func faultyWriter(d *Directory, fail func(call int, msgs []kafka.Message) (write bool, err error)) (restore func()) {
	real := d.write
	call := 0
	d.write = func(ctx context.Context, msgs ...kafka.Message) error {
		call++
		write, err := fail(call, msgs)
		if write {
			if werr := real(ctx, msgs...); werr != nil {
				return werr
			}
		}
		return err
	}
	return func() { d.write = real }
}

// TestADirectoryChangeInForceAlwaysHasItsAudit pins the review's finding
// on issues 11 and 13: the directory wrote each change (a recipient
// created, replaced or deleted, paused or resumed, a patient put on or
// taken off a list) and its audit record in one produce to two topics,
// which is not atomic: when the audit record failed and the change did
// not, the caller got 503 while the change was in force with no audit. The
// audit record is now written first, and a change whose own write fails is
// an attempt, which Applied reports as not applied; one whose write landed
// but whose answer was lost is in force, answered as made, and applied.
func TestADirectoryChangeInForceAlwaysHasItsAudit(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	n := func(i int) nhs.Number { return nhs.Synthetic(700 + i) }
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "setup"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ChangeList(ctx, "VM456", []nhs.Number{n(1)}, nil, "setup"); err != nil {
		t.Fatal(err)
	}

	type op struct {
		name  string
		do    func(actor string) error
		state func() string // what the change changes, as it is in force
	}
	exists := func(ods string) func() string {
		return func() string { _, ok, _ := d.Get(ctx, ods); return fmt.Sprint(ok) }
	}
	on := func(i int) func() string {
		return func() string {
			ms, _ := d.Members(ctx, "VM456")
			for _, m := range ms {
				if m.Patient == d.cfg.Pseudonym(n(i)) {
					return "on"
				}
			}
			return "off"
		}
	}
	ops := []op{
		{"create", func(a string) error {
			_, err := d.Create(ctx, careHome("VM789", "https://vm789.example/", secret, "discharge"), a)
			return err
		}, exists("VM789")},
		{"update", func(a string) error {
			_, err := d.Replace(ctx, "VM456", careHome("VM456", "https://vm456.example/new", secret, "discharge"), Precondition{Any: true}, a)
			return err
		}, func() string { return url(d, "VM456") }},
		{"pause", func(a string) error { _, err := d.Pause(ctx, "VM456", a, "maintenance"); return err },
			func() string { _, p := d.Paused("VM456"); return fmt.Sprint(p) }},
		{"resume", func(a string) error { _, err := d.Resume(ctx, "VM456", a); return err },
			func() string { _, p := d.Paused("VM456"); return fmt.Sprint(p) }},
		{"list-add", func(a string) error { _, err := d.ChangeList(ctx, "VM456", []nhs.Number{n(2)}, nil, a); return err }, on(2)},
		{"list-remove", func(a string) error { _, err := d.ChangeList(ctx, "VM456", nil, []nhs.Number{n(1)}, a); return err }, on(1)},
		{"list-replace", func(a string) error { _, err := d.ReplaceList(ctx, "VM456", []nhs.Number{n(2), n(3)}, a); return err }, on(3)},
		{"delete", func(a string) error { return d.Delete(ctx, "VM789", Precondition{Any: true}, a) }, exists("VM789")},
	}
	modes := []struct {
		name    string
		fail    func(call int, msgs []kafka.Message) (bool, error)
		changed bool
	}{
		// The audit record's write fails: nothing is written.
		{"audit-fails", func(call int, msgs []kafka.Message) (bool, error) {
			if msgs[0].Topic == topic.Audit {
				return false, errInjected
			}
			return true, nil
		}, false},
		// The second write, the change itself, fails: the audit holds an
		// attempt, and nothing changed.
		{"change-fails", func(call int, _ []kafka.Message) (bool, error) {
			if call == 2 {
				return false, errInjected
			}
			return true, nil
		}, false},
		// The change is written but its answer is lost: it is in force,
		// and the call says so.
		{"answer-lost", func(call int, _ []kafka.Message) (bool, error) {
			if call == 2 {
				return true, errInjected
			}
			return true, nil
		}, true},
	}
	want := map[string]bool{"setup": true}
	for _, o := range ops {
		for _, m := range modes {
			actor := o.name + "/" + m.name
			before := o.state()
			restore := faultyWriter(d, m.fail)
			err := o.do(actor)
			restore()
			after := o.state()
			switch {
			case m.changed && err != nil:
				t.Errorf("%s: got %v, want the change made", actor, err)
			case !m.changed && !errors.Is(err, errInjected):
				t.Errorf("%s: got %v, want the injected error", actor, err)
			}
			if changed := after != before; changed != m.changed {
				t.Errorf("%s: %s before, %s after; want changed %v", actor, before, after, m.changed)
			}
			if m.name != "audit-fails" {
				want[actor] = m.changed
			}
		}
	}

	var recs []audit.Record
	for _, msg := range readAll(t, brokers, topic.Audit) {
		r, err := audit.Unmarshal(msg.Value)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == audit.KindRecipientChange || r.Kind == audit.KindListChange {
			recs = append(recs, r)
		}
	}
	applied, err := d.Applied(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for i, r := range recs {
		if r.Actor == "delete/answer-lost" && r.Reason != "" {
			continue // the pause's end and the list of a deleted recipient: none here
		}
		if prev, seen := got[r.Actor]; seen && prev != applied[i] {
			t.Errorf("%s: records disagree", r.Actor)
		}
		got[r.Actor] = applied[i]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Applied by actor (-want +got):\n%s", diff)
	}
}

// TestAppliedWhenATombstoneIsGone: once compaction has removed the
// tombstone of a patient taken off a list, the directory no longer knows
// which change left the patient off; the last removal recorded is the one
// that took effect (attempts come before it), whether the patient is put
// on again or not.
func TestAppliedWhenATombstoneIsGone(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	p := nhs.Synthetic(801)
	if _, err := d.Create(ctx, careHome("VM456", "https://vm456.example/", secret, "discharge"), "setup"); err != nil {
		t.Fatal(err)
	}
	change := func(actor string, add, remove []nhs.Number, fail bool) {
		t.Helper()
		if fail {
			defer faultyWriter(d, func(call int, _ []kafka.Message) (bool, error) {
				if call == 2 {
					return false, errInjected
				}
				return true, nil
			})()
		}
		if _, err := d.ChangeList(ctx, "VM456", add, remove, actor); (err != nil) != fail {
			t.Fatalf("%s: %v", actor, err)
		}
	}
	forget := func() { // as a process started after compaction
		d.mu.Lock()
		delete(d.gone, prefixPatient+"VM456/"+d.cfg.Pseudonym(p))
		d.mu.Unlock()
	}
	applied := func() map[string]bool {
		var recs []audit.Record
		for _, m := range readAll(t, brokers, topic.Audit) {
			if r, _ := audit.Unmarshal(m.Value); r.Kind == audit.KindListChange {
				recs = append(recs, r)
			}
		}
		got, err := d.Applied(ctx, recs)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for i, r := range recs {
			out[r.Actor] = got[i]
		}
		return out
	}
	change("add", []nhs.Number{p}, nil, false)
	change("remove-attempt", nil, []nhs.Number{p}, true)
	change("remove", nil, []nhs.Number{p}, false)
	forget()
	want := map[string]bool{"add": true, "remove-attempt": false, "remove": true}
	if diff := cmp.Diff(want, applied()); diff != "" {
		t.Errorf("the patient off the list (-want +got):\n%s", diff)
	}
	change("add-again-attempt", []nhs.Number{p}, nil, true)
	change("add-again", []nhs.Number{p}, nil, false)
	want["add-again-attempt"], want["add-again"] = false, true
	if diff := cmp.Diff(want, applied()); diff != "" {
		t.Errorf("the patient on the list again (-want +got):\n%s", diff)
	}
}
