// Package hub assembles one carehub process: the broker (embedded or a Kafka
// cluster), the topics, the HTTP API with its source connectors, the router
// and one deliverer per recipient, all under one watermill Router.
//
// Shutdown (Run's context ends, e.g. on SIGTERM) drains in this order: stop
// accepting (HTTP server shutdown, in-flight requests answered), stop the
// router and deliverers (in-flight messages finish or are left uncommitted,
// to be redelivered), close the publisher, then close the embedded broker
// cleanly.
package hub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/carehub/carehub/connectors/cloudevents"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp"
	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/admin"
	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/consentstore"
	"github.com/carehub/carehub/hub/deliver"
	"github.com/carehub/carehub/hub/ingest"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"go.uber.org/zap"
)

// Options are the command-line overrides of the configuration.
type Options struct {
	// Ready, when set, is called once the hub serves and routes, with the
	// HTTP address and the broker addresses.
	Ready func(httpAddr string, brokers []string)
	// Reload, when set, asks the hub to read its patient lists again
	// (carehub serve sends on it for SIGHUP). A list that no longer reads
	// is reported and the previous lists stay in force.
	Reload <-chan struct{}
}

// Run runs a hub until ctx ends, then drains. It returns an error if the hub
// could not start or failed while running.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger, opts Options) error {
	brokers := cfg.Kafka.Brokers
	if len(brokers) == 0 {
		emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{
			DataDir:    cfg.DataDir,
			Addr:       cfg.Kafka.EmbeddedAddr,
			Partitions: int32(cfg.Kafka.Partitions),
			SyncWrites: cfg.Kafka.SyncWrites,
			Logger:     log.Named("broker"),
		})
		if err != nil {
			return fmt.Errorf("starting the embedded broker: %w", err)
		}
		defer func() {
			if err := emb.Close(); err != nil {
				log.Error("closing the embedded broker", zap.Error(err))
			}
		}()
		brokers = emb.Addrs()
		log.Info("embedded broker started", zap.Strings("addrs", brokers), zap.String("data_dir", cfg.DataDir))
	} else {
		log.Info("using Kafka cluster", zap.Strings("brokers", brokers))
	}

	var recipients []string
	for _, r := range cfg.Recipients {
		recipients = append(recipients, r.ODS)
	}
	if err := broker.EnsureTopics(ctx, brokers, topic.Specs(cfg.Kafka.Partitions, cfg.Kafka.ReplicationFactor, recipients)); err != nil {
		return fmt.Errorf("creating topics: %w", err)
	}

	wlog := logging.NewWatermill(log, false)
	pub, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers, BatchTimeout: cfg.Kafka.Linger}, wlog)
	if err != nil {
		return fmt.Errorf("creating the publisher: %w", err)
	}
	defer pub.Close()

	pkey, err := cfg.Pseudonym.Resolve()
	if err != nil {
		return fmt.Errorf("pseudonymKey: %w", err)
	}
	pseudo, err := nhs.NewPseudonymiser([]byte(pkey))
	if err != nil {
		return err
	}
	validator, err := event.NewValidator()
	if err != nil {
		return fmt.Errorf("compiling schemas: %w", err)
	}
	in, err := ingest.New(validator, pseudo, pub)
	if err != nil {
		return err
	}
	keys, err := apiKeys(cfg)
	if err != nil {
		return err
	}
	subs, err := subscriptions(cfg, pseudo, log)
	if err != nil {
		return err
	}
	index, err := route.NewSubscriptions(subs)
	if err != nil {
		return err
	}
	policy, err := cfg.Consent.Policy()
	if err != nil {
		return fmt.Errorf("consent policy: %w", err)
	}
	store, err := consentstore.Open(brokers, topic.Consent, log.Named("consent"))
	if err != nil {
		return err
	}
	defer store.Close()
	rt, err := route.New(index, &policy, store, pub, log.Named("router"))
	if err != nil {
		return err
	}

	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, wlog)
	if err != nil {
		return err
	}
	router.AddMiddleware(middleware.Recoverer)
	newSub := func(group string) (message.Subscriber, error) {
		return kafkawm.NewSubscriber(kafkawm.SubscriberConfig{Brokers: brokers, ConsumerGroup: group}, wlog)
	}
	evSub, err := newSub(topic.GroupRouter)
	if err != nil {
		return err
	}
	router.AddConsumerHandler("route", topic.Events, evSub, rt.Handle)

	stopDelivery, cancelDelivery := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDelivery()
	for _, r := range cfg.Recipients {
		secret, err := r.Webhook.Secret.Resolve()
		if err != nil {
			return fmt.Errorf("recipient %s: %w", r.ODS, err)
		}
		sink, err := webhook.New(webhook.Config{
			URL: r.Webhook.URL, Secret: secret, Timeout: r.Webhook.Timeout,
			MinBackoff: cfg.Delivery.MinBackoff, MaxBackoff: cfg.Delivery.MaxBackoff,
		}, log.With(zap.String("recipient", r.ODS)))
		if err != nil {
			return fmt.Errorf("recipient %s: %w", r.ODS, err)
		}
		d, err := deliver.New(stopDelivery, r.ODS, sink, pub, log.Named("deliver"))
		if err != nil {
			return err
		}
		sub, err := newSub(topic.DeliverGroup(r.ODS))
		if err != nil {
			return err
		}
		router.AddConsumerHandler("deliver-"+r.ODS, topic.Outbox(r.ODS), sub, d.Handle)
	}

	mux := http.NewServeMux()
	var ready atomic.Bool
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	env := connector.Env{Ingest: in, Auth: keys, Mux: mux, Log: log.Named("ingest")}
	src, err := cloudevents.New(cloudevents.Config{MaxBodyBytes: cfg.HTTP.MaxBodyBytes, MaxBatchEvents: cfg.HTTP.MaxBatchEvents})
	if err != nil {
		return err
	}
	sources := []connector.Source{src}
	for i, l := range cfg.MLLP {
		s, err := mllpSource(l)
		if err != nil {
			return fmt.Errorf("mllp[%d]: %w", i, err)
		}
		sources = append(sources, s)
	}
	for _, s := range sources {
		if err := s.Register(env); err != nil {
			return err
		}
	}
	api := &admin.API{Auth: keys, Store: store, Pseudo: pseudo, Validator: validator, Router: rt,
		Disclosures: &admin.AuditReader{Brokers: brokers, Topic: topic.Audit}, Log: log.Named("admin"),
		MaxBody: cfg.HTTP.MaxBodyBytes}
	if err := api.Register(mux); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("listening for HTTP: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second,
		ErrorLog: zap.NewStdLog(log.Named("http"))}

	// Route nothing before every directive is loaded.
	if err := store.WaitLoaded(ctx); err != nil {
		ln.Close()
		return fmt.Errorf("loading consent directives: %w", err)
	}
	routerErr := make(chan error, 1)
	go func() { routerErr <- router.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-router.Running():
	case err := <-routerErr:
		ln.Close()
		return fmt.Errorf("starting the router: %w", err)
	case <-ctx.Done():
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	var srcWG sync.WaitGroup
	for _, s := range sources {
		srcWG.Add(1)
		go func() {
			defer srcWG.Done()
			if err := s.Run(srcCtx, env); err != nil {
				log.Error("source connector stopped", logging.Err(err))
			}
		}()
	}
	ready.Store(true)
	log.Info("carehub ready", zap.String("http", ln.Addr().String()), zap.Strings("brokers", brokers),
		zap.Int("recipients", len(cfg.Recipients)), zap.Int("sources", len(cfg.Sources)))
	if opts.Ready != nil {
		opts.Ready(ln.Addr().String(), brokers)
	}
	if opts.Reload != nil {
		go reloadLists(ctx, opts.Reload, cfg, pseudo, rt, log)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: draining")
	case err := <-srvErr:
		runErr = fmt.Errorf("HTTP server: %w", err)
	case err := <-routerErr:
		runErr = fmt.Errorf("router stopped: %w", err)
	}
	ready.Store(false)
	shutCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Warn("HTTP shutdown", logging.Err(err))
	}
	stopSrc()
	srcWG.Wait() // sources answer what is in flight before the publisher closes
	// Give in-flight deliveries a moment to finish, then end their retries.
	grace := time.AfterFunc(3*time.Second, cancelDelivery)
	defer grace.Stop()
	if err := router.Close(); err != nil {
		log.Warn("closing the router", logging.Err(err))
	}
	log.Info("stopped")
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) {
		return runErr
	}
	return nil
}

