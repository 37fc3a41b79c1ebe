package route

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
)

// TestACopyWithheldAtDeliveryIsNotFollowed pins audit-11 leak 1: an
// admission routed to VM123 and withheld at delivery (a deny for the stay,
// recorded while the copy waited) still counted as received in the patient
// index, so the stay's transfer, dated after the deny ended, went to VM123
// in full, and its cancellation would have followed. Once the withholding
// is settled (Router.Settle, what the deliverer calls), the index says
// VM123 was withheld the stay: neither follow-up reaches it.
func TestACopyWithheldAtDeliveryIsNotFollowed(t *testing.T) {
	for _, tc := range []struct {
		name string
		// settle: "delivery" (the deliverer: with the sealed decision),
		// "feed" (a pull feed's read: by the event id alone), or "".
		settle string
		// wantHome: whether the transfer and its cancellation reach VM123.
		wantHome bool
	}{
		{"withheld at delivery and settled", "delivery", false},
		{"withheld at a feed's read and settled", "feed", false},
		// The control: what the index says without the settlement (the
		// leak), so the test is seen to depend on it.
		{"not settled", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dirs := &fakeDirectives{}
			pub := &fakePub{}
			r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
			if err := r.Handle(example(t, "admission", nil)); err != nil {
				t.Fatal(err)
			}
			home := pub.take()["carehub.outbox.vm123"]
			if len(home) != 1 {
				t.Fatalf("admission copies to vm123: got %d, want 1", len(home))
			}
			end := time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC)
			dirs.set(patientKey(), consent.Directive{ID: "no-home-this-stay", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
				Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{End: &end}})
			cp := home[0]
			d, _, _, err := r.Recheck(context.Background(), cp.Metadata.Get(topic.MetaKey), cp.Metadata.Get(topic.MetaDecision))
			if err != nil || d.Permitted() {
				t.Fatalf("recheck: %+v %v, want a deny", d, err)
			}
			if tc.settle != "" {
				s := Settlement{Key: cp.Metadata.Get(topic.MetaKey), Recipient: "VM123", Source: cp.Metadata.Get(topic.MetaSource), EventID: cp.Metadata.Get(topic.MetaEventID), Rule: d.Rule}
				if tc.settle == "delivery" {
					s.Sealed = cp.Metadata.Get(topic.MetaDecision)
				}
				if err := r.Settle(context.Background(), s); err != nil {
					t.Fatal(err)
				}
			}
			for _, ex := range []string{"transfer", "transfer-cancelled"} {
				m := example(t, ex, nil)
				if err := r.Handle(m); err != nil {
					t.Fatal(err)
				}
				got := false
				for _, c := range copies(pub.take(), m.UUID) {
					got = got || c == "vm123"
				}
				if got != tc.wantHome {
					t.Errorf("%s reached VM123: got %v, want %v", ex, got, tc.wantHome)
				}
			}
		})
	}
}

// TestSettlingIsPerCopy: a recipient that received another event on the
// encounter keeps it when one copy is withheld at delivery: the withheld
// copy's type leaves its receipt (a correction of it does not follow),
// the other stays (an update still follows); settling twice changes
// nothing more.
func TestSettlingIsPerCopy(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
	var tr *message.Message
	for _, ex := range []string{"admission", "transfer"} {
		if err := r.Handle(example(t, ex, nil)); err != nil {
			t.Fatal(err)
		}
		home := pub.take()["carehub.outbox.vm123"]
		if len(home) != 1 {
			t.Fatalf("%s copies to vm123: got %d, want 1", ex, len(home))
		}
		tr = home[0]
	}
	for range 2 {
		if err := r.Settle(context.Background(), Settlement{Key: tr.Metadata.Get(topic.MetaKey), Recipient: "VM123",
			Source: tr.Metadata.Get(topic.MetaSource), EventID: tr.Metadata.Get(topic.MetaEventID), Sealed: tr.Metadata.Get(topic.MetaDecision), Rule: consent.RuleDenyOrganisation}); err != nil {
			t.Fatal(err)
		}
	}
	rc := r.cfg.Index.Get(patientKey()).Refs["encounter:ENC-0001"]
	if rc == nil || rc.Recipients["VM123"] == nil {
		t.Fatalf("VM123's receipt is gone: %+v", rc)
	}
	if got := rc.Recipients["VM123"].Types; len(got) != 1 || got[0] != event.TypeAdmission {
		t.Errorf("VM123 received %v, want the admission only", got)
	}
	m := example(t, "transfer-cancelled", nil)
	if err := r.Handle(m); err != nil {
		t.Fatal(err)
	}
	for _, c := range copies(pub.take(), m.UUID) {
		if c == "vm123" {
			t.Error("the cancellation of a transfer VM123 never had reached it")
		}
	}
	// Another transfer of the stay: an update of an encounter VM123
	// received the admission of, so it goes.
	again := example(t, "transfer", func(m map[string]any) { m["id"] = "second-transfer" })
	if err := r.Handle(again); err != nil {
		t.Fatal(err)
	}
	if got := copies(pub.take(), again.UUID); !slices.Contains(got, "vm123") {
		t.Errorf("a later transfer went to %v, want VM123 among them (it received the admission)", got)
	}
}

