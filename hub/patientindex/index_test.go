package patientindex

import (
	"context"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap/zaptest"
)

// The sources of two publishers' events (the CloudEvents source as
// published), for copies' identities.
const (
	rx1 = "urn:ods:RX1"
	ryj = "urn:ods:RYJ"
)

func open(t *testing.T) (*Index, []string) {
	t.Helper()
	brokers := brokertest.Start(t, topic.Specs(1, 1, nil, topic.Retention{})...)
	return openOn(t, brokers), brokers
}

func openOn(t *testing.T, brokers []string) *Index {
	t.Helper()
	x, err := Open(brokers, topic.Patients, 24*time.Hour, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := x.WaitLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	return x
}

func write(t *testing.T, brokers []string, x *Index, key string, r Record) {
	t.Helper()
	m, err := x.Message(key, r)
	if err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Patients, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(key), Value: m.Payload}); err != nil {
		t.Fatal(err)
	}
}

// TestAnOlderRecordNeverUndoesANewerOne: the router applies its record at
// once (Commit); the same record, and older ones, read back later from the
// topic, change nothing.
func TestAnOlderRecordNeverUndoesANewerOne(t *testing.T) {
	x, brokers := open(t)
	now := time.Now().UTC()
	r1 := Record{Seq: 1, GP: "A81001", GPSeen: now}
	r2 := Record{Seq: 2, GP: "A81002", GPSeen: now}
	x.Commit("p1_a", r2)
	write(t, brokers, x, "p1_a", r1)
	write(t, brokers, x, "p1_a", r2)
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := x.Get("p1_a"); got.GP != "A81002" || got.Seq != 2 {
		t.Errorf("after an older record: %+v", got)
	}
	// A fresh process reads the same.
	if got := openOn(t, brokers).Get("p1_a"); got.GP != "A81002" {
		t.Errorf("reloaded: %+v", got)
	}
}

func TestFamily(t *testing.T) {
	x := NewMemory(time.Hour)
	x.Commit("p1_s", Record{Seq: 1, Merged: []string{"p1_r1", "p1_r2"}})
	x.Commit("p1_r1", Record{Seq: 1, MergedInto: "p1_s", Merged: []string{"p1_rr"}})
	x.Commit("p1_r2", Record{Seq: 1, MergedInto: "p1_s"})
	x.Commit("p1_rr", Record{Seq: 1, MergedInto: "p1_r1"})
	want := []string{"p1_s", "p1_r1", "p1_r2", "p1_rr"}
	for _, k := range want {
		if got := x.Family(k); !slices.Equal(got, want) {
			t.Errorf("Family(%s) = %v, want %v", k, got, want)
		}
	}
	if got := x.Family("p1_other"); !slices.Equal(got, []string{"p1_other"}) {
		t.Errorf("an unmerged number: %v", got)
	}
	// A cycle (a bad record) ends.
	x.Commit("p1_c1", Record{Seq: 1, MergedInto: "p1_c2"})
	x.Commit("p1_c2", Record{Seq: 1, MergedInto: "p1_c1"})
	if got := x.Family("p1_c1"); len(got) == 0 || !slices.Contains(got, "p1_c1") {
		t.Errorf("a cycle: %v", got)
	}
}

// TestRetention: references expire a retention after their last event;
// Sweep deletes patients with nothing left, but never a merge, and never a
// record written after the sweep looked.
func TestRetention(t *testing.T) {
	x, brokers := open(t)
	clock := time.Now().UTC()
	x.now = func() time.Time { return clock }
	old := clock.Add(-48 * time.Hour)
	x.Commit("p1_old", Record{Seq: 3, Refs: map[string]*Ref{"encounter:E1": {Last: old}}})
	x.Commit("p1_new", Record{Seq: 1, Refs: map[string]*Ref{"encounter:E2": {Last: clock}}})
	x.Commit("p1_merged", Record{Seq: 1, MergedInto: "p1_new", Refs: map[string]*Ref{"encounter:E3": {Last: old}}})
	if got := x.Get("p1_old"); len(got.Refs) != 0 {
		t.Errorf("an expired reference is read: %+v", got.Refs)
	}
	if got := x.Get("p1_new"); len(got.Refs) != 1 {
		t.Errorf("a live reference is not read: %+v", got.Refs)
	}
	n, err := x.Sweep(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("Sweep: %d %v, want 1 record deleted", n, err)
	}
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if x.Len() != 2 {
		t.Errorf("after the sweep: %d records, want 2", x.Len())
	}
	// A tombstone older than the record held is ignored.
	x.Commit("p1_back", Record{Seq: 5})
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Patients, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("p1_back"), Headers: []kafka.Header{{Key: MetaSeq, Value: []byte(strconv.Itoa(4))}}}); err != nil {
		t.Fatal(err)
	}
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := x.Get("p1_back"); got.Seq != 5 {
		t.Errorf("a stale tombstone deleted a newer record")
	}
}