// mllpSource builds an HL7 v2 MLLP listener from its configuration.
func mllpSource(l config.MLLP) (*mllp.Source, error) {
	c := mllp.Config{Addr: l.Addr, Source: l.Source, MaxFrameBytes: l.MaxFrameBytes, ReadTimeout: l.ReadTimeout,
		IdleTimeout: l.IdleTimeout, DuplicateWindow: l.DuplicateWindow, ProcessingID: l.ProcessingID,
		DestinationFields: l.DestinationFields}
	if l.TLS != nil {
		t, err := mllp.TLSFiles(l.TLS.Cert, l.TLS.Key, l.TLS.ClientCA)
		if err != nil {
			return nil, err
		}
		c.TLS = t
	}
	return mllp.New(c)
}

func apiKeys(cfg *config.Config) (*auth.Keys, error) {
	m := map[string]string{}
	for _, s := range cfg.Sources {
		k, err := s.APIKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", s.ODS, err)
		}
		m[k] = s.ODS
	}
	if cfg.Admin.APIKey.Set() {
		k, err := cfg.Admin.APIKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
		m[k] = auth.Admin
	}
	return auth.New(m)
}

// subscriptions builds the router's subscriptions from the configuration,
// reading each patient list and keeping only its pseudonyms.
func subscriptions(cfg *config.Config, pseudo *nhs.Pseudonymiser, log *zap.Logger) ([]route.Subscription, error) {
	var subs []route.Subscription
	for _, r := range cfg.Recipients {
		for _, s := range r.Subscriptions {
			types := map[string]bool{}
			for _, t := range s.Types {
				types[config.EventTypeName(t)] = true
			}
			sub := route.Subscription{
				ID: s.ID, Recipient: consent.Recipient{ODS: r.ODS, Role: consent.Role(r.Role)},
				Basis: consent.Basis(s.Basis), Types: types,
			}
			if s.PatientList != "" {
				set, err := patientlist.Load(s.PatientList, pseudo)
				if err != nil {
					return nil, fmt.Errorf("subscription %s: %w", s.ID, err)
				}
				sub.Patients = set
				log.Info("patient list loaded", zap.String("subscription", s.ID), zap.String("recipient", r.ODS), zap.Int("patients", len(set)))
			}
			subs = append(subs, sub)
		}
	}
	return subs, nil
}

// reloadLists reads the patient lists again on each signal from reload and
// swaps the router's subscriptions, or keeps the old ones if any list fails.
func reloadLists(ctx context.Context, reload <-chan struct{}, cfg *config.Config, pseudo *nhs.Pseudonymiser, rt *route.Router, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
		}
		subs, err := subscriptions(cfg, pseudo, log)
		var index *route.Subscriptions
		if err == nil {
			index, err = route.NewSubscriptions(subs)
		}
		if err != nil {
			log.Error("patient lists not reloaded: the previous lists stay in force", logging.Err(err))
			continue
		}
		rt.SetSubscriptions(index)
		log.Info("patient lists reloaded")
	}
}
