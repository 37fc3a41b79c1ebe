// Package route is the hub's router: it consumes carehub.events, finds the
// recipients each event may go to, asks the consent Decider for a decision
// per candidate recipient, produces one copy per permitted recipient to
// that recipient's outbox, writes one audit record per decision, and
// records what happened in the patient index.
//
// # Candidates
//
// A candidate is a subscription the event matches (registered GP,
// discharge destination, patient list: see Subscriptions.Match, with the
// numbers merged into the patient's), and, for events that follow earlier
// ones on the same encounter or care plan (event.TypeRule.FollowUp), the
// recipients the patient index says received those:
//
//   - a correction (admission-cancelled, discharge-cancelled,
//     discharge-pending-cancelled, transfer-cancelled) goes to the
//     recipients that received what it corrects, whatever they subscribe
//     to, and to nobody else (a copy withheld after routing, settled,
//     does not count as received);
//   - an update (transfer, patient-class-changed) goes to its subscribers
//     and to every recipient
//     that received an earlier event on the encounter, and to nobody who
//     was withheld those and received none;
//   - every event on an encounter or care plan is decided with the
//     sensitivity categories of every earlier event on it;
//   - an event that retires an NHS number (Retires: a merge, or a number
//     correction, patient-updated with previousNhsNumber) joins the
//     retired number's family to the patient's, in the index as in
//     matching and consent, and goes to its subscribers and to every
//     recipient that received an event about the patient under the
//     retired numbers: each decided as an update of what it received
//     (heldUnder), in the form today's decision allows (a notification
//     keeps the retired number).
//
// Each candidate is decided by consent.FollowUp over consent.Merged (the
// directives of every number merged into the patient's; a deny from any
// wins). A recipient that matches on more than one basis receives one
// copy: the first permitted candidate, in the order registered GP,
// discharge destination, patient list, earlier recipient, decides it;
// every decision is still audited.
//
// # Forms
//
// A copy goes in the form its decision allows (event.Form): the full form,
// or, under the notification-only obligation, the notification-only
// allow-list. A correction goes in no fuller form than the recipient
// received what it corrects in (the narrower of the two); an update or a
// continuation is a new fact and goes in the form today's decision allows.
// Every copy carries its sealed routing decision (Sealer), so the
// deliverer can decide it again at the moment of delivery (Recheck), and
// then tell the patient index what the recipient got (Settle): the index
// follows what recipients have, not what they were routed.
//
// # Notices
//
// The router issues two notices of its own: registration-ended to a
// patient's previous GP practice when an event names another one (through
// consent, as any copy), and, when the deployment asks for it
// (WithheldNotice), a content-free notice to the organisation a patient is
// discharged to when consent withholds the discharge from it.
//
// # Ack contract
//
// Handle returns nil only after every outbox copy, audit record and
// patient index record is acknowledged by Kafka; only then is the event's
// offset committed. Any failure, a consent error included, returns an
// error: the event is redelivered, never skipped (fail closed).
package route

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Directives supplies a patient's current directives, by the patient's
// keyed pseudonym. Sync returns once every change acknowledged before the
// call is visible to For. Both return an error when they cannot answer (not
// loaded, broker unreachable): the router then fails closed.
type Directives interface {
	Sync(ctx context.Context) error
	For(patient string) (consent.PatientConsent, error)
}

// NoDirectives is a Directives with none recorded for anyone.
type NoDirectives struct{}

// Sync implements Directives.
func (NoDirectives) Sync(context.Context) error { return nil }

// For implements Directives.
func (NoDirectives) For(string) (consent.PatientConsent, error) { return consent.PatientConsent{}, nil }

// Index is the patient index the router reads and writes
// (patientindex.Index).
type Index interface {
	Sync(ctx context.Context) error
	Family(key string) []string
	Get(key string) patientindex.Record
	Message(key string, rec patientindex.Record) (*message.Message, error)
	Commit(key string, rec patientindex.Record)
	Settle(ctx context.Context, o patientindex.Outcome) error
}

// WithheldNotice is the deployment's choice for a discharge that consent
// withholds from the organisation the patient is discharged to.
type WithheldNotice string

// The choices.
const (
	// NoticeContentFree sends that organisation a content-free notice (no
	// patient identifier, nothing clinical): a discharge to it was
	// withheld; contact the discharging ward. The default.
	NoticeContentFree WithheldNotice = "notice"
	// NoticeNone sends nothing.
	NoticeNone WithheldNotice = "none"
)

// Valid reports whether w is a known choice.
func (w WithheldNotice) Valid() bool { return w == NoticeContentFree || w == NoticeNone }

