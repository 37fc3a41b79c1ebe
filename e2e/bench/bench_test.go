package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/nhs"
)

func TestTestNHSNumbersAreValidAndDistinct(t *testing.T) {
	nums := TestNHSNumbers(5000)
	if len(nums) != 5000 {
		t.Fatalf("got %d numbers", len(nums))
	}
	seen := map[string]bool{}
	for _, n := range nums {
		if !strings.HasPrefix(n, "999") {
			t.Fatalf("%s is outside the 999 test range", n)
		}
		if _, err := nhs.Parse(n); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if seen[n] {
			t.Fatalf("%s twice", n)
		}
		seen[n] = true
	}
}

func TestEventsValidateAndPlanMatchesTheirContent(t *testing.T) {
	pop, err := NewPopulation(1000, 20, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(0); seq < 300; seq += 7 {
		raw := pop.Event(nil, "bench-x-", seq, time.Now())
		ev, err := v.Parse(raw)
		if err != nil {
			t.Fatalf("event %d does not validate: %v\n%s", seq, err, raw)
		}
		if ev.ID != eventID("bench-x-", seq) || ev.Publisher != Source {
			t.Fatalf("event %d: id %q publisher %q", seq, ev.ID, ev.Publisher)
		}
		p := pop.planOf(seq)
		if p.n != 2 || pop.Recipients[p.r[0]].ODS != ev.Patient.GPPractice || pop.Recipients[p.r[1]].ODS != ev.DischargeDestination {
			t.Fatalf("event %d: plan %v does not match GP %s and destination %s", seq, p, ev.Patient.GPPractice, ev.DischargeDestination)
		}
	}
}

// TestTeamsListTheirPatients: with community teams, every event goes to
// three recipients, the third a team whose written list holds the patient,
// and patients are spread over every team.
func TestTeamsListTheirPatients(t *testing.T) {
	pop, err := NewPopulation(3000, 100, 100, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := pop.WriteLists(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	lists := map[int][]nhs.Number{}
	for i := pop.GPs + pop.CareHomes; i < len(pop.Recipients); i++ {
		rc := pop.Recipients[i]
		if rc.Basis != "patient-list" || rc.Role != "community" || !filepath.IsAbs(rc.PatientList) {
			t.Fatalf("team %s: basis %s, role %s, list %q", rc.ODS, rc.Basis, rc.Role, rc.PatientList)
		}
		if lists[i], err = patientlist.ReadFile(rc.PatientList); err != nil {
			t.Fatal(err)
		}
		if len(lists[i]) < 10 || len(lists[i]) > 50 {
			t.Errorf("team %s lists %d of 3000 patients, want about 30", rc.ODS, len(lists[i]))
		}
	}
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(0); seq < 3000; seq += 13 {
		p := pop.planOf(seq)
		if p.n != 3 || pop.Fanout() != 3 || int(p.r[2]) < pop.GPs+pop.CareHomes {
			t.Fatalf("event %d: plan %v, want a GP, a care home and a team", seq, p)
		}
		ev, err := v.Parse(pop.Event(nil, "x-", seq, time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(lists[int(p.r[2])], ev.Patient.NHSNumber) {
			t.Fatalf("event %d: the patient is not on the list of %s", seq, pop.Recipients[p.r[2]].ODS)
		}
	}
}

func TestPopulationSpreadsPatients(t *testing.T) {
	pop, _ := NewPopulation(10000, 20, 10, 0)
	gp, home := map[int]int{}, map[int]int{}
	for seq := uint64(0); seq < 10000; seq++ {
		p := pop.planOf(seq)
		gp[int(p.r[0])]++
		home[int(p.r[1])]++
	}
	if len(gp) != 20 || len(home) != 10 {
		t.Fatalf("patients reach %d GP practices and %d care homes, want 20 and 10", len(gp), len(home))
	}
	for r, n := range home {
		if n < 500 || n > 1500 {
			t.Errorf("care home %d has %d of 10000 patients", r, n)
		}
	}
}

func TestHubConfigParses(t *testing.T) {
	for _, sc := range Scenarios() {
		b, err := ScenarioConfig(Options{ListsDir: t.TempDir()}, sc, "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Parse(b, all.Registry())
		if err != nil {
			t.Fatalf("%s: %v\n%s", sc, err, b)
		}
		want := map[string]int{Throughput: 30, Latency: 30, Isolation: 30, Fanout: 1000, Backlog: 21, Feed: 1, Longpoll: 100}[sc]
		if len(cfg.Recipients) != want {
			t.Errorf("%s: %d recipients, want %d", sc, len(cfg.Recipients), want)
		}
		// The feed scenarios' recipients are pull recipients, each with
		// its own key; the others' have webhooks.
		for _, r := range cfg.Recipients {
			if got, want := r.Sink.Type, map[bool]string{true: "feed", false: "webhook"}[isFeed(sc)]; got != want {
				t.Errorf("%s: recipient %s has a %s section, want %s", sc, r.ODS, got, want)
				break
			}
		}
		var inputs []string
		for _, in := range cfg.Inputs {
			inputs = append(inputs, in.Type)
		}
		if want := "cloudevents fhir mllp"; strings.Join(inputs, " ") != want {
			t.Errorf("%s: inputs %v, want %s", sc, inputs, want)
		}
	}
}

// TestFHIRMessagesMapToTheSameDischarge: the FHIR ingest path's messages,
// read as the hub reads them (fhir.FromMessage, then schema validation),
// are the CloudEvents path's discharge: same id, patient, GP practice,
// destination and type, so the rows route alike and deliveries match.
func TestFHIRMessagesMapToTheSameDischarge(t *testing.T) {
	pop, _ := NewPopulation(1000, 20, 10, 0)
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for seq := uint64(0); seq < 300; seq += 11 {
		msg, err := pop.FHIR("bench-f-", seq, now, "http://127.0.0.1:8080"+RouteFHIRMessage)
		if err != nil {
			t.Fatal(err)
		}
		in, err := fhir.FromMessage(msg, Source)
		if err != nil {
			t.Fatalf("event %d: the hub would refuse the message: %v", seq, err)
		}
		got, err := v.Parse(in.Event)
		if err != nil {
			t.Fatalf("event %d: the mapped event does not validate: %v", seq, err)
		}
		want, err := v.Parse(pop.Event(nil, "bench-f-", seq, now))
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Type != want.Type || got.Publisher != want.Publisher || got.Patient != want.Patient ||
			got.DischargeDestination != want.DischargeDestination || got.HasDocument != want.HasDocument {
			t.Fatalf("event %d:\n\tgot  %s %s %s %v %s doc=%v\n\twant %s %s %s %v %s doc=%v", seq,
				got.ID, got.Type, got.Publisher, got.Patient, got.DischargeDestination, got.HasDocument,
				want.ID, want.Type, want.Publisher, want.Patient, want.DischargeDestination, want.HasDocument)
		}
	}
}

// TestFeedPopulation: without care homes, every event goes to its
// patient's GP practice alone, discharged to a care home nobody
// subscribes for; PullGPs gives each practice its own feed key.
func TestFeedPopulation(t *testing.T) {
	pop, err := NewPopulation(500, 100, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	pop.PullGPs()
	keys := map[string]bool{}
	for _, rc := range pop.Recipients {
		if !rc.Pull || rc.FeedKey == "" || keys[rc.FeedKey] {
			t.Fatalf("%s: pull %v, key %q (unique keys: %v)", rc.ODS, rc.Pull, rc.FeedKey, !keys[rc.FeedKey])
		}
		keys[rc.FeedKey] = true
	}
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	per := map[int]int{}
	for seq := uint64(0); seq < 500; seq++ {
		p := pop.planOf(seq)
		if p.n != 1 || pop.Fanout() != 1 {
			t.Fatalf("event %d: plan %v, want the GP practice alone", seq, p)
		}
		per[int(p.r[0])]++
		if seq%50 == 0 {
			ev, err := v.Parse(pop.Event(nil, "x-", seq, time.Now()))
			if err != nil {
				t.Fatal(err)
			}
			if ev.DischargeDestination != UnsubscribedHome || ev.Patient.GPPractice != pop.Recipients[p.r[0]].ODS {
				t.Fatalf("event %d: GP %s, destination %s", seq, ev.Patient.GPPractice, ev.DischargeDestination)
			}
		}
	}
	if len(per) != 100 {
		t.Errorf("events reach %d of 100 practices", len(per))
	}
}

// fakeFeed serves GET /v1/feeds/{ods} for one recipient from a list of
// numbered event ids, as the hub's JSON form does, honouring after and
// limit; skip and repeat number entries it gets wrong on purpose.
func fakeFeed(t *testing.T, ods, key string, ids []string, skip, repeat int64) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/feeds/"+ods || r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		var b strings.Builder
		b.WriteString(`{"events":[`)
		n := 0
		for num := after + 1; num <= int64(len(ids)) && n < limit; num++ {
			if num == skip {
				continue
			}
			if n > 0 {
				b.WriteByte(',')
			}
			if num == repeat+1 && after < repeat {
				b.WriteString(`{"number":` + strconv.FormatInt(repeat, 10) + `,"event":{"id":"` + ids[repeat-1] + `"}},`)
			}
			b.WriteString(`{"number":` + strconv.FormatInt(num, 10) + `,"event":{"id":"` + ids[num-1] + `","data":{"id":"not-this"}}}`)
			n++
		}
		b.WriteString(`],"latest":` + strconv.Itoa(len(ids)) + `,"oldest":1}`)
		_, _ = w.Write([]byte(b.String()))
	}))
}

// TestFeedClientsReadAndCheckNumbers: a client reads its feed by number
// with its recipient's key, records each event's receipt, and counts a
// number skipped or given twice; reading from the start gets every entry.
func TestFeedClientsReadAndCheckNumbers(t *testing.T) {
	pop, _ := NewPopulation(10, 1, 0, 0)
	pop.PullGPs()
	var ids []string
	for seq := uint64(0); seq < 25; seq++ {
		ids = append(ids, eventID("f-", seq))
	}
	for _, tc := range []struct {
		name                string
		skip, repeat        int64
		gaps, repeats, want int64
	}{
		{"clean", 0, 0, 0, 0, 25},
		{"a gap", 7, 0, 1, 0, 24},
		{"a repeat", 0, 12, 0, 1, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeFeed(t, pop.Recipients[0].ODS, pop.Recipients[0].FeedKey, ids, tc.skip, tc.repeat)
			defer srv.Close()
			fc := newFeedClients(strings.TrimPrefix(srv.URL, "http://"), pop, 10, time.Second)
			tr := newTracker("f-", pop, []bool{true})
			seq := tr.take(25)
			tr.markSent(seq, 25)
			for i := uint64(0); i < 25; i++ {
				tr.markAccepted(seq+i, tr.now())
			}
			fc.current.Store(tr)
			fc.start(context.Background())
			deadline := time.Now().Add(10 * time.Second)
			for fc.after[0].Load() < 25 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			fc.stop()
			if got := tr.delivered.Load(); got != tc.want {
				t.Errorf("delivered: got %d, want %d", got, tc.want)
			}
			if fc.gaps.Load() != tc.gaps || fc.repeats.Load() != tc.repeats || tr.duplicates.Load() != 0 {
				t.Errorf("gaps %d repeats %d duplicates %d, want %d, %d, 0", fc.gaps.Load(), fc.repeats.Load(), tr.duplicates.Load(), tc.gaps, tc.repeats)
			}
			n, _, latest, err := fc.readAll(context.Background())
			if err != nil || n != tc.want || latest[0] != 25 {
				t.Errorf("reading from the start: %d events, latest %v, %v; want %d and 25", n, latest, err, tc.want)
			}
		})
	}
	// Another key is refused, and the client says so.
	srv := fakeFeed(t, pop.Recipients[0].ODS, "another-key", ids, 0, 0)
	defer srv.Close()
	fc := newFeedClients(strings.TrimPrefix(srv.URL, "http://"), pop, 10, time.Second)
	if _, _, _, err := fc.readAll(context.Background()); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a refused read: %v", err)
	}
}

func TestTrackerAccounting(t *testing.T) {
	pop, _ := NewPopulation(100, 4, 2, 0)
	intended := []bool{true, true, true, true, true, false} // the last care home is down
	tr := newTracker("p-", pop, intended)
	seq := tr.take(10)
	tr.markSent(seq, 10)
	for i := uint64(0); i < 10; i++ {
		tr.markAccepted(seq+i, tr.now())
	}
	if tr.done() {
		t.Fatal("done before any delivery")
	}
	for i := uint64(0); i < 10; i++ {
		p := pop.planOf(seq + i)
		for j := 0; j < int(p.n); j++ {
			if i == 3 && j == 1 {
				continue // one delivery goes missing
			}
			tr.markDelivered(eventID("p-", seq+i), int(p.r[j]))
		}
	}
	tr.markDelivered(eventID("p-", seq), int(pop.planOf(seq).r[0])) // a duplicate
	tr.markDelivered(eventID("other-", seq), 0)                     // another phase's
	p0 := pop.planOf(seq)
	wrong := 0
	for wrong == int(p0.r[0]) || wrong == int(p0.r[1]) {
		wrong++
	}
	tr.markDelivered(eventID("p-", seq), wrong) // misrouted
	out := tr.collect(nil)
	if out.duplicates != 1 || out.misrouted != 1 {
		t.Errorf("duplicates %d misrouted %d, want 1 and 1", out.duplicates, out.misrouted)
	}
	// Event 3's care home: lost unless it is the down one.
	wantLost := int64(1)
	if !intended[pop.planOf(seq + 3).r[1]] {
		wantLost = 0
	}
	if out.lost != wantLost {
		t.Errorf("lost %d, want %d", out.lost, wantLost)
	}
	if len(out.latencies) != int(out.delivered) {
		t.Errorf("%d latency samples for %d deliveries", len(out.latencies), out.delivered)
	}
}

func TestPercentile(t *testing.T) {
	s := make([]int64, 100)
	for i := range s {
		s[i] = int64(i + 1)
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 50}, {0.9, 90}, {0.99, 99}, {1, 100}, {0, 1}} {
		if got := percentile(s, c.q); got != c.want {
			t.Errorf("p%v = %d, want %d", c.q, got, c.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestReceiverVerifiesSignatures(t *testing.T) {
	pop, _ := NewPopulation(10, 2, 1, 0)
	recv, err := startReceivers("")
	if err != nil {
		t.Fatal(err)
	}
	defer recv.close()
	if err := recv.use(pop, ""); err != nil {
		t.Fatal(err)
	}
	tr := newTracker("s-", pop, []bool{true, true, true})
	recv.current.Store(tr)
	body := []byte(`{"id":"s-0"}`)
	rc := pop.Recipients[pop.planOf(0).r[0]]
	post := func(key []byte) int {
		ts := strconvNow()
		req, _ := http.NewRequest("POST", rc.URL, bytes.NewReader(body))
		req.Header.Set(webhook.HeaderID, "a-uuid-of-source-and-id")
		req.Header.Set(webhook.HeaderEventID, "s-0")
		req.Header.Set(webhook.HeaderTimestamp, ts)
		req.Header.Set(webhook.HeaderSignature, "v1,"+webhook.Signature(key, "a-uuid-of-source-and-id", ts, body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post([]byte("wrong-secret")); got != http.StatusUnauthorized {
		t.Errorf("bad signature: %d, want 401", got)
	}
	if got := post(rc.key); got != http.StatusNoContent {
		t.Errorf("good signature: %d, want 204", got)
	}
	if tr.delivered.Load() != 1 || tr.badSignatures.Load() != 1 {
		t.Errorf("delivered %d bad %d", tr.delivered.Load(), tr.badSignatures.Load())
	}
}

func strconvNow() string { return strconv.FormatInt(time.Now().Unix(), 10) }

func TestHTTPIngesterHandlesPartialBatches(t *testing.T) {
	pop, _ := NewPopulation(10, 2, 1, 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/cloudevents-batch+json" || r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(400)
			return
		}
		var evs []json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&evs); err != nil || len(evs) != 3 {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(http.StatusMultiStatus)
		_, _ = w.Write([]byte(`[{"index":0,"status":202},{"index":1,"status":422},{"index":2,"status":202}]`))
	}))
	defer srv.Close()
	ing := newHTTPIngester(strings.TrimPrefix(srv.URL, "http://"), "k", true)
	tr := newTracker("b-", pop, []bool{true, true, true})
	seq := tr.take(3)
	tr.markSent(seq, 3)
	if err := ing.publish(context.Background(), tr, seq, 3); err != nil {
		t.Fatal(err)
	}
	if tr.accepted.Load() != 2 || tr.refused.Load() != 1 {
		t.Errorf("accepted %d refused %d, want 2 and 1", tr.accepted.Load(), tr.refused.Load())
	}
	if ing.problem() == "" {
		t.Error("the refusal was not noted")
	}
}

func TestHL7MessagesMapToTheSameDischarge(t *testing.T) {
	pop, _ := NewPopulation(1000, 20, 10, 0)
	mp, err := adt.NewMapper(adt.Options{Source: Source})
	if err != nil {
		t.Fatal(err)
	}
	v, err := event.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	prefix := ctrlPrefix("bench-x-")
	if len(prefix)+10 > 20 {
		t.Fatalf("control IDs may exceed MSH-10's 20 characters: %q", prefix)
	}
	for seq := uint64(0); seq < 200; seq += 13 {
		msg := pop.HL7(nil, prefix+strconv.FormatUint(seq, 10), seq, time.Now())
		m, err := hl7.Parse(msg)
		if err != nil {
			t.Fatalf("event %d: %v\n%q", seq, err, msg)
		}
		res, err := mp.Map(m)
		if err != nil || res.Held != nil || len(res.Events) != 1 {
			t.Fatalf("event %d: mapping: %v (held %+v)", seq, err, res.Held)
		}
		if res.ID != mp.EventID(m) {
			t.Fatalf("event %d: id %s, EventID %s", seq, res.ID, mp.EventID(m))
		}
		ev, err := v.Parse(res.Events[0].JSON)
		if err != nil {
			t.Fatalf("event %d: the mapped event does not validate: %v", seq, err)
		}
		p := pop.planOf(seq)
		if ev.Type != "org.carehub.discharge.v1" || pop.Recipients[p.r[0]].ODS != ev.Patient.GPPractice ||
			pop.Recipients[p.r[1]].ODS != ev.DischargeDestination {
			t.Fatalf("event %d: %s to GP %s and %s, want the plan's", seq, ev.Type, ev.Patient.GPPractice, ev.DischargeDestination)
		}
	}
	tr := newTracker("m-", pop, make([]bool, len(pop.Recipients)))
	tr.alias("3f6b1c2e-uuid", 42)
	if seq, ok := tr.seqOf("3f6b1c2e-uuid"); !ok || seq != 42 {
		t.Errorf("alias: %d %v", seq, ok)
	}
}

func TestAckCode(t *testing.T) {
	for ack, want := range map[string]string{
		"MSH|^~\\&|CAREHUB|CAREHUB|BENCH|RX1|20250101||ACK^A03|1|P|2.4\rMSA|AA|B1\r": "AA",
		"MSH|...\rMSA|AE|B1\rERR|||102\r":                                            "AE",
		"garbage":                                                                    "?",
	} {
		if got := ackCode([]byte(ack)); got != want {
			t.Errorf("%q: %s, want %s", ack, got, want)
		}
	}
}

func TestUnknownIngestPath(t *testing.T) {
	o := Options{Ingest: []string{"carrier-pigeon"}, InProcess: true}
	if err := o.defaults(); err == nil {
		t.Fatal("no error")
	}
}

func TestTargetsAreReportedNotEnforced(t *testing.T) {
	rows := []Result{
		{Scenario: Throughput, Ingest: IngestBatch, HubDeliveriesPerS: 1000, ReferenceDeliveriesPerS: 10000, Ratio: 0.1, PeakRSSBytes: 100 << 20},
		{Scenario: Latency, Ingest: IngestBatch, Rate: 500, P99Ms: 40},
		{Scenario: Fanout, Ingest: IngestBatch, HubDeliveriesPerS: 900},
		{Scenario: Isolation, Ingest: IngestBatch, P99Ms: 60},
		{Scenario: Longpoll, Ingest: IngestBatch, Rate: 500, P99Ms: 120, Feed: &FeedResult{Clients: 100, MaxDeliveries: 10}},
	}
	got := map[string]bool{}
	for _, tg := range targets(rows) {
		got[tg.Scenario+" "+tg.Name] = tg.Met
	}
	want := map[string]bool{
		"throughput hub / reference deliveries per second": false,
		"throughput peak RSS of the hub":                   true,
		"latency p99 accepted to delivered":                true,
		"fanout deliveries per second / throughput's":      true,
		"isolation others' p99 / latency's p99":            false,
		"longpoll p99 accepted to long-poll answered":      false,
	}
	for k, v := range want {
		if m, ok := got[k]; !ok || m != v {
			t.Errorf("%s: met=%v (present %v), want %v", k, m, ok, v)
		}
	}
	var buf bytes.Buffer
	rep := &Report{Scenarios: rows, Targets: targets(rows)}
	if err := rep.WriteTable(&buf); err != nil || !strings.Contains(buf.String(), "throughput") ||
		!strings.Contains(buf.String(), "longpoll/batch: 100 clients, each on its own feed") || !strings.Contains(buf.String(), "as fast as possible") {
		t.Fatalf("table: %v\n%s", err, buf.String())
	}
}
