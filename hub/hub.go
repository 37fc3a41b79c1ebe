// Package hub runs one carehub process. It knows connectors only through
// the contract in connectors/connector: the configuration (hub/config)
// carries each connector section decoded by its registered factory, and
// the hub builds, registers and runs them without knowing their types.
//
// # Start
//
// Run starts the parts in this order, and stops at the first that fails,
// undoing what had started:
//
//  1. build: read patient lists and certificates, construct every source
//     and sink, compile the schemas (no broker, no port: every problem in
//     one error);
//  2. the broker: the embedded one (with its data directory locked), or the
//     cluster's addresses;
//  3. the topics, created if missing;
//  4. the publisher; the consent store and the patient index, which load
//     every directive and every patient's record before anything is routed;
//     and the memory of accepted events (package dedup), which loads every
//     event accepted within the duplicate window before anything is
//     accepted;
//  5. the recipient directory (package directory: recipients,
//     subscriptions, pauses, patient lists), loaded, then seeded from the
//     configuration file and its patient list files;
//  6. the router (gated: it routes only events whose publisher was told
//     they were accepted, package ackgate), and, under the same watermill
//     Router, one deliverer per recipient of the directory that is not
//     paused, with each pull recipient's feed (fleet.go: the deliverers
//     follow the directory from then on);
//  7. the HTTP API (admin routes, then each source's routes), and each
//     source's Run, and the retention sweeper; then the hub is ready
//     (/readyz answers 200).
//
// # Stop
//
// When Run's context ends (SIGTERM) it drains in the reverse order: not
// ready; the sources stop taking input and answer what they hold (an MLLP
// listener its messages in flight); the HTTP server stops accepting and
// answers the requests in flight; every deliverer is told to stop, and each
// sink lets the attempt already on the wire finish and starts no other
// (connector.Sink); the router and deliverers stop, committing what was
// delivered (what did not finish stays uncommitted and is redelivered);
// the memory of accepted events, the recipient directory, the consent
// store, the publisher and the embedded broker close. Everything that
// could publish has stopped before the publisher closes.
package hub

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/ackgate"
	"github.com/carehub/carehub/hub/admin"
	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/backfill"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/consentstore"
	"github.com/carehub/carehub/hub/dedup"
	"github.com/carehub/carehub/hub/directory"
	"github.com/carehub/carehub/hub/diskguard"
	"github.com/carehub/carehub/hub/health"
	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/ingest"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/metrics"
	"github.com/carehub/carehub/hub/patientindex"
	"github.com/carehub/carehub/hub/retention"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Timeouts of the start and stop order.
const (
	// ReadHeaderTimeout and ReadTimeout bound reading one HTTP request.
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 60 * time.Second
	// ShutdownTimeout bounds answering the HTTP requests in flight.
	ShutdownTimeout = 20 * time.Second
	// RouterCloseTimeout bounds stopping the router and deliverers.
	RouterCloseTimeout = 15 * time.Second
	// BrokerProbeInterval is how often /readyz's broker check asks a
	// broker for metadata, and how long it waits for the answer.
	BrokerProbeInterval = 2 * time.Second
)

// Options are the command-line overrides of the configuration.
type Options struct {
	// Ready, when set, is called once the hub serves and routes, with the
	// HTTP address and the broker addresses.
	Ready func(httpAddr string, brokers []string)
	// Reload, when set, asks the hub to read its patient list files again
	// (carehub serve sends on it for SIGHUP) and to write each list that
	// changed to the recipient directory, for every process. A list that
	// no longer reads is reported and the previous lists stay in force.
	Reload <-chan struct{}
}

