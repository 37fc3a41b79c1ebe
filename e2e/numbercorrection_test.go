package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestA47CorrectionReachesTheOldNumbersCareHome pins the reviewer's finding
// on issue 10: an HL7 A47 that corrects a patient's NHS number was routed
// by the new number alone. The care home VM123 holds the OLD number on its
// residents list; the care home VM456 takes admissions and discharges as
// the named destination only (not patient updates, not cancellations).
// Over MLLP: an A01 under the old number (to VM456); the A47 (the corpus
// message's shape, with test-range numbers); an A11 under the new number
// for the old number's encounter; an A03 under the new number on another
// encounter. Both care homes must receive the correction (VM123 by its
// list, VM456 as a recipient of the old number's admission), the
// cancellation must follow the admission to both, and the discharge under
// the new number must reach VM123 by its list of the old number.
func TestA47CorrectionReachesTheOldNumbersCareHome(t *testing.T) {
	oldN, newN := nhsNumber(147001), nhsNumber(147002)
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWdwICAgICAgICAgIA==")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWNhcmVob21lICAgIA==")
	home2 := newReceiver(t, "whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LXZtNDU2LWhvbWU=")
	mllp := freePort(t)
	dir := t.TempDir()
	residents := filepath.Join(dir, "vm123-residents.txt")
	if err := os.WriteFile(residents, []byte(oldN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &hub{t: t, dataDir: filepath.Join(dir, "data"), HTTP: freePort(t), Kafka: freePort(t), logs: &safeBuffer{}}
	cfg := fmt.Sprintf(`
http: {addr: %q}
dataDir: %q
kafka: {embeddedAddr: %q, partitions: 3}
pseudonymKey: {value: e2e-pseudonym-key-0123456789}
admin: {apiKey: {value: demo-admin-key}}
sources:
  - {ods: RX1, apiKey: {value: demo-rx1-key}}
inputs:
  - mllp: {addr: %q, source: RX1, readTimeout: 10s, idleTimeout: 60s}
recipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWdwICAgICAgICAgIA==}, timeout: 2s}
    subscriptions: [{id: a81001-gp, basis: registered-gp, types: [admission, discharge, admission-cancelled, patient-updated, patient-merged]}]
  - ods: VM123
    role: social-care
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LWNhcmVob21lICAgIA==}, timeout: 2s}
    subscriptions: [{id: vm123-residents, basis: patient-list, patientList: %q,
                     types: [admission, discharge, admission-cancelled, discharge-cancelled, patient-updated, patient-merged]}]
  - ods: VM456
    role: social-care
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1lMmUtc2VjcmV0LXZtNDU2LWhvbWU=}, timeout: 2s}
    subscriptions: [{id: vm456-destination, basis: discharge-destination, types: [admission, discharge]}]
delivery: {minBackoff: 20ms, maxBackoff: 200ms}
`, h.HTTP, h.dataDir, h.Kafka, mllp, gp.URL, home.URL, residents, home2.URL)
	h.cfgPath = filepath.Join(dir, "carehub.yaml")
	if err := os.WriteFile(h.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start()
	t.Cleanup(func() {
		h.stop()
		h.checkLogsClean()
	})
	settled := func() bool {
		if !h.groupAtEnd("carehub-router", "carehub.events") {
			return false
		}
		for _, r := range []string{"a81001", "vm123", "vm456"} {
			if !h.groupAtEnd("carehub-deliver-"+r, "carehub.outbox."+r) {
				return false
			}
		}
		return true
	}
	// send sends one message over MLLP, wants AA, and returns the id of
	// the event the hub publishes for it.
	send := func(what string, msg []byte) string {
		t.Helper()
		if got := mllpSend(t, mllp, msg); !slices.Equal(got, []string{"AA"}) {
			t.Fatalf("%s: acknowledgement %v, want AA", what, got)
		}
		id, _ := canonical(t, msg)
		return id
	}
	got := func(r *receiver, id string) bool { return slices.Contains(r.ids(), id) }

	// The admission under the old number, to VM456.
	a01 := adtFixture(t, "adt_a01.hl7", oldN, newID("A01"))
	a01 = bytes.ReplaceAll(a01, []byte("VM123"), []byte("VM456"))
	admID := send("A01", a01)
	waitFor(t, "the admission under the old number reaches the GP and both care homes", 30*time.Second, func() bool {
		return got(gp, admID) && got(home, admID) && got(home2, admID)
	})

	// The A47: PID the new number, MRG-1 the old one.
	a47 := adtFixture(t, "corpus/a47_nhs_number_corrected.hl7", "", newID("A47"))
	a47 = bytes.ReplaceAll(a47, []byte("9992000481"), []byte(newN))
	a47 = bytes.ReplaceAll(a47, []byte("9992000503"), []byte(oldN))
	a47ID := send("A47", a47)
	waitFor(t, "the correction reaches the GP and both care homes", 30*time.Second, func() bool {
		return got(gp, a47ID) && got(home, a47ID) && got(home2, a47ID)
	})
	for _, r := range []*receiver{home, home2} {
		for _, d := range r.deliveries() {
			if d.ID != a47ID {
				continue
			}
			var ce struct {
				Type string
				Data struct {
					Patient           struct{ NHSNumber string }
					PreviousNHSNumber string `json:"previousNhsNumber"`
				}
			}
			if err := json.Unmarshal(d.Body, &ce); err != nil {
				t.Fatal(err)
			}
			if ce.Type != "org.carehub.patient-updated.v1" || ce.Data.Patient.NHSNumber != newN || ce.Data.PreviousNHSNumber != oldN {
				t.Errorf("a care home's copy of the correction: type %s, numbers now/before right: %v/%v",
					ce.Type, ce.Data.Patient.NHSNumber == newN, ce.Data.PreviousNHSNumber == oldN)
			}
		}
	}

	// The admission cancelled, under the new number: it follows the
	// admission sent under the old one (VM456 does not subscribe to
	// cancellations; VM123's list names the old number only).
	a11 := adtFixture(t, "adt_a11.hl7", newN, newID("A11"))
	a11ID := send("A11", a11)
	waitFor(t, "the A11 routed", 30*time.Second, settled)
	if !got(gp, a11ID) || !got(home, a11ID) || !got(home2, a11ID) {
		t.Errorf("the cancellation reached the GP %v, VM123 %v, VM456 %v; want all three (the admission's recipients)",
			got(gp, a11ID), got(home, a11ID), got(home2, a11ID))
	}

	// A discharge under the new number, on another encounter, naming no
	// care home: VM123 receives it by its list of the old number.
	a03 := adtFixture(t, "adt_a03.hl7", newN, newID("A03"))
	a03 = bytes.ReplaceAll(a03, []byte("ENC-0001"), []byte("ENC-0002"))
	a03 = bytes.ReplaceAll(a03, []byte("|VM123|"), []byte("||"))
	disID := send("A03", a03)
	waitFor(t, "the discharge under the new number reaches the care home listing the old number", 30*time.Second, func() bool {
		return got(gp, disID) && got(home, disID)
	})
	waitFor(t, "everything routed and delivered", 30*time.Second, settled)
	if got(home2, disID) {
		t.Errorf("VM456 received the discharge: it is not named and holds no list")
	}
	// The new number's disclosures report shows what went out under the
	// old one.
	status, body, _ := (&safeHub{hub: h}).call("GET", "/v1/patients/"+newN+"/disclosures", "", nil, nil)
	for _, id := range []string{admID, a47ID, a11ID, disID} {
		if status != 200 || !bytes.Contains(body, []byte(id)) {
			t.Errorf("the new number's disclosures (%d) lack event %s", status, id)
		}
	}
}
