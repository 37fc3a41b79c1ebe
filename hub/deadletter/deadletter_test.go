package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
)

var t0 = time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)

// entries: three dead letters of VM123 (one resolved) of RX1's events,
// one of A81001 of a VM123 event.
func entries() []Entry {
	dl := func(p int, o int64, rcpt, pub, id, reason string, at time.Duration) Entry {
		return Entry{Partition: p, Offset: o, DeadLetter: audit.DeadLetter{Time: t0.Add(at), Recipient: rcpt, Publisher: pub, EventID: id,
			EventType: event.TypeDischarge, Patient: "p1_" + id, Reason: reason, Status: 400,
			Event: json.RawMessage(`{"specversion":"1.0","id":"` + id + `","source":"urn:ods:` + pub + `"}`), Decision: "sealed-" + id, Form: "full", Basis: "discharge-destination"}}
	}
	return []Entry{
		dl(1, 0, "VM123", "RX1", "ev-1", "recipient answered HTTP 400", 0),
		dl(1, 1, "VM123", "RX1", "ev-2", "recipient answered HTTP 422", time.Hour),
		dl(1, 2, "VM123", "RX1", "ev-3", "recipient answered HTTP 400", 2*time.Hour),
		{Partition: 1, Offset: 3, DeadLetter: audit.DeadLetter{Time: t0.Add(3 * time.Hour), Recipient: "VM123", Publisher: "RX1", EventID: "ev-2",
			Resolution: &audit.Resolution{Offset: 1, Action: Dismissed, Actor: "ig-lead", Note: "told by phone"}}},
		dl(2, 0, "A81001", "VM123", "ev-4", "recipient answered HTTP 410", 30*time.Minute),
	}
}

func ids(ls []Letter) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.ID)
	}
	return out
}

func TestList(t *testing.T) {
	tests := []struct {
		name string
		q    Query
		want []string
		more bool
	}{
		{"open, oldest first", Query{}, []string{"1-0", "2-0", "1-2"}, false},
		{"one recipient", Query{Recipient: "VM123"}, []string{"1-0", "1-2"}, false},
		{"one publisher", Query{Publisher: "VM123"}, []string{"2-0"}, false},
		{"another publisher", Query{Publisher: "RX1", State: StateAll}, []string{"1-0", "1-1", "1-2"}, false},
		{"a publisher with none", Query{Publisher: "A81001"}, nil, false},
		{"resolved", Query{State: StateResolved}, []string{"1-1"}, false},
		{"all", Query{State: StateAll, Recipient: "VM123"}, []string{"1-0", "1-1", "1-2"}, false},
		{"reason, ignoring case", Query{Reason: "http 400"}, []string{"1-0", "1-2"}, false},
		{"since", Query{Since: t0.Add(time.Minute)}, []string{"2-0", "1-2"}, false},
		{"until (exclusive)", Query{Until: t0.Add(2 * time.Hour)}, []string{"1-0", "2-0"}, false},
		{"a page", Query{Limit: 2}, []string{"1-0", "2-0"}, true},
	}
	for _, tt := range tests {
		p, err := List(entries(), tt.q)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := ids(p.Items); !slices.Equal(got, tt.want) || (p.Next != "") != tt.more {
			t.Errorf("%s:\n\tgot  %v next %q\n\twant %v more %v", tt.name, got, p.Next, tt.want, tt.more)
		}
	}
	p, _ := List(entries(), Query{Limit: 2})
	p2, err := List(entries(), Query{Limit: 2, After: p.Next})
	if err != nil || !slices.Equal(ids(p2.Items), []string{"1-2"}) || p2.Next != "" || p2.Total != 3 {
		t.Errorf("second page: %v %q %d %v", ids(p2.Items), p2.Next, p2.Total, err)
	}
	if _, err := List(entries(), Query{After: "not-a-cursor"}); !errors.Is(err, ErrCursor) {
		t.Errorf("a bad cursor: %v", err)
	}
	all, _ := List(entries(), Query{State: StateAll})
	for _, l := range all.Items {
		if l.ID == "1-1" && (l.Resolution == nil || l.Resolution.Reason != "told by phone" || l.Resolution.Actor != "ig-lead") {
			t.Errorf("the resolved letter: %+v", l.Resolution)
		}
	}
	b, _ := json.Marshal(all)
	if strings.Contains(string(b), "specversion") || strings.Contains(string(b), "sealed") {
		t.Errorf("a listing carries a copy or its decision: %s", b)
	}
}