// Rules the router decides itself.
const (
	// RuleWithheldNotice: the content-free notice of a withheld discharge.
	RuleWithheldNotice = "policy:withheld-discharge-notice"
)

// SubscriptionSource holds subscriptions that change while the hub runs
// (the recipient directory, hub/directory). Sync returns once every change
// acknowledged before the call is visible to Subscriptions.
type SubscriptionSource interface {
	Sync(ctx context.Context) error
	Subscriptions() *Subscriptions
}

// Config is what a Router is built from.
type Config struct {
	Subscriptions *Subscriptions
	// Source, when set, supplies the subscriptions instead: the router
	// catches up with it before deciding each event, as it does with the
	// directives, so that a recipient, subscription or patient list
	// changed before an event was accepted applies to it.
	Source     SubscriptionSource
	Decider    consent.Decider
	Directives Directives
	Index      Index
	Publisher  message.Publisher
	// Pseudonym pseudonymises an NHS number (the number a merge or a
	// correction retires).
	Pseudonym func(nhs.Number) string
	Sealer    *Sealer
	// WithheldNotice is the deployment's choice (default NoticeContentFree).
	WithheldNotice WithheldNotice
	// Contacts says, by publisher ODS code, how a recipient of a
	// notification asks for the full record (optional).
	Contacts map[string]string
	// Observer, when set, is told of each event routed (hub/metrics).
	Observer Observer
	Log      *zap.Logger
}

// Observer is told of each event Handle routed, with its verdicts, once
// everything it produced is durable (so a redelivered event is told again
// only if it is routed again). It must not block.
type Observer interface {
	Routed(verdicts []Verdict)
}

// Router routes events.
type Router struct {
	subs atomic.Pointer[Subscriptions]
	cfg  Config
	log  *zap.Logger
	now  func() time.Time
}

// New builds a Router.
func New(cfg Config) (*Router, error) {
	if cfg.Subscriptions == nil || cfg.Decider == nil || cfg.Directives == nil || cfg.Index == nil || cfg.Publisher == nil ||
		cfg.Pseudonym == nil || cfg.Sealer == nil || cfg.Log == nil {
		return nil, errors.New("route: subscriptions, decider, directives, index, publisher, pseudonymiser, sealer and logger are required")
	}
	if cfg.WithheldNotice == "" {
		cfg.WithheldNotice = NoticeContentFree
	}
	if !cfg.WithheldNotice.Valid() {
		return nil, errors.New("route: unknown withheld-discharge choice")
	}
	r := &Router{cfg: cfg, log: cfg.Log, now: time.Now}
	r.subs.Store(cfg.Subscriptions)
	return r, nil
}

// SetSubscriptions replaces the subscriptions events are matched against
// (patient lists reloaded, say). An event being decided keeps the ones it
// started with; every event decided after the call uses subs.
func (r *Router) SetSubscriptions(subs *Subscriptions) {
	if subs != nil {
		r.subs.Store(subs)
	}
}

// TopicsPublisher publishes to several topics in one produce. kafkawm's
// Publisher implements it; with it the router waits for one round trip per
// event instead of one per topic.
type TopicsPublisher interface {
	PublishTopics(byTopic map[string][]*message.Message) error
}

// Plan is what routing one event produces, before it is published.
type Plan struct {
	Outbox map[string][]*message.Message // by topic
	Audit  []*message.Message
	Index  []*message.Message
	// commit are the patient index records to apply once published.
	commit map[string]patientindex.Record
	// verdicts are the decisions, for the Observer.
	verdicts []Verdict
}

// Handle is the watermill handler for carehub.events.
func (r *Router) Handle(msg *message.Message) error {
	plan, err := r.Plan(msg)
	if err != nil {
		return err
	}
	if len(plan.Audit) == 0 && len(plan.Outbox) == 0 && len(plan.Index) == 0 {
		r.observe(plan)
		return nil
	}
	if tp, ok := r.cfg.Publisher.(TopicsPublisher); ok {
		all := make(map[string][]*message.Message, len(plan.Outbox)+2)
		for t, msgs := range plan.Outbox {
			all[t] = msgs
		}
		if len(plan.Audit) > 0 {
			all[topic.Audit] = plan.Audit
		}
		if len(plan.Index) > 0 {
			all[topic.Patients] = plan.Index
		}
		if err := tp.PublishTopics(all); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing outbox copies, audit and index records", err)
		}
	} else {
		for t, msgs := range plan.Outbox {
			if err := r.cfg.Publisher.Publish(t, msgs...); err != nil {
				return problem.Wrap(problem.Unavailable, "publishing to an outbox", err)
			}
		}
		if err := r.cfg.Publisher.Publish(topic.Audit, plan.Audit...); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing audit records", err)
		}
		if err := r.cfg.Publisher.Publish(topic.Patients, plan.Index...); err != nil {
			return problem.Wrap(problem.Unavailable, "publishing patient index records", err)
		}
	}
	for k, rec := range plan.commit {
		r.cfg.Index.Commit(k, rec)
	}
	r.observe(plan)
	return nil
}