// TestACorrectionIsNoRicherThanWhatItCorrects pins audit-11 leak 2: the
// care home received the stay's admission and transfer in the
// notification-only form (a directive for the stay); the directive ended
// before the transfer was cancelled, and the cancellation went to it in
// full, with the wards it was never told. A correction goes in the
// narrower of the form today's decision allows and the form in which the
// recipient received what it corrects; so does one of a copy narrowed at
// delivery (settled with its form). An update is a new fact: it goes in
// the form today's decision allows.
func TestACorrectionIsNoRicherThanWhatItCorrects(t *testing.T) {
	end := time.Date(2025, 3, 16, 0, 0, 0, 0, time.UTC)
	thinStay := consent.Directive{ID: "home-thin-this-stay", Kind: consent.KindNotificationOnly, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{End: &end}}
	for _, tc := range []struct {
		name string
		// routed: the directive is recorded before routing; narrowed: the
		// transfer goes full and is narrowed at delivery (settled).
		routed, narrowed bool
		wantTransfer     event.Form
		wantCancel       event.Form
	}{
		{"thin when routed", true, false, event.FormNotification, event.FormNotification},
		{"narrowed at delivery", false, true, event.FormFull, event.FormNotification},
		{"full when received", false, false, event.FormFull, event.FormFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dirs := &fakeDirectives{}
			pub := &fakePub{}
			r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
			if tc.routed {
				dirs.set(patientKey(), thinStay)
			}
			for _, ex := range []string{"admission", "transfer"} {
				if err := r.Handle(example(t, ex, nil)); err != nil {
					t.Fatal(err)
				}
				home := pub.take()["carehub.outbox.vm123"]
				if len(home) != 1 {
					t.Fatalf("%s copies to vm123: got %d, want 1", ex, len(home))
				}
				if ex == "transfer" {
					if got := event.Form(home[0].Metadata.Get(topic.MetaForm)); got != tc.wantTransfer {
						t.Errorf("transfer form: got %s, want %s", got, tc.wantTransfer)
					}
					if tc.narrowed {
						if err := r.Settle(context.Background(), Settlement{Key: home[0].Metadata.Get(topic.MetaKey), Recipient: "VM123",
							Source: home[0].Metadata.Get(topic.MetaSource), EventID: home[0].Metadata.Get(topic.MetaEventID), Sealed: home[0].Metadata.Get(topic.MetaDecision),
							Form: string(event.FormNotification)}); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			if err := r.Handle(example(t, "transfer-cancelled", nil)); err != nil {
				t.Fatal(err)
			}
			home := pub.take()["carehub.outbox.vm123"]
			if len(home) != 1 {
				t.Fatalf("cancellation copies to vm123: got %d, want 1", len(home))
			}
			if got := event.Form(home[0].Metadata.Get(topic.MetaForm)); got != tc.wantCancel {
				t.Errorf("cancellation form: got %s, want %s", got, tc.wantCancel)
			}
			if ward := strings.Contains(string(home[0].Payload), "Ward 7"); ward != (tc.wantCancel == event.FormFull) {
				t.Errorf("the cancellation names the ward: %v, want %v (%s)", ward, tc.wantCancel == event.FormFull, home[0].Payload)
			}
			// The sealed decision carries the form, so the re-check at
			// delivery keeps it.
			s, err := r.cfg.Sealer.Open(home[0].Metadata.Get(topic.MetaDecision))
			if err != nil || event.Form(s.Form) != tc.wantCancel {
				t.Errorf("sealed form: %q %v, want %s", s.Form, err, tc.wantCancel)
			}
		})
	}
}

// TestAFollowUpQueuedBehindAWithheldCopyIsWithheldToo: audit-11 leak 1
// when the care home is down long enough for the stay's transfer to be
// routed while the admission still waits in its outbox: the transfer was
// routed as an update of an admission VM123 "received", and its re-check
// at delivery reused that sealed context, so once the admission was
// withheld the transfer (and the transfer's cancellation) still went. The
// re-check reads the follow-up context from the index as it is then.
func TestAFollowUpQueuedBehindAWithheldCopyIsWithheldToo(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
	var queued []*message.Message // VM123's outbox: admission, transfer, transfer-cancelled
	for _, ex := range []string{"admission", "transfer", "transfer-cancelled"} {
		if err := r.Handle(example(t, ex, nil)); err != nil {
			t.Fatal(err)
		}
		home := pub.take()["carehub.outbox.vm123"]
		if len(home) != 1 {
			t.Fatalf("%s copies to vm123: got %d, want 1", ex, len(home))
		}
		queued = append(queued, home[0])
	}
	end := time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC)
	dirs.set(patientKey(), consent.Directive{ID: "no-home-first-day", Kind: consent.KindDenyOrganisation, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{End: &end}})
	// The deliverer, in outbox order: re-check, and settle what is withheld.
	var got []string
	for _, cp := range queued {
		d, _, _, err := r.Recheck(context.Background(), cp.Metadata.Get(topic.MetaKey), cp.Metadata.Get(topic.MetaDecision))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(d.Effect)+" "+d.Rule)
		if !d.Permitted() {
			if err := r.Settle(context.Background(), Settlement{Key: cp.Metadata.Get(topic.MetaKey), Recipient: "VM123",
				Source: cp.Metadata.Get(topic.MetaSource), EventID: cp.Metadata.Get(topic.MetaEventID), Sealed: cp.Metadata.Get(topic.MetaDecision), Rule: d.Rule}); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := []string{"deny " + consent.RuleDenyOrganisation, "deny " + consent.RuleOriginalWithheld, "deny " + consent.RuleOriginalNotReceived}
	if !slices.Equal(got, want) {
		t.Errorf("re-checks at delivery:\n\tgot  %v\n\twant %v", got, want)
	}
	// A recipient that had the admission keeps its transfer: the GP.
	rec := r.cfg.Index.Get(patientKey()).Refs["encounter:ENC-0001"]
	if rec.Recipients["A81001"] == nil || len(rec.Recipients["A81001"].Copies) != 3 {
		t.Errorf("the GP's receipt: %+v, want its three copies", rec.Recipients["A81001"])
	}
}

// TestACorrectionQueuedBehindANarrowedCopyIsNarrowedToo: audit-11 leak 2
// when the cancellation is routed while the transfer it corrects still
// waits in the outbox, routed full and then narrowed at delivery (a
// notification-only directive recorded meanwhile, for the transfer's day
// only): the re-check of the cancellation adds the notification-only
// obligation, so the deliverer sends it thin.
func TestACorrectionQueuedBehindANarrowedCopyIsNarrowedToo(t *testing.T) {
	dirs := &fakeDirectives{}
	pub := &fakePub{}
	r := newRouter(t, followUpSubs(t), &policy, dirs, pub)
	var queued []*message.Message
	for _, ex := range []string{"admission", "transfer", "transfer-cancelled"} {
		if err := r.Handle(example(t, ex, nil)); err != nil {
			t.Fatal(err)
		}
		queued = append(queued, pub.take()["carehub.outbox.vm123"]...)
	}
	if len(queued) != 3 || queued[2].Metadata.Get(topic.MetaForm) != string(event.FormFull) {
		t.Fatalf("queued for VM123: %d copies, the cancellation in %q; want 3, full", len(queued), queued[len(queued)-1].Metadata.Get(topic.MetaForm))
	}
	start, end := time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC), time.Date(2025, 3, 16, 0, 0, 0, 0, time.UTC)
	dirs.set(patientKey(), consent.Directive{ID: "home-thin-transfer-day", Kind: consent.KindNotificationOnly, Organisation: "VM123",
		Recorded: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), RecordedBy: "x", Period: consent.Period{Start: &start, End: &end}})
	var got []bool
	for _, cp := range queued {
		d, _, _, err := r.Recheck(context.Background(), cp.Metadata.Get(topic.MetaKey), cp.Metadata.Get(topic.MetaDecision))
		if err != nil || !d.Permitted() {
			t.Fatalf("recheck: %+v %v, want a permit", d, err)
		}
		thin := d.Has(consent.NotificationOnly)
		got = append(got, thin)
		if thin { // the deliverer narrows it and settles its form
			if err := r.Settle(context.Background(), Settlement{Key: cp.Metadata.Get(topic.MetaKey), Recipient: "VM123",
				Source: cp.Metadata.Get(topic.MetaSource), EventID: cp.Metadata.Get(topic.MetaEventID), Sealed: cp.Metadata.Get(topic.MetaDecision), Form: string(event.FormNotification)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if want := []bool{false, true, true}; !slices.Equal(got, want) {
		t.Errorf("notification-only at delivery (admission, transfer, cancellation): got %v, want %v", got, want)
	}
}

// TestSameIDFromTwoPublishersIsSettledApart pins the bug of gap indexid:
// the patient index named each routed copy by its event id alone, so RX1's
// admission 0001 and RYJ's transfer 0001 on one encounter, both sent to
// A81001, were one copy there; RX1's withheld at delivery (or at a feed's
// read) took RYJ's with it, and the transfer's cancellation no longer
// reached A81001, which had the transfer. A settlement names its copy by
// the event's source and id.
func TestSameIDFromTwoPublishersIsSettledApart(t *testing.T) {
	for _, tc := range []struct {
		name string
		// withheld is the source of the copy withheld; sealed says whether
		// the settlement carries the sealed decision (the deliverer, a
		// dead letter) or not (a pull feed's read).
		withheld string
		sealed   bool
		// wantTypes is what A81001 counts as having received on the
		// encounter; wantCancellation whether the transfer's
		// cancellation reaches it.
		wantTypes        []string
		wantCancellation bool
	}{
		{"RX1's admission withheld at delivery", "urn:ods:RX1", true, []string{event.TypeTransfer}, true},
		{"RX1's admission withheld at a feed's read", "urn:ods:RX1", false, []string{event.TypeTransfer}, true},
		// The control: RYJ's transfer withheld; the cancellation of a
		// transfer A81001 never had does not follow.
		{"RYJ's transfer withheld at delivery", "urn:ods:RYJ", true, []string{event.TypeAdmission}, false},
		{"RYJ's transfer withheld at a feed's read", "urn:ods:RYJ", false, []string{event.TypeAdmission}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := &fakePub{}
			r := newRouter(t, followUpSubs(t), &policy, &fakeDirectives{}, pub)
			byID := func(m map[string]any) { m["id"] = "0001" }
			gp := map[string]*message.Message{}
			for _, m := range []*message.Message{
				example(t, "admission", byID),
				example(t, "transfer", func(m map[string]any) { byID(m); m["source"] = "urn:ods:RYJ" }),
			} {
				if err := r.Handle(m); err != nil {
					t.Fatal(err)
				}
				out := pub.take()["carehub.outbox.a81001"]
				if len(out) != 1 {
					t.Fatalf("copies to a81001: got %d, want 1", len(out))
				}
				gp[out[0].Metadata.Get(topic.MetaSource)] = out[0]
			}
			cp := gp[tc.withheld]
			if cp == nil {
				t.Fatalf("no copy from %s: %v", tc.withheld, gp)
			}
			s := Settlement{Key: cp.Metadata.Get(topic.MetaKey), Recipient: "A81001", Source: cp.Metadata.Get(topic.MetaSource),
				EventID: cp.Metadata.Get(topic.MetaEventID), Rule: consent.RuleDenyOrganisation}
			if tc.sealed {
				s.Sealed = cp.Metadata.Get(topic.MetaDecision)
			}
			if err := r.Settle(context.Background(), s); err != nil {
				t.Fatal(err)
			}
			var got []string
			if rc := r.cfg.Index.Get(patientKey()).Refs["encounter:ENC-0001"].Recipients["A81001"]; rc != nil {
				got = rc.Types
			}
			if !slices.Equal(got, tc.wantTypes) {
				t.Errorf("A81001 received %v, want %v", got, tc.wantTypes)
			}
			m := example(t, "transfer-cancelled", nil)
			if err := r.Handle(m); err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(copies(pub.take(), m.UUID), "a81001"); got != tc.wantCancellation {
				t.Errorf("the transfer's cancellation reached A81001: got %v, want %v", got, tc.wantCancellation)
			}
		})
	}
}