// TestReceiveKeepsTheFullestFormAndEndsAWithholding: a receipt gains each
// type once, becomes full once a full copy is sent (a later notification
// does not make it thinner: corrections follow what was received), and a
// recipient that receives an event is no longer counted as withheld.
func TestReceiveKeepsTheFullestFormAndEndsAWithholding(t *testing.T) {
	var f Ref
	f.Withhold("VM123", "directive:deny-organisation")
	f.Receive("VM123", "discharge-destination", "notification", "org.carehub.admission.v1", rx1, "ev-1")
	f.Receive("VM123", "discharge-destination", "full", "org.carehub.discharge.v1", rx1, "ev-2")
	f.Receive("VM123", "discharge-destination", "notification", "org.carehub.discharge.v1", rx1, "ev-3")
	got := f.Recipients["VM123"]
	if got == nil || got.Form != "full" || got.Basis != "discharge-destination" ||
		!slices.Equal(got.Types, []string{"org.carehub.admission.v1", "org.carehub.discharge.v1"}) {
		t.Errorf("receipt: got %+v", got)
	}
	if _, ok := f.Withheld["VM123"]; ok {
		t.Errorf("still withheld after receiving: %v", f.Withheld)
	}
}

// TestSettle pins audit-11's two leaks at the level of one reference: a
// copy withheld after routing left its recipient counted as received (so
// updates and corrections followed it there), and a copy narrowed at
// delivery left it counted as received in full.
func TestSettle(t *testing.T) {
	const adm, tr = "org.carehub.admission.v1", "org.carehub.transfer.v1"
	withheld := func(id string) Outcome {
		return Outcome{Recipient: "VM123", Source: rx1, EventID: id, Rule: "directive:deny-organisation"}
	}
	tests := []struct {
		name         string
		receive      func(f *Ref)
		settle       []Outcome
		wantReceipt  *Receipt // nil: no receipt
		wantWithheld string   // the rule VM123 is withheld by; "" for none
	}{
		{"the only copy withheld: withheld the reference",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, rx1, "ev-1") },
			[]Outcome{withheld("ev-1")}, nil, "directive:deny-organisation"},
		{"settled twice: the same",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, rx1, "ev-1") },
			[]Outcome{withheld("ev-1"), withheld("ev-1")}, nil, "directive:deny-organisation"},
		{"one of two copies withheld: the other remains, with its form",
			func(f *Ref) {
				f.Receive("VM123", "registered-gp", "notification", adm, rx1, "ev-1")
				f.Receive("VM123", "registered-gp", "full", tr, rx1, "ev-2")
			},
			[]Outcome{withheld("ev-2")},
			&Receipt{Basis: "registered-gp", Types: []string{adm}, Form: "notification",
				Copies: map[string]Copy{CopyID(rx1, "ev-1"): {Type: adm, Form: "notification", N: 1}}}, "directive:deny-organisation"},
		{"narrowed at delivery: the receipt is thin",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, rx1, "ev-1") },
			[]Outcome{{Recipient: "VM123", Source: rx1, EventID: "ev-1", Form: "notification"}},
			&Receipt{Basis: "registered-gp", Types: []string{adm}, Form: "notification",
				Copies: map[string]Copy{CopyID(rx1, "ev-1"): {Type: adm, Form: "notification", N: 1}}}, ""},
		{"a copy routed after the withholding is kept",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", tr, rx1, "ev-9") },
			[]Outcome{withheld("ev-1")},
			&Receipt{Basis: "registered-gp", Types: []string{tr}, Form: "full", Copies: map[string]Copy{CopyID(rx1, "ev-9"): {Type: tr, Form: "full", N: 1}}}, ""},
		{"a receipt from before copies were kept, of one type: withheld",
			func(f *Ref) {
				f.Recipients = map[string]*Receipt{"VM123": {Basis: "registered-gp", Types: []string{adm}, Form: "full"}}
			},
			[]Outcome{withheld("ev-1")}, nil, "directive:deny-organisation"},
		{"a receipt from before copies were kept, of two types: kept",
			func(f *Ref) {
				f.Recipients = map[string]*Receipt{"VM123": {Basis: "registered-gp", Types: []string{adm, tr}, Form: "full"}}
			},
			[]Outcome{withheld("ev-1")}, &Receipt{Basis: "registered-gp", Types: []string{adm, tr}, Form: "full"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f Ref
			tc.receive(&f)
			for _, o := range tc.settle {
				f.Settle(o)
			}
			got := f.Recipients["VM123"]
			if (got == nil) != (tc.wantReceipt == nil) || (got != nil && !reflect.DeepEqual(*got, *tc.wantReceipt)) {
				t.Errorf("receipt:\n\tgot  %+v\n\twant %+v", got, tc.wantReceipt)
			}
			if f.Withheld["VM123"] != tc.wantWithheld {
				t.Errorf("withheld by %q, want %q", f.Withheld["VM123"], tc.wantWithheld)
			}
		})
	}
}

