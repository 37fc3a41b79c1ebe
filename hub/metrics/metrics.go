// Package metrics is carehub's Prometheus instrumentation (GET /metrics):
// what one hub process counts as it works, and what it reads from Kafka
// when it is scraped.
//
// # Counted as the hub works
//
// The hub wires Metrics into its parts; none of them imports this package:
//
//   - Ingest wraps the connector.Ingest each input is given, and Refusals is
//     the connector.Refusals it reports to: events accepted, refused and held
//     by source, input, type and reason;
//   - Routed is the router's route.Observer: routing decisions by outcome
//     and rule;
//   - Outcome and Latency are each deliverer's deliver.Observer: deliveries
//     by recipient and outcome, and the time from acceptance to delivery;
//   - WatchReadiness reads the readiness checks at each scrape.
//
// # Read from Kafka at each scrape
//
// WatchKafka registers a collector that compares committed consumer group
// offsets with end offsets, so that every process of a cluster reports the
// same figures for the whole cluster (aggregate with max, not sum): each
// recipient's backlog (copies in its outbox not yet delivered) and the age
// of the oldest of them, the router's lag on carehub.events and its age, and
// the dead letters not yet resolved, per recipient. Recipients are found
// from the outbox topics, so a recipient added at run time is counted from
// its first copy.
//
// # Labels
//
// No label value comes from a message's content. Each is drawn from a
// fixed vocabulary (event type short names, problem kinds, held reason
// codes, consent rule names, delivery outcomes, input types) or is an
// organisation's ODS code (the authenticated publisher, a recipient); an
// ODS code that does not have the shape of one is "unknown", and past
// MaxOrganisations distinct codes, "other". Anything outside a vocabulary
// is "other" or "unknown". So no patient identifier, pseudonym or free text
// can reach a label, and the number of series is bounded.
package metrics

import (
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/deliver"
	"github.com/carehub/carehub/hub/health"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label values outside a vocabulary.
const (
	Other   = "other"   // a value of the right shape past a bound, or outside a vocabulary
	Unknown = "unknown" // no value, or not of the right shape
)

// MaxOrganisations bounds the distinct ODS codes each organisation label
// takes (a deployment of a thousand recipients fits).
const MaxOrganisations = 5000

// LatencyBuckets are the upper bounds, in seconds, of the accepted →
// delivered histogram: from a few milliseconds (a recipient that answers
// at once) to a day (one that was down).
var LatencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400}

// Metrics is one hub process's instrumentation and its registry.
//
// Concurrency: every method may be called from any goroutine.
type Metrics struct {
	reg *prometheus.Registry

	accepted   *prometheus.CounterVec
	duplicates *prometheus.CounterVec
	refused    *prometheus.CounterVec
	held       *prometheus.CounterVec
	routed     prometheus.Counter
	unacked    prometheus.Counter
	decisions  *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	latency    prometheus.Histogram

	orgs    *bounded
	rules   map[string]bool
	reasons map[string]bool
}

