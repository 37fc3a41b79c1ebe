package hub

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/deliver"
	"github.com/carehub/carehub/hub/directory"
	"github.com/carehub/carehub/hub/feedlog"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Timeouts of the fleet.
const (
	// fleetRetry is how soon a recipient that could not be started (its
	// topics could not be created, a secret's file is missing here) is
	// tried again.
	fleetRetry = 5 * time.Second
	// feedLoadTimeout bounds loading a pull recipient's feed.
	feedLoadTimeout = 30 * time.Second
	// feedRefreshTimeout bounds re-reading a pull recipient's feed start
	// after retention trimmed it.
	feedRefreshTimeout = 10 * time.Second
	// stopDelivererTimeout bounds stopping one deliverer (its in-flight
	// delivery ends at once; its consumer group is left and its offsets
	// committed).
	stopDelivererTimeout = 15 * time.Second
)

// fleet runs the directory's recipients in this process: each one's sink,
// its deliverer (a handler of the watermill Router on its outbox, in its
// consumer group) and, for a pull recipient, its feed and HTTP routes. It
// follows the directory: a recipient created, changed, deleted, paused or
// resumed through any process's admin API is started, restarted, stopped,
// paused or resumed here as soon as the change is read.
//
// Pausing stops the recipient's deliverers: a delivery in flight is
// abandoned at once (its retries end, and it is not committed), nothing is
// sent or retried while paused, and the copies wait in the outbox, the
// recipient's durable backlog. Resuming starts the deliverers again from
// the group's committed offsets: the abandoned copy first, in order.
//
// Concurrency: mu guards members, feeds and stopped, and serialises
// reconcile; httpSinks is swapped whole.
type fleet struct {
	h   *hub
	wm  *message.Router
	ctx context.Context // the deliveries' context: ends when the drain reaches the router

	mu      sync.Mutex
	members map[string]*member
	feeds   map[string]*feedlog.Log // pull recipients' feeds, kept while a recipient stays a pull recipient
	seq     int
	stopped bool

	// httpSinks holds the routes of the HTTP sinks (pull recipients'
	// feeds), rebuilt whole when they change: a ServeMux cannot forget a
	// route.
	httpSinks atomic.Pointer[http.ServeMux]
	// state is what reconcile last left, read by the readiness check and
	// the status page without waiting for a reconcile in progress.
	state atomic.Pointer[fleetState]
}

// fleetState is the fleet's members as reconcile left them.
type fleetState struct {
	members map[string]memberState
}

// memberState is one member as reconcile left it: why it does not
// deliver ("" when it does), and the deliverer's stopped channel.
type memberState struct {
	paused  bool
	why     string
	stopped <-chan struct{}
	feed    *feedlog.Log // a pull recipient's feed
}

// member is one recipient in this process.
type member struct {
	version int64
	sink    connector.Sink // nil when it could not be built (err)
	paused  bool
	run     *running // nil while not delivering
	err     error    // why it is not delivering, when it should be
}

// running is a started deliverer.
type running struct {
	handler *message.Handler
	sub     *kafkawm.Subscriber
	cancel  context.CancelFunc // ends its in-flight deliveries
}

func newFleet(h *hub, wm *message.Router, ctx context.Context) *fleet {
	f := &fleet{h: h, wm: wm, ctx: ctx, members: map[string]*member{}, feeds: map[string]*feedlog.Log{}}
	f.httpSinks.Store(http.NewServeMux())
	f.state.Store(&fleetState{})
	return f
}

// run reconciles whenever the directory changes, and retries what failed,
// until ctx ends.
func (f *fleet) run(ctx context.Context) {
	retry := time.NewTimer(fleetRetry)
	defer retry.Stop()
	for {
		changed := f.h.dir.Changed()
		retry.Reset(fleetRetry)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry.C:
			if !f.failing() {
				continue
			}
		}
		f.reconcile(ctx)
	}
}

func (f *fleet) failing() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.members {
		if m.err != nil {
			return true
		}
	}
	return false
}