// TestSettleIsDurable: an outcome is acknowledged before Settle returns,
// applies to Get at once, is read back by another process, and is swept
// once the reference it settles has expired.
func TestSettleIsDurable(t *testing.T) {
	x, brokers := open(t)
	clock := time.Now().UTC()
	x.now = func() time.Time { return clock }
	var f Ref
	f.Last = clock
	f.Receive("VM123", "registered-gp", "full", "org.carehub.admission.v1", rx1, "ev-1")
	rec := Record{Seq: 1, Refs: map[string]*Ref{"encounter:E1": &f}}
	write(t, brokers, x, "p1_a", rec)
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := Outcome{Patient: "p1_a", Ref: "encounter:E1", Recipient: "VM123", Source: rx1, EventID: "ev-1", Rule: "directive:deny-organisation", Time: clock}
	if err := x.Settle(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if err := x.Settle(context.Background(), Outcome{Patient: "p1_a", Ref: "encounter:E1"}); err == nil {
		t.Error("an outcome without a recipient or an event id was accepted")
	}
	for name, idx := range map[string]*Index{"this process": x, "another process": openOn(t, brokers)} {
		got := idx.Get("p1_a").Refs["encounter:E1"]
		if got == nil || got.Recipients["VM123"] != nil || got.Withheld["VM123"] != o.Rule {
			t.Errorf("%s: %+v, want VM123 withheld", name, got)
		}
		if idx.Get("p1_a").Seq != 1 {
			t.Errorf("%s: the outcome changed the record's sequence", name)
		}
	}
	// Two retentions later the reference and its outcome go together.
	clock = clock.Add(72 * time.Hour)
	n, err := x.Sweep(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("Sweep: %d %v, want the record and the outcome deleted", n, err)
	}
	y := openOn(t, brokers)
	if err := y.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	y.mu.Lock()
	left := len(y.outcomes)
	y.mu.Unlock()
	if left != 0 || y.Len() != 0 {
		t.Errorf("after the sweep: %d outcomes, %d records, want none", left, y.Len())
	}
}

// TestAsOf: what a recipient had been routed on a reference before a copy:
// the copies before it, not the copy nor those after it.
func TestAsOf(t *testing.T) {
	const adm, tr, trc = "org.carehub.admission.v1", "org.carehub.transfer.v1", "org.carehub.transfer-cancelled.v1"
	for _, tc := range []struct {
		id        string
		wantTypes []string // nil: no receipt
	}{
		{"ev-1", nil},
		{"ev-2", []string{adm}},
		{"ev-3", []string{adm, tr}},
		{"unknown", []string{adm, tr, trc}},
	} {
		var f Ref
		f.Receive("VM123", "registered-gp", "full", adm, rx1, "ev-1")
		f.Receive("VM123", "registered-gp", "full", tr, rx1, "ev-2")
		f.Receive("VM123", "registered-gp", "full", tr, rx1, "ev-2") // redelivered: keeps its place
		f.Receive("VM123", "registered-gp", "full", trc, rx1, "ev-3")
		f.AsOf("VM123", rx1, tc.id)
		var got []string
		if rc := f.Recipients["VM123"]; rc != nil {
			got = rc.Types
		}
		if !slices.Equal(got, tc.wantTypes) {
			t.Errorf("as of %s: got %v, want %v", tc.id, got, tc.wantTypes)
		}
		if _, w := f.Withheld["VM123"]; w {
			t.Errorf("as of %s: counted as withheld", tc.id)
		}
	}
}

// TestSameIDFromTwoPublishersIsTwoCopies pins the bug of gap indexid: the
// index named each copy by its event id alone, so RX1's event 0001 and
// RYJ's event 0001 about one patient, both sent to VM123, were one copy:
// RX1's withheld at delivery took RYJ's with it (VM123 counted as withheld
// the encounter, and no update or correction followed RYJ's copy), and
// the re-check's AsOf for one cut the other. A copy is named by its
// event's identity (source and id).
func TestSameIDFromTwoPublishersIsTwoCopies(t *testing.T) {
	const adm, tr = "org.carehub.admission.v1", "org.carehub.transfer.v1"
	receive := func() *Ref {
		var f Ref
		f.Receive("VM123", "registered-gp", "full", adm, rx1, "0001")
		f.Receive("VM123", "registered-gp", "full", tr, ryj, "0001")
		return &f
	}
	tests := []struct {
		name         string
		do           func(f *Ref)
		wantTypes    []string // VM123's receipt; nil: none
		wantCopies   int
		wantWithheld bool
	}{
		{"both received: two copies", func(*Ref) {}, []string{adm, tr}, 2, false},
		{"RX1's withheld: RYJ's still received",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", Source: rx1, EventID: "0001", Rule: "directive:deny-organisation"})
			},
			[]string{tr}, 1, true},
		{"RYJ's withheld: RX1's still received",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", Source: ryj, EventID: "0001", Rule: "directive:deny-organisation"})
			},
			[]string{adm}, 1, true},
		{"RX1's narrowed: RYJ's stays full",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", Source: rx1, EventID: "0001", Form: "notification"})
			},
			[]string{adm, tr}, 2, false},
		{"as of RYJ's copy: RX1's, routed before it",
			func(f *Ref) { f.AsOf("VM123", ryj, "0001") }, []string{adm}, 1, false},
		{"as of RX1's copy: nothing", func(f *Ref) { f.AsOf("VM123", rx1, "0001") }, nil, 0, false},
		{"a third publisher's 0001 settles nothing",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", Source: "urn:ods:RTH", EventID: "0001", Rule: "directive:deny-organisation"})
			},
			[]string{adm, tr}, 2, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := receive()
			tc.do(f)
			rc := f.Recipients["VM123"]
			var got []string
			var n int
			if rc != nil {
				got, n = rc.Types, len(rc.Copies)
			}
			if !slices.Equal(got, tc.wantTypes) || n != tc.wantCopies {
				t.Errorf("receipt: got types %v, %d copies; want %v, %d", got, n, tc.wantTypes, tc.wantCopies)
			}
			if _, w := f.Withheld["VM123"]; w != tc.wantWithheld {
				t.Errorf("withheld: got %v, want %v", w, tc.wantWithheld)
			}
		})
	}
	// The narrowed one is RX1's, not RYJ's.
	f := receive()
	f.Settle(Outcome{Recipient: "VM123", Source: rx1, EventID: "0001", Form: "notification"})
	if c := f.Recipients["VM123"].Copies; c[CopyID(rx1, "0001")].Form != "notification" || c[CopyID(ryj, "0001")].Form != "full" {
		t.Errorf("narrowed: got %+v, want RX1's copy notification-only and RYJ's full", c)
	}
}

