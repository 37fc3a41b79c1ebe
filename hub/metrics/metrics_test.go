package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/health"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	dto "github.com/prometheus/client_model/go"
)

// canary is an NHS number of the 999 test range: it must never reach a
// label, whatever the hub is told.
var canary = nhs.Synthetic(18).Digits()

// samples gathers m as "name{label=value,...}" → value, labels sorted by
// name; a histogram as its count.
func samples(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			var ls []string
			for _, l := range s.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = s.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// fakeIngest answers every call with what it is set to.
type fakeIngest struct {
	acc connector.Accepted
	err error
}

func (f *fakeIngest) Accept(context.Context, string, []byte) (connector.Accepted, error) {
	return f.acc, f.err
}

func (f *fakeIngest) AcceptBatch(_ context.Context, _ string, raws []json.RawMessage) []connector.Result {
	out := make([]connector.Result, len(raws))
	for i := range raws {
		out[i] = connector.Result{Accepted: f.acc, Err: f.err}
		if i == 0 && f.err == nil {
			out[i].Err = problem.New(problem.Invalid, "the first of every batch is invalid")
		}
	}
	return out
}

func (f *fakeIngest) Hold(context.Context, string, connector.Held) error { return f.err }

func TestIngestCounts(t *testing.T) {
	tests := []struct {
		name  string
		org   string
		input string
		call  func(in connector.Ingest, org string)
		fake  fakeIngest
		want  map[string]float64
	}{
		{"accepted", "RX1", "cloudevents", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{acc: connector.Accepted{ID: "1", Type: event.TypeDischarge}},
			map[string]float64{"carehub_events_accepted_total{input=cloudevents,source=RX1,type=discharge}": 1}},
		{"a retry", "RX1", "mllp", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{acc: connector.Accepted{ID: "1", Type: event.TypeAdmission, Duplicate: true}},
			map[string]float64{"carehub_events_duplicate_total{input=mllp,source=RX1,type=admission}": 1}},
		{"refused, type read", "RX1", "fhir", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{acc: connector.Accepted{ID: "1", Type: event.TypeTransfer}, err: problem.New(problem.Forbidden, "not yours")},
			map[string]float64{"carehub_events_refused_total{input=fhir,reason=forbidden,source=RX1,type=transfer}": 1}},
		{"refused, type unreadable", "RX1", "cloudevents", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{err: problem.New(problem.Malformed, "not JSON")},
			map[string]float64{"carehub_events_refused_total{input=cloudevents,reason=malformed,source=RX1,type=unknown}": 1}},
		{"refused, not a problem", "RX1", "cloudevents", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{err: errors.New("no kind")},
			map[string]float64{"carehub_events_refused_total{input=cloudevents,reason=other,source=RX1,type=unknown}": 1}},
		{"a batch, one by one", "VM123", "cloudevents", func(in connector.Ingest, org string) {
			_ = in.AcceptBatch(context.Background(), org, make([]json.RawMessage, 3))
		}, fakeIngest{acc: connector.Accepted{Type: event.TypeCarePlan}},
			map[string]float64{
				"carehub_events_accepted_total{input=cloudevents,source=VM123,type=careplan}":               1 * 2,
				"carehub_events_refused_total{input=cloudevents,reason=invalid,source=VM123,type=careplan}": 1,
			}},
		{"held", "RX1", "mllp", func(in connector.Ingest, org string) {
			_ = in.Hold(context.Background(), org, connector.Held{Reason: connector.HeldNoNHSNumber})
		}, fakeIngest{}, map[string]float64{"carehub_messages_held_total{input=mllp,reason=no-nhs-number,source=RX1}": 1}},
		{"held, a reason outside the vocabulary", "RX1", "mllp", func(in connector.Ingest, org string) {
			_ = in.Hold(context.Background(), org, connector.Held{Reason: "nhs " + canary})
		}, fakeIngest{}, map[string]float64{"carehub_messages_held_total{input=mllp,reason=other,source=RX1}": 1}},
		{"not held: refused", "RX1", "mllp", func(in connector.Ingest, org string) {
			_ = in.Hold(context.Background(), org, connector.Held{Reason: connector.HeldNoNHSNumber})
		}, fakeIngest{err: problem.New(problem.Unavailable, "disk low")},
			map[string]float64{"carehub_events_refused_total{input=mllp,reason=unavailable,source=RX1,type=unknown}": 1}},
		{"a source that is not an ODS code", canary, "cloudevents", func(in connector.Ingest, org string) { _, _ = in.Accept(context.Background(), org, nil) },
			fakeIngest{acc: connector.Accepted{Type: "org.carehub." + canary + ".v1"}},
			map[string]float64{"carehub_events_accepted_total{input=cloudevents,source=unknown,type=unknown}": 1}},
		{"refused by the source itself", "", "cloudevents", func(_ connector.Ingest, org string) {}, fakeIngest{},
			map[string]float64{"carehub_events_refused_total{input=cloudevents,reason=unauthenticated,source=unknown,type=unknown}": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New()
			in := m.Ingest(&tc.fake, tc.input)
			tc.call(in, tc.org)
			if tc.name == "refused by the source itself" {
				m.Refusals(tc.input).Refused(context.Background(), tc.org, problem.Unauthenticated)
			}
			got := samples(t, m)
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: got %v, want %v", k, got[k], v)
				}
			}
			for k, v := range got {
				if strings.HasPrefix(k, "carehub_") && v != 0 {
					if _, ok := tc.want[k]; !ok {
						t.Errorf("unexpected series %s = %v", k, v)
					}
				}
			}
		})
	}
}

