package hub

import (
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/hub/route"
)

// TestFeedsCloseAtOnce pins a bug found by "carehub bench --scenario
// longpoll": a hub with 100 pull recipients took about 20 s to stop, because
// each feed's Close (which waits for its tailer's kafka-go fetch to end) ran
// after the previous one. closeAll must run them at once: here each close
// returns only once every close has begun, which one after another never
// happens.
func TestFeedsCloseAtOnce(t *testing.T) {
	const n = 20
	var entered sync.WaitGroup
	entered.Add(n)
	all := make(chan struct{})
	go func() { entered.Wait(); close(all) }()
	stuck := make(chan struct{})
	closers := make([]func(), n)
	for i := range closers {
		closers[i] = func() {
			entered.Done()
			select {
			case <-all:
			case <-stuck:
			}
		}
	}
	done := make(chan struct{})
	go func() { closeAll(closers); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		close(stuck) // let them return: the closes ran one at a time
		<-done
		t.Fatal("closeAll ran the closes one after another: each waited for the others to begin")
	}
}

// TestAWithheldReadSettlesItsOwnCopy pins the bug of gap indexid at the
// feed: the patient index named a copy by its event id alone, so an entry
// of RX1's event 0001 served withheld settled RYJ's event 0001 to the same
// reader too. The settlement names the copy by the event's source, in the
// form the copy was published with (the feed entry's Publisher: the
// CloudEvents source, not the ODS code the audit record names), so it
// settles RX1's copy and leaves RYJ's.
func TestAWithheldReadSettlesItsOwnCopy(t *testing.T) {
	const adm = "org.carehub.admission.v1"
	e := connector.FeedReadEntry{Number: 7, EventID: "0001", EventType: adm, Publisher: "urn:ods:RX1", PatientRef: "p1_x",
		Withheld: true, Rule: "directive:deny-organisation"}
	s := readSettlement("B82005", e)
	want := route.Settlement{Key: "p1_x", Recipient: "B82005", Source: "urn:ods:RX1", EventID: "0001", Rule: "directive:deny-organisation"}
	if s != want {
		t.Fatalf("settlement:\n\tgot  %+v\n\twant %+v", s, want)
	}
	// What the router records from it (route.Router.Settle): RX1's copy
	// goes, RYJ's stays.
	var f patientindex.Ref
	f.Receive("B82005", "patient-list", "full", adm, "urn:ods:RX1", "0001")
	f.Receive("B82005", "patient-list", "full", adm, "urn:ods:RYJ", "0001")
	f.Settle(patientindex.Outcome{Recipient: s.Recipient, Source: s.Source, EventID: s.EventID, Rule: s.Rule})
	rc := f.Recipients["B82005"]
	if rc == nil || len(rc.Copies) != 1 {
		t.Fatalf("B82005's receipt: %+v, want RYJ's copy left", rc)
	}
	if _, _, ok := rc.Find("urn:ods:RYJ", "0001"); !ok {
		t.Errorf("RYJ's copy was settled: %+v", rc.Copies)
	}
}
