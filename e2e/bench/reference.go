package bench

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/media"
	"github.com/segmentio/kafka-go"
)

// reference is the path with no validation, routing, consent or audit: a
// kafka-go Reader per partition of one plain topic, and for each record an
// HTTP POST, signed as the hub signs, to each of the event's recipients
// (concurrently), then the next record. Nothing is committed: a plain
// consumer that starts from the beginning of a fresh topic. It runs against
// the same broker as the hub, in the same run.
type reference struct {
	topic   string
	pop     *Population
	readers []*kafka.Reader
	client  *http.Client
	current atomic.Pointer[tracker]
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	failed  atomic.Int64 // POST attempts that failed and were retried
}

// ensureReferenceTopic creates the reference topic with the hub's partition count.
func ensureReferenceTopic(ctx context.Context, brokers []string, topic string, partitions int) error {
	return broker.EnsureTopics(ctx, brokers, []broker.TopicSpec{{Name: topic, Partitions: partitions}})
}

// startReference starts consuming topic's partitions.
func startReference(ctx context.Context, brokers []string, topic string, partitions int, pop *Population) *reference {
	ctx, cancel := context.WithCancel(ctx)
	r := &reference{topic: topic, pop: pop, cancel: cancel,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: 90 * time.Second, DisableCompression: true,
		}}}
	for p := 0; p < partitions; p++ {
		rd := kafka.NewReader(kafka.ReaderConfig{
			Brokers: brokers, Topic: topic, Partition: p,
			MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 500 * time.Millisecond,
			ReadBackoffMin: 100 * time.Millisecond, ReadBackoffMax: time.Second,
			StartOffset: kafka.FirstOffset,
		})
		r.readers = append(r.readers, rd)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.consume(ctx, rd)
		}()
	}
	return r
}

func (r *reference) consume(ctx context.Context, rd *kafka.Reader) {
	var wg sync.WaitGroup
	for {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		t := r.current.Load()
		if t == nil {
			continue
		}
		var id string
		for _, h := range m.Headers {
			if h.Key == "ce_id" {
				id = string(h.Value)
			}
		}
		seq, ok := t.seqOf(id)
		if !ok {
			continue // an earlier phase's record
		}
		p := t.intendedOf(seq)
		for i := 1; i < int(p.n); i++ {
			wg.Add(1)
			go func(rc *Recipient) {
				defer wg.Done()
				r.post(ctx, rc, id, m.Key, m.Value)
			}(&r.pop.Recipients[p.r[i]])
		}
		if p.n > 0 {
			r.post(ctx, &r.pop.Recipients[p.r[0]], id, m.Key, m.Value)
		}
		wg.Wait()
	}
}

// post delivers one record to one recipient, retrying until a 2xx.
func (r *reference) post(ctx context.Context, rc *Recipient, id string, key, body []byte) {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, rc.URL, bytes.NewReader(body))
		if err != nil {
			return
		}
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set("Content-Type", media.CloudEvent)
		// The headers the hub's webhook sink sends (connectors/webhook).
		wid := event.DeliveryID(event.SourcePrefix+Source, id)
		req.Header.Set(webhook.HeaderIdempotent, wid)
		req.Header.Set(webhook.HeaderID, wid)
		req.Header.Set(webhook.HeaderSpecVersion, event.SpecVersion)
		req.Header.Set(webhook.HeaderEventID, event.EncodeHeaderValue(id))
		req.Header.Set(webhook.HeaderSource, event.SourcePrefix+Source)
		req.Header.Set(webhook.HeaderType, event.TypeDischarge)
		req.Header.Set(webhook.HeaderPatient, string(key))
		req.Header.Set(webhook.HeaderEventType, "org.carehub.discharge.v1")
		req.Header.Set(webhook.HeaderRecipient, rc.ODS)
		req.Header.Set(webhook.HeaderTimestamp, ts)
		req.Header.Set(webhook.HeaderSignature, "v1,"+webhook.Signature(rc.key, wid, ts, body))
		resp, err := r.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
		}
		r.failed.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *reference) close() error {
	r.cancel()
	r.wg.Wait()
	var errs []error
	for _, rd := range r.readers {
		errs = append(errs, rd.Close())
	}
	r.client.CloseIdleConnections()
	return errors.Join(errs...)
}
