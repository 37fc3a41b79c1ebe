// Package feed is the sink connector for pull recipients: a GP system or a
// digital social care record that does not run an endpoint reads its events
// from the hub, at its own pace, by number.
//
// Deliver appends each event to the recipient's feed (connector.Feed, kept
// by the hub: durable, gapless, numbered 1, 2, 3, ... per recipient, the
// same numbers after restarts and rebalances, each event once). The
// recipient reads it over the hub's HTTP API with its own API key:
//
//	GET /v1/feeds/{recipient}?after=N&limit=L&wait=30s   events numbered after N, oldest first
//	GET /v1/feeds/{recipient}/status                    latest number and oldest available
//
// The answer's form follows Accept: application/json (default)
// {"events":[{"number":N,"event":{CloudEvent}}],"latest":M,"oldest":O};
// application/fhir+json, a FHIR R4 Bundle shaped as the Subscriptions R5
// Backport IG's notification bundle; text/event-stream, a live stream of
// Server-Sent Events whose ids are the numbers (resume with Last-Event-ID),
// with comment heartbeats. With nothing after N, wait long-polls: the
// request is answered as soon as an event arrives, or empty when wait ends.
//
// Each event is re-checked against consent as it is served
// (connector.ConsentCheck): one the patient has since withheld is served as
// its number alone ({"number":N,"withheld":true}), so the numbers stay
// gapless and the reader knows it missed nothing. Every read is audited
// (connector.ReadAudit) before it is answered. A read after N (or a stream
// resumed with Last-Event-ID N) acknowledges 1..N (connector.Feed's
// Acknowledge): the hub may remove acknowledged entries after its retention
// window, and a read from before the oldest kept is 410 Gone. A key reads its own
// recipient's feed only: any other is 403.
package feed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/retry"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"go.uber.org/zap"
)

// Type is the connector's type: the key of a recipient's section.
const Type = "feed"

// Factory is the feed sink's registration (connectors/all lists it).
var Factory = connector.SinkFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New: func(cfg connector.Config, env connector.SinkEnv) (connector.Sink, error) {
		return New(*cfg.(*Config), env)
	},
	Probe: &connector.SinkProbe{Receiver: probeReceiver, Env: probeEnv},
}

// Defaults.
const (
	DefaultMaxEvents = 100
	DefaultMaxWait   = 60 * time.Second
	DefaultHeartbeat = 15 * time.Second
)

// Topic is the canonical URL the FHIR rendering names as the subscription
// topic: every consented event for the recipient.
const Topic = "https://carehub.dev/fhir/SubscriptionTopic/recipient-events"

// Config is a recipient's feed section:
//
//	feed: {apiKey: {file: /run/secrets/b82005-key}, maxEvents: 100, maxWait: 60s, heartbeat: 15s}
type Config struct {
	// APIKey is the recipient's own key: it reads this feed and no other.
	APIKey connector.Secret `yaml:"apiKey" json:"apiKey"`
	// MaxEvents caps the events in one answer (limit), default 100.
	MaxEvents int `yaml:"maxEvents" json:"maxEvents"`
	// MaxWait caps a long-poll's wait, default 60s.
	MaxWait time.Duration `yaml:"maxWait" json:"maxWait"`
	// Heartbeat is the interval of a stream's keep-alive comments, default 15s.
	Heartbeat time.Duration `yaml:"heartbeat" json:"heartbeat"`
}

// DefaultConfig returns a configuration with every default applied.
func DefaultConfig() *Config {
	return &Config{MaxEvents: DefaultMaxEvents, MaxWait: DefaultMaxWait, Heartbeat: DefaultHeartbeat}
}

// ReaderKey implements connector.PullConfig.
func (c *Config) ReaderKey() connector.Secret { return c.APIKey }

// Validate reports every problem of the section.
func (c *Config) Validate() error {
	var errs []error
	if !c.APIKey.Set() {
		errs = append(errs, errors.New("apiKey: required: the recipient reads its feed with it"))
	} else if v, err := c.APIKey.Reveal(); err != nil {
		errs = append(errs, fmt.Errorf("apiKey: %w", err))
	} else if len(v) < 8 {
		errs = append(errs, errors.New("apiKey: must be at least 8 bytes"))
	}
	if c.MaxEvents < 1 || c.MaxEvents > 1000 {
		errs = append(errs, errors.New("maxEvents: between 1 and 1000"))
	}
	if c.MaxWait <= 0 || c.MaxWait > 5*time.Minute {
		errs = append(errs, errors.New("maxWait: between 1ms and 5m"))
	}
	if c.Heartbeat <= 0 {
		errs = append(errs, errors.New("heartbeat: must be positive"))
	}
	return errors.Join(errs...)
}