// TestCopiesRecordedByBareIDAreStillRead: receipts and outcomes written
// before copies were named by identity name them by bare event id. A copy
// named so matches any source's event with that id (it is not migrated);
// an outcome without a source settles only such a copy.
func TestCopiesRecordedByBareIDAreStillRead(t *testing.T) {
	const adm, tr = "org.carehub.admission.v1", "org.carehub.transfer.v1"
	legacy := func() *Ref {
		return &Ref{Routed: 1, Recipients: map[string]*Receipt{"VM123": {Basis: "registered-gp", Types: []string{adm}, Form: "full",
			Copies: map[string]Copy{"0001": {Type: adm, Form: "full", N: 1}}}}}
	}
	tests := []struct {
		name       string
		do         func(f *Ref)
		wantCopies map[string]Copy // VM123's; nil: no receipt
	}{
		{"a settlement with a source settles the bare copy",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", Source: rx1, EventID: "0001", Rule: "directive:deny-organisation"})
			}, nil},
		{"an outcome without a source settles the bare copy",
			func(f *Ref) {
				f.Settle(Outcome{Recipient: "VM123", EventID: "0001", Rule: "directive:deny-organisation"})
			}, nil},
		{"a redelivery with a source is the bare copy, not a second one",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, rx1, "0001") },
			map[string]Copy{"0001": {Type: adm, Form: "full", N: 1}}},
		{"a new copy is named by its identity, beside the bare one",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", tr, rx1, "0002") },
			map[string]Copy{"0001": {Type: adm, Form: "full", N: 1}, CopyID(rx1, "0002"): {Type: tr, Form: "full", N: 2}}},
		{"as of the bare copy: nothing",
			func(f *Ref) { f.AsOf("VM123", ryj, "0001") }, nil},
		{"an outcome without a source does not settle a copy named by identity",
			func(f *Ref) {
				f.Receive("VM123", "registered-gp", "full", tr, rx1, "0002")
				f.Settle(Outcome{Recipient: "VM123", EventID: "0002", Rule: "directive:deny-organisation"})
			},
			map[string]Copy{"0001": {Type: adm, Form: "full", N: 1}, CopyID(rx1, "0002"): {Type: tr, Form: "full", N: 2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := legacy()
			tc.do(f)
			var got map[string]Copy
			if rc := f.Recipients["VM123"]; rc != nil {
				got = rc.Copies
			}
			if !reflect.DeepEqual(got, tc.wantCopies) {
				t.Errorf("copies:\n\tgot  %+v\n\twant %+v", got, tc.wantCopies)
			}
		})
	}
}

