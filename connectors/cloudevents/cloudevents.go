// Package cloudevents is the source connector for CloudEvents over HTTP:
// POST /v1/events with an API key that belongs to one source organisation,
// in any of the three content modes of the CloudEvents HTTP protocol binding:
//
//	structured  Content-Type: application/cloudevents+json        one event  → 202, or a problem document
//	batched     Content-Type: application/cloudevents-batch+json  many events → 202 when all are accepted,
//	                                                              else 207 with one result per event
//	binary      ce-specversion, ce-id, ce-source, ce-type, ce-time (and any other attribute) as
//	            ce- headers; Content-Type: application/json (the datacontenttype); the data as
//	            the body → as structured mode
//
// A binary-mode request is turned into the structured-mode document it
// stands for and validated by the same rules, so both modes give the same
// canonical event. A request that is in none of the modes (no ce- header and
// a Content-Type that is not an event format, such as plain
// application/json) is answered 415 with a problem that names the three.
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
	"net/http"
	"strings"

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

// The content modes of the CloudEvents HTTP binding.
const (
	modeStructured = "structured"
	modeBatched    = "batched"
	modeBinary     = "binary"
)

// notAnEvent is the problem's text for a request in none of the modes.
const notAnEvent = "the request is not a CloudEvent in any content mode of the CloudEvents HTTP binding: " +
	"send structured mode (Content-Type: " + media.CloudEvent + ", the whole event as the body), " +
	"batched mode (Content-Type: " + media.CloudEventBatch + ", a JSON array of events), " +
	"or binary mode (the attributes as ce-specversion, ce-id, ce-source, ce-type and ce-time headers, " +
	"Content-Type: " + media.JSON + ", the data as the body)"

// accepted is the answer to one accepted event. Duplicate is true when the
// event had been accepted before (a retry): nothing was published again.
type accepted struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Status    string `json:"status"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// BatchResult is one entry of a batch answer.
type BatchResult struct {
	Index     int              `json:"index"`
	ID        string           `json:"id,omitempty"`
	Status    int              `json:"status"`
	Duplicate bool             `json:"duplicate,omitempty"`
	Problem   *problem.Details `json:"problem,omitempty"`
}

func (s *Source) serve(w http.ResponseWriter, r *http.Request) {
	log := s.env.Log
	org, err := s.env.Auth.Organisation(r)
	// refuse answers a request refused here, before Ingest.
	refuse := func(err error) {
		s.env.Refuse(r.Context(), org, problem.KindOf(err))
		problemhttp.Write(w, err)
	}
	if err != nil {
		refuse(err)
		return
	}
	ctype := r.Header.Get("Content-Type")
	mt := media.Of(ctype)
	mode := ""
	switch {
	case mt == media.CloudEvent:
		mode = modeStructured
	case mt == media.CloudEventBatch:
		mode = modeBatched
	case strings.HasPrefix(mt, media.CloudEventFormats):
		// Another event format (+xml, +avro, ...): not binary mode either.
	case hasBinaryHeaders(r.Header) && (mt != "" || ctype == ""):
		mode = modeBinary
	}
	if mode == "" {
		refuse(problem.New(problem.MediaType, notAnEvent))
		return
	}
	body, err := problemhttp.ReadBody(w, r, s.env.MaxBodyBytes)
	if err != nil {
		refuse(err)
		return
	}
	if mode == modeBinary {
		if body, err = binaryEvent(r.Header, ctype, body); err != nil {
			log.Info("event refused", zap.String("source", org), zap.String("mode", mode), logging.Err(err))
			refuse(err)
			return
		}
	}
	if mode != modeBatched {
		acc, err := s.env.Ingest.Accept(r.Context(), org, body)
		if err != nil {
			log.Info("event refused", zap.String("source", org), zap.String("mode", mode), zap.Int("bytes", len(body)), logging.Err(err))
			problemhttp.Write(w, err)
			return
		}
		w.Header().Set("Content-Type", media.JSON)
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(accepted{ID: acc.ID, Type: acc.Type, Status: "accepted", Duplicate: acc.Duplicate})
		return
	}
	raws, err := event.ParseBatch(body)
	if err != nil {
		refuse(err)
		return
	}
	if len(raws) > s.cfg.MaxBatchEvents {
		refuse(problem.New(problem.TooLarge, "the batch holds more events than this endpoint accepts"))
		return
	}
	results := s.env.Ingest.AcceptBatch(r.Context(), org, raws)
	out := make([]BatchResult, len(results))
	all := true
	for i, res := range results {
		out[i] = BatchResult{Index: i, ID: res.ID, Status: http.StatusAccepted, Duplicate: res.Duplicate}
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
	w.Header().Set("Content-Type", media.JSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"results": out})
}

var _ connector.Source = (*Source)(nil)