// reconcile makes this process run what the directory holds.
func (f *fleet) reconcile(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	want := map[string]directory.Recipient{}
	for _, r := range f.h.dir.Recipients() {
		want[r.ODS] = r
	}
	// Keys first: a new recipient's key works once its routes are there.
	f.h.refreshKeys()
	routes := false
	for _, ods := range slices.Sorted(maps.Keys(f.members)) {
		if _, ok := want[ods]; ok {
			continue
		}
		m := f.members[ods]
		f.stopDeliverer(ods, m)
		if fl := f.feeds[ods]; fl != nil {
			fl.Close()
			delete(f.feeds, ods)
		}
		delete(f.members, ods)
		routes = true
		f.h.log.Info("recipient stopped: deleted", zap.String("recipient", ods))
	}
	// What is new or changed is built, its topics created in one request.
	var rebuild []directory.Recipient
	for _, ods := range slices.Sorted(maps.Keys(want)) {
		if m := f.members[ods]; m == nil || m.version != want[ods].Version || m.sink == nil {
			rebuild = append(rebuild, want[ods])
		}
	}
	topicsErr := f.ensureTopics(ctx, rebuild)
	for _, r := range rebuild {
		if m := f.members[r.ODS]; m != nil {
			f.stopDeliverer(r.ODS, m)
		}
		var sink connector.Sink
		err := topicsErr
		if err == nil {
			sink, err = f.build(ctx, r)
		}
		f.members[r.ODS] = &member{version: r.Version, sink: sink, err: err}
		routes = true
		if err != nil {
			f.h.log.Error("recipient not started", zap.String("recipient", r.ODS), zap.Int64("version", r.Version),
				zap.String("reason", problem.Public(problemOf(err))))
		}
	}
	// Deliverers stopped and started; those started run together.
	var started []string
	for _, ods := range slices.Sorted(maps.Keys(want)) {
		m := f.members[ods]
		m.paused = want[ods].Paused != nil
		switch {
		case m.sink == nil:
		case m.paused && m.run != nil:
			f.stopDeliverer(ods, m)
			f.h.log.Info("recipient paused: deliveries stopped", zap.String("recipient", ods))
		case !m.paused && m.run == nil:
			if m.err = f.addDeliverer(ods, m); m.err != nil {
				f.h.log.Error("recipient's deliverer not started", zap.String("recipient", ods), logging.Err(m.err))
				continue
			}
			started = append(started, ods)
		}
	}
	if len(started) > 0 {
		err := f.wm.RunHandlers(context.WithoutCancel(f.ctx))
		for _, ods := range started {
			m := f.members[ods]
			if err != nil {
				m.run.cancel()
				_ = m.run.sub.Close()
				m.run, m.err = nil, fmt.Errorf("starting the deliverer: %w", err)
				continue
			}
			f.h.log.Info("recipient delivering", zap.String("recipient", ods), zap.Int64("version", m.version))
		}
	}
	if routes {
		f.rebuildRoutes()
	}
	f.publishState()
}

// publishState records the members' state for check and Delivering.
// f.mu must be held.
func (f *fleet) publishState() {
	st := &fleetState{members: map[string]memberState{}}
	for ods, m := range f.members {
		ms := memberState{paused: m.paused, feed: f.feeds[ods]}
		switch {
		case m.paused:
			ms.why = "paused"
		case m.err != nil:
			ms.why = problem.Public(problemOf(m.err))
		case m.run == nil:
			ms.why = "not started"
		default:
			ms.stopped = m.run.handler.Stopped()
		}
		st.members[ods] = ms
	}
	f.state.Store(st)
}

// problemOf keeps errors of this package's making (topics, feeds) and of
// config (field names and rules) showable.
func problemOf(err error) error {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe
	}
	return problem.Wrap(problem.Internal, err.Error(), err)
}

