package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPatientListReachesTheTeamWhoseCaseloadHoldsThePatient: a community
// nursing team subscribes with its caseload. A discharge of a patient on the
// list reaches the team as well as the GP and the care home; one of a patient
// not on it does not; consent still decides for listed patients; and no
// number from the list reaches the logs.
func TestPatientListReachesTheTeamWhoseCaseloadHoldsThePatient(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	team := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC10ZWFtLUNOMDAx")
	onList, spaced, denying, notOnList := nhsNumber(21001), nhsNumber(21002), nhsNumber(21003), nhsNumber(21004)
	list := filepath.Join(t.TempDir(), "caseload.txt")
	content := fmt.Sprintf("# caseload\n%s\n%s %s %s\r\n\n%s\n", onList, spaced[:3], spaced[3:6], spaced[6:], denying)
	if err := os.WriteFile(list, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: CN001
    role: community
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC10ZWFtLUNOMDAx}, timeout: 2s}
    subscriptions:
      - {id: cn001-caseload, basis: patient-list, patientList: %q, types: [admission, discharge]}
`, team.URL, list)})
	h.putConsent(denying, map[string]any{"id": "no-community", "kind": "deny-role", "role": "community"})

	evs := map[string]map[string]any{}
	for _, n := range []string{onList, spaced, denying, notOnList} {
		evs[n] = patientEvent(t, "discharge", n, "A81001", "VM123")
		h.mustPublish("demo-rx1-key", evs[n])
	}
	id := func(n string) string { return evs[n]["id"].(string) }
	waitFor(t, "the team gets its patients' discharges", 30*time.Second, func() bool {
		return slices.Contains(team.ids(), id(onList)) && slices.Contains(team.ids(), id(spaced))
	})
	waitFor(t, "the GP gets all four", 30*time.Second, func() bool { return len(gp.deliveries()) == 4 })
	waitFor(t, "all routed", 30*time.Second, func() bool {
		return h.routerCaughtUp() && h.groupAtEnd("carehub-deliver-cn001", "carehub.outbox.cn001")
	})
	if got := team.ids(); len(got) != 2 {
		t.Errorf("the team received %d events, want its two listed patients' without a deny (%v)", len(got), got)
	}
	if n := len(home.deliveries()); n != 4 {
		t.Errorf("the care home received %d events, want 4", n)
	}

	var dec map[string]auditRecord
	waitFor(t, "three decisions audited", 20*time.Second, func() bool {
		dec = decisionsFor(h.auditFor(id(onList)))
		return len(dec) == 3
	})
	if d := dec["CN001"]; d.Effect != "permit" || d.Basis != "patient-list" || d.Rule != "relationship-confirmed" {
		t.Errorf("team decision: got %+v, want a permit on the patient-list basis", d)
	}
	waitFor(t, "the denied patient's decisions audited", 20*time.Second, func() bool {
		dec = decisionsFor(h.auditFor(id(denying)))
		return len(dec) == 3
	})
	if d := dec["CN001"]; d.Effect != "deny" || !strings.Contains(d.Rule, "deny-role") {
		t.Errorf("team decision for a patient who denies community teams: got %+v", d)
	}
	if got := decisionsFor(h.auditFor(id(notOnList))); len(got) != 2 {
		t.Errorf("a patient on no list: got %d decisions, want the GP's and the care home's only", len(got))
	}
	if !strings.Contains(h.logs.String(), `"patients":3`) {
		t.Errorf("the hub did not log loading a list of 3 patients")
	}
}

// TestPatientListReloadsOnSIGHUP: a changed list takes effect on SIGHUP
// without a restart; a list that no longer reads is reported (by line, not
// by content) and the previous list stays in force.
func TestPatientListReloadsOnSIGHUP(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	team := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC10ZWFtLUNOMDAx")
	first, added, later := nhsNumber(22001), nhsNumber(22002), nhsNumber(22003)
	list := filepath.Join(t.TempDir(), "caseload.txt")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(list, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(first + "\n")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, recipientsYAML: fmt.Sprintf(`  - ods: CN001
    role: community
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC10ZWFtLUNOMDAx}, timeout: 2s}
    subscriptions:
      - {id: cn001-caseload, basis: patient-list, patientList: %q, types: [discharge]}
`, team.URL, list)})
	publish := func(n string) string {
		ev := patientEvent(t, "discharge", n, "A81001", "VM123")
		h.mustPublish("demo-rx1-key", ev)
		id := ev["id"].(string)
		waitFor(t, "the GP gets the event", 30*time.Second, func() bool { return slices.Contains(gp.ids(), id) })
		waitFor(t, "all routed", 30*time.Second, func() bool {
			return h.routerCaughtUp() && h.groupAtEnd("carehub-deliver-cn001", "carehub.outbox.cn001")
		})
		return id
	}
	reload := func(wantLog string, count int) {
		t.Helper()
		if err := h.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, wantLog, 20*time.Second, func() bool { return strings.Count(h.logs.String(), wantLog) >= count })
	}

	if id := publish(added); slices.Contains(team.ids(), id) {
		t.Fatalf("the team received an event about a patient not yet on its list")
	}
	write(first + "\n" + added + "\n")
	reload("patient lists reloaded", 1)
	idAdded := publish(added)
	waitFor(t, "the team gets the added patient's event", 30*time.Second, func() bool { return slices.Contains(team.ids(), idAdded) })

	bad := []byte(later)
	bad[9] = '0' + (bad[9]-'0'+1)%10
	canaries.Store(string(bad), true)
	write(first + "\n" + added + "\n" + string(bad) + "\n")
	reload("patient lists not reloaded", 1)
	if !strings.Contains(h.logs.String(), "line 3: the check digit is wrong") {
		t.Errorf("the reload error does not name the bad line:\n%s", tail(h.logs.String(), 2000))
	}
	idKept := publish(added)
	waitFor(t, "the previous list stays in force", 30*time.Second, func() bool { return slices.Contains(team.ids(), idKept) })
}
