// Package cloudevents is the source connector for CloudEvents over HTTP:
// POST /v1/events with an API key that belongs to one source organisation.
//
//	Content-Type: application/cloudevents+json        one event  → 202, or a problem document
//	Content-Type: application/cloudevents-batch+json  many events → 202 when all are accepted,
//	                                                   else 207 with one result per event
//
// The answer is positive only once the event is durable in Kafka (see the
// ack contract in connectors/connector). A negative answer is an RFC 9457 problem
// document naming the JSON pointer and the rule broken, never the value, and
// nothing is published.
package cloudevents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"go.uber.org/zap"
)

// Type is the connector's type: the key of its entry under inputs.
const Type = "cloudevents"

// Factory is the connector's registration (connectors/all lists it).
var Factory = connector.SourceFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New:     func(cfg connector.Config) (connector.Source, error) { return New(*cfg.(*Config)) },
	Probe:   &connector.SourceProbe{Config: probeConfig, Document: probeDocument, Send: probeSend},
}

// DefaultMaxBatchEvents caps a batch when the configuration does not.
const DefaultMaxBatchEvents = 1000

// Config is the connector's entry under inputs:
//
//	inputs:
//	  - cloudevents: {maxBatchEvents: 1000}
//
// The body size limit is the hub's (http.maxBodyBytes), for every route.
type Config struct {
	// MaxBatchEvents caps the events in one batch request (default 1000).
	MaxBatchEvents int `yaml:"maxBatchEvents" json:"maxBatchEvents"`
}

// DefaultConfig returns a configuration with every default applied.
func DefaultConfig() *Config { return &Config{MaxBatchEvents: DefaultMaxBatchEvents} }

// Validate reports every problem of the entry.
func (c *Config) Validate() error {
	if c.MaxBatchEvents < 1 {
		return errors.New("maxBatchEvents must be at least 1")
	}
	return nil
}

// Source serves POST /v1/events.
type Source struct {
	cfg Config
	env connector.Env
}

// New validates cfg and builds the source.
func New(cfg Config) (*Source, error) {
	if cfg.MaxBatchEvents == 0 {
		cfg.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevents: %w", err)
	}
	return &Source{cfg: cfg}, nil
}

// Register implements connector.Source.
func (s *Source) Register(env connector.Env) error {
	if env.Ingest == nil || env.Auth == nil || env.Mux == nil || env.MaxBodyBytes < 1 {
		return errors.New("cloudevents: Env needs Ingest, Auth, Mux and MaxBodyBytes")
	}
	s.env = env
	if s.env.Log == nil {
		s.env.Log = zap.NewNop()
	}
	env.Mux.HandleFunc("POST /v1/events", s.serve)
	return nil
}

// Run implements connector.Source. The HTTP server belongs to the hub, which
// drains it; there is nothing else to run.
func (s *Source) Run(ctx context.Context, _ connector.Env) error {
	<-ctx.Done()
	return nil
}

// BatchResult is one entry of a batch answer.
type BatchResult struct {
	Index   int              `json:"index"`
	ID      string           `json:"id,omitempty"`
	Status  int              `json:"status"`
	Problem *problem.Details `json:"problem,omitempty"`
}

func (s *Source) serve(w http.ResponseWriter, r *http.Request) {
	log := s.env.Log
	org, err := s.env.Auth.Organisation(r)
	if err != nil {
		problemhttp.Write(w, err)
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != media.CloudEvent && mt != media.CloudEventBatch && mt != "application/json") {
		problemhttp.Write(w, problem.New(problem.MediaType,
			"Content-Type must be "+media.CloudEvent+" or "+media.CloudEventBatch))
		return
	}
	body, err := problemhttp.ReadBody(w, r, s.env.MaxBodyBytes)
	if err != nil {
		problemhttp.Write(w, err)
		return
	}
	if mt != media.CloudEventBatch {
		acc, err := s.env.Ingest.Accept(r.Context(), org, body)
		if err != nil {
			log.Info("event refused", zap.String("source", org), zap.Int("bytes", len(body)), logging.Err(err))
			problemhttp.Write(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": acc.ID, "type": acc.Type, "status": "accepted"})
		return
	}
	raws, err := event.ParseBatch(body)
	if err != nil {
		problemhttp.Write(w, err)
		return
	}
	if len(raws) > s.cfg.MaxBatchEvents {
		problemhttp.Write(w, problem.New(problem.TooLarge, "the batch holds more events than this endpoint accepts"))
		return
	}
	results := s.env.Ingest.AcceptBatch(r.Context(), org, raws)
	out := make([]BatchResult, len(results))
	all := true
	for i, res := range results {
		out[i] = BatchResult{Index: i, ID: res.ID, Status: http.StatusAccepted}
		if res.Err != nil {
			all = false
			d := problem.DetailsOf(res.Err)
			out[i].Status = d.Status
			out[i].Problem = &d
		}
	}
	status := http.StatusAccepted
	if !all {
		status = http.StatusMultiStatus
		log.Info("batch partly refused", zap.String("source", org), zap.Int("events", len(raws)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"results": out})
}

var _ connector.Source = (*Source)(nil)