// hub is one running process. Its fields are set by Run's steps in order;
// stops holds what undoes each started step, run last-first.
type hub struct {
	cfg   *config.Config
	log   *zap.Logger
	parts *parts

	brokers  []string
	pub      *kafkawm.Publisher
	store    *consentstore.Store
	accepted *dedup.Store
	index    *patientindex.Index
	dir      *directory.Directory
	fleet    *fleet
	keys     *auth.Live      // the file's keys and recipients' own keys
	readers  *auth.Live      // pull recipients' reader keys
	made     map[string]bool // topics created at start (the fleet creates the others; guarded by fleet.mu after start)
	router   *route.Router
	wm       *message.Router
	wmErr    chan error
	mux      *http.ServeMux
	envs     []connector.Env // what each source is given, by input
	metrics  *metrics.Metrics
	running  *health.Running // the router's handler (the fleet watches the deliverers)
	ln       net.Listener
	srv      *http.Server
	srvErr   chan error
	checks   *health.Checks
	started  *health.Flag     // set once every part has started; cleared when the drain begins
	disk     *diskguard.Guard // the embedded broker's; nil on a Kafka cluster
	stops    []stop
	stopping context.CancelFunc // ends in-flight deliveries' retries

	// trace, when set (tests), is told each start and stop step by name.
	trace func(step string)
	// freeSpace, when set (tests), measures the data directory's
	// filesystem for the disk guard instead of statfs.
	freeSpace diskguard.SpaceFunc
	now       func() time.Time
}

type stop struct {
	name string
	fn   func()
}

// Run runs a hub until ctx ends, then drains. It returns an error if the hub
// could not start or failed while running.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger, opts Options) error {
	return run(ctx, &hub{cfg: cfg, log: log}, opts)
}

func run(ctx context.Context, h *hub, opts Options) error {
	if h.now == nil {
		h.now = time.Now
	}
	h.checks = health.New()
	h.started = health.NewFlag("starting")
	h.checks.Add("started", h.started.Check)
	h.running = health.NewRunning()
	h.metrics = metrics.New()
	h.metrics.WatchReadiness(h.checks)
	defer h.stopAll()
	for _, step := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"build", h.build},
		{"broker", h.startBroker},
		{"topics", h.createTopics},
		{"publisher", h.startPublisher},
		{"consent", h.loadConsent},
		{"accepted", h.loadAccepted},
		{"recipients", h.loadRecipients},
		{"router", h.startRouter},
		{"http", h.startHTTP},
		{"sources", h.startSources},
		{"retention", h.startRetention},
	} {
		h.note("start " + step.name)
		if err := step.fn(ctx); err != nil {
			return fmt.Errorf("starting carehub: %s: %w", step.name, err)
		}
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
	}
	h.started.Set(true, "")
	h.log.Info("carehub ready", zap.String("http", h.ln.Addr().String()), zap.Strings("brokers", h.brokers),
		zap.Int("recipients", len(h.dir.Recipients())), zap.Int("sources", len(h.cfg.Sources)), zap.Int("inputs", len(h.cfg.Inputs)))
	if opts.Ready != nil {
		opts.Ready(h.ln.Addr().String(), h.brokers)
	}
	if opts.Reload != nil {
		go h.reloadLists(ctx, opts.Reload)
	}

	var runErr error
	select {
	case <-ctx.Done():
		h.log.Info("stopping: draining")
	case err := <-h.srvErr:
		runErr = fmt.Errorf("HTTP server: %w", err)
	case err := <-h.wmErr:
		runErr = fmt.Errorf("router stopped: %w", err)
	}
	h.started.Set(false, "draining")
	h.stopAll()
	h.log.Info("stopped")
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) {
		return runErr
	}
	return nil
}

func (h *hub) note(step string) {
	if h.trace != nil {
		h.trace(step)
	}
}

// onStop registers what undoes a step.
func (h *hub) onStop(name string, fn func()) { h.stops = append(h.stops, stop{name, fn}) }

// stopAll undoes every started step, last first, once.
func (h *hub) stopAll() {
	for len(h.stops) > 0 {
		s := h.stops[len(h.stops)-1]
		h.stops = h.stops[:len(h.stops)-1]
		h.note("stop " + s.name)
		s.fn()
	}
}

// build makes every part that needs no broker.
func (h *hub) build(context.Context) error {
	p, err := build(h.cfg, h.log, pullHooks{audit: connector.ReadAuditFunc(h.auditRead)})
	if err != nil {
		return err
	}
	h.parts = p
	h.keys, h.readers = auth.NewLive(p.keys), auth.NewLive(&auth.Keys{})
	return nil
}

