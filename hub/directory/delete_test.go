package directory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
)

// failCall makes the n-th write fail, unwritten.
func failCall(n int) func(int, []kafka.Message) (bool, error) {
	return func(call int, _ []kafka.Message) (bool, error) {
		if call == n {
			return false, errInjected
		}
		return true, nil
	}
}

// TestARecipientCreatedAgainInheritsNothing pins the second review's
// finding on issue 13: when removing a deleted recipient's pause and
// patient list failed after its deletion was written, the failure was only
// logged, and a recipient created again with its ODS code inherited the old
// list and pause while the audit said they were removed. What a deletion
// left behind is now removed before the recipient is created again (and
// the creation refused, 503, while it cannot be), and by the next start's
// Seed; the audit records only the removal that took effect as applied.
func TestARecipientCreatedAgainInheritsNothing(t *testing.T) {
	brokers := startBroker(t)
	d := open(t, brokers, nil)
	ctx := context.Background()
	n := func(i int) nhs.Number { return nhs.Synthetic(900 + i) }
	const deleted = "the recipient was deleted"

	tests := []struct {
		ods string
		// failDelete is the write of the deletion that fails: 1 the
		// deletion's audit, 2 its record, 3 the audit of the removals,
		// 4 the removals.
		failDelete int
		// attempts is how many times the removals were audited and not
		// made (an attempt) before they were made.
		attempts int
		// sweep: a process starting (Seed) removes what was left, before
		// the recipient is created again.
		sweep bool
	}{
		{"VM401", 3, 1, false}, // the removals' audit fails; so does the first try at creating it again
		{"VM402", 4, 2, false}, // the removals fail; so does the first try at creating it again
		{"VM403", 4, 1, true},  // the removals fail; the next start removes them
	}
	for _, tt := range tests {
		t.Run(tt.ods, func(t *testing.T) {
			if _, err := d.Create(ctx, careHome(tt.ods, "https://care.example/", secret, "discharge"), "setup"); err != nil {
				t.Fatal(err)
			}
			// A list from a file (its digest kept) and one patient added
			// through the API.
			if _, err := d.SeedList(ctx, tt.ods, []nhs.Number{n(1), n(2)}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ChangeList(ctx, tt.ods, []nhs.Number{n(3)}, nil, tt.ods); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Pause(ctx, tt.ods, "setup", "maintenance"); err != nil {
				t.Fatal(err)
			}

			restore := faultyWriter(d, failCall(tt.failDelete))
			err := d.Delete(ctx, tt.ods, Precondition{Any: true}, "ig-lead")
			restore()
			if err != nil {
				t.Fatalf("Delete: got %v, want the deletion made (it is in force)", err)
			}
			if _, ok, _ := d.Get(ctx, tt.ods); ok {
				t.Fatalf("the recipient is not deleted")
			}
			// The removals failed: the list and pause are left behind.
			if m, _ := d.Members(ctx, tt.ods); len(m) != 3 {
				t.Fatalf("after the failed removal the list has %d patients, want the 3 left behind", len(m))
			}
			if _, paused := d.Paused(tt.ods); !paused {
				t.Fatalf("after the failed removal the pause is gone")
			}

			if tt.sweep {
				if err := open(t, brokers, nil).Seed(ctx, nil); err != nil {
					t.Fatalf("Seed: %v", err)
				}
				if err := d.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				if m, _ := d.Members(ctx, tt.ods); len(m) != 0 {
					t.Errorf("after a start the deleted recipient's list has %d patients", len(m))
				}
				if _, paused := d.Paused(tt.ods); paused {
					t.Errorf("after a start the deleted recipient is still paused")
				}
			} else {
				// The removals fail again, as the recipient is created
				// again: it is not created.
				restore := faultyWriter(d, failCall(2))
				_, err := d.Create(ctx, careHome(tt.ods, "https://care.example/again", secret2, "discharge"), "admin")
				restore()
				if problem.KindOf(err) != problem.Unavailable || !errors.Is(err, errInjected) {
					t.Errorf("Create while the leftovers cannot be removed: got %v, want 503 with the injected error", err)
				}
				if _, ok, _ := d.Get(ctx, tt.ods); ok {
					t.Errorf("the recipient was created with the old list and pause")
				}
			}

			r, err := d.Create(ctx, careHome(tt.ods, "https://care.example/again", secret2, "discharge"), "admin")
			if err != nil {
				t.Fatalf("Create again: %v", err)
			}
			if r.Paused != nil {
				t.Errorf("the recipient created again is paused: %+v", r.Paused)
			}
			if p, paused := d.Paused(tt.ods); paused {
				t.Errorf("the recipient created again is paused: %+v", p)
			}
			if m, _ := d.Members(ctx, tt.ods); len(m) != 0 {
				t.Errorf("the recipient created again has %d patients of the old list", len(m))
			}
			for i := 1; i <= 3; i++ {
				if got := candidates(d, event.TypeDischarge, n(i).Digits()); slices.Contains(got, tt.ods) {
					t.Errorf("patient %d of the old list is routed to the recipient created again", i)
				}
			}
			// The list file's digest went with the list: the same file
			// makes the new recipient's list.
			if wrote, err := d.SeedList(ctx, tt.ods, []nhs.Number{n(1), n(2)}); err != nil || !wrote {
				t.Errorf("SeedList of the old file for the recipient created again: wrote %v, %v; want written", wrote, err)
			}

			// The audit: the removals are recorded, made by who deleted
			// the recipient; exactly one of each took effect, the others
			// are attempts.
			var recs []audit.Record
			for _, m := range readAll(t, brokers, topic.Audit) {
				r, err := audit.Unmarshal(m.Value)
				if err != nil {
					t.Fatal(err)
				}
				recs = append(recs, r)
			}
			applied, err := d.Applied(ctx, recs)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for i, r := range recs {
				if r.Recipient != tt.ods || r.Reason != deleted {
					continue
				}
				who := map[string]string{d.cfg.Pseudonym(n(1)): " 1", d.cfg.Pseudonym(n(2)): " 2", d.cfg.Pseudonym(n(3)): " 3"}[r.Patient]
				got[fmt.Sprintf("%s%s by %s, applied %v", r.Action, who, r.Actor, applied[i])]++
			}
			want := map[string]int{
				"patient-list-remove 1 by ig-lead, applied true": 1,
				"patient-list-remove 2 by ig-lead, applied true": 1,
				"patient-list-remove 3 by ig-lead, applied true": 1,
				"recipient-resume by ig-lead, applied true":      1,
			}
			for k := range maps.Clone(want) {
				want[strings.TrimSuffix(k, "true")+"false"] = tt.attempts
			}
			if !maps.Equal(got, want) {
				t.Errorf("audit of the removals:\n\tgot  %v\n\twant %v", got, want)
			}
		})
	}
}