func (r *Router) observe(plan *Plan) {
	if r.cfg.Observer != nil {
		r.cfg.Observer.Routed(plan.verdicts)
	}
}

// Notice kinds of a Verdict.
const (
	NoticeRegistrationEnded = "registration-ended"
	NoticeWithheld          = "withheld-notice"
)

// Verdict is the decision for one candidate recipient.
type Verdict struct {
	Subscription *Subscription
	Decision     consent.Decision
	// Copy is true for the one permitted verdict per recipient (and
	// notice) that produces an outbox copy.
	Copy bool
	// Form is the form of the copy.
	Form event.Form
	// FollowUp says the candidate is an earlier recipient of the
	// encounter or care plan, not a subscriber.
	FollowUp bool
	// Relation and Original are the follow-up context it was decided in.
	Relation consent.Relation
	Original consent.Original
	// Request is the request decided (its directives are the patient's).
	Request consent.Request
	// Notice is "" for a copy of the event, else the kind of notice.
	Notice string
}

// Decided is the outcome of deciding one event.
type Decided struct {
	Event    *event.Event
	Key      string // the event's patient pseudonym
	Family   []string
	Versions []audit.DirectiveVersion
	Verdicts []Verdict
	// Updates are the patient index records to write, by pseudonym.
	Updates map[string]patientindex.Record
}