// build makes a recipient's sink: for a pull recipient, its feed (loaded)
// first. Its topics exist (ensureTopics).
// f.mu must be held.
func (f *fleet) build(ctx context.Context, r directory.Recipient) (connector.Sink, error) {
	if r.Err != nil {
		return nil, r.Err
	}
	ods, cfg := r.ODS, f.h.cfg
	env := connector.SinkEnv{Recipient: ods, Retry: cfg.Delivery, Consent: f.h.parts.gate,
		Log: f.h.log.Named("deliver").With(zap.String("recipient", ods))}
	if _, pull := r.Config.Sink.Config.(connector.PullConfig); pull {
		fl := f.feeds[ods]
		if fl == nil {
			fl = feedlog.New(ods, topic.Feed(ods), f.h.log.Named("feed"))
			fl.Start(f.h.brokers)
			f.feeds[ods] = fl
		}
		lctx, cancel := context.WithTimeout(ctx, feedLoadTimeout)
		err := fl.WaitLoaded(lctx)
		cancel()
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "the recipient's feed did not load", err)
		}
		env.Feed, env.Readers, env.Audit = fl, f.h.readers, connector.ReadAuditFunc(f.h.auditRead)
	} else if fl := f.feeds[ods]; fl != nil {
		// No longer a pull recipient.
		fl.Close()
		delete(f.feeds, ods)
	}
	s, err := r.Config.Sink.New(env)
	if err != nil {
		return nil, problem.Wrap(problem.Invalid, "its "+r.Config.Sink.Type+" section: "+err.Error(), err)
	}
	return s, nil
}

// addDeliverer adds the recipient's deliverer to the watermill Router: it
// consumes the recipient's outbox once the Router runs its new handlers.
// f.mu must be held.
func (f *fleet) addDeliverer(ods string, m *member) error {
	dctx, cancel := context.WithCancel(f.ctx)
	d, err := deliver.New(dctx, ods, m.sink, f.h.parts.gate, f.h.pub, f.h.log.Named("deliver"))
	if err != nil {
		cancel()
		return err
	}
	d.Observe(f.h.metrics.Deliverer(ods))
	sub, err := kafkawm.NewSubscriber(kafkawm.SubscriberConfig{Brokers: f.h.brokers, ConsumerGroup: topic.DeliverGroup(ods)}, f.h.watermillLogger())
	if err != nil {
		cancel()
		return fmt.Errorf("subscribing as %s: %w", topic.DeliverGroup(ods), err)
	}
	f.seq++
	h := f.wm.AddConsumerHandler(fmt.Sprintf("deliver-%s-%d", ods, f.seq), topic.Outbox(ods), sub, d.Handle)
	m.run = &running{handler: h, sub: sub, cancel: cancel}
	return nil
}

// ensureTopics creates the topics of the recipients that this process has
// not seen created (the configuration file's were, at start), in one
// request. f.mu must be held.
func (f *fleet) ensureTopics(ctx context.Context, rs []directory.Recipient) error {
	k := f.h.cfg.Kafka
	var specs []broker.TopicSpec
	var names []string
	for _, r := range rs {
		if r.Err != nil {
			continue
		}
		want := []broker.TopicSpec{topic.OutboxSpec(k.Partitions, k.ReplicationFactor, r.ODS)}
		if _, pull := r.Config.Sink.Config.(connector.PullConfig); pull {
			want = append(want, topic.FeedSpecs(k.ReplicationFactor, []string{r.ODS})...)
		}
		for _, s := range want {
			if !f.h.made[s.Name] {
				specs, names = append(specs, s), append(names, s.Name)
			}
		}
	}
	if len(specs) == 0 {
		return nil
	}
	if err := broker.EnsureTopics(ctx, f.h.brokers, specs); err != nil {
		return problem.Wrap(problem.Unavailable, "the recipient's topics could not be created", err)
	}
	for _, n := range names {
		f.h.made[n] = true
	}
	return nil
}

// stopDeliverer ends a recipient's deliveries in flight, then its
// subscription (committing what was delivered, leaving the group).
// f.mu must be held.
func (f *fleet) stopDeliverer(ods string, m *member) {
	if m.run == nil {
		return
	}
	r := m.run
	m.run = nil
	r.cancel()
	r.handler.Stop()
	select {
	case <-r.handler.Stopped():
	case <-time.After(stopDelivererTimeout):
		f.h.log.Warn("a deliverer did not stop in time", zap.String("recipient", ods))
	}
	_ = r.sub.Close()
}

// rebuildRoutes registers every HTTP sink's routes on a new mux.
// f.mu must be held.
func (f *fleet) rebuildRoutes() {
	mux := http.NewServeMux()
	for _, ods := range slices.Sorted(maps.Keys(f.members)) {
		m := f.members[ods]
		hs, ok := m.sink.(connector.HTTPSink)
		if !ok {
			continue
		}
		if err := hs.RegisterHTTP(mux); err != nil {
			m.err = problem.Wrap(problem.Internal, "registering its HTTP routes: "+err.Error(), err)
		}
	}
	f.httpSinks.Store(mux)
}

