package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/segmentio/kafka-go"
	"go.yaml.in/yaml/v3"
)

// scrape is one read of a hub's /metrics.
type scrape struct {
	text   string
	values map[string]float64 // "name{label=value,...}" (labels sorted) → value; a histogram's sample count
	labels map[string][]string
	names  map[string]bool // every series name, histograms' _bucket, _sum and _count included
}

// get returns the value of a series ("name{a=x,b=y}", labels sorted).
func (s scrape) get(series string) float64 { return s.values[series] }

func (h *hub) scrape() scrape {
	h.t.Helper()
	resp, err := http.Get("http://" + h.HTTP + "/metrics")
	if err != nil {
		h.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		h.t.Fatalf("GET /metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		h.t.Fatalf("/metrics is not the Prometheus text format: %v", err)
	}
	s := scrape{text: string(body), values: map[string]float64{}, labels: map[string][]string{}, names: map[string]bool{}}
	for name, f := range fams {
		s.names[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				s.names[name+suffix] = true
			}
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
				if !slices.Contains(s.labels[name], l.GetName()) {
					s.labels[name] = append(s.labels[name], l.GetName())
				}
			}
			sort.Strings(ls)
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				s.values[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.values[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				s.values[key] = float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				s.values[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return s
}

// waitSeries waits until a scrape satisfies cond, and returns it.
func (h *hub) waitSeries(what string, cond func(s scrape) bool) scrape {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := h.scrape()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, l := range strings.Split(s.text, "\n") {
				if strings.HasPrefix(l, "carehub_") && !strings.Contains(l, "_bucket") {
					lines = append(lines, l)
				}
			}
			h.t.Fatalf("timed out after 30s waiting for %s; the last scrape:\n%s", what, strings.Join(lines, "\n"))
		}
		time.Sleep(100 * time.Millisecond) // between scrapes: the condition is polled
	}
}

// mllpRaw sends one frame and returns the acknowledgement's MSA-1, with no
// check of the message it answers (which need not parse).
func mllpRaw(t *testing.T, addr string, payload []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := frame.WriteFrame(c, payload); err != nil {
		t.Fatal(err)
	}
	b, err := frame.NewReader(c, frame.ReaderOptions{}).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	return msa1(t, b)
}

// TestMetricsMoveDuringARun (issue 13, "Done means"): a run through every
// input, decision and delivery outcome, scraped as Prometheus scrapes it:
// every series the README lists moves, the alert rules name only series
// the hub exports, and no NHS number or pseudonym is in any of it.
func TestMetricsMoveDuringARun(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	addr := freePort(t)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL,
		inputsYAML: fmt.Sprintf("  - mllp: {addr: %q, source: RX1, readTimeout: 10s, idleTimeout: 60s}\n  - fhir: {}\n", addr)})
	base := h.scrape()
	for series, want := range map[string]float64{
		"carehub_ready": 1, "carehub_kafka_up": 1,
		"carehub_readiness_check{check=started}": 1, "carehub_readiness_check{check=broker}": 1, "carehub_readiness_check{check=disk}": 1,
		"carehub_readiness_check{check=consent}": 1, "carehub_readiness_check{check=deliverers}": 1,
		"carehub_readiness_check{check=subscriptions}": 1, "carehub_readiness_check{check=feeds}": 1,
		"carehub_recipient_backlog_events{recipient=VM123}": 0, "carehub_dead_letters_open{recipient=VM123}": 0,
		"carehub_deliveries_total{outcome=dead-lettered,recipient=VM123}": 0,
	} {
		if got, ok := base.values[series]; !ok || got != want {
			t.Errorf("at start: %s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	// Every readiness check the hub reports has its row in the README's
	// Health table (the audit of issue 14 found subscriptions missing).
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for series := range base.values {
		if check, ok := strings.CutPrefix(series, "carehub_readiness_check{check="); ok {
			check = strings.TrimSuffix(check, "}")
			if row := "| `" + check + "` |"; !strings.Contains(string(readme), row) {
				t.Errorf("the readiness check %s has no row %q in the README's Health table", check, row)
			}
		}
	}

	// CloudEvents: an admission (GP), a discharge to the care home (GP and
	// care home), one refused as invalid, one unauthenticated.
	a, b, c, d, e, f := nhsNumber(13001), nhsNumber(13002), nhsNumber(13003), nhsNumber(13004), nhsNumber(13005), nhsNumber(13006)
	h.mustPublish("demo-rx1-key", patientEvent(t, "admission", a, "A81001", ""))
	h.mustPublish("demo-rx1-key", patientEvent(t, "discharge", a, "A81001", "VM123"))
	wrong := a[:9] + string('0'+(a[9]-'0'+1)%10)
	canaries.Store(wrong, true)
	bad, _ := json.Marshal(patientEvent(t, "discharge", wrong, "A81001", ""))
	if status, body := h.publish("demo-rx1-key", "application/cloudevents+json", bad); status != http.StatusUnprocessableEntity {
		t.Fatalf("an invalid NHS number: %d %s", status, body)
	}
	good, _ := json.Marshal(patientEvent(t, "admission", a, "A81001", ""))
	if status, _ := h.publish("", "application/cloudevents+json", good); status != http.StatusUnauthorized {
		t.Fatalf("no API key: %d, want 401", status)
	}

	// HL7 v2 over MLLP: an admission, a message held (no NHS number), one
	// that does not parse.
	if got := mllpSend(t, addr, adtFixture(t, "adt_a01.hl7", b, newID("A01")), adtFixture(t, "held_no_nhs_number.hl7", b, newID("HELD"))); !slices.Equal(got, []string{"AA", "AA"}) {
		t.Fatalf("MLLP: %v, want AA AA", got)
	}
	if got := mllpRaw(t, addr, []byte("PID|1||"+b+"^^^NHS^NH\r")); got != "AE" {
		t.Fatalf("MLLP, no MSH: %s, want AE", got)
	}

	// FHIR: a discharge message.
	if status, body := h.postFHIR(t, "/fhir/r4/$process-message", "demo-rx1-key", hl7Message(t, "discharge", "Encounter-f001.json", c, "A81001", "", true)); status != http.StatusAccepted {
		t.Fatalf("FHIR: %d %s", status, body)
	}

	// Consent: a patient who keeps social care out; the care home's copy
	// is denied at routing.
	h.putConsent(d, map[string]any{"id": "no-social-care", "kind": "deny-role", "role": "social-care"})
	denied := patientEvent(t, "discharge", d, "A81001", "VM123")
	h.mustPublish("demo-rx1-key", denied)

	// A dead letter: the care home refuses a copy for good (once it has
	// everything before: the discharge of a, and the content-free notice
	// of d's discharge withheld from it).
	waitFor(t, "everything before delivered", 30*time.Second, h.routerCaughtUp)
	home.setStatus(http.StatusBadRequest)
	h.mustPublish("demo-rx1-key", patientEvent(t, "discharge", e, "A81001", "VM123"))
	h.waitSeries("a dead letter for VM123", func(s scrape) bool {
		return s.get("carehub_dead_letters_open{recipient=VM123}") == 1 && s.get("carehub_deliveries_total{outcome=dead-lettered,recipient=VM123}") == 1
	})

	// A backlog: the care home is down; its copy waits and ages. The
	// patient then keeps social care out: when the home is back, the copy
	// is withheld at delivery, and the backlog is gone.
	home.setStatus(http.StatusServiceUnavailable)
	h.mustPublish("demo-rx1-key", patientEvent(t, "discharge", f, "A81001", "VM123"))
	h.waitSeries("a backlog at VM123 that ages", func(s scrape) bool {
		return s.get("carehub_recipient_backlog_events{recipient=VM123}") == 1 && s.get("carehub_recipient_backlog_age_seconds{recipient=VM123}") > 0
	})
	h.putConsent(f, map[string]any{"id": "no-social-care", "kind": "deny-role", "role": "social-care"})
	home.setStatus(0)
	h.waitSeries("the copy withheld at delivery, the backlog gone", func(s scrape) bool {
		return s.get("carehub_deliveries_total{outcome=withheld,recipient=VM123}") == 1 &&
			s.get("carehub_recipient_backlog_events{recipient=VM123}") == 0 && s.get("carehub_recipient_backlog_age_seconds{recipient=VM123}") == 0
	})
	waitFor(t, "everything routed and delivered", 30*time.Second, h.routerCaughtUp)
	mid := h.scrape()

	// The router stuck: a record on carehub.events that is no event (a
	// foreign producer) is retried, never skipped, and its lag ages.
	w := &kafka.Writer{Addr: kafka.TCP(h.Kafka), Topic: "carehub.events", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("not-a-patient"), Value: []byte("not an event")}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	final := h.waitSeries("the router's lag, and its age", func(s scrape) bool {
		return s.get("carehub_consumer_lag_events{group=carehub-router,topic=carehub.events}") == 1 &&
			s.get("carehub_consumer_lag_age_seconds{group=carehub-router,topic=carehub.events}") > 0
	})

	// Every series moved by what happened.
	for _, tc := range []struct {
		series string
		want   float64 // at least, added since the start
	}{
		{"carehub_events_accepted_total{input=cloudevents,source=RX1,type=admission}", 1},
		{"carehub_events_accepted_total{input=cloudevents,source=RX1,type=discharge}", 4},
		{"carehub_events_accepted_total{input=mllp,source=RX1,type=admission}", 1},
		{"carehub_events_accepted_total{input=fhir,source=RX1,type=discharge}", 1},
		{"carehub_events_refused_total{input=cloudevents,reason=invalid,source=RX1,type=unknown}", 1},
		{"carehub_events_refused_total{input=cloudevents,reason=unauthenticated,source=unknown,type=unknown}", 1},
		{"carehub_events_refused_total{input=mllp,reason=malformed,source=RX1,type=unknown}", 1},
		{"carehub_messages_held_total{input=mllp,reason=no-nhs-number,source=RX1}", 1},
		{"carehub_events_routed_total", 7},
		{"carehub_routing_decisions_total{outcome=permit,rule=relationship-confirmed}", 9},
		{"carehub_routing_decisions_total{outcome=deny,rule=directive:deny-role}", 1},
		{"carehub_deliveries_total{outcome=delivered,recipient=A81001}", 6},
		{"carehub_deliveries_total{outcome=delivered,recipient=VM123}", 1},
		{"carehub_deliveries_total{outcome=dead-lettered,recipient=VM123}", 1},
		{"carehub_deliveries_total{outcome=withheld,recipient=VM123}", 1},
		{"carehub_delivery_latency_seconds", 7},
		{"carehub_dead_letters_open{recipient=VM123}", 1},
		{"carehub_consumer_lag_events{group=carehub-router,topic=carehub.events}", 1},
	} {
		if got := final.get(tc.series) - base.get(tc.series); got < tc.want {
			t.Errorf("%s moved by %v, want at least %v", tc.series, got, tc.want)
		}
	}
	if got := mid.get("carehub_events_routed_total"); got != final.get("carehub_events_routed_total") {
		t.Errorf("events routed went on (%v → %v) while the router was stuck", got, final.get("carehub_events_routed_total"))
	}

	// The alert rules name only what the hub exports.
	checkAlertRulesNameExportedSeries(t, final)

	// No NHS number, and no pseudonym, in anything scraped.
	canaries.Range(func(k, _ any) bool {
		if strings.Contains(final.text, k.(string)) {
			t.Errorf("an NHS number the test published appears in /metrics")
		}
		return true
	})
	keys := 0
	for _, m := range h.records("carehub.events") {
		if k := string(m.Key); strings.HasPrefix(k, nhs.PseudonymPrefix) {
			keys++
			if strings.Contains(final.text, k) {
				t.Errorf("a patient's pseudonym (a Kafka key) appears in /metrics")
			}
		}
	}
	if keys == 0 {
		t.Errorf("found no pseudonym on carehub.events to look for")
	}
}

// alertRules reads deploy/prometheus/carehub-alerts.yml.
func alertRules(t *testing.T) []struct{ Alert, Expr string } {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "carehub-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("carehub-alerts.yml: %v", err)
	}
	var out []struct{ Alert, Expr string }
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("carehub-alerts.yml holds no rules")
	}
	return out
}

var (
	seriesRE   = regexp.MustCompile(`\b(carehub_[a-z_]+)(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)`)
	groupingRE = regexp.MustCompile(`\b(?:by|on)\s*\(([^)]*)\)`)
)

// checkAlertRulesNameExportedSeries: every carehub_ series an alert rule
// names is one the hub exported in s, and every label the rule selects or
// groups by is one of that series'. A rule about a series the hub does
// not export never fires.
func checkAlertRulesNameExportedSeries(t *testing.T, s scrape) {
	t.Helper()
	for _, r := range alertRules(t) {
		labels := map[string]bool{}
		named := 0
		for _, m := range seriesRE.FindAllStringSubmatch(r.Expr, -1) {
			name := m[1]
			if !s.names[name] {
				t.Errorf("alert %s: %s is not a series the hub exports", r.Alert, name)
				continue
			}
			named++
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
			have := s.labels[name]
			if have == nil {
				have = s.labels[base]
			}
			for _, l := range have {
				labels[l] = true
			}
			for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
				if !slices.Contains(have, mm[1]) {
					t.Errorf("alert %s: %s has no label %s", r.Alert, name, mm[1])
				}
			}
		}
		if named == 0 && !strings.Contains(r.Expr, "up{") {
			t.Errorf("alert %s names no carehub series", r.Alert)
		}
		for _, g := range groupingRE.FindAllStringSubmatch(r.Expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" && named > 0 && !labels[l] {
					t.Errorf("alert %s groups by %s, a label none of its series has", r.Alert, l)
				}
			}
		}
	}
}

// TestAlertRulesPassPromtool: Prometheus's own checker accepts the example
// configuration and alert rules, and the rules' unit tests (carehub-alerts.test.yml: each alert
// fires when it should and stays quiet when it should) pass.
func TestAlertRulesPassPromtool(t *testing.T) {
	requirePeer(t, "promtool (Prometheus)", "apt-get install -y --no-install-recommends prometheus", lookPath("promtool"))
	dir := filepath.Join("..", "deploy", "prometheus")
	for _, args := range [][]string{{"check", "config", "prometheus.yml"}, {"check", "rules", "carehub-alerts.yml"}, {"test", "rules", "carehub-alerts.test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