func TestRoutedAndDelivered(t *testing.T) {
	m := New()
	obs := m.Deliverer("A81001")
	if got := samples(t, m)["carehub_deliveries_total{outcome=dead-lettered,recipient=A81001}"]; got != 0 {
		t.Fatalf("before any delivery: %v", got)
	}
	if _, ok := samples(t, m)["carehub_deliveries_total{outcome=dead-lettered,recipient=A81001}"]; !ok {
		t.Errorf("a deliverer's series do not exist before its first delivery: increase() would miss the first dead letter")
	}
	m.Routed([]route.Verdict{
		{Decision: consent.Decision{Effect: consent.Permit, Rule: consent.RuleRelationshipConfirmed}},
		{Decision: consent.Decision{Effect: consent.Deny, Rule: consent.RuleDenyOrganisation}},
		{Decision: consent.Decision{Effect: consent.Permit, Rule: route.RuleWithheldNotice}},
		{Decision: consent.Decision{Effect: consent.Effect("maybe"), Rule: "rule for " + canary}},
	})
	m.Routed(nil)
	obs.Outcome("A81001", "delivered")
	obs.Outcome("A81001", "postponed")
	obs.Outcome("A81001", "lost "+canary)
	obs.Outcome(canary, "withheld")
	obs.Latency("A81001", 1500*time.Millisecond)
	got := samples(t, m)
	want := map[string]float64{
		"carehub_events_routed_total": 2,
		"carehub_routing_decisions_total{outcome=permit,rule=relationship-confirmed}":           1,
		"carehub_routing_decisions_total{outcome=deny,rule=directive:deny-organisation}":        1,
		"carehub_routing_decisions_total{outcome=permit,rule=policy:withheld-discharge-notice}": 1,
		"carehub_routing_decisions_total{outcome=other,rule=other}":                             1,
		"carehub_deliveries_total{outcome=delivered,recipient=A81001}":                          1,
		"carehub_deliveries_total{outcome=postponed,recipient=A81001}":                          1,
		"carehub_deliveries_total{outcome=other,recipient=A81001}":                              1,
		"carehub_deliveries_total{outcome=withheld,recipient=unknown}":                          1,
		"carehub_delivery_latency_seconds":                                                      1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
}

func TestReadiness(t *testing.T) {
	m := New()
	checks := health.New()
	m.WatchReadiness(checks)
	checks.Add("broker", func() (bool, string) { return true, "" })
	checks.Add("disk", func() (bool, string) { return false, "space low" })
	got := samples(t, m)
	for k, v := range map[string]float64{"carehub_ready": 0, "carehub_readiness_check{check=broker}": 1, "carehub_readiness_check{check=disk}": 0} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: got %v (present %v), want %v", k, g, ok, v)
		}
	}
	checks.Add("disk", func() (bool, string) { return true, "" })
	if got := samples(t, m)["carehub_ready"]; got != 1 {
		t.Errorf("carehub_ready once every check passes: got %v, want 1", got)
	}
}