// serve answers a request with an HTTP sink's route, if one has it.
func (f *fleet) serve(w http.ResponseWriter, r *http.Request) bool {
	mux := f.httpSinks.Load()
	if _, pattern := mux.Handler(r); pattern == "" {
		return false
	}
	mux.ServeHTTP(w, r)
	return true
}

// drainFeeds ends the long-polls and streams of pull recipients.
func (f *fleet) drainFeeds() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fl := range f.feeds {
		fl.Drain()
	}
}

// stop stops reconciling and closes the feeds; the deliverers stop with
// the watermill Router, which must have been closed first.
func (f *fleet) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	closers := make([]func(), 0, len(f.feeds))
	for ods, fl := range f.feeds {
		closers = append(closers, fl.Close)
		delete(f.feeds, ods)
	}
	closeAll(closers) // at once: each waits for its tailer's fetch to end
}

// check is the readiness check "deliverers": every recipient of the
// directory that is not paused has its deliverer running here. It never
// waits for a reconcile in progress.
func (f *fleet) check() (bool, string) {
	st := f.state.Load()
	var bad []string
	for _, ods := range slices.Sorted(maps.Keys(st.members)) {
		m := st.members[ods]
		switch {
		case m.paused:
		case m.why != "":
			bad = append(bad, ods+": "+m.why)
		default:
			select {
			case <-m.stopped:
				bad = append(bad, ods+": its deliverer stopped")
			default:
			}
		}
	}
	if len(bad) > 0 {
		return false, "not delivering to " + strings.Join(bad, "; ")
	}
	return true, ""
}

// checkFeeds is the readiness check "feeds": every pull recipient's feed
// has read its topic and still follows it (a feed serves what it has read).
func (f *fleet) checkFeeds() (bool, string) {
	st := f.state.Load()
	var bad []string
	for _, ods := range slices.Sorted(maps.Keys(st.members)) {
		fl := st.members[ods].feed
		if fl == nil {
			continue
		}
		select {
		case <-fl.Stopped():
			bad = append(bad, ods+": its feed stopped following its topic")
		default:
			if !fl.Loaded() {
				bad = append(bad, ods+": its feed is loading")
			}
		}
	}
	if len(bad) > 0 {
		return false, "not serving " + strings.Join(bad, "; ")
	}
	return true, ""
}

// Delivering reports whether this process runs the recipient's
// deliverer now, and if not, why (for the recipient's status).
func (f *fleet) Delivering(ods string) (bool, string) {
	m, ok := f.state.Load().members[ods]
	switch {
	case !ok:
		return false, "not started yet"
	case m.why != "":
		return false, m.why
	}
	select {
	case <-m.stopped:
		return false, "its deliverer stopped"
	default:
	}
	return true, ""
}

// ensureTopics creates a recipient's topics if missing: its outbox, and a
// pull recipient's feed.
func (h *hub) ensureTopics(ctx context.Context, r *config.Recipient) error {
	k := h.cfg.Kafka
	specs := []broker.TopicSpec{topic.OutboxSpec(k.Partitions, k.ReplicationFactor, r.ODS)}
	if _, pull := r.Sink.Config.(connector.PullConfig); pull {
		specs = append(specs, topic.FeedSpecs(k.ReplicationFactor, []string{r.ODS})...)
	}
	if err := broker.EnsureTopics(ctx, h.brokers, specs); err != nil {
		return problem.Wrap(problem.Unavailable, "the recipient's topics could not be created", err)
	}
	return nil
}

// refreshKeys rebuilds the API keys from the file's and the directory's:
// recipients' own keys, and pull recipients' reader keys.
func (h *hub) refreshKeys() {
	own, readers := h.dir.Keys()
	m := maps.Clone(h.parts.keyMap)
	for k, ods := range own {
		if _, taken := m[k]; !taken {
			m[k] = auth.RecipientPrincipal(ods)
		}
	}
	if k, err := auth.New(m); err == nil {
		h.keys.Store(k)
	}
	if k, err := auth.New(readers); err == nil {
		h.readers.Store(k)
	}
}