// TestOutcomesOfTwoPublishersCopiesAreTwoRecords: the settled copy's record
// in the topic is keyed by its identity (two publishers' copies with one
// id are two records, and no event id is in the key in clear); another
// process applies each to its own copy; an outcome written before (keyed by
// bare id, with no source) still settles the copy recorded by bare id.
func TestOutcomesOfTwoPublishersCopiesAreTwoRecords(t *testing.T) {
	x, brokers := open(t)
	clock := time.Now().UTC()
	x.now = func() time.Time { return clock }
	const adm = "org.carehub.admission.v1"
	f := &Ref{Last: clock}
	f.Receive("VM123", "registered-gp", "full", adm, rx1, "0001")
	f.Receive("VM123", "registered-gp", "full", adm, ryj, "0001")
	f.Receive("VM124", "registered-gp", "full", adm, rx1, "0001")
	f.Recipients["VM125"] = &Receipt{Basis: "registered-gp", Types: []string{adm}, Form: "full", Copies: map[string]Copy{"0001": {Type: adm, Form: "full", N: 9}}}
	write(t, brokers, x, "p1_a", Record{Seq: 1, Refs: map[string]*Ref{"encounter:E1": f}})
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Outcome{
		{Patient: "p1_a", Ref: "encounter:E1", Recipient: "VM123", Source: rx1, EventID: "0001", Rule: "directive:deny-organisation", Time: clock},
		{Patient: "p1_a", Ref: "encounter:E1", Recipient: "VM124", Source: ryj, EventID: "0001", Rule: "directive:deny-organisation", Time: clock},
	} {
		if err := x.Settle(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	// An outcome written before outcomes carried the source.
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic.Patients, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	old := `{"patient":"p1_a","ref":"encounter:E1","recipient":"VM125","eventId":"0001","rule":"directive:deny-organisation","time":"` + clock.Format(time.RFC3339Nano) + `"}`
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("p1_a/VM125/0001"), Value: []byte(old)}); err != nil {
		t.Fatal(err)
	}
	y := openOn(t, brokers)
	if err := y.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := y.Get("p1_a").Refs["encounter:E1"]
	if got == nil {
		t.Fatal("the reference is gone")
	}
	if rc := got.Recipients["VM123"]; rc == nil || len(rc.Copies) != 1 || rc.Copies[CopyID(ryj, "0001")].Type != adm {
		t.Errorf("VM123: got %+v, want RYJ's copy left", rc)
	}
	if rc := got.Recipients["VM124"]; rc == nil || len(rc.Copies) != 1 {
		t.Errorf("VM124: got %+v, want RX1's copy kept (RYJ's, settled, it never had)", rc)
	}
	if rc := got.Recipients["VM125"]; rc != nil || got.Withheld["VM125"] == "" {
		t.Errorf("VM125: got %+v, want its copy recorded by bare id settled by the old outcome", rc)
	}
	y.mu.Lock()
	var keys []string
	for k := range y.outcomes["p1_a"] {
		keys = append(keys, k)
	}
	y.mu.Unlock()
	slices.Sort(keys)
	want := []string{"p1_a/VM123/" + CopyID(rx1, "0001"), "p1_a/VM124/" + CopyID(ryj, "0001"), "p1_a/VM125/0001"}
	if !slices.Equal(keys, want) {
		t.Errorf("outcome keys: got %v, want %v", keys, want)
	}
}