func TestParseID(t *testing.T) {
	for _, tt := range []struct {
		in   string
		p    int
		o    int64
		okay bool
	}{{"1-2", 1, 2, true}, {"0-0", 0, 0, true}, {"1-02", 0, 0, false}, {"-1-2", 0, 0, false}, {"1", 0, 0, false}, {"a-b", 0, 0, false}, {"1-2-3", 0, 0, false}} {
		p, o, ok := ParseID(tt.in)
		if ok != tt.okay || (ok && (p != tt.p || o != tt.o)) {
			t.Errorf("ParseID(%q):\n\tgot  %d %d %v\n\twant %d %d %v", tt.in, p, o, ok, tt.p, tt.o, tt.okay)
		}
	}
}

// rechecker answers by the sealed decision: "sealed-ev-3" is now denied.
// It keeps the settlements it is told of; settleErr fails them.
type rechecker struct {
	calls     []string
	settled   []route.Settlement
	settleErr error
}

func (r *rechecker) Settle(_ context.Context, s route.Settlement) error {
	if r.settleErr != nil {
		return r.settleErr
	}
	r.settled = append(r.settled, s)
	return nil
}

func (r *rechecker) Recheck(_ context.Context, key, sealed string) (consent.Decision, route.Sealed, []audit.DirectiveVersion, error) {
	r.calls = append(r.calls, sealed)
	switch sealed {
	case "sealed-ev-3":
		return consent.Decision{Effect: consent.Deny, Rule: "directive:deny-organisation", DirectiveID: "no-home"}, route.Sealed{},
			[]audit.DirectiveVersion{{Patient: key, Version: 2}}, nil
	case "sealed-ev-4":
		return consent.Decision{Effect: consent.Permit, Rule: "r", Obligations: []consent.Obligation{consent.NotificationOnly}}, route.Sealed{}, nil, nil
	case "sealed-down":
		return consent.Decision{}, route.Sealed{}, nil, errors.New("consent store unreachable")
	}
	return consent.Decision{Effect: consent.Permit, Rule: "r"}, route.Sealed{}, nil, nil
}

type capture struct{ got map[string][]*message.Message }

func (c *capture) Publish(t string, msgs ...*message.Message) error {
	if c.got == nil {
		c.got = map[string][]*message.Message{}
	}
	c.got[t] = append(c.got[t], msgs...)
	return nil
}
func (c *capture) Close() error { return nil }

