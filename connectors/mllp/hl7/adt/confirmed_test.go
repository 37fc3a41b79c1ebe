package adt

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/carehub/carehub/schemas/nhs"
)

// TestMapConfirmed: a held message mapped again with the NHS number an
// operator traced is shared when that settles why it was held, and is
// refused when the message contradicts it.
func TestMapConfirmed(t *testing.T) {
	mp, err := NewMapper(Options{Source: "RX1"})
	if err != nil {
		t.Fatal(err)
	}
	traced := nhs.MustParse("9992000171") // the number a08_status_02_not_traced names
	other := nhs.Synthetic(4242)
	tests := []struct {
		file string
		n    nhs.Number
		want string // "event:<type>", "held:<reason>" or "error:<reason>"
	}{
		{"a04_ed_hospital_number_only", nhs.Number{}, "held:no-nhs-number"},
		{"a04_ed_hospital_number_only", other, "event:org.carehub.admission.v1"},
		{"a08_status_02_not_traced", nhs.Number{}, "held:nhs-number-unverified"},
		{"a08_status_02_not_traced", traced, "event:org.carehub.patient-updated.v1"},
		{"a08_status_02_not_traced", other, "error:" + reasonConfirmedOther},
		{"a08_status_missing", nhs.Number{}, "held:nhs-number-status-missing"},
		{"a15_pending_transfer", other, "held:trigger-not-shared"},
		{"a17_swap", other, "error:" + reasonConfirmedTwo},
	}
	for _, tt := range tests {
		payload, err := os.ReadFile("testdata/corpus/" + tt.file + ".hl7")
		if err != nil {
			t.Fatal(err)
		}
		m, err := Parse(payload)
		if err != nil {
			t.Fatal(err)
		}
		var res *Result
		if tt.n.IsZero() {
			res, err = mp.Map(m)
		} else {
			res, err = mp.MapConfirmed(m, tt.n)
		}
		var got string
		var e *Error
		switch {
		case errors.As(err, &e):
			got = "error:" + e.Reason
		case err != nil:
			t.Fatalf("%s: %v", tt.file, err)
		case res.Held != nil:
			got = "held:" + res.Held.Reason
		default:
			got = "event:" + res.Events[0].Type
			var ev struct {
				Data struct{ Patient struct{ NHSNumber string } }
			}
			_ = json.Unmarshal(res.Events[0].JSON, &ev)
			if ev.Data.Patient.NHSNumber != tt.n.Digits() {
				t.Errorf("%s: the event names another NHS number than the one given", tt.file)
			}
			if id := mp.EventID(m); res.Events[0].ID != id {
				t.Errorf("%s: event id %s, want the message's own id %s", tt.file, res.Events[0].ID, id)
			}
		}
		if got != tt.want {
			t.Errorf("%s with %v:\n\tgot  %s\n\twant %s", tt.file, !tt.n.IsZero(), got, tt.want)
		}
		if strings.Contains(got, tt.n.Digits()) && !tt.n.IsZero() {
			t.Errorf("%s: the outcome names the NHS number", tt.file)
		}
	}
}
