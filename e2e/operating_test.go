package e2e

// Issue 13, "Operating carehub": dead letters, held messages and backfill,
// each admin action through the running hub with the real embedded broker
// and signed HTTP receivers.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const operators = `admin:
  apiKey: {value: demo-admin-key}
  operators:
    - {id: ops.jo, apiKey: {value: ops-jo-key-0001}}
`

var asJo = map[string]string{"Authorization": "Bearer ops-jo-key-0001"}

func jo() map[string]string {
	out := map[string]string{}
	for k, v := range asJo {
		out[k] = v
	}
	return out
}

type dlqItem struct {
	ID, Publisher, EventID, Recipient, Reason string
	Status                                    int
	Resolution                                *struct{ Action, Actor, Reason, Rule string }
}

type dlqPage struct {
	Items []dlqItem
	Next  string
	Total int
}

func (s *safeHub) dlq(query string) dlqPage {
	s.t.Helper()
	status, body, _ := s.call("GET", "/v1/dlq"+query, "", nil, jo())
	var p dlqPage
	if err := json.Unmarshal(body, &p); status != 200 || err != nil {
		s.t.Fatalf("GET /v1/dlq%s: %d %s", query, status, body)
	}
	return p
}

// TestDeadLettersReplayedAfterTheRecipientRecovers: the care home rejects
// five discharges for good (400); they are listed, filtered and paged; once
// it recovers, one is replayed and delivered, then all of its others in
// order, each through consent as of now: the one whose patient has since
// denied the care home is withheld, audited and never sent; one is
// resolved with a reason instead. Every action names the operator. Each
// dead letter, its listing and its audit records name the event by
// publisher and id (regression: they named the event id only, which two
// publishers may share).
func TestDeadLettersReplayedAfterTheRecipientRecovers(t *testing.T) {
	s := startSafeHub(t, operators)
	s.home.setStatus(http.StatusBadRequest)
	var ids, nhs []string
	for i := range 5 {
		n := nhsNumber(130100 + 10*i)
		if i == 3 {
			n = nhs[1] // the second and fourth are one patient's
		}
		nhs = append(nhs, n)
		ids = append(ids, s.publishOK(patientEvent(t, "discharge", n, "A81001", "VM123")))
	}
	waitFor(t, "five dead letters", 60*time.Second, func() bool { return s.dlq("?recipient=VM123").Total == 5 })
	all := s.dlq("?recipient=VM123")
	byEvent := map[string]string{}
	for _, it := range all.Items {
		byEvent[it.EventID] = it.ID
		if it.Status != 400 || !strings.Contains(it.Reason, "400") || it.Publisher != "RX1" {
			t.Errorf("dead letter %+v: want status 400, a reason naming it, and publisher RX1", it)
		}
	}
	// The deliverer records the publisher in the dead letter itself (the
	// listing would otherwise take it from the copy, as for dead letters
	// written before it was recorded).
	for _, m := range s.records("carehub.dlq") {
		var dl struct{ Publisher, EventID string }
		if err := json.Unmarshal(m.Value, &dl); err != nil || dl.Publisher != "RX1" {
			t.Errorf("the dead letter of %s in carehub.dlq names publisher %q, want RX1 (%v)", dl.EventID, dl.Publisher, err)
		}
	}
	for _, q := range []struct {
		query string
		want  int
	}{
		{"?reason=answered%20400", 5}, {"?recipient=A81001", 0}, {"?since=2099-01-01", 0},
		{"?publisher=RX1", 5}, {"?publisher=VM123", 0},
		{"?until=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339), 5}, {"?state=resolved", 0},
	} {
		if got := s.dlq(q.query).Total; got != q.want {
			t.Errorf("GET /v1/dlq%s: %d, want %d", q.query, got, q.want)
		}
	}
	p1 := s.dlq("?recipient=VM123&limit=3")
	p2 := s.dlq("?recipient=VM123&limit=3&cursor=" + p1.Next)
	var paged []string
	for _, it := range append(p1.Items, p2.Items...) {
		paged = append(paged, it.EventID)
	}
	if !slices.Equal(paged, ids) || p2.Next != "" {
		t.Errorf("two pages, oldest first: %v, want %v", paged, ids)
	}
	if status, body, _ := s.call("GET", "/v1/dlq?state=lost&limit=0&patient=1&publisher=urn:ods:RX1", "", nil, jo()); status != 422 ||
		!bytes.Contains(body, []byte("/query/state")) || !bytes.Contains(body, []byte("/query/limit")) || !bytes.Contains(body, []byte("/query/patient")) ||
		!bytes.Contains(body, []byte("/query/publisher")) {
		t.Errorf("a bad query: %d %s", status, body)
	}
	if status, body, _ := s.call("GET", "/v1/deadletters", "", nil, jo()); status != 410 || !bytes.Contains(body, []byte("/v1/dlq")) {
		t.Errorf("the old path: %d %s, want 410 naming /v1/dlq", status, body)
	}

	// The patient of the third has since denied the care home.
	s.record(nhs[2], map[string]any{"id": "no-care-home", "kind": "deny-organisation", "organisation": "VM123"})
	s.home.setStatus(0) // recovered

	status, body, _ := s.call("POST", "/v1/dlq/"+byEvent[ids[0]]+"/replay", "", nil, jo())
	if status != 200 || !bytes.Contains(body, []byte(`"requeued":1`)) {
		t.Fatalf("replaying one: %d %s", status, body)
	}
	waitFor(t, "the replayed discharge delivered", 30*time.Second, func() bool { return slices.Contains(s.home.ids(), ids[0]) })
	if status, _, _ := s.call("POST", "/v1/dlq/"+byEvent[ids[0]]+"/replay", "", nil, jo()); status != 409 {
		t.Errorf("replaying it again: %d, want 409", status)
	}

	if status, body, _ := s.call("DELETE", "/v1/dlq/"+byEvent[ids[4]], "application/json", []byte(`{}`), jo()); status != 422 {
		t.Errorf("resolving without a reason: %d %s, want 422", status, body)
	}
	reason := "the care home keyed it in from the ward's phone call"
	if status, body, _ := s.call("DELETE", "/v1/dlq/"+byEvent[ids[4]], "application/json", []byte(`{"reason":"`+reason+`"}`), jo()); status != 204 {
		t.Fatalf("resolving: %d %s", status, body)
	}

	status, body, _ = s.call("POST", "/v1/dlq/replay?recipient=VM123", "", nil, jo())
	var ans struct {
		Requeued, Withheld int
		Items              []struct{ EventID, Outcome, Rule, Directive string }
	}
	if err := json.Unmarshal(body, &ans); status != 200 || err != nil || ans.Requeued != 2 || ans.Withheld != 1 {
		t.Fatalf("replaying the recipient's: %d %s", status, body)
	}
	var order []string
	for _, it := range ans.Items {
		order = append(order, it.EventID+":"+it.Outcome)
		if it.Outcome == "withheld" && (it.Rule != "directive:deny-organisation" || it.Directive != "no-care-home") {
			t.Errorf("the withheld one: %+v", it)
		}
	}
	if want := []string{ids[1] + ":requeued", ids[2] + ":withheld", ids[3] + ":requeued"}; !slices.Equal(order, want) {
		t.Errorf("replayed in the order dead-lettered:\n\tgot  %v\n\twant %v", order, want)
	}
	waitFor(t, "the replayed discharges delivered", 30*time.Second, func() bool { return slices.Contains(s.home.ids(), ids[3]) })
	waitFor(t, "every outbox settled", 30*time.Second, s.settled)
	got := s.home.ids()
	if slices.Contains(got, ids[2]) || slices.Contains(got, ids[4]) {
		t.Errorf("the care home received a copy consent now denies, or one resolved without delivery: %v", got)
	}
	if i, j := slices.Index(got, ids[1]), slices.Index(got, ids[3]); i < 0 || j < i {
		t.Errorf("delivered %v: want %s before %s (one patient's, in the order dead-lettered)", got, ids[1], ids[3])
	}
	if n := s.dlq("?recipient=VM123").Total; n != 0 {
		t.Errorf("%d dead letters still open", n)
	}
	resolved := s.dlq("?state=resolved")
	actions := map[string]string{}
	for _, it := range resolved.Items {
		if it.Resolution == nil || it.Resolution.Actor != "ops.jo" {
			t.Errorf("resolved %+v: want it closed by ops.jo", it)
			continue
		}
		actions[it.EventID] = it.Resolution.Action
		if it.EventID == ids[4] && it.Resolution.Reason != reason {
			t.Errorf("the resolution's reason: %q", it.Resolution.Reason)
		}
	}
	if actions[ids[0]] != "replayed" || actions[ids[2]] != "withheld" || actions[ids[4]] != "dismissed" {
		t.Errorf("resolutions: %v", actions)
	}

	// The audit names the operator for every action, and holds the
	// withheld copy as a delivery outcome; each names the event by its
	// publisher and id.
	var replays, resolves, listed int
	withheld := false
	for _, r := range s.auditRecords() {
		if action, _ := r["action"].(string); r["kind"] == "access" && strings.HasPrefix(action, "dead-letter") && r["publisher"] != "RX1" {
			t.Errorf("the %s record of %v names publisher %v, want RX1", r["action"], r["eventId"], r["publisher"])
		}
		switch {
		case r["kind"] == "access" && r["actor"] == "ops.jo" && r["action"] == "dead-letter-replay":
			replays++
		case r["kind"] == "access" && r["actor"] == "ops.jo" && r["action"] == "dead-letter-resolve" && r["reason"] == reason:
			resolves++
		case r["kind"] == "access" && r["actor"] == "ops.jo" && r["action"] == "dead-letters-read":
			listed++
		case r["kind"] == "delivery" && r["eventId"] == ids[2] && r["outcome"] == "withheld" && r["actor"] == "ops.jo" && r["publisher"] == "RX1":
			withheld = true
		}
	}
	if replays != 4 || resolves != 1 || listed == 0 || !withheld {
		t.Errorf("audit: %d replays, %d resolutions, %d listings by ops.jo, withheld recorded %v; want 4, 1, some, true", replays, resolves, listed, withheld)
	}
}

type heldItem struct {
	ID, Source, Trigger, Reason, State string
	Closed                             *struct{ Action, Actor, Reason string }
}

// TestHeldMessagesReleasedAndResolved: an unidentified A&E attendance, an
// update whose NHS number was not verified and a pending transfer are
// held; the attendance is released once the operator traced the patient
// (the community team with the patient on its caseload receives it), the
// update once the operator confirmed its number; the pending transfer
// cannot be released (its trigger is not shared) and is resolved with a
// reason.
func TestHeldMessagesReleasedAndResolved(t *testing.T) {
	traced, unverified := nhsNumber(130210), nhsNumber(130220)
	s := startSafeHub(t, operators, traced, unverified)
	a04 := adtFixture(t, "corpus/a04_ed_hospital_number_only.hl7", traced, newID("A04"))
	a08 := adtFixture(t, "corpus/a08_status_02_not_traced.hl7", traced, newID("A08"))
	a08 = bytes.ReplaceAll(a08, []byte("9992000171"), []byte(unverified))
	a15 := adtFixture(t, "corpus/a15_pending_transfer.hl7", traced, newID("A15"))
	if got := mllpSend(t, s.mllp, a04, a08, a15); !slices.Equal(got, []string{"AA", "AA", "AA"}) {
		t.Fatalf("acknowledgements %v, want AA for each", got)
	}
	list := func(query string) []heldItem {
		t.Helper()
		status, body, _ := s.call("GET", "/v1/held"+query, "", nil, jo())
		var p struct{ Items []heldItem }
		if err := json.Unmarshal(body, &p); status != 200 || err != nil {
			t.Fatalf("GET /v1/held%s: %d %s", query, status, body)
		}
		return p.Items
	}
	byReason := map[string]string{}
	for _, it := range list("") {
		byReason[it.Reason] = it.ID
		if it.State != "open" {
			t.Errorf("held %+v: want open", it)
		}
	}
	if len(byReason) != 3 {
		t.Fatalf("held: %v, want three reasons", byReason)
	}
	// The counts while the three are open: one of each reason, every
	// other reason listed at zero.
	status, body, _ := s.call("GET", "/v1/held/counts", "", nil, jo())
	var open struct {
		Total    int
		ByReason map[string]int
	}
	if err := json.Unmarshal(body, &open); status != 200 || err != nil {
		t.Fatalf("GET /v1/held/counts: %d %s", status, body)
	}
	wantReasons := map[string]int{"trigger-not-shared": 1, "no-nhs-number": 1, "nhs-number-unverified": 1,
		"nhs-number-status-missing": 0, "local-merge": 0}
	if open.Total != 3 || !maps.Equal(open.ByReason, wantReasons) {
		t.Errorf("counts while three are open:\n\tgot  total %d, byReason %v\n\twant total 3, byReason %v", open.Total, open.ByReason, wantReasons)
	}
	release := func(reason, body string) (int, []byte) {
		t.Helper()
		ct := ""
		if body != "" {
			ct = "application/json"
		}
		status, b, _ := s.call("POST", "/v1/held/"+byReason[reason]+"/release", ct, []byte(body), jo())
		if bytes.Contains(b, []byte(traced)) || bytes.Contains(b, []byte(unverified)) {
			t.Errorf("the answer to a release holds an NHS number: %s", b)
		}
		return status, b
	}
	if status, body := release("trigger-not-shared", ""); status != 409 || !bytes.Contains(body, []byte(`"rule":"trigger-not-shared"`)) {
		t.Errorf("releasing a pending transfer: %d %s, want 409 trigger-not-shared", status, body)
	}
	if status, body := release("no-nhs-number", ""); status != 409 || !bytes.Contains(body, []byte(`"rule":"no-nhs-number"`)) {
		t.Errorf("releasing an attendance without a number: %d %s, want 409 no-nhs-number", status, body)
	}
	if status, body := release("nhs-number-unverified", `{"nhsNumber":"`+traced+`"}`); status != 422 {
		t.Errorf("confirming another number than the message's: %d %s, want 422", status, body)
	}
	status, body = release("no-nhs-number", `{"nhsNumber":"`+traced+`"}`)
	var rel struct {
		State  string
		Events []struct{ ID, Type string }
	}
	if err := json.Unmarshal(body, &rel); status != 200 || err != nil || rel.State != "released" || len(rel.Events) != 1 {
		t.Fatalf("releasing the traced attendance: %d %s", status, body)
	}
	admission := rel.Events[0].ID
	waitFor(t, "the team receives the released attendance", 30*time.Second, func() bool { return slices.Contains(s.team.ids(), admission) })
	if b := bodyOf(s.team, admission); !bytes.Contains(b, []byte(traced)) {
		t.Errorf("the released event does not carry the traced NHS number: %s", b)
	}
	if status, _ := release("no-nhs-number", `{"nhsNumber":"`+traced+`"}`); status != 409 {
		t.Errorf("releasing it twice: %d, want 409", status)
	}
	status, body = release("nhs-number-unverified", `{"nhsNumber":"`+unverified+`"}`)
	if status != 200 || !bytes.Contains(body, []byte("patient-updated")) {
		t.Fatalf("releasing the update once its number is confirmed: %d %s", status, body)
	}
	reason := "a bed plan inside the hospital: nothing to tell anyone"
	if status, body, _ := s.call("DELETE", "/v1/held/"+byReason["trigger-not-shared"], "application/json", []byte(`{"reason":"`+reason+`"}`), jo()); status != 204 {
		t.Fatalf("resolving the pending transfer: %d %s", status, body)
	}
	if got := list(""); len(got) != 0 {
		t.Errorf("open held messages left: %+v", got)
	}
	states := map[string]string{}
	for _, it := range list("?state=all") {
		if it.Closed == nil || it.Closed.Actor != "ops.jo" {
			t.Errorf("%+v: want closed by ops.jo", it)
			continue
		}
		states[it.Reason] = it.State
	}
	if states["no-nhs-number"] != "released" || states["nhs-number-unverified"] != "released" || states["trigger-not-shared"] != "resolved" {
		t.Errorf("states: %v", states)
	}
	status, body, _ = s.call("GET", "/v1/held/counts", "", nil, jo())
	if status != 200 || !bytes.Contains(body, []byte(`"total":0`)) || !bytes.Contains(body, []byte(`"released":2`)) || !bytes.Contains(body, []byte(`"resolved":1`)) {
		t.Errorf("counts: %d %s", status, body)
	}
	actions := map[string]int{}
	for _, r := range s.auditRecords() {
		if r["kind"] == "access" && r["actor"] == "ops.jo" {
			actions[fmt.Sprint(r["action"])]++
		}
	}
	if actions["held-release"] != 2 || actions["held-resolve"] != 1 {
		t.Errorf("audit by ops.jo: %v", actions)
	}
}

// TestBackfillInterruptedAndResumed: the community team is subscribed to
// two patients' events after sixty were published; a backfill since today
// sends it those of its patients, through consent as of now (the second
// patient has denied it), interrupted part-way and resumed by `carehub
// replay` after the hub restarted, with no event twice: not those it
// received live after it subscribed, not those the interrupted run sent.
// Nobody else receives anything from the backfill.
func TestBackfillInterruptedAndResumed(t *testing.T) {
	p1, p2, p3 := nhsNumber(130310), nhsNumber(130320), nhsNumber(130330)
	s := startSafeHub(t, operators) // CN001's list is empty
	for i := range 20 {
		for _, n := range []string{p1, p2, p3} {
			kind := []string{"admission", "transfer", "discharge"}[i%3]
			ev := patientEvent(t, kind, n, "A81001", "")
			set(ev, "data/encounter/id", fmt.Sprintf("ENC-%s-%d", n[7:], i/3))
			s.publishOK(ev)
		}
	}
	waitFor(t, "sixty events routed", 60*time.Second, s.settled)
	gpBefore := len(s.gp.deliveries())
	if n := len(s.team.deliveries()); n != 0 {
		t.Fatalf("the team received %d events before it subscribed", n)
	}

	// The team subscribes to p1 and p2 (its caseload file, reloaded), and
	// p2 denies it.
	list := filepath.Join(filepath.Dir(s.cfgPath), "cn001.txt")
	if err := os.WriteFile(list, []byte(p1+"\n"+p2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the lists reloaded", 30*time.Second, func() bool { return strings.Contains(s.logs.String(), "patient lists reloaded") })
	s.record(p2, map[string]any{"id": "no-team", "kind": "deny-organisation", "organisation": "CN001"})
	live := patientEvent(t, "admission", p1, "A81001", "")
	liveID := s.publishOK(live)
	waitFor(t, "the team receives p1's live admission", 30*time.Second, func() bool { return slices.Contains(s.team.ids(), liveID) })

	since := time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)
	status, body, _ := s.call("POST", "/v1/backfills", "application/json", []byte(`{"recipient":"CN001","since":"`+since+`"}`), jo())
	var job struct {
		ID, State   string
		Total, Read int64
		Counts      struct{ Sent, Withheld, AlreadyReceived, NotForRecipient int64 }
	}
	if err := json.Unmarshal(body, &job); status != 201 || err != nil || job.ID == "" {
		t.Fatalf("creating the backfill: %d %s", status, body)
	}
	if job.Total != 61 {
		t.Errorf("the backfill covers %d events, want the 61 routed before it (the live one included)", job.Total)
	}
	if status, body, _ := s.call("POST", "/v1/backfills", "application/json", []byte(`{"recipient":"CN001","since":"`+since+`"}`), jo()); status != 200 ||
		!bytes.Contains(body, []byte(job.ID)) {
		t.Errorf("asking again gives the same job: %d %s", status, body)
	}

	// Run it slowly, and interrupt it after its first progress line.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+s.HTTP+"/v1/backfills/"+job.ID+"/run?rate=20", nil)
	req.Header.Set("Authorization", asJo["Authorization"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("running the backfill: %v %v", err, resp)
	}
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil || !json.Valid(line) {
		t.Fatalf("the first progress line: %q %v", line, err)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "the backfill interrupted", 30*time.Second, func() bool {
		_, body, _ := s.call("GET", "/v1/backfills/"+job.ID, "", nil, jo())
		_ = json.Unmarshal(body, &job)
		return job.State == "interrupted"
	})
	if job.Read == 0 || job.Read >= job.Total {
		t.Fatalf("interrupted after %d of %d events: want part-way", job.Read, job.Total)
	}
	sentBefore := job.Counts.Sent

	// A new process (the hub restarted) resumes it, through the CLI.
	s.stop()
	s.start()
	cmd := exec.Command(binary, "replay", "--recipient", "CN001", "--since", since, "--hub", "http://"+s.HTTP)
	cmd.Env = append(os.Environ(), "CAREHUB_ADMIN_KEY=ops-jo-key-0001")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("carehub replay: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "resuming backfill "+job.ID) || !strings.Contains(stdout.String(), "61 of 61 events (100%)") {
		t.Errorf("carehub replay said:\n%s\n%s", stderr.String(), stdout.String())
	}
	_, body, _ = s.call("GET", "/v1/backfills/"+job.ID, "", nil, jo())
	_ = json.Unmarshal(body, &job)
	// p1's twenty and the live admission (already received), p2's twenty
	// withheld, p3's twenty not for the team.
	if job.State != "done" || job.Read != 61 || job.Counts.Sent+job.Counts.AlreadyReceived != 21 || job.Counts.AlreadyReceived < 1 || job.Counts.Withheld != 20 ||
		job.Counts.NotForRecipient != 20 || job.Counts.Sent <= sentBefore {
		t.Errorf("the finished job: %s", body)
	}
	waitFor(t, "every backfilled event delivered", 60*time.Second, func() bool { return len(s.team.deliveries()) >= 21 })
	waitFor(t, "every outbox settled", 60*time.Second, s.settled)

	// The list: the job, done; by recipient; a recipient that is no ODS
	// code refused.
	var listed struct {
		Items []struct{ ID, Recipient, State string }
	}
	for _, query := range []string{"", "?recipient=CN001"} {
		status, body, _ := s.call("GET", "/v1/backfills"+query, "", nil, jo())
		listed.Items = nil
		if err := json.Unmarshal(body, &listed); status != 200 || err != nil || len(listed.Items) != 1 ||
			listed.Items[0].ID != job.ID || listed.Items[0].Recipient != "CN001" || listed.Items[0].State != "done" {
			t.Errorf("GET /v1/backfills%s: got %d %s, want the one job, done", query, status, body)
		}
	}
	if status, body, _ := s.call("GET", "/v1/backfills?recipient=VM123", "", nil, jo()); status != 200 || !bytes.Contains(body, []byte(`"items":[]`)) {
		t.Errorf("GET /v1/backfills?recipient=VM123: got %d %s, want no job", status, body)
	}
	if status, body, _ := s.call("GET", "/v1/backfills?recipient=not-ods!", "", nil, jo()); status != 422 || !bytes.Contains(body, []byte(`"pointer":"/query/recipient"`)) {
		t.Errorf("GET /v1/backfills?recipient=not-ods!: got %d %s, want 422 at /query/recipient", status, body)
	}
	// Creating and each run are access records (action backfill) with the
	// operator: created once (asking again is not a new job), ran twice.
	var accesses []string
	for _, r := range s.auditRecords() {
		if r["kind"] == "access" && r["action"] == "backfill" {
			what, _, _ := strings.Cut(fmt.Sprint(r["reason"]), " of events")
			accesses = append(accesses, fmt.Sprintf("%v %v by %v", what, r["recipient"], r["actor"]))
		}
	}
	slices.Sort(accesses)
	wantAccesses := []string{"created backfill " + job.ID + " CN001 by ops.jo", "ran backfill " + job.ID + " CN001 by ops.jo", "ran backfill " + job.ID + " CN001 by ops.jo"}
	if !slices.Equal(accesses, wantAccesses) {
		t.Errorf("backfill access audit:\n\tgot  %q\n\twant %q", accesses, wantAccesses)
	}

	// p1's twenty events and the live one, each once; nothing of p2 or p3.
	seen := map[string]int{}
	for _, d := range s.team.deliveries() {
		seen[d.WebhookID]++
		if bytes.Contains(d.Body, []byte(p2)) || bytes.Contains(d.Body, []byte(p3)) {
			t.Errorf("the team received an event of a patient who denied it or is not on its list: %s", d.ID)
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("the team received %s %d times", id, n)
		}
	}
	if len(seen) != 21 {
		t.Errorf("the team received %d events, want 21 (p1's twenty and the live one)", len(seen))
	}
	copies := map[string]int{}
	for _, m := range s.records("carehub.outbox.cn001") {
		for _, h := range m.Headers {
			if h.Key == "ce_id" {
				copies[string(h.Value)]++
			}
		}
	}
	for id, n := range copies {
		if n != 1 {
			t.Errorf("the team's outbox holds %s %d times", id, n)
		}
	}
	if n := len(s.gp.deliveries()); n != gpBefore+1 {
		t.Errorf("the GP received %d deliveries, want %d (only the live admission): a backfill sends to its recipient alone", n, gpBefore+1)
	}
	// The backfill's decisions are audited with the operator.
	decided := 0
	for _, r := range s.auditRecords() {
		if r["kind"] == "decision" && r["recipient"] == "CN001" && r["action"] == "backfill" && r["actor"] == "ops.jo" {
			decided++
		}
	}
	if decided != 40 {
		t.Errorf("%d backfill decisions audited with the operator, want 40 (p1's and p2's)", decided)
	}
}