func TestReplayDecidesAgainAsOfNow(t *testing.T) {
	ls := Letters(entries(), "")
	open := []Letter{ls[0], ls[2], ls[3]} // ev-1 (permitted), ev-3 (now denied), ev-4 (now notification-only)
	var pub capture
	rc := &rechecker{}
	out, err := Replay(context.Background(), &pub, rc, open, "ig-lead", t0)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, o := range out {
		got = append(got, o.EventID+":"+o.Outcome+":"+o.Form+":"+o.Rule)
	}
	want := []string{"ev-1:requeued:full:", "ev-3:withheld::directive:deny-organisation", "ev-4:requeued:notification:"}
	if !slices.Equal(got, want) {
		t.Errorf("outcomes:\n\tgot  %v\n\twant %v", got, want)
	}
	var requeued []string
	for _, m := range append(pub.got[topic.Outbox("VM123")], pub.got[topic.Outbox("A81001")]...) {
		requeued = append(requeued, m.Metadata.Get(topic.MetaEventID))
		src := map[string]string{"ev-1": "urn:ods:RX1", "ev-4": "urn:ods:VM123"}[m.Metadata.Get(topic.MetaEventID)]
		if m.Metadata.Get(topic.MetaDecision) == "" || m.Metadata.Get(topic.MetaSource) != src {
			t.Errorf("a requeued copy lacks its sealed decision or source: %v", m.Metadata)
		}
	}
	if !slices.Equal(requeued, []string{"ev-1", "ev-4"}) || len(pub.got[topic.Outbox("A81001")]) != 1 {
		t.Errorf("outboxes: %v, A81001 %d; want ev-1 (VM123) and ev-4 (A81001)", requeued, len(pub.got[topic.Outbox("A81001")]))
	}
	for _, o := range out {
		if want := map[string]string{"ev-1": "RX1", "ev-3": "RX1", "ev-4": "VM123"}[o.EventID]; o.Publisher != want {
			t.Errorf("the outcome of %s names publisher %q, want %q", o.EventID, o.Publisher, want)
		}
	}
	var withheld, access int
	for _, m := range pub.got[topic.Audit] {
		rec, _ := audit.Unmarshal(m.Payload)
		// Each record names the event by its publisher and id: the
		// disclosures report joins on both.
		if want := map[string]string{"ev-1": "RX1", "ev-3": "RX1", "ev-4": "VM123"}[rec.EventID]; rec.Publisher != want {
			t.Errorf("the %s record of %s names publisher %q, want %q", rec.Kind, rec.EventID, rec.Publisher, want)
		}
		switch {
		case rec.Kind == audit.KindDelivery && rec.Outcome == audit.Withheld:
			withheld++
			if rec.EventID != "ev-3" || rec.Actor != "ig-lead" || rec.Directive != "no-home" ||
				!slices.Equal(rec.DirectiveVersions, []audit.DirectiveVersion{{Patient: "p1_ev-3", Version: 2}}) {
				t.Errorf("the withheld record: %+v", rec)
			}
		case rec.Kind == audit.KindAccess && rec.Action == audit.ActionDeadLetterReplay && rec.Actor == "ig-lead":
			access++
		}
	}
	if withheld != 1 || access != 3 {
		t.Errorf("audit: %d withheld, %d replays by the operator; want 1 and 3", withheld, access)
	}
	// Audit-11 leak 1: a copy withheld at replay never reached VM123; the
	// patient index is told, so no update or correction follows it there.
	wantSettled := []route.Settlement{{Key: "p1_ev-3", Recipient: "VM123", Source: "urn:ods:RX1", EventID: "ev-3", Sealed: "sealed-ev-3", Rule: "directive:deny-organisation"}}
	if !slices.Equal(rc.settled, wantSettled) {
		t.Errorf("settled:\n\tgot  %+v\n\twant %+v", rc.settled, wantSettled)
	}
	// An index that cannot be written fails the replay before anything
	// is written: the letters stay open.
	failing := capture{}
	if _, err := Replay(context.Background(), &failing, &rechecker{settleErr: errors.New("broker down")}, open, "ig-lead", t0); problem.KindOf(err) != problem.Unavailable || len(failing.got) != 0 {
		t.Errorf("index down: %v, wrote %v", err, failing.got)
	}
	var actions []string
	for _, m := range pub.got[topic.DLQ] {
		var d audit.DeadLetter
		_ = json.Unmarshal(m.Payload, &d)
		actions = append(actions, d.Resolution.Action+"@"+d.Recipient+":"+d.Publisher)
	}
	if !slices.Equal(actions, []string{"replayed@VM123:RX1", "withheld@VM123:RX1", "replayed@A81001:VM123"}) {
		t.Errorf("resolutions: %v", actions)
	}

	// A resolved letter is refused before anything is written; so is a
	// replay when consent cannot answer.
	pub = capture{}
	if _, err := Replay(context.Background(), &pub, rc, []Letter{ls[0], ls[1]}, "ig-lead", t0); problem.KindOf(err) != problem.Conflict || len(pub.got) != 0 {
		t.Errorf("replaying a resolved letter: %v, wrote %v", err, pub.got)
	}
	down := ls[0]
	down.dl.Decision = "sealed-down"
	if _, err := Replay(context.Background(), &pub, rc, []Letter{down}, "ig-lead", t0); problem.KindOf(err) != problem.Unavailable || len(pub.got) != 0 {
		t.Errorf("consent down: %v, wrote %v", err, pub.got)
	}
	// A copy without a routing decision is not sent, unless it is a
	// content-free notice.
	none, notice := ls[0], ls[0]
	none.dl.Decision, notice.dl.Decision, notice.Form, notice.EventType = "", "", string(event.FormNotice), event.TypeWithheldNotice
	out, err = Replay(context.Background(), &pub, rc, []Letter{none, notice}, "ig-lead", t0)
	if err != nil || out[0].Outcome != WithheldNow || out[0].Rule != RuleUndecidable || out[1].Outcome != Requeued {
		t.Errorf("undecidable and notice: %+v %v", out, err)
	}
	if k := pub.got[topic.Outbox("VM123")][0].Metadata.Get(topic.MetaKey); k != notice.EventID {
		t.Errorf("a notice is keyed by %q, want its own id (no pseudonym)", k)
	}
}

