package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/schemas/media"
	"github.com/segmentio/kafka-go"
)

// Ingest paths: each is a separate row of the report.
const (
	IngestBatch  = "batch"  // POST /v1/events, application/cloudevents-batch+json
	IngestSingle = "single" // POST /v1/events, one application/cloudevents+json event per request
	IngestMLLP   = "mllp"   // HL7 v2 ADT^A03 over MLLP, one message at a time per connection
	IngestFHIR   = "fhir"   // POST /fhir/r4/$process-message, one FHIR R4 message Bundle per request
)

// IngestPaths lists the ingest paths.
func IngestPaths() []string { return []string{IngestBatch, IngestSingle, IngestMLLP, IngestFHIR} }

// ingester publishes a phase's events and records in the tracker when each
// was accepted (the moment the publisher holds the positive answer).
type ingester interface {
	// publish publishes events seq .. seq+n-1 as one request (n is 1 for
	// single requests).
	publish(ctx context.Context, t *tracker, seq uint64, n int) error
}

// httpIngester publishes to a hub's POST /v1/events (CloudEvents JSON, one
// event or a batch per request) or, with fhir, to POST
// /fhir/r4/$process-message (one FHIR message Bundle per request).
type httpIngester struct {
	url    string
	key    string
	batch  bool
	fhir   bool
	client *http.Client
	pool   sync.Pool
	// firstErr is reported once: a refusal is a bench or hub bug.
	firstErr atomic.Pointer[string]
}

func newHTTPIngester(httpAddr, key string, batch bool) *httpIngester {
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	return &httpIngester{url: "http://" + httpAddr + "/v1/events", key: key, batch: batch,
		client: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// RouteFHIRMessage is the hub's FHIR message route (connectors/fhirin).
const RouteFHIRMessage = "/fhir/r4/$process-message"

func newFHIRIngester(httpAddr, key string) *httpIngester {
	h := newHTTPIngester(httpAddr, key, false)
	h.url, h.fhir = "http://"+httpAddr+RouteFHIRMessage, true
	return h
}

func (h *httpIngester) publish(ctx context.Context, t *tracker, seq uint64, n int) error {
	if !h.batch && n != 1 {
		return errors.New("bench: a single-event request holds one event")
	}
	bp, _ := h.pool.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer h.pool.Put(bp)
	buf := (*bp)[:0]
	now := time.Now()
	ctype := media.CloudEvent
	if h.fhir {
		b, err := t.pop.FHIR(t.prefix, seq, now, h.url)
		if err != nil {
			t.markRefused(seq)
			h.note(err.Error())
			return nil
		}
		buf, ctype = append(buf, b...), media.FHIR
	} else if h.batch {
		ctype = media.CloudEventBatch
		buf = append(buf, '[')
	}
	for i := 0; i < n && !h.fhir; i++ {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = t.pop.Event(buf, t.prefix, seq+uint64(i), now)
	}
	if h.batch {
		buf = append(buf, ']')
	}
	*bp = buf
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(buf))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Authorization", "Bearer "+h.key)
	resp, err := h.client.Do(req)
	if err != nil {
		for i := 0; i < n; i++ {
			t.markRefused(seq + uint64(i))
		}
		h.note(fmt.Sprintf("publishing: %v", err))
		return nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	at := t.now()
	switch resp.StatusCode {
	case http.StatusAccepted:
		for i := 0; i < n; i++ {
			t.markAccepted(seq+uint64(i), at)
		}
	case http.StatusMultiStatus:
		var results []struct {
			Index  int `json:"index"`
			Status int `json:"status"`
		}
		ok := make([]bool, n)
		if json.Unmarshal(body, &results) == nil {
			for _, r := range results {
				if r.Index >= 0 && r.Index < n && r.Status == http.StatusAccepted {
					ok[r.Index] = true
				}
			}
		}
		for i := 0; i < n; i++ {
			if ok[i] {
				t.markAccepted(seq+uint64(i), at)
			} else {
				t.markRefused(seq + uint64(i))
			}
		}
		h.note(fmt.Sprintf("the hub refused part of a batch: %.300s", body))
	default:
		for i := 0; i < n; i++ {
			t.markRefused(seq + uint64(i))
		}
		h.note(fmt.Sprintf("the hub answered %d: %.300s", resp.StatusCode, body))
	}
	return nil
}

func (h *httpIngester) note(s string) { h.firstErr.CompareAndSwap(nil, &s) }

func (h *httpIngester) problem() string {
	if p := h.firstErr.Load(); p != nil {
		return *p
	}
	return ""
}

// kafkaIngester is the reference path's producer: a plain kafka-go Writer
// (acks=all, the hub publisher's 2 ms batch timeout, murmur2 keys) to one
// topic. A request of n events is one WriteMessages call of n records, as a
// batch request is one produce in the hub.
type kafkaIngester struct {
	w   *kafka.Writer
	err atomic.Pointer[string]
}

func newKafkaIngester(brokers []string, topic string) *kafkaIngester {
	return &kafkaIngester{w: &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 2 * time.Millisecond,
		BatchSize:    1000,
		BatchBytes:   8 << 20,
		Transport:    &kafka.Transport{},
	}}
}

func (k *kafkaIngester) publish(ctx context.Context, t *tracker, seq uint64, n int) error {
	now := time.Now()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		s := seq + uint64(i)
		// The key stands in for the patient's pseudonym: one patient's
		// events share a partition, as in the hub.
		msgs[i] = kafka.Message{
			Key:     strconv.AppendInt([]byte("patient-"), int64(t.pop.patient(s)), 10),
			Value:   t.pop.Event(nil, t.prefix, s, now),
			Headers: []kafka.Header{{Key: "ce_id", Value: []byte(eventID(t.prefix, s))}},
		}
	}
	err := k.w.WriteMessages(ctx, msgs...)
	at := t.now()
	var werrs kafka.WriteErrors
	switch {
	case err == nil:
		for i := 0; i < n; i++ {
			t.markAccepted(seq+uint64(i), at)
		}
	case errors.As(err, &werrs) && len(werrs) == n:
		for i := 0; i < n; i++ {
			if werrs[i] == nil {
				t.markAccepted(seq+uint64(i), at)
			} else {
				t.markRefused(seq + uint64(i))
			}
		}
		k.note(err)
	default:
		for i := 0; i < n; i++ {
			t.markRefused(seq + uint64(i))
		}
		k.note(err)
	}
	return nil
}

