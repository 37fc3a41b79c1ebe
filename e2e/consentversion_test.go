package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"
)

// directiveVersion is one entry of an audit record's directiveVersions.
type directiveVersion struct {
	Patient string `json:"patient"`
	Version int64  `json:"version"`
}

// TestAuditNamesTheDirectiveVersionThatDecided pins the audit of issue 11
// ("audit records say which directive version decided"): the tests only
// checked that directiveVersions was there. Here the routing decisions of
// an event recorded after one change name version 1; the copy queued for
// a care home that is down is withheld at delivery after a second change,
// and its delivery record names version 2, while its decision still names
// 1; the disclosures report shows both.
func TestAuditNamesTheDirectiveVersionThatDecided(t *testing.T) {
	nhs := nhsNumber(110701)
	s := startSafeHub(t, "")
	// Version 1: a directive that leaves the GP and the care home alone.
	s.record(nhs, map[string]any{"id": "no-community", "kind": "deny-role", "role": "community"})
	s.home.setStatus(http.StatusServiceUnavailable)
	id := s.publishOK(patientEvent(t, "discharge", nhs, "A81001", "VM123"))
	select { // the care home's endpoint was tried, and is down
	case <-s.home.notify:
	case <-time.After(30 * time.Second):
		t.Fatalf("the care home was never tried")
	}
	// Version 2: the care home denied, while its copy waits.
	s.record(nhs, map[string]any{"id": "no-community", "kind": "deny-role", "role": "community"},
		map[string]any{"id": "no-home", "kind": "deny-organisation", "organisation": "VM123"})
	s.home.setStatus(0)
	waitFor(t, "every outbox settled", 60*time.Second, s.settled)
	if slices.Contains(s.home.ids(), id) {
		t.Fatalf("the care home received a discharge denied it before delivery")
	}

	type rec struct {
		Kind, EventID, Recipient, Effect, Outcome, Patient string
		DirectiveVersions                                  []directiveVersion
	}
	var decisions, withheld []rec
	for _, m := range s.auditRecords() {
		b, _ := json.Marshal(m)
		var r rec
		_ = json.Unmarshal(b, &r)
		if r.EventID != id {
			continue
		}
		switch {
		case r.Kind == "decision":
			decisions = append(decisions, r)
		case r.Kind == "delivery" && r.Outcome == "withheld":
			withheld = append(withheld, r)
		}
	}
	if len(decisions) != 2 {
		t.Fatalf("decisions about the discharge: %+v, want the GP's and the care home's", decisions)
	}
	patient := decisions[0].Patient
	v := func(n int64) []directiveVersion { return []directiveVersion{{Patient: patient, Version: n}} }
	for _, d := range decisions {
		if d.Effect != "permit" || !slices.Equal(d.DirectiveVersions, v(1)) {
			t.Errorf("the decision for %s: %s with versions %+v, want permit under version 1", d.Recipient, d.Effect, d.DirectiveVersions)
		}
	}
	if len(withheld) != 1 || withheld[0].Recipient != "VM123" || !slices.Equal(withheld[0].DirectiveVersions, v(2)) {
		t.Errorf("withheld at delivery: %+v, want the care home's copy under version 2", withheld)
	}

	status, body, _ := s.call("GET", "/v1/patients/"+nhs+"/disclosures", "", nil, nil)
	var report struct {
		Disclosures []struct {
			EventID, Recipient, Outcome string
			DirectiveVersions           []directiveVersion `json:"directiveVersions"`
			RoutedDirectiveVersions     []directiveVersion `json:"routedDirectiveVersions"`
		}
		ConsentChanges []struct {
			Outcome string
			Before  struct{ Version int64 }
			After   struct{ Version int64 }
		}
	}
	if err := json.Unmarshal(body, &report); status != 200 || err != nil {
		t.Fatalf("disclosures: %d %s", status, body)
	}
	found := false
	for _, d := range report.Disclosures {
		if d.EventID != id || d.Recipient != "VM123" {
			continue
		}
		found = true
		if d.Outcome != "withheld" || !slices.Equal(d.DirectiveVersions, v(2)) || !slices.Equal(d.RoutedDirectiveVersions, v(1)) {
			t.Errorf("the care home's line: %+v, want withheld under version 2, routed under version 1", d)
		}
	}
	if !found {
		t.Errorf("no line for the care home's copy: %s", body)
	}
	var changes [][2]int64
	for _, c := range report.ConsentChanges {
		if c.Outcome != "" {
			t.Errorf("a consent change marked %q: %s", c.Outcome, body)
		}
		changes = append(changes, [2]int64{c.Before.Version, c.After.Version})
	}
	if want := [][2]int64{{0, 1}, {1, 2}}; !slices.Equal(changes, want) {
		t.Errorf("consent changes (before, after): %v, want %v", changes, want)
	}
}