// TestResolve also pins a review finding on issue 11: a dead letter
// resolved without delivery left the patient index saying the recipient
// had the copy, so a later correction of it still went there. Resolving
// settles the copy as never received.
func TestResolve(t *testing.T) {
	ls := Letters(entries(), "VM123")
	var pub capture
	rc := &rechecker{}
	if err := Resolve(context.Background(), &pub, rc, ls[0], "ig-lead", "the care home re-keyed it by hand", t0); err != nil {
		t.Fatal(err)
	}
	want := []route.Settlement{{Key: ls[0].Patient, Recipient: "VM123", Source: "urn:ods:RX1", EventID: ls[0].EventID, Sealed: ls[0].dl.Decision, Rule: RuleResolved}}
	if ls[0].dl.Decision == "" || !slices.Equal(rc.settled, want) {
		t.Errorf("settled:\n\tgot  %+v\n\twant %+v", rc.settled, want)
	}
	// The index must learn first: a failure leaves the letter open.
	failing := &rechecker{settleErr: errors.New("broker down")}
	var pub2 capture
	if err := Resolve(context.Background(), &pub2, failing, ls[0], "ig-lead", "x", t0); problem.KindOf(err) != problem.Unavailable || len(pub2.got[topic.DLQ]) != 0 {
		t.Errorf("resolving with the index down: %v, %d resolutions written", err, len(pub2.got[topic.DLQ]))
	}
	rec, _ := audit.Unmarshal(pub.got[topic.Audit][0].Payload)
	var d audit.DeadLetter
	_ = json.Unmarshal(pub.got[topic.DLQ][0].Payload, &d)
	if rec.Actor != "ig-lead" || rec.Action != audit.ActionDeadLetterClose || rec.Reason != "the care home re-keyed it by hand" || rec.Publisher != "RX1" ||
		d.Resolution.Offset != 0 || d.Resolution.Action != Dismissed || d.Resolution.Note != "the care home re-keyed it by hand" {
		t.Errorf("audit %+v, resolution %+v", rec, d.Resolution)
	}
	if err := Resolve(context.Background(), &pub, nil, ls[1], "ig-lead", "again", t0); problem.KindOf(err) != problem.Conflict {
		t.Errorf("resolving a resolved letter: %v", err)
	}
}