func (k *kafkaIngester) note(err error) {
	s := fmt.Sprintf("reference produce: %v", err)
	k.err.CompareAndSwap(nil, &s)
}

func (k *kafkaIngester) close() error { return k.w.Close() }

// loadSpec says how a phase publishes.
type loadSpec struct {
	duration   time.Duration // publish for this long (ignored when count > 0)
	count      int64         // publish exactly this many events
	rate       float64       // events per second; 0: as fast as possible
	batch      int           // events per request
	publishers int           // concurrent requests
	// maxOutstanding bounds intended deliveries not yet made while publishing
	// as fast as possible, so that a run measures the sustained end-to-end
	// rate rather than how large a backlog can grow. 0: no bound.
	maxOutstanding int64
	// outstanding, when set, replaces the tracker's count of outstanding
	// deliveries for maxOutstanding.
	outstanding func() int64
}

// drive publishes per spec and returns when publishing is over (every
// request answered).
func drive(ctx context.Context, t *tracker, ing ingester, spec loadSpec) {
	if spec.batch < 1 {
		spec.batch = 1
	}
	if spec.publishers < 1 {
		spec.publishers = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var deadline time.Time
	if spec.count <= 0 {
		deadline = time.Now().Add(spec.duration)
	}
	over := func() bool {
		return ctx.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline))
	}
	type job struct {
		seq uint64
		n   int
	}
	// next reserves the next request's events, or reports the end.
	var reserve sync.Mutex
	next := func(want int) (job, bool) {
		reserve.Lock()
		defer reserve.Unlock()
		if over() {
			return job{}, false
		}
		n := want
		if spec.count > 0 {
			left := spec.count - int64(t.nextSeq.Load())
			if left <= 0 {
				return job{}, false
			}
			n = int(min(int64(want), left))
		}
		seq := t.take(n)
		t.markSent(seq, n)
		return job{seq, n}, true
	}
	outstanding := t.outstanding
	if spec.outstanding != nil {
		outstanding = spec.outstanding
	}
	var wg sync.WaitGroup
	if spec.rate <= 0 {
		for i := 0; i < spec.publishers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					for spec.maxOutstanding > 0 && outstanding() > spec.maxOutstanding && !over() {
						time.Sleep(time.Millisecond)
					}
					j, ok := next(spec.batch)
					if !ok {
						return
					}
					_ = ing.publish(ctx, t, j.seq, j.n)
				}
			}()
		}
		wg.Wait()
		return
	}
	// Fixed rate, open loop: a scheduler releases the events that are due
	// (one request per event, or per batch every 10 ms) to the publishers.
	jobs := make(chan job, 1<<16)
	for i := 0; i < spec.publishers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				_ = ing.publish(ctx, t, j.seq, j.n)
			}
		}()
	}
	tick := time.Millisecond
	if spec.batch > 1 {
		tick = 10 * time.Millisecond
	}
	start := time.Now()
	ticker := time.NewTicker(tick)
	var scheduled int64
loop:
	for {
		due := int64(spec.rate*time.Since(start).Seconds()) - scheduled
		for due > 0 {
			n := int(min(due, int64(spec.batch)))
			j, ok := next(n)
			if !ok {
				break loop
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				break loop
			}
			scheduled += int64(j.n)
			due -= int64(j.n)
		}
		if over() {
			break
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			break loop
		}
	}
	ticker.Stop()
	close(jobs)
	wg.Wait()
}