var _ connector.PullConfig = (*Config)(nil)

// Sink is one recipient's feed.
type Sink struct {
	cfg   Config
	env   connector.SinkEnv
	retry connector.Retry
	log   *zap.Logger
	now   func() time.Time
}

// New validates cfg and builds the sink. env must carry the pull fields.
func New(cfg Config, env connector.SinkEnv) (*Sink, error) {
	retry := env.Retry.WithDefaults()
	if err := errors.Join(cfg.Validate(), retry.Validate()); err != nil {
		return nil, fmt.Errorf("feed: %w", err)
	}
	if env.Feed == nil || env.Readers == nil || env.Consent == nil || env.Audit == nil {
		return nil, errors.New("feed: the hub must give a pull sink its feed, the readers' authenticator, the consent re-check and the read audit")
	}
	log := env.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Sink{cfg: cfg, env: env, retry: retry, log: log, now: time.Now}, nil
}

// AppendTimeout bounds one append to the feed. A stop of the hub does not
// cut an append short: this does.
const AppendTimeout = 30 * time.Second

// Deliver implements connector.Sink: the event is delivered once it is in
// the feed. Transient failures are retried with capped, jittered backoff,
// consent re-checked before each retry (connectors/connector/retry); when
// ctx ends, an append under way finishes and no other starts.
func (s *Sink) Deliver(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
	loop := retry.Loop{Retry: s.retry, Consent: s.env.Consent, AttemptTimeout: AppendTimeout}
	n, err := loop.Do(ctx, d, func(ctx context.Context, d connector.Delivery) error {
		num, err := s.env.Feed.Append(ctx, d)
		switch {
		case err == nil:
			s.log.Debug("appended to the feed", zap.String("event_id", d.EventID), zap.Int64("number", num))
			return nil
		case problem.KindOf(err) == problem.Internal || problem.KindOf(err) == problem.Invalid:
			if _, ok := connector.IsPermanent(err); !ok {
				return connector.Permanent("the feed refused the event: "+problem.Public(err), err)
			}
		}
		return err
	})
	return connector.Outcome{Attempts: n}, err
}

// dispatchers holds the routes of each mux: feeds share two patterns.
var dispatchers sync.Map // *http.ServeMux → *dispatcher

type dispatcher struct {
	mu      sync.RWMutex
	sinks   map[string]*Sink // by recipient ODS code
	readers connector.Authenticator
}

// RegisterHTTP implements connector.HTTPSink.
func (s *Sink) RegisterHTTP(mux *http.ServeMux) error {
	v, loaded := dispatchers.LoadOrStore(mux, &dispatcher{sinks: map[string]*Sink{}, readers: s.env.Readers})
	d := v.(*dispatcher)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, dup := d.sinks[s.env.Recipient]; dup {
		return fmt.Errorf("feed: recipient %s registered twice", s.env.Recipient)
	}
	d.sinks[s.env.Recipient] = s
	if !loaded {
		mux.HandleFunc("GET /v1/feeds/{recipient}", d.handle(false))
		mux.HandleFunc("GET /v1/feeds/{recipient}/status", d.handle(true))
	}
	return nil
}

func wantsFHIR(r *http.Request) bool { return strings.Contains(r.Header.Get("Accept"), media.FHIR) }

// fail answers with a problem document, or an OperationOutcome to a
// reader that asked for FHIR.
func fail(w http.ResponseWriter, r *http.Request, err error) {
	if !wantsFHIR(r) {
		problemhttp.Write(w, err)
		return
	}
	w.Header().Set("Content-Type", media.FHIR)
	status := problem.DetailsOf(err).Status
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(status)
	_, _ = w.Write(problem.OperationOutcome(err))
}

func (d *dispatcher) handle(status bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who, err := d.readers.Organisation(r)
		if err != nil {
			fail(w, r, err)
			return
		}
		if !strings.EqualFold(who, r.PathValue("recipient")) {
			fail(w, r, problem.New(problem.Forbidden, "a recipient's key reads that recipient's feed only"))
			return
		}
		d.mu.RLock()
		s := d.sinks[who]
		d.mu.RUnlock()
		if s == nil {
			fail(w, r, problem.New(problem.NotFound, "this recipient receives events another way: it has no feed"))
			return
		}
		if status {
			s.status(w, r)
			return
		}
		s.serve(w, r, who)
	}
}