// Decide finds the candidates for ev about the patient with pseudonym key
// and decides each, after catching up with every consent change and
// patient index record acknowledged before the call. It publishes nothing.
func (r *Router) Decide(ctx context.Context, ev *event.Event, key string) (*Decided, error) {
	if err := r.sync(ctx, true); err != nil {
		return nil, err
	}
	subs := r.subs.Load()
	if r.cfg.Source != nil {
		subs = r.cfg.Source.Subscriptions()
	}
	out := &Decided{Event: ev, Key: key, Updates: map[string]patientindex.Record{}}

	// The patient's numbers: its family, and for a merge or a number
	// correction the retired number's family too (brought: the numbers it
	// adds).
	family := r.cfg.Index.Family(key)
	retired := ""
	var brought []string
	if n := Retires(ev); !n.IsZero() {
		retired = r.cfg.Pseudonym(n)
		for _, k := range r.cfg.Index.Family(retired) {
			if !slices.Contains(family, k) {
				family = append(family, k)
				brought = append(brought, k)
			}
		}
	}
	out.Family = family
	sets := make([][]consent.Directive, len(family))
	for i, k := range family {
		pc, err := r.cfg.Directives.For(k)
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "reading consent directives", err)
		}
		sets[i] = pc.Directives
		out.Versions = append(out.Versions, audit.DirectiveVersion{Patient: k, Version: pc.Version})
	}
	decider := consent.Merged{Decider: r.cfg.Decider, Others: sets[1:]}
	recs := make([]patientindex.Record, len(family))
	for i, k := range family {
		recs[i] = r.cfg.Index.Get(k)
	}
	rule, _ := event.RuleOf(ev.Type)
	rel := relation(rule.FollowUp)
	ref := mergedRef(recs, ev.Ref)

	facts := consent.Event{
		ID: ev.ID, Type: ev.Type, Publisher: ev.Publisher, Time: ev.Time,
		Labels: ev.Labels, HasDocument: ev.HasDocument, Confidential: ev.Confidential,
		GPPractice: ev.Patient.GPPractice, DischargeDestination: ev.DischargeDestination,
	}
	type cand struct {
		sub      *Subscription
		followUp bool
		// identity: an earlier recipient under a number the event
		// retires, decided as an update with orig.
		identity bool
		orig     consent.Original
	}
	var cands []cand
	named := map[string]bool{}
	for _, c := range subs.Match(ev, family...) {
		cands = append(cands, cand{sub: c.Subscription})
		named[c.Subscription.Recipient.ODS] = true
	}
	if ref != nil && (rel == consent.Updates || rel == consent.Corrects) {
		for _, ods := range sortedKeys(ref.Recipients) {
			rc := ref.Recipients[ods]
			if named[ods] || ods == ev.Publisher || (rel == consent.Corrects && !receivedCorrected(rule, rc)) {
				continue
			}
			if sub := earlierRecipient(subs, ods, rc.Basis); sub != nil {
				cands = append(cands, cand{sub: sub, followUp: true})
			}
		}
	}
	if len(brought) > 0 {
		held := heldUnder(recs[len(recs)-len(brought):])
		for _, ods := range sortedKeys(held) {
			if named[ods] || ods == ev.Publisher {
				continue
			}
			if sub := earlierRecipient(subs, ods, string(held[ods].Basis)); sub != nil {
				cands = append(cands, cand{sub: sub, followUp: true, identity: true, orig: held[ods]})
				named[ods] = true
			}
		}
	}

	sent := map[string]bool{}
	for _, c := range cands {
		sub := c.sub
		rel, orig := rel, original(ref, rule, rel, sub.Recipient.ODS)
		if c.identity {
			rel, orig = consent.Updates, c.orig
		}
		req := consent.Request{Event: facts, Recipient: sub.Recipient, Basis: sub.Basis, Directives: sets[0]}
		d, err := consent.FollowUp(ctx, decider, req, rel, orig)
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "deciding consent", err)
		}
		if d.Rule == "" || (d.Effect != consent.Permit && d.Effect != consent.Deny) {
			return nil, problem.New(problem.Internal, "consent decision without an effect or a rule")
		}
		v := Verdict{Subscription: sub, Decision: d, FollowUp: c.followUp, Relation: rel, Original: orig, Request: req, Form: formOf(d)}
		if rel == consent.Corrects && ref != nil && ref.Recipients[sub.Recipient.ODS] != nil {
			// A correction tells no more than the recipient was told.
			v.Form = event.Narrower(v.Form, correctedForm(rule, ref.Recipients[sub.Recipient.ODS]))
		}
		if d.Permitted() && !sent[sub.Recipient.ODS] {
			v.Copy, sent[sub.Recipient.ODS] = true, true
		}
		out.Verdicts = append(out.Verdicts, v)
	}

	// The previous GP practice learns that the registration ended.
	root := family[0]
	prevGP := latestGP(recs)
	if gp := ev.Patient.GPPractice; gp != "" && prevGP != "" && gp != prevGP && prevGP != ev.Publisher {
		if sub := firstOfBasis(subs, prevGP, consent.BasisRegisteredGP); sub != nil {
			nf := consent.Event{ID: ev.ID, Type: event.TypeRegistrationEnded, Publisher: ev.Publisher, Time: ev.Time, GPPractice: prevGP}
			req := consent.Request{Event: nf, Recipient: sub.Recipient, Basis: consent.BasisRegisteredGP, Directives: sets[0]}
			d, err := decider.Decide(ctx, req)
			if err != nil {
				return nil, problem.Wrap(problem.Unavailable, "deciding consent", err)
			}
			out.Verdicts = append(out.Verdicts, Verdict{Subscription: sub, Decision: d, Copy: d.Permitted(), Form: event.FormNotice,
				Request: req, Notice: NoticeRegistrationEnded})
		}
	}

	// A discharge withheld from where the patient is going.
	if ev.Type == event.TypeDischarge && r.cfg.WithheldNotice == NoticeContentFree && ev.DischargeDestination != "" && !sent[ev.DischargeDestination] {
		for _, v := range out.Verdicts {
			if v.Notice == "" && v.Subscription.Recipient.ODS == ev.DischargeDestination && v.Subscription.Basis == consent.BasisDischargeDestination && !v.Decision.Permitted() {
				out.Verdicts = append(out.Verdicts, Verdict{Subscription: v.Subscription, Copy: true, Form: event.FormNotice, Notice: NoticeWithheld,
					Decision: consent.Decision{Effect: consent.Permit, Rule: RuleWithheldNotice}})
				break
			}
		}
	}

	// What the patient index remembers.
	rootRec := recs[0]
	changed := false
	if ev.Ref != "" {
		f := rootRec.Refs[ev.Ref]
		if f == nil {
			f = &patientindex.Ref{}
			if rootRec.Refs == nil {
				rootRec.Refs = map[string]*patientindex.Ref{}
			}
			rootRec.Refs[ev.Ref] = f
		}
		if ref != nil && ref.Routed > f.Routed {
			// The reference is known under another number of the
			// family too (merged or corrected): copies routed from now
			// on come after every copy on it under any number (Copy.N),
			// so the re-check's AsOf cuts only what came after.
			f.Routed = ref.Routed
		}
		f.Last = r.now().UTC()
		for _, l := range ev.Labels {
			if !slices.Contains(f.Labels, l) {
				f.Labels = append(f.Labels, l)
			}
		}
		for _, v := range out.Verdicts {
			if v.Notice != "" {
				continue
			}
			if v.Copy {
				f.Receive(v.Subscription.Recipient.ODS, string(v.Subscription.Basis), string(v.Form), ev.Type, ev.Source, ev.ID)
			}
		}
		for _, v := range out.Verdicts {
			ods := v.Subscription.Recipient.ODS
			if v.Notice == "" && !v.Decision.Permitted() && !sent[ods] && f.Recipients[ods] == nil && !followUpRule(v.Decision.Rule) {
				f.Withhold(ods, v.Decision.Rule)
			}
		}
		changed = true
	}
	if gp := ev.Patient.GPPractice; gp != "" {
		rootRec.GP, rootRec.GPSeen = gp, r.now().UTC()
		changed = true
	}
	if retired != "" && retired != root && !slices.Contains(rootRec.Merged, retired) {
		rootRec.Merged = append(rootRec.Merged, retired)
		changed = true
		ret := r.cfg.Index.Get(retired)
		ret.MergedInto = root
		ret.Seq++
		out.Updates[retired] = ret
	}
	if changed {
		rootRec.Seq++
		out.Updates[root] = rootRec
	}
	return out, nil
}