// New returns the instrumentation of one process, with Go runtime and
// process metrics registered.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_events_accepted_total",
			Help: "Events made durable on carehub.events, by publisher (source), input and event type.",
		}, []string{"source", "input", "type"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_events_duplicate_total",
			Help: "Retries of events accepted before (same source, id and content): answered as accepted, not published again.",
		}, []string{"source", "input", "type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_events_refused_total",
			Help: "Messages refused (a negative answer: HTTP 4xx/5xx, HL7 AE/AR, FHIR OperationOutcome), by source, input, event type (unknown when it could not be read) and reason (the problem kind).",
		}, []string{"source", "input", "type", "reason"}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_messages_held_total",
			Help: "Messages acknowledged and held, not shared, by source, input and held reason code.",
		}, []string{"source", "input", "reason"}),
		routed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "carehub_events_routed_total",
			Help: "Events routed (decided, and their copies, audit and index records durable).",
		}),
		unacked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "carehub_events_not_acknowledged_total",
			Help: "Events found on carehub.events whose publisher was never told they were accepted (answered 503 or AR; the event written by the broker after the hub stopped waiting, its publish attempt voided before any record of it): not routed, audited as not-acknowledged.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_routing_decisions_total",
			Help: "Consent decisions taken by the router, one per candidate recipient of an event, by outcome (permit, deny) and the rule that decided.",
		}, []string{"outcome", "rule"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carehub_deliveries_total",
			Help: "Delivery outcomes by recipient: delivered, withheld (by the consent re-check), dead-lettered (permanently rejected), postponed (a transient failure: delivered later, in order).",
		}, []string{"recipient", "outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "carehub_delivery_latency_seconds",
			Help:    "Time from the hub accepting an event to a recipient having a copy of it.",
			Buckets: LatencyBuckets,
		}),
		orgs:    newBounded(MaxOrganisations, ods.Valid),
		rules:   map[string]bool{},
		reasons: map[string]bool{},
	}
	for _, r := range consent.Rules() {
		m.rules[r] = true
	}
	m.rules[route.RuleWithheldNotice] = true
	m.rules[deliver.RuleUndecidable] = true
	for _, r := range connector.HeldReasons() {
		m.reasons[r] = true
	}
	m.reg.MustRegister(m.accepted, m.duplicates, m.refused, m.held, m.routed, m.unacked, m.decisions, m.deliveries, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// NotAcknowledged counts an event the router did not route because its
// publisher was never told it was accepted (package ackgate).
func (m *Metrics) NotAcknowledged() { m.unacked.Inc() }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// org bounds an organisation label.
func (m *Metrics) org(code string) string { return m.orgs.label(code) }

// typeLabel is an event type's short name, or "unknown".
func typeLabel(typ string) string {
	if typ == "" {
		return Unknown
	}
	if _, ok := event.TypeNamed(event.ShortName(typ)); ok && typ != event.ShortName(typ) {
		return event.ShortName(typ)
	}
	return Unknown
}

// rule bounds a rule label by the rule vocabulary.
func (m *Metrics) rule(r string) string {
	if m.rules[r] {
		return r
	}
	return Other
}

// Routed implements route.Observer.
func (m *Metrics) Routed(verdicts []route.Verdict) {
	m.routed.Inc()
	for _, v := range verdicts {
		outcome := string(v.Decision.Effect)
		if outcome != string(consent.Permit) && outcome != string(consent.Deny) {
			outcome = Other
		}
		m.decisions.WithLabelValues(outcome, m.rule(v.Decision.Rule)).Inc()
	}
}

// deliveryOutcomes are the outcomes a deliverer reports.
var deliveryOutcomes = []string{audit.Delivered, audit.Withheld, audit.DeadLettered, deliver.Postponed}

// Outcome implements deliver.Observer.
func (m *Metrics) Outcome(recipient, outcome string) {
	if !slices.Contains(deliveryOutcomes, outcome) {
		outcome = Other
	}
	m.deliveries.WithLabelValues(m.org(recipient), outcome).Inc()
}

// Latency implements deliver.Observer.
func (m *Metrics) Latency(_ string, d time.Duration) { m.latency.Observe(d.Seconds()) }

// Deliverer returns the deliver.Observer of the deliverer of recipient
// ods, and makes its delivery series exist (at zero) before its first
// delivery, so that increase() and alerts see the first one.
func (m *Metrics) Deliverer(ods string) deliver.Observer {
	for _, o := range deliveryOutcomes {
		m.deliveries.WithLabelValues(m.org(ods), o)
	}
	return m
}

// WatchReadiness exports the readiness checks at each scrape:
// carehub_ready, and carehub_readiness_check per check.
func (m *Metrics) WatchReadiness(checks *health.Checks) {
	m.reg.MustRegister(&readiness{checks: checks})
}

var (
	readyDesc = prometheus.NewDesc("carehub_ready",
		"1 when the process is ready to take work (/readyz answers 200), else 0.", nil, nil)
	checkDesc = prometheus.NewDesc("carehub_readiness_check",
		"1 when the readiness check passes, else 0 (/readyz says why).", []string{"check"}, nil)
)

type readiness struct{ checks *health.Checks }

func (r *readiness) Describe(ch chan<- *prometheus.Desc) { ch <- readyDesc; ch <- checkDesc }

func (r *readiness) Collect(ch chan<- prometheus.Metric) {
	ready := 1.0
	for _, c := range r.checks.Results() {
		v := 1.0
		if !c.OK {
			v, ready = 0, 0
		}
		// Check names are the hub's own constants.
		ch <- prometheus.MustNewConstMetric(checkDesc, prometheus.GaugeValue, v, c.Name)
	}
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, ready)
}

// bounded is a label vocabulary of values of one shape, at most max of
// them: the first max distinct values seen are their own label, later
// ones are Other; a value not of the shape is Unknown.
type bounded struct {
	mu    sync.Mutex
	seen  map[string]bool
	max   int
	valid func(string) bool
}

func newBounded(max int, valid func(string) bool) *bounded {
	return &bounded{seen: map[string]bool{}, max: max, valid: valid}
}

func (b *bounded) label(v string) string {
	if v == "" || !b.valid(v) {
		return Unknown
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.seen[v] {
		return v
	}
	if len(b.seen) >= b.max {
		return Other
	}
	b.seen[v] = true
	return v
}
