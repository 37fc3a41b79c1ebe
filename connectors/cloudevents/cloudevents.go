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
	"io"
	"mime"
	"net/http"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/carehub/carehub/schemas/problem/problemhttp"
	"go.uber.org/zap"
)

// Media types.
const (
	MediaEvent = "application/cloudevents+json"
	MediaBatch = "application/cloudevents-batch+json"
)

// Config configures the connector.
type Config struct {
	MaxBodyBytes   int64 // default 1 MiB
	MaxBatchEvents int   // default 1000
}

// Source serves POST /v1/events.
type Source struct {
	cfg Config
	env connector.Env
}

// New validates cfg and builds the source.
func New(cfg Config) (*Source, error) {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxBatchEvents == 0 {
		cfg.MaxBatchEvents = 1000
	}
	if cfg.MaxBodyBytes < 1024 || cfg.MaxBatchEvents < 1 {
		return nil, errors.New("cloudevents: MaxBodyBytes must be at least 1024 and MaxBatchEvents at least 1")
	}
	return &Source{cfg: cfg}, nil
}

// Register implements connector.Source.
func (s *Source) Register(env connector.Env) error {
	if env.Ingest == nil || env.Auth == nil || env.Mux == nil {
		return errors.New("cloudevents: Env needs Ingest, Auth and Mux")
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
	if err != nil || (mt != MediaEvent && mt != MediaBatch && mt != "application/json") {
		problemhttp.Write(w, problem.New(problem.MediaType,
			"Content-Type must be "+MediaEvent+" or "+MediaBatch))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problemhttp.Write(w, problem.New(problem.TooLarge, "the body exceeds the limit of this endpoint"))
			return
		}
		problemhttp.Write(w, problem.New(problem.Malformed, "the body could not be read"))
		return
	}
	if mt != MediaBatch {
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
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		problemhttp.Write(w, problem.Violated("", "batch-array", "a batch must be a JSON array of CloudEvents"))
		return
	}
	if len(raws) == 0 {
		problemhttp.Write(w, problem.Violated("", "batch-not-empty", "a batch must hold at least one event"))
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
