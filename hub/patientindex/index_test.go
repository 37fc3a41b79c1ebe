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
	f.Receive("VM123", "discharge-destination", "notification", "org.carehub.admission.v1", "ev-1")
	f.Receive("VM123", "discharge-destination", "full", "org.carehub.discharge.v1", "ev-2")
	f.Receive("VM123", "discharge-destination", "notification", "org.carehub.discharge.v1", "ev-3")
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
		return Outcome{Recipient: "VM123", EventID: id, Rule: "directive:deny-organisation"}
	}
	tests := []struct {
		name         string
		receive      func(f *Ref)
		settle       []Outcome
		wantReceipt  *Receipt // nil: no receipt
		wantWithheld string   // the rule VM123 is withheld by; "" for none
	}{
		{"the only copy withheld: withheld the reference",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, "ev-1") },
			[]Outcome{withheld("ev-1")}, nil, "directive:deny-organisation"},
		{"settled twice: the same",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, "ev-1") },
			[]Outcome{withheld("ev-1"), withheld("ev-1")}, nil, "directive:deny-organisation"},
		{"one of two copies withheld: the other remains, with its form",
			func(f *Ref) {
				f.Receive("VM123", "registered-gp", "notification", adm, "ev-1")
				f.Receive("VM123", "registered-gp", "full", tr, "ev-2")
			},
			[]Outcome{withheld("ev-2")},
			&Receipt{Basis: "registered-gp", Types: []string{adm}, Form: "notification",
				Copies: map[string]Copy{"ev-1": {Type: adm, Form: "notification", N: 1}}}, "directive:deny-organisation"},
		{"narrowed at delivery: the receipt is thin",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", adm, "ev-1") },
			[]Outcome{{Recipient: "VM123", EventID: "ev-1", Form: "notification"}},
			&Receipt{Basis: "registered-gp", Types: []string{adm}, Form: "notification",
				Copies: map[string]Copy{"ev-1": {Type: adm, Form: "notification", N: 1}}}, ""},
		{"a copy routed after the withholding is kept",
			func(f *Ref) { f.Receive("VM123", "registered-gp", "full", tr, "ev-9") },
			[]Outcome{withheld("ev-1")},
			&Receipt{Basis: "registered-gp", Types: []string{tr}, Form: "full", Copies: map[string]Copy{"ev-9": {Type: tr, Form: "full", N: 1}}}, ""},
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
	f.Receive("VM123", "registered-gp", "full", "org.carehub.admission.v1", "ev-1")
	rec := Record{Seq: 1, Refs: map[string]*Ref{"encounter:E1": &f}}
	write(t, brokers, x, "p1_a", rec)
	if err := x.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := Outcome{Patient: "p1_a", Ref: "encounter:E1", Recipient: "VM123", EventID: "ev-1", Rule: "directive:deny-organisation", Time: clock}
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
		f.Receive("VM123", "registered-gp", "full", adm, "ev-1")
		f.Receive("VM123", "registered-gp", "full", tr, "ev-2")
		f.Receive("VM123", "registered-gp", "full", tr, "ev-2") // redelivered: keeps its place
		f.Receive("VM123", "registered-gp", "full", trc, "ev-3")
		f.AsOf("VM123", tc.id)
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