// TestLettersNameThePublisher: a dead letter names its event by publisher
// and id. Regression: dead letters carried the event id only, so a replay
// withheld a copy under an id two publishers may share and the disclosures
// report could not tell whose event it was. One written before the
// publisher was recorded takes it from the copy it holds; one with neither
// names none.
func TestLettersNameThePublisher(t *testing.T) {
	copyOf := func(source string) json.RawMessage {
		return json.RawMessage(`{"specversion":"1.0","id":"0001","source":"` + source + `"}`)
	}
	tests := []struct {
		name      string
		publisher string
		copy      json.RawMessage
		want      string
	}{
		{"recorded", "VM123", copyOf("urn:ods:VM123"), "VM123"},
		{"recorded, before the copy's", "VM123", copyOf("urn:ods:RX1"), "VM123"},
		{"written before it was recorded: from the copy", "", copyOf("urn:ods:RX1"), "RX1"},
		{"written before it was recorded, without a copy", "", nil, ""},
		{"written before it was recorded, a copy that is not JSON", "", json.RawMessage(`MSH|`), ""},
	}
	for _, tt := range tests {
		e := Entry{Partition: 0, Offset: 7, DeadLetter: audit.DeadLetter{Time: t0, Recipient: "A81001", Publisher: tt.publisher,
			EventID: "0001", Patient: "p1_x", Event: tt.copy}}
		ls := Letters([]Entry{e}, "")
		if len(ls) != 1 {
			t.Fatalf("%s: %d letters, want 1", tt.name, len(ls))
		}
		if ls[0].Publisher != tt.want {
			t.Errorf("%s:\n\tgot  publisher %q\n\twant publisher %q", tt.name, ls[0].Publisher, tt.want)
		}
		b, _ := json.Marshal(ls[0])
		var shown map[string]any
		_ = json.Unmarshal(b, &shown)
		if got, ok := shown["publisher"]; (tt.want == "" && ok) || (tt.want != "" && got != tt.want) {
			t.Errorf("%s: listed as %s, want publisher %q (none when empty)", tt.name, b, tt.want)
		}
		if p, _ := List([]Entry{e}, Query{Publisher: "RX1"}); (p.Total == 1) != (tt.want == "RX1") {
			t.Errorf("%s: publisher=RX1 selects %d", tt.name, p.Total)
		}
	}
}

// TestSettlementsNameTheEventsSource: the patient index names a copy by its
// event's source and id (gap indexid: by id alone, a dead letter of RX1's
// event 0001 resolved or withheld at replay settled RYJ's 0001 too), so a
// letter's settlement carries the source in the form the copy was
// published with: the source of the copy it holds, else "urn:ods:" and its
// publisher (a letter holding no copy).
func TestSettlementsNameTheEventsSource(t *testing.T) {
	for _, tc := range []struct {
		name      string
		publisher string
		copy      json.RawMessage
		want      string
	}{
		{"the copy's source", "RX1", json.RawMessage(`{"id":"0001","source":"urn:ods:RX1"}`), "urn:ods:RX1"},
		{"the copy's source, not the publisher recorded", "RX1", json.RawMessage(`{"id":"0001","source":"urn:ods:RYJ"}`), "urn:ods:RYJ"},
		{"no copy: the publisher", "RYJ", nil, "urn:ods:RYJ"},
		{"neither", "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls := Letters([]Entry{{Partition: 0, Offset: 7, DeadLetter: audit.DeadLetter{Time: t0, Recipient: "VM123", Publisher: tc.publisher,
				EventID: "0001", EventType: event.TypeAdmission, Patient: "p1_x", Event: tc.copy, Decision: "sealed-0001", Form: "full"}}}, "")
			rc := &rechecker{}
			if err := Resolve(context.Background(), &capture{}, rc, ls[0], "ig-lead", "re-keyed by hand", t0); err != nil {
				t.Fatal(err)
			}
			if len(rc.settled) != 1 || rc.settled[0].Source != tc.want || rc.settled[0].EventID != "0001" {
				t.Errorf("settled %+v, want source %q and event 0001", rc.settled, tc.want)
			}
		})
	}
}
