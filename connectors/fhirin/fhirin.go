// Package fhirin is the source connector for FHIR R4: an EPR or shared care
// record publishes events as FHIR messages, or posts the Encounter alone.
//
//	POST /fhir/r4/$process-message   a message Bundle (MessageHeader first)
//	POST /fhir/r4/Encounter          a lone Encounter: its status and period decide the event
//
// Authentication is the same API key as POST /v1/events, bound to one
// organisation; MessageHeader.sender must be that organisation (else 403).
// The mapping is schemas/fhir's, the one every FHIR part of carehub uses.
//
// The answer is 202 Accepted, with an informational OperationOutcome
// naming the event's id, only once the event is durable in Kafka (the ack
// contract of connectors/connector). A refusal is a 4xx with an
// OperationOutcome whose issues name each element by FHIRPath and the rule
// it breaks, never a value from the document; nothing is published.
package fhirin

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"go.uber.org/zap"
)

// Type is the connector's type: the key of its entry under inputs.
const Type = "fhir"

// Routes.
const (
	RouteProcessMessage = "/fhir/r4/$process-message"
	RouteEncounter      = "/fhir/r4/Encounter"
)

// Factory is the connector's registration (connectors/all lists it).
var Factory = connector.SourceFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New:     func(cfg connector.Config) (connector.Source, error) { return New(*cfg.(*Config)) },
	Probe:   &connector.SourceProbe{Config: probeConfig, Document: probeDocument, Send: probeSend},
}

// Config is the connector's entry under inputs:
//
//	inputs:
//	  - fhir: {}
//
// The body size limit is the hub's (http.maxBodyBytes).
type Config struct {
	// Encounter enables POST /fhir/r4/Encounter (default true).
	Encounter bool `yaml:"encounter" json:"encounter"`
}

// DefaultConfig returns a configuration with every default applied.
func DefaultConfig() *Config { return &Config{Encounter: true} }

// Validate reports every problem of the entry (there is none to make).
func (c *Config) Validate() error { return nil }

// Source serves the FHIR routes.
type Source struct {
	cfg Config
	env connector.Env
	now func() time.Time
}

// New builds the source.
func New(cfg Config) (*Source, error) { return &Source{cfg: cfg, now: time.Now}, nil }

// Register implements connector.Source.
func (s *Source) Register(env connector.Env) error {
	if env.Ingest == nil || env.Auth == nil || env.Mux == nil || env.MaxBodyBytes < 1 {
		return errors.New("fhir: Env needs Ingest, Auth, Mux and MaxBodyBytes")
	}
	s.env = env
	if s.env.Log == nil {
		s.env.Log = zap.NewNop()
	}
	env.Mux.HandleFunc("POST "+RouteProcessMessage, s.handle(false))
	if s.cfg.Encounter {
		env.Mux.HandleFunc("POST "+RouteEncounter, s.handle(true))
	}
	return nil
}

// Run implements connector.Source: the hub's HTTP server serves the routes.
func (s *Source) Run(ctx context.Context, _ connector.Env) error {
	<-ctx.Done()
	return nil
}

func answer(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", media.FHIR)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func fail(w http.ResponseWriter, err error) {
	answer(w, problem.DetailsOf(err).Status, problem.OperationOutcome(err))
}

func (s *Source) handle(encounter bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		log := s.env.Log
		org, err := s.env.Auth.Organisation(r)
		// refuse answers a request refused here, before Ingest.
		refuse := func(err error) {
			s.env.Refuse(r.Context(), org, problem.KindOf(err))
			fail(w, err)
		}
		if err != nil {
			refuse(err)
			return
		}
		if !media.Is(r.Header.Get("Content-Type"), media.FHIR, media.JSON) {
			refuse(problem.New(problem.MediaType, "Content-Type must be "+media.FHIR))
			return
		}
		body, err := problemhttp.ReadBody(w, r, s.env.MaxBodyBytes)
		if err != nil {
			refuse(err)
			return
		}
		var in *fhir.Inbound
		if encounter {
			in, err = fhir.FromEncounter(body, org, s.now())
		} else {
			in, err = fhir.FromMessage(body, org)
		}
		if err != nil {
			log.Info("FHIR refused", zap.String("source", org), zap.Int("bytes", len(body)), logging.Err(err))
			refuse(err)
			return
		}
		acc, err := s.env.Ingest.Accept(r.Context(), org, in.Event)
		if err != nil {
			err = in.Locate(err)
			log.Info("FHIR event refused", zap.String("source", org), zap.String("event_type", in.Type), logging.Err(err))
			fail(w, err)
			return
		}
		log.Info("FHIR event accepted", zap.String("source", org), zap.String("event_id", acc.ID), zap.String("event_type", acc.Type))
		answer(w, http.StatusAccepted, fhir.Informational("accepted: event "+acc.ID+" ("+acc.Type+") is durable"))
	}
}

var _ connector.Source = (*Source)(nil)