// sync is the freshness barrier of routing and of the re-check: it
// returns once every consent change and patient index record acknowledged
// before the call is applied, and, for routing (subs), every change to the
// subscriptions (all looked up at once).
func (r *Router) sync(ctx context.Context, subs bool) error {
	idx := make(chan error, 1)
	go func() { idx <- r.cfg.Index.Sync(ctx) }()
	src := make(chan error, 1)
	if subs && r.cfg.Source != nil {
		go func() { src <- r.cfg.Source.Sync(ctx) }()
	} else {
		src <- nil
	}
	err := errors.Join(r.cfg.Directives.Sync(ctx), <-idx, <-src)
	if err != nil {
		return problem.Wrap(problem.Unavailable, "catching up with consent directives, the patient index and the subscriptions", err)
	}
	return nil
}

// relationName names a relation in audit records.
func relationName(r consent.Relation) string {
	switch r {
	case consent.Continues:
		return "continues"
	case consent.Updates:
		return "updates"
	case consent.Corrects:
		return "corrects"
	}
	return ""
}

// relation maps an event type's follow-up relation to consent's.
func relation(f event.FollowUp) consent.Relation {
	switch f {
	case event.Continues:
		return consent.Continues
	case event.Updates:
		return consent.Updates
	case event.Corrects:
		return consent.Corrects
	}
	return consent.Standalone
}

func followUpRule(rule string) bool {
	return rule == consent.RuleOriginalNotReceived || rule == consent.RuleOriginalWithheld
}

// mergedRef joins what every number of the family remembers of one
// reference; nil when none does. Its Routed is the highest of theirs.
func mergedRef(recs []patientindex.Record, ref string) *patientindex.Ref {
	if ref == "" {
		return nil
	}
	var out *patientindex.Ref
	for _, rec := range recs {
		f := rec.Refs[ref]
		if f == nil {
			continue
		}
		if out == nil {
			out = &patientindex.Ref{Recipients: map[string]*patientindex.Receipt{}, Withheld: map[string]string{}}
		}
		for _, l := range f.Labels {
			if !slices.Contains(out.Labels, l) {
				out.Labels = append(out.Labels, l)
			}
		}
		for k, v := range f.Recipients {
			if out.Recipients[k] == nil {
				c := *v
				c.Copies = maps.Clone(v.Copies)
				out.Recipients[k] = &c
			} else {
				o := out.Recipients[k]
				o.Types = append(slices.Clone(o.Types), v.Types...)
				if v.Form == string(event.FormFull) {
					o.Form = v.Form
				}
				if len(v.Copies) > 0 {
					if o.Copies == nil {
						o.Copies = map[string]patientindex.Copy{}
					}
					maps.Copy(o.Copies, v.Copies)
				}
			}
		}
		for k, v := range f.Withheld {
			out.Withheld[k] = v
		}
		out.Routed = max(out.Routed, f.Routed)
	}
	return out
}

// original is what the earlier events on the reference did for ods.
func original(ref *patientindex.Ref, rule event.TypeRule, rel consent.Relation, ods string) consent.Original {
	if ref == nil {
		return consent.Original{}
	}
	o := consent.Original{Labels: ref.Labels}
	if rc := ref.Recipients[ods]; rc != nil && (rel != consent.Corrects || receivedCorrected(rule, rc)) {
		o.Received, o.Basis = true, consent.Basis(rc.Basis)
	}
	if _, ok := ref.Withheld[ods]; ok {
		o.Withheld = true
	}
	return o
}

// receivedCorrected reports whether a recipient received an event the
// correction corrects.
func receivedCorrected(rule event.TypeRule, rc *patientindex.Receipt) bool {
	for _, t := range rc.Types {
		if rule.Corrects(t) {
			return true
		}
	}
	return false
}