// startBroker starts the embedded broker, or takes the cluster's addresses.
func (h *hub) startBroker(ctx context.Context) error {
	if len(h.cfg.Kafka.Brokers) > 0 {
		h.brokers = h.cfg.Kafka.Brokers
		h.log.Info("using Kafka cluster", zap.Strings("brokers", h.brokers))
		return nil
	}
	k := h.cfg.Kafka
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{
		DataDir:           h.cfg.DataDir,
		Addr:              k.EmbeddedAddr,
		Partitions:        int32(k.Partitions),
		SyncWrites:        k.SyncWrites,
		Logger:            h.log.Named("broker"),
		MinFreeBytes:      k.MinFreeBytes,
		MinFreeFraction:   k.MinFreeFraction,
		HardMinFreeBytes:  k.HardMinFreeBytes,
		DiskCheckInterval: k.DiskCheckInterval,
		FreeSpace:         h.freeSpace,
	})
	if err != nil {
		return fmt.Errorf("starting the embedded broker: %w", err)
	}
	h.onStop("broker", func() {
		if err := emb.Close(); err != nil {
			h.log.Error("closing the embedded broker", logging.Err(err))
		}
	})
	h.brokers = emb.Addrs()
	h.disk = emb.DiskGuard()
	h.checks.Add("disk", h.disk.OK)
	h.log.Info("embedded broker started", zap.Strings("addrs", h.brokers), zap.String("data_dir", h.cfg.DataDir))
	return nil
}

func (h *hub) createTopics(ctx context.Context) error {
	recipients := make([]string, len(h.cfg.Recipients))
	for i, r := range h.cfg.Recipients {
		recipients[i] = r.ODS
	}
	ret := topic.Retention{Events: h.cfg.Retention.Events.D(), Audit: h.cfg.Retention.Audit.D()}
	specs := topic.Specs(h.cfg.Kafka.Partitions, h.cfg.Kafka.ReplicationFactor, recipients, ret)
	var pull []string
	for _, r := range h.cfg.Recipients {
		if _, ok := r.Sink.Config.(connector.PullConfig); ok {
			pull = append(pull, r.ODS)
		}
	}
	specs = append(specs, topic.FeedSpecs(h.cfg.Kafka.ReplicationFactor, pull)...)
	specs = append(specs, topic.AcceptedSpec(h.cfg.Kafka.ReplicationFactor, h.cfg.Ingest.DuplicateWindow))
	if err := broker.EnsureTopics(ctx, h.brokers, specs); err != nil {
		return fmt.Errorf("creating topics: %w", err)
	}
	h.made = map[string]bool{}
	for _, s := range specs {
		h.made[s.Name] = true
	}
	// A retention changed since the topics were created applies too.
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{topic.Events, ret.Events}, {topic.Audit, ret.Audit}} {
		if err := broker.SetTopicConfigs(ctx, h.brokers, t.name, topic.RetentionConfigs(t.d)); err != nil {
			return fmt.Errorf("setting the retention of %s: %w", t.name, err)
		}
	}
	// carehub.accepted created by an earlier version is compacted: make it
	// delete-only (compaction could reorder an attempt's record and void),
	// and raise its retention to the configured window, never lower it: a
	// process started with a shorter window must not cut records the others
	// still rely on (lowering ingest.duplicateWindow needs every process
	// stopped; README).
	if err := broker.RaiseTopicConfigs(ctx, h.brokers, topic.Accepted, topic.AcceptedConfigs(h.cfg.Ingest.DuplicateWindow)); err != nil {
		return fmt.Errorf("setting the configs of %s: %w", topic.Accepted, err)
	}
	// From now on the hub is ready only while a broker answers.
	probeCtx, stopProbe := context.WithCancel(context.WithoutCancel(ctx))
	h.onStop("broker probe", stopProbe)
	probe := health.StartProbe(probeCtx, BrokerProbeInterval, BrokerProbeInterval, func(ctx context.Context) error {
		return broker.Ping(ctx, h.brokers, topic.Events)
	})
	h.checks.Add("broker", probe.Check)
	h.metrics.WatchKafka(metrics.KafkaConfig{Brokers: h.brokers, Log: h.log.Named("metrics")})
	return nil
}

func (h *hub) watermillLogger() watermill.LoggerAdapter { return kafkawm.NewLogger(h.log, false) }

