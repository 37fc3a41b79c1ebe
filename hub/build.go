package hub

import (
	"errors"
	"fmt"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/deliver"
	"github.com/carehub/carehub/hub/feedlog"
	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"go.uber.org/zap"
)

// parts are what a hub is built from before anything starts: every file
// read (secrets were read with the configuration; patient lists and
// certificates are read here), every connector constructed, every schema
// compiled. Building them touches no broker and no port, so that every
// problem is reported at once, before the broker starts.
type parts struct {
	keys       *auth.Keys
	pseudo     *nhs.Pseudonymiser
	sealer     *route.Sealer
	gate       *deliver.Gate // every sink's consent re-check; given the router once it runs
	validator  *event.Validator
	policy     consent.Policy
	subs       *route.Subscriptions
	sources    []connector.Source
	recipients []recipient
	readers    *auth.Keys              // pull recipients' own keys, each bound to its recipient
	feeds      map[string]*feedlog.Log // pull recipients' feeds, by ODS code
}

// pullHooks are what the hub gives every pull sink beside its feed and the
// consent re-check every sink has (parts.gate): they reach parts that start
// later (the publisher).
type pullHooks struct {
	audit connector.ReadAudit
}

// recipient is one push recipient and its sink.
type recipient struct {
	ods  string
	sink connector.Sink
}

// build makes the parts, reporting every problem it finds, joined.
func build(cfg *config.Config, log *zap.Logger, pull pullHooks) (*parts, error) {
	p := &parts{feeds: map[string]*feedlog.Log{}}
	var errs []error
	fail := func(where string, err error) { errs = append(errs, fmt.Errorf("%s: %w", where, err)) }

	var err error
	if p.keys, err = apiKeys(cfg); err != nil {
		fail("API keys", err)
	}
	if p.readers, err = readerKeys(cfg); err != nil {
		fail("recipients' API keys", err)
	}
	if p.pseudo, err = pseudonymiser(cfg); err != nil {
		fail("pseudonymKey", err)
	}
	if k, err := cfg.Pseudonym.Reveal(); err == nil {
		if p.sealer, err = route.NewSealer([]byte(k)); err != nil {
			fail("pseudonymKey", err)
		}
	}
	p.gate = &deliver.Gate{}
	if p.validator, err = event.NewValidator(); err != nil {
		fail("compiling the event schemas", err)
	}
	if p.policy, err = cfg.Consent.Policy(); err != nil {
		fail("consent", err)
	}
	if p.pseudo != nil {
		if p.subs, err = subscriptions(cfg, p.pseudo, log); err != nil {
			errs = append(errs, err)
		}
	}
	for i, in := range cfg.Inputs {
		s, err := in.New()
		if err != nil {
			fail(fmt.Sprintf("inputs[%d].%s", i, in.Type), err)
			continue
		}
		p.sources = append(p.sources, s)
	}
	for i, r := range cfg.Recipients {
		env := connector.SinkEnv{Recipient: r.ODS, Retry: cfg.Delivery, Consent: p.gate,
			Log: log.Named("deliver").With(zap.String("recipient", r.ODS))}
		if _, ok := r.Sink.Config.(connector.PullConfig); ok && p.readers != nil {
			f := feedlog.New(r.ODS, topic.Feed(r.ODS), log.Named("feed"))
			p.feeds[r.ODS] = f
			env.Feed, env.Readers, env.Audit = f, p.readers, pull.audit
		}
		s, err := r.Sink.New(env)
		if err != nil {
			fail(fmt.Sprintf("recipients[%d].%s", i, r.Sink.Type), err)
			continue
		}
		p.recipients = append(p.recipients, recipient{ods: r.ODS, sink: s})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func pseudonymiser(cfg *config.Config) (*nhs.Pseudonymiser, error) {
	k, err := cfg.Pseudonym.Reveal()
	if err != nil {
		return nil, err
	}
	return nhs.NewPseudonymiser([]byte(k))
}

// apiKeys maps every source's key to its organisation, and the admin key
// to the admin principal.
func apiKeys(cfg *config.Config) (*auth.Keys, error) {
	m := map[string]string{}
	for _, s := range cfg.Sources {
		k, err := s.APIKey.Reveal()
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", s.ODS, err)
		}
		m[k] = s.ODS
	}
	if cfg.Admin.APIKey.Set() {
		k, err := cfg.Admin.APIKey.Reveal()
		if err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
		m[k] = auth.Admin
	}
	for _, o := range cfg.Admin.Operators {
		k, err := o.APIKey.Reveal()
		if err != nil {
			return nil, fmt.Errorf("admin operator %s: %w", o.ID, err)
		}
		m[k] = auth.OperatorPrincipal(o.ID)
	}
	return auth.New(m)
}

// readerKeys maps each pull recipient's own key to the recipient.
func readerKeys(cfg *config.Config) (*auth.Keys, error) {
	m := map[string]string{}
	for _, r := range cfg.Recipients {
		pc, ok := r.Sink.Config.(connector.PullConfig)
		if !ok {
			continue
		}
		k, err := pc.ReaderKey().Reveal()
		if err != nil {
			return nil, fmt.Errorf("recipient %s: %w", r.ODS, err)
		}
		m[k] = r.ODS
	}
	return auth.New(m)
}

// subscriptions builds the router's subscription index from the
// configuration, reading each patient list and keeping only its pseudonyms.
// Every list that does not read is reported.
func subscriptions(cfg *config.Config, pseudo *nhs.Pseudonymiser, log *zap.Logger) (*route.Subscriptions, error) {
	var subs []route.Subscription
	var errs []error
	for i, r := range cfg.Recipients {
		for j, s := range r.Subscriptions {
			types := map[string]bool{}
			for _, t := range s.Types {
				if typ, ok := event.TypeNamed(t); ok {
					types[typ] = true
				}
			}
			sub := route.Subscription{
				ID: s.ID, Recipient: consent.Recipient{ODS: r.ODS, Role: consent.Role(r.Role)},
				Basis: consent.Basis(s.Basis), Types: types,
			}
			if s.PatientList != "" {
				set, err := patientlist.Load(s.PatientList, pseudo)
				if err != nil {
					errs = append(errs, fmt.Errorf("recipients[%d].subscriptions[%d].patientList: %w", i, j, err))
					continue
				}
				sub.Patients = set
				log.Info("patient list loaded", zap.String("subscription", s.ID), zap.String("recipient", r.ODS), zap.Int("patients", len(set)))
			}
			subs = append(subs, sub)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return route.NewSubscriptions(subs)
}