func (s *Sink) status(w http.ResponseWriter, r *http.Request) {
	page, err := s.env.Feed.Read(r.Context(), math.MaxInt64, 1)
	if err != nil {
		fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", media.JSON)
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"recipient": s.env.Recipient, "latest": page.Latest, "oldest": page.Oldest})
}

// query is a parsed feed request.
type query struct {
	after int64
	limit int
	wait  time.Duration
}

func (s *Sink) parse(r *http.Request, stream bool) (query, error) {
	q := query{limit: s.cfg.MaxEvents}
	v := r.URL.Query()
	var vs []problem.Violation
	if a := v.Get("after"); a != "" {
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil || n < 0 {
			vs = append(vs, problem.Violation{Pointer: "/query/after", Rule: "feed-after", Detail: "after must be a number of the feed (0 or more)"})
		}
		q.after = n
	}
	if id := r.Header.Get("Last-Event-ID"); stream && id != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(id), 10, 64)
		if err != nil || n < 0 {
			vs = append(vs, problem.Violation{Pointer: "/header/Last-Event-ID", Rule: "feed-after", Detail: "Last-Event-ID must be a number of the feed"})
		}
		q.after = n
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > s.cfg.MaxEvents {
			vs = append(vs, problem.Violation{Pointer: "/query/limit", Rule: "feed-limit", Detail: fmt.Sprintf("limit must be between 1 and %d", s.cfg.MaxEvents)})
		}
		q.limit = n
	}
	if wt := v.Get("wait"); wt != "" {
		d, err := time.ParseDuration(wt)
		if err != nil {
			if secs, serr := strconv.Atoi(wt); serr == nil {
				d, err = time.Duration(secs)*time.Second, nil
			}
		}
		if err != nil || d < 0 || d > s.cfg.MaxWait {
			vs = append(vs, problem.Violation{Pointer: "/query/wait", Rule: "feed-wait", Detail: fmt.Sprintf("wait must be a duration (30s) or seconds, at most %s", s.cfg.MaxWait)})
		}
		q.wait = d
	}
	if len(vs) > 0 {
		return q, &problem.Error{Kind: problem.Invalid, Message: "the feed request is not valid", Violations: vs}
	}
	return q, nil
}

// served is one entry after the consent re-check.
type served struct {
	entry    connector.FeedEntry
	body     []byte // nil when withheld
	withheld bool
}

// take re-checks consent for each entry and audits the read; nothing is
// served unless both succeed.
func (s *Sink) take(ctx context.Context, who, via string, entries []connector.FeedEntry) ([]served, error) {
	out := make([]served, len(entries))
	rec := connector.FeedRead{Recipient: who, Via: via, Entries: make([]connector.FeedReadEntry, len(entries))}
	for i, e := range entries {
		rc, err := s.env.Consent.Recheck(ctx, e.Delivery)
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "consent could not be checked; retry", err)
		}
		out[i] = served{entry: e, body: rc.Body, withheld: !rc.Permit}
		if !rc.Permit {
			out[i].body = nil
		}
		rec.Entries[i] = connector.FeedReadEntry{Number: e.Number, EventID: e.Delivery.EventID, EventType: e.Delivery.EventType,
			Publisher: e.Delivery.EventSource, PatientRef: e.Delivery.PatientRef, Withheld: !rc.Permit, Rule: rc.Rule}
	}
	if len(entries) > 0 {
		if err := s.env.Audit.Record(ctx, rec); err != nil {
			return nil, problem.Wrap(problem.Unavailable, "the read could not be audited; retry", err)
		}
	}
	return out, nil
}

// wait waits until an entry after after exists, the wait ends, the client
// leaves or the hub drains.
func (s *Sink) wait(ctx context.Context, after int64, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.env.Feed.Changed(after):
	case <-s.env.Feed.Done():
	case <-ctx.Done():
	case <-t.C:
	}
}

// acknowledge records that the reader holds every entry up to after (it
// asked for what follows): retention may remove them once the window has
// passed. A failure is logged, not answered: the read goes on, and the
// entries are kept until a later read acknowledges them.
func (s *Sink) acknowledge(ctx context.Context, after int64) {
	if after <= 0 {
		return
	}
	if err := s.env.Feed.Acknowledge(ctx, after); err != nil && ctx.Err() == nil {
		s.log.Warn("recording the reader's acknowledgement", logging.Err(err))
	}
}