func (h *hub) startPublisher(context.Context) error {
	pub, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: h.brokers, BatchTimeout: h.cfg.Kafka.Linger,
		WriteTimeout: h.cfg.Kafka.PublishTimeout}, h.watermillLogger())
	if err != nil {
		return fmt.Errorf("creating the publisher: %w", err)
	}
	h.pub = pub
	h.onStop("publisher", func() { _ = pub.Close() })
	return nil
}

// loadConsent opens the consent store and the patient index and waits
// until every directive and record is loaded: nothing is routed before.
func (h *hub) loadConsent(ctx context.Context) error {
	store, err := consentstore.Open(h.brokers, topic.Consent, topic.Audit, h.log.Named("consent"))
	if err != nil {
		return fmt.Errorf("opening the consent store: %w", err)
	}
	h.store = store
	h.onStop("consent", func() { _ = store.Close() })
	index, err := patientindex.Open(h.brokers, topic.Patients, h.cfg.Retention.FollowUps.D(), h.log.Named("patients"))
	if err != nil {
		return fmt.Errorf("opening the patient index: %w", err)
	}
	h.index = index
	h.onStop("patient index", func() { _ = index.Close() })
	h.checks.Add("consent", func() (bool, string) {
		switch {
		case !store.Loaded():
			return false, "consent directives not loaded yet"
		case !index.Loaded():
			return false, "the patient index is not loaded yet"
		}
		return true, ""
	})
	if err := store.WaitLoaded(ctx); err != nil {
		return fmt.Errorf("loading consent directives: %w", err)
	}
	if err := index.WaitLoaded(ctx); err != nil {
		return fmt.Errorf("loading the patient index: %w", err)
	}
	return nil
}

// loadAccepted opens the memory of accepted events and waits until it holds
// every event accepted within the duplicate window: nothing is accepted
// before, so that no retry of an event accepted before a restart is
// published again.
func (h *hub) loadAccepted(ctx context.Context) error {
	s, err := dedup.Open(h.brokers, topic.Accepted, h.cfg.Ingest.DuplicateWindow, h.cfg.Kafka.PublishTimeout, h.log.Named("accepted"))
	if err != nil {
		return fmt.Errorf("opening the memory of accepted events: %w", err)
	}
	h.accepted = s
	h.onStop("accepted", func() { _ = s.Close() })
	if err := s.WaitLoaded(ctx); err != nil {
		return fmt.Errorf("loading accepted events: %w", err)
	}
	return nil
}

// loadRecipients opens the recipient directory, waits until it is loaded,
// and seeds it from the configuration file: its recipients, and its patient
// list files (directory.Directory.Seed and SeedList say which wins).
func (h *hub) loadRecipients(ctx context.Context) error {
	reg := h.cfg.Registry()
	if reg == nil {
		return errors.New("the configuration was not decoded with a connector registry")
	}
	key, err := h.cfg.Pseudonym.Reveal()
	if err != nil {
		return err
	}
	dir, err := directory.Open(directory.Config{Brokers: h.brokers, Topic: topic.Subscriptions, AuditTopic: topic.Audit,
		Registry: reg, PseudonymKey: []byte(key), Pseudonym: h.parts.pseudo.Pseudonym, Reserved: h.parts.keys.Lookup,
		Prepare: h.ensureTopics, Log: h.log.Named("recipients")})
	if err != nil {
		return fmt.Errorf("opening the recipient directory: %w", err)
	}
	h.dir = dir
	h.onStop("recipients", func() { _ = dir.Close() })
	h.checks.Add("subscriptions", func() (bool, string) {
		if dir.Loaded() {
			return true, ""
		}
		return false, "the recipients, subscriptions and patient lists (carehub.subscriptions) are not loaded yet"
	})
	if err := dir.WaitLoaded(ctx); err != nil {
		return fmt.Errorf("loading the recipient directory: %w", err)
	}
	if err := dir.Seed(ctx, h.cfg.Recipients); err != nil {
		return fmt.Errorf("applying the configuration file's recipients: %w", err)
	}
	return h.seedLists(ctx, h.parts.lists)
}