// correctedForm is the fullest form in which a recipient received an event
// the correction corrects (the receipt's form, for a receipt that keeps no
// copies).
func correctedForm(rule event.TypeRule, rc *patientindex.Receipt) event.Form {
	if len(rc.Copies) == 0 {
		return event.Form(rc.Form)
	}
	form := event.FormNotification
	for _, c := range rc.Copies {
		if rule.Corrects(c.Type) && c.Form == string(event.FormFull) {
			form = event.FormFull
		}
	}
	return form
}

// earlierRecipient returns the candidate for a recipient that received an
// earlier event on basis: one of its subscriptions of that basis (any of
// its subscriptions if none), or nil if it is no longer a recipient.
func earlierRecipient(subs *Subscriptions, ods, basis string) *Subscription {
	all := subs.Of(ods)
	if len(all) == 0 {
		return nil
	}
	for _, s := range all {
		if string(s.Basis) == basis {
			return s
		}
	}
	c := *all[0]
	c.Basis = consent.Basis(basis)
	return &c
}

// Retires returns the NHS number an event retires into the patient's: the
// number a merge (patient-merged, HL7 A40) absorbs, or the number a
// correction (patient-updated with previousNhsNumber, HL7 A47) replaces.
// The router treats both alike: the retired number joins the patient's
// family in the patient index. Zero when the event retires none.
func Retires(ev *event.Event) nhs.Number {
	switch ev.Type {
	case event.TypePatientMerged:
		return ev.MergedNHSNumber
	case event.TypePatientUpdated:
		return ev.PreviousNHSNumber
	}
	return nhs.Number{}
}

// heldUnder is what the records of retired numbers say each recipient
// received about the patient, as the follow-up context of the event that
// retires them (an update of every reference it received): received, on
// the basis of its receipt on the reference routed to last, with the
// sensitivity categories of every reference it received. A recipient
// withheld everything is not in it: it holds nothing to update.
func heldUnder(recs []patientindex.Record) map[string]consent.Original {
	out := map[string]consent.Original{}
	last := map[string]time.Time{}
	for _, rec := range recs {
		for _, refKey := range sortedKeys(rec.Refs) {
			f := rec.Refs[refKey]
			for _, ods := range sortedKeys(f.Recipients) {
				rc := f.Recipients[ods]
				if rc == nil || len(rc.Types) == 0 {
					continue
				}
				o := out[ods]
				o.Received = true
				if t, seen := last[ods]; !seen || f.Last.After(t) {
					o.Basis, last[ods] = consent.Basis(rc.Basis), f.Last
				}
				for _, l := range f.Labels {
					if !slices.Contains(o.Labels, l) {
						o.Labels = append(o.Labels, l)
					}
				}
				out[ods] = o
			}
		}
	}
	return out
}

func firstOfBasis(subs *Subscriptions, ods string, b consent.Basis) *Subscription {
	for _, s := range subs.Of(ods) {
		if s.Basis == b {
			return s
		}
	}
	return nil
}

// latestGP is the GP practice most recently named for any of the numbers.
func latestGP(recs []patientindex.Record) string {
	gp, seen := "", time.Time{}
	for _, r := range recs {
		if r.GP != "" && (gp == "" || r.GPSeen.After(seen)) {
			gp, seen = r.GP, r.GPSeen
		}
	}
	return gp
}

