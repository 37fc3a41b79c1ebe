package hub

import (
	"errors"
	"fmt"
	"slices"

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
//
// Recipients are not kept here: they are run from the recipient directory
// (hub/directory), which the configuration file seeds (fleet.go). Their
// sinks are built here once all the same, so that a recipient of the file
// that cannot be built (a certificate that does not read) stops the start.
type parts struct {
	keys      *auth.Keys        // the file's keys: sources, the admin, operators
	keyMap    map[string]string // the same, key → principal, to which recipients' keys are added (auth.Live)
	pseudo    *nhs.Pseudonymiser
	sealer    *route.Sealer
	gate      *deliver.Gate // every sink's consent re-check; given the router once it runs
	validator *event.Validator
	policy    consent.Policy
	sources   []connector.Source
	// lists are the patient lists the file names, by recipient.
	lists map[string][]nhs.Number
}

// pullHooks are what the hub gives every pull sink beside its feed and the
// consent re-check every sink has (parts.gate): they reach parts that start
// later (the publisher).
type pullHooks struct {
	audit connector.ReadAudit
}

// build makes the parts, reporting every problem it finds, joined.
func build(cfg *config.Config, log *zap.Logger, pull pullHooks) (*parts, error) {
	p := &parts{}
	var errs []error
	fail := func(where string, err error) { errs = append(errs, fmt.Errorf("%s: %w", where, err)) }

	var err error
	if p.keyMap, err = apiKeys(cfg); err != nil {
		fail("API keys", err)
	} else if p.keys, err = auth.New(p.keyMap); err != nil {
		fail("API keys", err)
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
	if p.lists, err = readLists(cfg, log); err != nil {
		errs = append(errs, err)
	}
	for i, in := range cfg.Inputs {
		s, err := in.New()
		if err != nil {
			fail(fmt.Sprintf("inputs[%d].%s", i, in.Type), err)
			continue
		}
		p.sources = append(p.sources, s)
	}
	readers := auth.NewLive(&auth.Keys{})
	for i, r := range cfg.Recipients {
		env := connector.SinkEnv{Recipient: r.ODS, Retry: cfg.Delivery, Consent: p.gate, Log: log.Named("deliver")}
		if _, ok := r.Sink.Config.(connector.PullConfig); ok {
			env.Feed, env.Readers, env.Audit = feedlog.New(r.ODS, topic.Feed(r.ODS), log.Named("feed")), readers, pull.audit
		}
		if _, err := r.Sink.New(env); err != nil {
			fail(fmt.Sprintf("recipients[%d].%s", i, r.Sink.Type), err)
		}
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

// apiKeys maps every source's key to its organisation, and the admin's
// and operators' keys to their operator principals.
func apiKeys(cfg *config.Config) (map[string]string, error) {
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
	return m, nil
}

// readLists reads every patient list file the configuration names, by
// recipient (one list per recipient), keeping the numbers only until the
// directory has their pseudonyms. Every list that does not read is
// reported.
func readLists(cfg *config.Config, log *zap.Logger) (map[string][]nhs.Number, error) {
	out := map[string][]nhs.Number{}
	var errs []error
	for i, r := range cfg.Recipients {
		file := r.PatientListFile()
		if file == "" {
			continue
		}
		ns, err := patientlist.ReadFile(file)
		if err != nil {
			j := slices.IndexFunc(r.Subscriptions, func(s config.Subscription) bool { return s.PatientList != "" })
			errs = append(errs, fmt.Errorf("recipients[%d].subscriptions[%d].patientList: %w", i, j, err))
			continue
		}
		out[r.ODS] = ns
		log.Info("patient list loaded", zap.String("recipient", r.ODS), zap.Int("patients", len(ns)))
	}
	return out, errors.Join(errs...)
}