// seedLists writes the patient lists read from files to the directory,
// each only if it changed since it was last written.
func (h *hub) seedLists(ctx context.Context, lists map[string][]nhs.Number) error {
	var errs []error
	for _, ods := range slices.Sorted(maps.Keys(lists)) {
		wrote, err := h.dir.SeedList(ctx, ods, lists[ods])
		if err != nil {
			errs = append(errs, fmt.Errorf("the patient list of %s: %w", ods, err))
			continue
		}
		if wrote {
			h.log.Info("patient list file applied", zap.String("recipient", ods), zap.Int("patients", len(lists[ods])))
		}
	}
	return errors.Join(errs...)
}

// startRouter starts the router on carehub.events and, under the same
// watermill Router, the fleet: one deliverer per recipient of the
// directory that is not paused.
func (h *hub) startRouter(ctx context.Context) error {
	p := h.parts
	contacts := map[string]string{}
	for _, s := range h.cfg.Sources {
		if s.Contact != "" {
			contacts[s.ODS] = s.Contact
		}
	}
	rt, err := route.New(route.Config{Subscriptions: h.dir.Subscriptions(), Source: h.dir, Decider: &p.policy, Directives: h.store, Index: h.index,
		Publisher: h.pub, Pseudonym: p.pseudo.Pseudonym, Sealer: p.sealer, Contacts: contacts,
		WithheldNotice: route.WithheldNotice(h.cfg.Consent.WithheldDischarge), Observer: h.metrics, Log: h.log.Named("router")})
	if err != nil {
		return fmt.Errorf("creating the router: %w", err)
	}
	h.router = rt
	p.gate.Set(rt)
	wlog := h.watermillLogger()
	wm, err := message.NewRouter(message.RouterConfig{CloseTimeout: RouterCloseTimeout}, wlog)
	if err != nil {
		return fmt.Errorf("creating the watermill router: %w", err)
	}
	wm.AddMiddleware(middleware.Recoverer)
	if h.disk != nil {
		wm.AddMiddleware(pauseWhile(h.disk.RouteOK, h.disk.Changed, h.log))
	}
	subscriber := func(group string) (message.Subscriber, error) {
		s, err := kafkawm.NewSubscriber(kafkawm.SubscriberConfig{Brokers: h.brokers, ConsumerGroup: group}, wlog)
		if err != nil {
			return nil, fmt.Errorf("subscribing as %s: %w", group, err)
		}
		return s, nil
	}
	evSub, err := subscriber(topic.GroupRouter)
	if err != nil {
		return err
	}
	// Only events whose publisher was told they were accepted are routed:
	// one written by the broker after the ingest gave up (answered 503,
	// HL7 AR) is recorded as not acknowledged instead (package ackgate).
	gate, err := ackgate.New(ackgate.Config{Memory: h.accepted, Publisher: h.pub, Next: rt.Handle,
		Timeout: h.cfg.Kafka.PublishTimeout, Window: h.cfg.Ingest.DuplicateWindow, Dropped: h.metrics.NotAcknowledged, Log: h.log.Named("router"),
		EndOffset: func(ctx context.Context, partition int) (int64, error) {
			return broker.EndOffset(ctx, h.brokers, topic.Events, partition)
		}})
	if err != nil {
		return fmt.Errorf("creating the router: %w", err)
	}
	routeHandler := wm.AddConsumerHandler("route", topic.Events, evSub, gate.Handle)

	// Deliveries stop when the drain reaches the router, not when ctx
	// ends (the sources and the HTTP server drain first).
	deliveries, stopDeliveries := context.WithCancel(context.WithoutCancel(ctx))
	h.stopping = stopDeliveries

	h.wmErr = make(chan error, 1)
	go func() { h.wmErr <- wm.Run(context.WithoutCancel(ctx)) }()
	h.wm = wm
	h.fleet = newFleet(h, wm, deliveries)
	fleetCtx, stopFleet := context.WithCancel(context.WithoutCancel(ctx))
	fleetDone := make(chan struct{})
	h.onStop("router", func() {
		stopFleet()
		<-fleetDone
		// Told now, each deliverer's attempt on the wire finishes and is
		// acknowledged while its subscription waits for it (the
		// subscriber waits half its rebalance timeout); nothing new
		// starts. Regression (TestStopMidDeliveryDeliversOnce): told only
		// a grace period later, an attempt answered during the drain
		// was left unacknowledged and sent again after the restart.
		stopDeliveries()
		if err := wm.Close(); err != nil {
			h.log.Warn("closing the router", logging.Err(err))
		}
		h.fleet.stop()
	})
	select {
	case <-wm.Running():
		// The router's handler runs until the drain: if it stops before
		// (its subscription ended), the hub is unready, naming it.
		h.running.Watch("router", routeHandler.Stopped())
	case err := <-h.wmErr:
		close(fleetDone)
		return fmt.Errorf("starting the router: %w", err)
	case <-ctx.Done():
		close(fleetDone)
		return nil
	}
	h.fleet.reconcile(ctx)
	h.checks.Add("deliverers", func() (bool, string) {
		if ok, why := h.running.Check(); !ok {
			return false, why
		}
		return h.fleet.check()
	})
	h.checks.Add("feeds", h.fleet.checkFeeds)
	go func() {
		defer close(fleetDone)
		h.fleet.run(fleetCtx)
	}()
	return nil
}