func formOf(d consent.Decision) event.Form {
	if d.Has(consent.NotificationOnly) {
		return event.FormNotification
	}
	return event.FormFull
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Plan decides where msg goes without publishing anything.
func (r *Router) Plan(msg *message.Message) (*Plan, error) {
	key := msg.Metadata.Get(topic.MetaKey)
	ev, err := event.Unmarshal(msg.Payload)
	if err != nil {
		// Ingest validated it; an undecodable event here is a bug or a
		// foreign producer. Refuse it loudly and retry: never skip.
		return nil, problem.Wrap(problem.Internal, "decoding a routed event", err)
	}
	dec, err := r.Decide(msg.Context(), ev, key)
	if err != nil {
		return nil, err
	}
	return r.planOf(msg, ev, key, dec, nil)
}

// planOf makes the outbox copies, audit records and patient index records
// of a decided event; mark, when set, completes each audit record.
func (r *Router) planOf(msg *message.Message, ev *event.Event, key string, dec *Decided, mark func(*audit.Record)) (*Plan, error) {
	var err error
	plan := &Plan{Outbox: map[string][]*message.Message{}, commit: dec.Updates, verdicts: dec.Verdicts}
	bodies := map[event.Form][]byte{} // each form made at most once per event
	now := r.now().UTC()
	for _, v := range dec.Verdicts {
		sub, d := v.Subscription, v.Decision
		rec := audit.Record{
			Time: now, Kind: audit.KindDecision,
			EventID: ev.ID, EventType: ev.Type, Publisher: ev.Publisher, Patient: key,
			Recipient: sub.Recipient.ODS, Subscription: sub.ID, Basis: string(sub.Basis),
			Effect: string(d.Effect), Rule: d.Rule, Directive: d.DirectiveID, DirectiveVersions: dec.Versions,
		}
		rec.Relation = relationName(v.Relation)
		for _, o := range d.Obligations {
			rec.Obligations = append(rec.Obligations, string(o))
		}
		var body []byte
		copyID, copyType, copyKey := ev.ID, ev.Type, key
		switch v.Notice {
		case NoticeRegistrationEnded:
			n, err := event.RegistrationEnded(ev, sub.Recipient.ODS)
			if err != nil {
				return nil, problem.Wrap(problem.Internal, "making a registration-ended notice", err)
			}
			body, copyID, copyType = n.Body, n.ID, event.TypeRegistrationEnded
		case NoticeWithheld:
			n, err := event.WithheldNotice(ev, sub.Recipient.ODS, r.cfg.Contacts[ev.Publisher], now)
			if err != nil {
				return nil, problem.Wrap(problem.Internal, "making a withheld notice", err)
			}
			// No patient pseudonym goes with a content-free notice, not
			// even as its key.
			body, copyID, copyType, copyKey = n.Body, n.ID, event.TypeWithheldNotice, n.ID
		default:
			if v.Copy {
				if bodies[v.Form] == nil {
					if bodies[v.Form], err = ev.Shape(v.Form, r.cfg.Contacts[ev.Publisher]); err != nil {
						return nil, problem.Wrap(problem.Internal, "making the "+string(v.Form)+" form of a copy", err)
					}
				}
				body = bodies[v.Form]
			}
		}
		if v.Notice != "" {
			rec.EventID, rec.EventType, rec.About = copyID, copyType, ev.ID
		}
		if v.Copy {
			rec.Form = string(v.Form)
		}
		if mark != nil {
			mark(&rec)
		}
		plan.Audit = append(plan.Audit, auditMessage(rec, key))
		if !v.Copy {
			continue
		}
		out := message.NewMessage(copyID, body)
		out.Metadata.Set(topic.MetaKey, copyKey)
		out.Metadata.Set(topic.MetaSpecVersion, event.SpecVersion)
		out.Metadata.Set(topic.MetaEventID, copyID)
		out.Metadata.Set(topic.MetaEventType, copyType)
		out.Metadata.Set(topic.MetaSource, ev.Source)
		out.Metadata.Set("content-type", msg.Metadata.Get("content-type"))
		out.Metadata.Set(topic.MetaRecipient, sub.Recipient.ODS)
		out.Metadata.Set(topic.MetaBasis, string(sub.Basis))
		out.Metadata.Set(topic.MetaRule, d.Rule)
		out.Metadata.Set(topic.MetaForm, string(v.Form))
		if v.Notice != "" {
			out.Metadata.Set(topic.MetaAbout, ev.ID)
		}
		// Live copies carry when the event was accepted, for the
		// accepted-to-delivered latency; a backfill's copies (mark set)
		// do not: that latency would be the age of the backfill.
		if at := msg.Metadata.Get(topic.MetaAccepted); at != "" && mark == nil {
			out.Metadata.Set(topic.MetaAccepted, at)
		}
		if v.Notice != NoticeWithheld {
			sealed, err := r.cfg.Sealer.Seal(Sealed{Request: v.Request, Relation: v.Relation, Original: v.Original, Decision: d, Form: string(v.Form), Ref: ev.Ref})
			if err != nil {
				return nil, problem.Wrap(problem.Internal, "sealing a routing decision", err)
			}
			out.Metadata.Set(topic.MetaDecision, sealed)
		}
		t := topic.Outbox(sub.Recipient.ODS)
		plan.Outbox[t] = append(plan.Outbox[t], out)
	}
	for _, k := range sortedKeys(dec.Updates) {
		m, err := r.cfg.Index.Message(k, dec.Updates[k])
		if err != nil {
			return nil, problem.Wrap(problem.Internal, "encoding a patient index record", err)
		}
		plan.Index = append(plan.Index, m)
	}
	r.log.Debug("routed", zap.String("event_id", ev.ID), zap.String("event_type", ev.Type),
		zap.Int("verdicts", len(dec.Verdicts)), zap.Int("outboxes", len(plan.Outbox)))
	return plan, nil
}

func auditMessage(rec audit.Record, key string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
	m.Metadata.Set(topic.MetaKey, key)
	m.Metadata.Set(topic.MetaEventID, rec.EventID)
	return m
}

// Recheck decides a copy again at the moment of delivery: the sealed
// routing decision's request, with the directives of the patient's numbers
// as they are now (after the same freshness barrier as routing: every
// consent change, merge and patient index record acknowledged before the
// call), by the same Decider, in the follow-up context as the index says
// it is now (originalNow: a copy it followed that was since withheld at
// delivery counts as not received), combined with the routing decision by
// consent.Recheck. It returns the decision and the directive versions
// that decided.
func (r *Router) Recheck(ctx context.Context, key, sealed string) (consent.Decision, Sealed, []audit.DirectiveVersion, error) {
	s, err := r.cfg.Sealer.Open(sealed)
	if err != nil {
		return consent.Decision{}, Sealed{}, nil, err
	}
	if err := r.sync(ctx, false); err != nil {
		return consent.Decision{}, s, nil, err
	}
	family := r.cfg.Index.Family(key)
	sets := make([][]consent.Directive, len(family))
	var versions []audit.DirectiveVersion
	for i, k := range family {
		pc, err := r.cfg.Directives.For(k)
		if err != nil {
			return consent.Decision{}, s, nil, problem.Wrap(problem.Unavailable, "reading consent directives", err)
		}
		sets[i] = pc.Directives
		versions = append(versions, audit.DirectiveVersion{Patient: k, Version: pc.Version})
	}
	req := s.Request
	req.Directives = sets[0]
	decider := consent.Merged{Decider: r.cfg.Decider, Others: sets[1:]}
	var now consent.Decision
	if s.Request.Event.Type == event.TypeRegistrationEnded {
		now, err = decider.Decide(ctx, req)
	} else {
		orig, thin := r.originalNow(family, s)
		now, err = consent.FollowUp(ctx, decider, req, s.Relation, orig)
		if err == nil && thin && now.Permitted() && !now.Has(consent.NotificationOnly) {
			// A correction of what the recipient has, since, received
			// only as a notification (narrowed at delivery): no fuller.
			now.Obligations = append(slices.Clone(now.Obligations), consent.NotificationOnly)
		}
	}
	if err != nil {
		return consent.Decision{}, s, nil, problem.Wrap(problem.Unavailable, "deciding consent", err)
	}
	return consent.Recheck(s.Decision, now), s, versions, nil
}

// originalNow is the follow-up context of a sealed copy as the patient index
// says it is now: an earlier copy on the encounter withheld at delivery
// since the copy was routed (settled) makes the recipient one that was
// withheld the original, though the copy was routed when it counted as
// received (it waited behind that copy in the outbox). What the recipient
// had is what it had been routed before the copy (Ref.AsOf), less what was
// settled since. thin says a correction's recipient now has what it
// corrects only in the notification-only form (narrowed at delivery after
// the correction was routed): the correction goes in that form too. A
// reference the index no longer holds, or a copy sealed without one, keeps
// the sealed context.
func (r *Router) originalNow(family []string, s Sealed) (orig consent.Original, thin bool) {
	if s.Ref == "" || (s.Relation != consent.Updates && s.Relation != consent.Corrects) {
		return s.Original, false
	}
	recs := make([]patientindex.Record, len(family))
	for i, k := range family {
		recs[i] = r.cfg.Index.Get(k)
	}
	ref := mergedRef(recs, s.Ref)
	if ref == nil {
		return s.Original, false
	}
	ods := s.Request.Recipient.ODS
	ref.AsOf(ods, sealedSource(s), s.Request.Event.ID)
	rule, _ := event.RuleOf(s.Request.Event.Type)
	o := original(ref, rule, s.Relation, ods)
	// The sensitivity categories stay those it was routed with: this
	// reads only what the recipient has.
	o.Labels = s.Original.Labels
	if rc := ref.Recipients[ods]; s.Relation == consent.Corrects && rc != nil && receivedCorrected(rule, rc) {
		thin = correctedForm(rule, rc) == event.FormNotification
	}
	return o, thin
}

// sealedSource is the CloudEvents source of a sealed copy's event, in the
// form it was published in (event.Validator accepts no other source than
// "urn:ods:" and the publisher's ODS code), which names its copy in the
// patient index with its id (patientindex.CopyID).
func sealedSource(s Sealed) string {
	if s.Request.Event.Publisher == "" {
		return ""
	}
	return event.SourcePrefix + s.Request.Event.Publisher
}

// Narrow returns the notification-only form of a copy in the full form
// (for a copy that a directive recorded since routing makes thin).
func (r *Router) Narrow(body []byte) ([]byte, error) {
	ev, err := event.Unmarshal(body)
	if err != nil {
		return nil, err
	}
	return ev.Notification(r.cfg.Contacts[ev.Publisher])
}