func TestBoundedLabels(t *testing.T) {
	b := newBounded(3, func(s string) bool { return len(s) == 3 })
	var got []string
	for _, v := range []string{"RX1", "", "toolong", "RX2", "RX1", "RX3", "RX4", "RX2"} {
		got = append(got, b.label(v))
	}
	want := "RX1 unknown unknown RX2 RX1 RX3 other RX2"
	if strings.Join(got, " ") != want {
		t.Errorf("labels:\n\tgot  %s\n\twant %s", strings.Join(got, " "), want)
	}
}

// TestNoPatientDataInAnyLabel drives every hook with the values a
// careless caller could hand it (an NHS number of the 999 test range as
// organisation, type, reason, rule, recipient and outcome; its pseudonym
// too) and scrapes /metrics: neither appears.
func TestNoPatientDataInAnyLabel(t *testing.T) {
	pseudo, err := nhs.NewPseudonymiser([]byte("metrics-test-pseudonym-key"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := nhs.Parse(canary)
	pseudonym := pseudo.Pseudonym(n)
	m := New()
	m.WatchReadiness(health.New())
	for _, v := range []string{canary, pseudonym, "urn:nhs:" + canary, "NHS" + canary} {
		in := m.Ingest(&fakeIngest{acc: connector.Accepted{ID: v, Type: v}}, "cloudevents")
		_, _ = in.Accept(context.Background(), v, []byte(v))
		_ = in.AcceptBatch(context.Background(), v, []json.RawMessage{json.RawMessage(v)})
		_ = in.Hold(context.Background(), v, connector.Held{ID: v, Reason: v, NHSNumber: n, LocalID: v, Original: []byte(v)})
		m.Refusals("mllp").Refused(context.Background(), v, problem.Invalid)
		m.Routed([]route.Verdict{{Decision: consent.Decision{Effect: consent.Effect(v), Rule: v, DirectiveID: v}}})
		m.Deliverer(v).Outcome(v, v)
		m.Latency(v, time.Second)
	}
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	if w.Code != 200 || !strings.Contains(string(body), "carehub_events_accepted_total") {
		t.Fatalf("/metrics: %d\n%s", w.Code, body)
	}
	for _, c := range []string{canary, pseudonym} {
		if strings.Contains(string(body), c) {
			t.Errorf("/metrics holds %q", c)
		}
	}
	values := labelValues(string(body))
	for _, v := range values {
		if tenDigits.MatchString(v) {
			t.Errorf("label value %q holds ten digits in a row (an NHS number's shape)", v)
		}
	}
	t.Logf("%d bytes scraped, label values: %v", len(body), values)
}

var tenDigits = regexp.MustCompile(`[0-9]{10}`)

// labelValues lists the distinct label values of carehub series in an
// exposition, for the log.
func labelValues(body string) []string {
	seen := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "carehub_") {
			continue
		}
		i, j := strings.Index(line, "{"), strings.LastIndex(line, "}")
		if i < 0 || j < i {
			continue
		}
		for _, kv := range strings.Split(line[i+1:j], ",") {
			if _, v, ok := strings.Cut(kv, "="); ok {
				if u, err := strconv.Unquote(v); err == nil {
					seen[u] = true
				}
			}
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}