// startHTTP registers the health, admin and source routes and serves them.
func (h *hub) startHTTP(context.Context) error {
	p := h.parts
	h.mux = http.NewServeMux()
	h.checks.Register(h.mux)
	h.mux.Handle("GET /metrics", h.metrics.Handler())
	in, err := ingest.New(p.validator, p.pseudo, h.pub, ingest.Options{
		MaxFutureSkew: h.cfg.Events.MaxFutureSkew.D(), FlagOlderThan: h.cfg.Events.FlagOlderThan.D(),
		Timeout: h.cfg.Kafka.PublishTimeout})
	if err != nil {
		return fmt.Errorf("creating the ingest: %w", err)
	}
	if h.disk != nil {
		in.SetGate(func() error {
			if ok, why := h.disk.OK(); !ok {
				return problem.New(problem.Unavailable, why+": retry later")
			}
			return nil
		})
	}
	in.WithMemory(h.accepted, h.log.Named("ingest"))
	api := &admin.API{Auth: h.keys, Store: h.store, Pseudo: p.pseudo, Validator: p.validator, Router: h.router,
		Disclosures: &admin.AuditReader{Brokers: h.brokers, Topic: topic.Audit}, Family: h.index,
		DeadLetters: &admin.DeadLetters{Brokers: h.brokers}, Publisher: h.pub, Log: h.log.Named("admin"),
		Held: &held.Reader{Brokers: h.brokers, Topic: topic.Held}, Ingest: in, Releasers: releasers(p.sources),
		Recipients: &admin.Recipients{Directory: h.dir, Keys: h.keys, Readers: h.readers, Settle: h.fleet.reconcile,
			Status: func(ctx context.Context, ods string) admin.RecipientStatus {
				delivering, why := h.fleet.Delivering(ods)
				st := admin.RecipientStatus{Delivering: delivering, NotDelivering: why}
				if b, err := directory.ReadBacklog(ctx, h.brokers, ods); err == nil {
					st.Backlog = &b
				} else {
					st.BacklogError = "the backlog could not be read: " + problem.Public(problem.Wrap(problem.Unavailable, "broker unavailable", err))
				}
				return st
			}},
		MaxBody: h.cfg.HTTP.MaxBodyBytes}
	bf, err := backfill.New(backfill.Config{Brokers: h.brokers, Router: h.router, Publisher: h.pub, Log: h.log.Named("backfill")})
	if err != nil {
		return fmt.Errorf("creating the backfill runner: %w", err)
	}
	api.Backfills = bf
	if err := api.Register(h.mux); err != nil {
		return fmt.Errorf("registering the admin API: %w", err)
	}
	for i, s := range p.sources {
		// Each input's messages are counted as its own (metrics).
		typ := h.cfg.Inputs[i].Type
		h.envs = append(h.envs, connector.Env{Ingest: h.metrics.Ingest(in, typ), Refusals: h.metrics.Refusals(typ),
			Auth: p.keys, Mux: h.mux, MaxBodyBytes: h.cfg.HTTP.MaxBodyBytes, Log: h.log.Named("ingest")})
		if err := s.Register(h.envs[i]); err != nil {
			return fmt.Errorf("inputs[%d].%s: %w", i, h.cfg.Inputs[i].Type, err)
		}
	}
	ln, err := net.Listen("tcp", h.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("listening on http.addr: %w", err)
	}
	h.ln = ln
	// Pull recipients' routes come and go with the directory: they are
	// served first when one matches, and the hub's own routes otherwise.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.fleet.serve(w, r) {
			h.mux.ServeHTTP(w, r)
		}
	})
	h.srv = &http.Server{Handler: handler, ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout,
		ErrorLog: zap.NewStdLog(h.log.Named("http"))}
	// Long-polls and streams of pull recipients answer and end when the
	// drain begins, so that Shutdown need not wait for them.
	h.srv.RegisterOnShutdown(h.fleet.drainFeeds)
	// Backfills running in requests stop at their committed position
	// (interrupted, to be resumed) when the drain begins.
	h.srv.RegisterOnShutdown(bf.Drain)
	h.srvErr = make(chan error, 1)
	go func() { h.srvErr <- h.srv.Serve(ln) }()
	h.onStop("http", func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			h.log.Warn("HTTP shutdown", logging.Err(err))
		}
	})
	return nil
}