func (s *Sink) serve(w http.ResponseWriter, r *http.Request, who string) {
	stream := strings.Contains(r.Header.Get("Accept"), media.EventStream)
	q, err := s.parse(r, stream)
	if err != nil {
		fail(w, r, err)
		return
	}
	s.acknowledge(r.Context(), q.after)
	if stream {
		s.stream(w, r, who, q)
		return
	}
	ctx := r.Context()
	page, err := s.env.Feed.Read(ctx, q.after, q.limit)
	if err == nil && len(page.Entries) == 0 && q.wait > 0 {
		s.wait(ctx, q.after, q.wait)
		page, err = s.env.Feed.Read(ctx, q.after, q.limit)
	}
	if err != nil {
		fail(w, r, err)
		return
	}
	via := "json"
	if wantsFHIR(r) {
		via = "fhir"
	}
	got, err := s.take(ctx, who, via, page.Entries)
	if err != nil {
		fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if via == "fhir" {
		b, err := s.bundle(r, page, got)
		if err != nil {
			fail(w, r, err)
			return
		}
		w.Header().Set("Content-Type", media.FHIR)
		_, _ = w.Write(b)
		return
	}
	var b bytes.Buffer
	b.WriteString(`{"events":[`)
	for i, e := range got {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(entryJSON(e))
	}
	fmt.Fprintf(&b, `],"latest":%d,"oldest":%d}`, page.Latest, page.Oldest)
	b.WriteByte('\n')
	w.Header().Set("Content-Type", media.JSON)
	_, _ = w.Write(b.Bytes())
	s.log.Debug("feed read", zap.Int64("after", q.after), zap.Int("events", len(got)), zap.Int64("latest", page.Latest))
}

// entryJSON is one entry of the JSON form (and of an SSE data line).
func entryJSON(e served) []byte {
	if e.withheld {
		return []byte(fmt.Sprintf(`{"number":%d,"withheld":true}`, e.entry.Number))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"number":%d,"event":`, e.entry.Number)
	if err := json.Compact(&b, e.body); err != nil {
		b.WriteString("null")
	}
	b.WriteByte('}')
	return b.Bytes()
}

func (s *Sink) bundle(r *http.Request, page connector.FeedPage, got []served) ([]byte, error) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	sub := fhir.Subscription{Reference: scheme + "://" + r.Host + "/v1/feeds/" + s.env.Recipient, Topic: Topic, Latest: page.Latest}
	ns := make([]fhir.Notification, len(got))
	for i, e := range got {
		ns[i] = fhir.Notification{Number: e.entry.Number, Time: e.entry.Time, Withheld: e.withheld}
		if !e.withheld {
			ev, err := event.Unmarshal(e.body)
			if err != nil {
				return nil, problem.Wrap(problem.Internal, "decoding a feed entry", err)
			}
			ns[i].Event = ev
		}
	}
	return fhir.NotificationBundle(sub, ns, s.now())
}

// stream serves Server-Sent Events until the client leaves or the hub
// drains: each entry an event whose id is its number and whose type is the
// CloudEvents type ("withheld" for a withheld one), heartbeats between.
func (s *Sink) stream(w http.ResponseWriter, r *http.Request, who string, q query) {
	ctx := r.Context()
	rc := http.NewResponseController(w)
	// Make sure the first read works before committing to a stream.
	page, err := s.env.Feed.Read(ctx, q.after, q.limit)
	if err != nil {
		fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", media.EventStream)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprintf(w, "retry: 2000\n\n")
	_ = rc.Flush()
	after := q.after
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	for {
		if len(page.Entries) > 0 {
			got, err := s.take(ctx, who, "sse", page.Entries)
			if err != nil {
				s.log.Info("feed stream ended", logging.Err(err))
				return
			}
			for _, e := range got {
				typ := e.entry.Delivery.EventType
				if e.withheld {
					typ = "withheld"
				}
				if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.entry.Number, typ, entryJSON(e)); err != nil {
					return
				}
				after = e.entry.Number
			}
			if rc.Flush() != nil {
				return
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-s.env.Feed.Done():
				return
			case <-beat.C:
				if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
					return
				}
				continue
			case <-s.env.Feed.Changed(after):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.env.Feed.Done():
			return
		default:
		}
		if page, err = s.env.Feed.Read(ctx, after, q.limit); err != nil {
			s.log.Info("feed stream ended", logging.Err(err))
			return
		}
	}
}

var (
	_ connector.Sink     = (*Sink)(nil)
	_ connector.HTTPSink = (*Sink)(nil)
)