// releasers are the sources that can read a held message again.
func releasers(sources []connector.Source) []connector.Releaser {
	var out []connector.Releaser
	for _, s := range sources {
		if r, ok := s.(connector.Releaser); ok {
			out = append(out, r)
		}
	}
	return out
}

// startSources runs every source until the drain. They answer what is in
// flight before the publisher closes (their stop runs before its).
func (h *hub) startSources(ctx context.Context) error {
	srcCtx, stopSources := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, s := range h.parts.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(srcCtx, h.envs[i]); err != nil {
				h.log.Error("source connector stopped", zap.String("input", h.cfg.Inputs[i].Type), logging.Err(err))
			}
		}()
	}
	h.onStop("sources", func() {
		stopSources()
		wg.Wait()
	})
	return nil
}

// pauseWhile holds every message of the router and the deliverers while ok
// says no (the data directory below its hard floor), neither handling nor
// acknowledging it, and lets it through once ok says yes again, waking on
// changed. A message whose context ends meanwhile is nacked, to be
// redelivered.
func pauseWhile(ok func() (bool, string), changed func() <-chan struct{}, log *zap.Logger) message.HandlerMiddleware {
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			logged := false
			for {
				wake := changed()
				fine, why := ok()
				if fine {
					break
				}
				if !logged {
					log.Warn("routing and deliveries paused", zap.String("reason", why))
					logged = true
				}
				select {
				case <-wake:
				case <-msg.Context().Done():
					return nil, problem.Wrap(problem.Unavailable, "paused: "+why, msg.Context().Err())
				}
			}
			if logged {
				log.Info("routing and deliveries resumed")
			}
			return next(msg)
		}
	}
}

// startRetention runs the retention sweeper until the drain.
func (h *hub) startRetention(ctx context.Context) error {
	// Every recipient's outbox, a deleted recipient's too: its delivered
	// copies go after the window as any.
	s := retention.New(retention.Config{Brokers: h.brokers, Live: h.dir.Known,
		OutboxWindow: h.cfg.Retention.OutboxWindow.D(), DeadLetterWindow: h.cfg.Retention.DeadLetterWindow.D(),
		HeldWindow: h.cfg.Retention.HeldWindow.D(), Feeds: h.pullFeeds, Trimmed: h.feedTrimmed,
		Interval: h.cfg.Retention.SweepInterval.D(), Index: h.index, Log: h.log.Named("retention")})
	rctx, stopRetention := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(rctx) }()
	h.onStop("retention", func() {
		stopRetention()
		<-done
	})
	return nil
}

// reloadLists reads the patient list files again on each signal from
// reload and writes each list that changed to the directory, where every
// process reads it; if any list fails to read, none is written and the
// previous lists stay in force.
func (h *hub) reloadLists(ctx context.Context, reload <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
		}
		lists, err := readLists(h.cfg, h.log)
		if err != nil {
			h.log.Error("patient lists not reloaded: the previous lists stay in force", logging.Err(err))
			continue
		}
		if err := h.seedLists(ctx, lists); err != nil {
			h.log.Error("patient lists not reloaded: the previous lists stay in force", logging.Err(err))
			continue
		}
		h.log.Info("patient lists reloaded")
	}
}
